//! `dispatcher stats`: the data plane's counters, for people and scripts.

use std::{fmt::Write as _, path::Path};

use anyhow::Result;
use dispatcher_common::stats::Counter;

use crate::data_plane::Maps;

/// A snapshot of every counter.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Snapshot {
    pub iface: String,
    pub counters: Vec<(String, u64)>,
}

impl Snapshot {
    pub fn read(pin_dir: &Path) -> Result<Snapshot> {
        let maps = Maps::from_pins(pin_dir)?;
        Ok(Snapshot {
            iface: pin_dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            counters: maps
                .counters()?
                .into_iter()
                .map(|(c, n)| (c.name().to_string(), n))
                .collect(),
        })
    }

    pub fn get(&self, counter: Counter) -> u64 {
        self.counters
            .iter()
            .find(|(name, _)| name == counter.name())
            .map_or(0, |(_, n)| *n)
    }

    /// A table; with `previous`, a per-second rate column over `secs`.
    pub fn table(&self, previous: Option<(&Snapshot, f64)>) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "interface {}", self.iface);
        let _ = writeln!(
            out,
            "{:<24} {:>14}{}",
            "counter",
            "packets",
            if previous.is_some() {
                "      packets/s"
            } else {
                ""
            }
        );
        for (name, n) in &self.counters {
            let _ = write!(out, "{name:<24} {n:>14}");
            if let Some((prev, secs)) = previous {
                let before = prev
                    .counters
                    .iter()
                    .find(|(p, _)| p == name)
                    .map_or(0, |(_, v)| *v);
                let _ = write!(out, " {:>14.0}", n.saturating_sub(before) as f64 / secs);
            }
            out.push('\n');
        }
        out
    }
}
