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
            let rows: Vec<Value> = value.as_array().cloned().unwrap_or_default();
            print!("{}", inspect::table(&rows));
        }
        doc.insert(name, value);
    }
    if target.json {
        println!("{}", Value::Object(doc));
    }
    Ok(ExitCode::SUCCESS)
}
