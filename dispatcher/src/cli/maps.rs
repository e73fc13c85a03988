//! `dispatcher maps dump`: typed views of the pinned maps.

use std::{path::Path, process::ExitCode};

use anyhow::Result;
use clap::{Subcommand, ValueEnum};
use dispatcher::control::inspect;
use serde_json::{json, Value};

use super::Target;

#[derive(Subcommand)]
pub enum Action {
    /// Dump every view of the pinned maps, or the one named.
    Dump {
        view: Option<View>,
        #[command(flatten)]
        target: Target,
    },
}

/// What `maps dump` can show.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum View {
    /// The table sizes the maps were created with.
    Geometry,
    Functions,
    Workers,
    Workflows,
    Counters,
}

pub fn run(action: Action, bpffs: &Path) -> Result<ExitCode> {
    let Action::Dump { view, target } = action;
    let maps = target.open(bpffs)?;
    let views = match view {
        Some(v) => vec![v],
        None => View::value_variants().to_vec(),
    };
    let mut doc = serde_json::Map::new();
    for view in views {
        let value = match view {
            View::Geometry => Value::Array(vec![inspect::geometry(&maps)?]),
            View::Functions => serde_json::to_value(inspect::functions(&maps)?)?,
            View::Workers => serde_json::to_value(inspect::workers(&maps, None)?)?,
            View::Workflows => serde_json::to_value(inspect::workflows(&maps)?)?,
            View::Counters => Value::Array(
                maps.counters()?
                    .into_iter()
                    .map(|(c, v)| json!({ "counter": c.name(), "packets": v }))
                    .collect(),
            ),
        };
        let name = view
            .to_possible_value()
            .expect("no view is skipped")
            .get_name()
            .to_string();
        if !target.json {
            println!("== {name}");
            let mut rows: Vec<Value> = value.as_array().cloned().unwrap_or_default();
            // The geometry's memory by map, as lines of their own.
            let by_map = rows
                .first_mut()
                .and_then(|r| r.as_object_mut()?.remove("memory_bytes_by_map"));
            print!("{}", inspect::table(&rows));
            if let Some(Value::Object(by_map)) = by_map {
                let mut by_map: Vec<(String, u64)> = by_map
                    .into_iter()
                    .map(|(k, v)| (k, v.as_u64().unwrap_or(0)))
                    .collect();
                by_map.sort_by_key(|(_, bytes)| std::cmp::Reverse(*bytes));
                for (map, bytes) in by_map {
                    println!("  {map:<18} {:>10.1} MiB", bytes as f64 / (1 << 20) as f64);
                }
            }
        }
        doc.insert(name, value);
    }
    if target.json {
        println!("{}", Value::Object(doc));
    }
    Ok(ExitCode::SUCCESS)
}
