//! Reading a data plane's state back out of its maps, for `functions list`,
//! `workers list`, `workflows list` and `maps dump`: plain values that
//! render as tables for people and JSON for scripts.

use std::{fmt::Write as _, net::SocketAddr};

use anyhow::Result;
use dispatcher_common::maps::{worker_state, Function, MAX_WORKFLOW_STEPS, TABLE_CHUNK};
use serde::{Deserialize, Serialize};

use crate::{config::Policy, control, data_plane::Maps};

#[derive(Debug, Serialize, Deserialize)]
pub struct FunctionInfo {
    pub id: u32,
    pub index: u32,
    /// None for a policy byte this build does not know.
    pub policy: Option<Policy>,
    pub workers: usize,
    pub up: u16,
    pub generation: u8,
    pub packets: u64,
    pub bytes: u64,
    /// The FUNCTIONS entry itself.
    #[serde(skip)]
    pub entry: Function,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct WorkerInfo {
    pub function: u32,
    pub slot: u8,
    pub addr: SocketAddr,
    pub mac: String,
    pub weight: u16,
    pub state: WorkerState,
    pub load: u64,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct WorkflowInfo {
    pub id: u32,
    pub steps: Vec<u32>,
}

/// A worker's state as the operator reads it (`worker_state` in the maps).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerState {
    Up,
    Draining,
    Down,
}

impl WorkerState {
    /// The state of a `Worker` entry's `state` byte.
    pub fn of(s: u8) -> WorkerState {
        match s {
            worker_state::UP => WorkerState::Up,
            worker_state::DRAINING => WorkerState::Draining,
            _ => WorkerState::Down,
        }
    }
}

/// The table sizes the data plane's maps were created with, and the memory
/// each map takes (estimated from the kernel's own sizes: arrays hold
/// `entries x value` bytes, per CPU for per-CPU maps; preallocated hash
/// maps about `entries x (key + value + 48)`).
pub fn geometry(maps: &Maps) -> Result<serde_json::Value> {
    let g = maps.geometry()?;
    let cpus =
        aya::util::nr_cpus().map_err(|(_, e)| anyhow::anyhow!("cannot count the CPUs: {e}"))?;
    let mut memory = serde_json::Map::new();
    let mut total = 0u64;
    for name in crate::data_plane::MAP_NAMES {
        let Some(info) = maps.map_data(name).and_then(|d| d.info().ok()) else {
            continue;
        };
        let round8 = |n: u32| n.div_ceil(8) as u64 * 8;
        let entries = info.max_entries() as u64;
        let bytes = match info.map_type() {
            Ok(aya::maps::MapType::PerCpuArray) => {
                entries * round8(info.value_size()) * cpus as u64
            }
            Ok(aya::maps::MapType::Hash) => {
                entries * (round8(info.key_size()) + round8(info.value_size()) + 48)
            }
            _ => entries * round8(info.value_size()),
        };
        total += bytes;
        memory.insert(name.to_string(), bytes.into());
    }
    Ok(serde_json::json!({
        "functions": g.functions,
        "workers_per_function": g.workers_per_function,
        "ring_size": g.ring_size,
        "maglev_size": g.maglev_size,
        "service_slots": g.service_slots,
        "workflows": g.workflows,
        "maglev_pool_slots": g.maglev_pool_chunks as u64 * TABLE_CHUNK as u64,
        "memory_bytes": total,
        "memory_bytes_by_map": memory,
    }))
}

pub fn functions(maps: &Maps) -> Result<Vec<FunctionInfo>> {
    let mut out = Vec::new();
    for entry in maps.functions.iter() {
        let (id, f) = entry?;
        let traffic = maps.function_traffic(f.index)?;
        out.push(FunctionInfo {
            id,
            index: f.index,
            policy: Policy::of_map(f.policy),
            workers: control::function_workers(maps, &f)?.len(),
            up: f.up_count,
            generation: f.generation,
            packets: traffic.packets,
            bytes: traffic.bytes,
            entry: f,
        });
    }
    out.sort_by_key(|f| f.id);
    Ok(out)
}

pub fn workers(maps: &Maps, function: Option<u32>) -> Result<Vec<WorkerInfo>> {
    let mut out = Vec::new();
    for f in functions(maps)? {
        if function.is_some_and(|id| id != f.id) {
            continue;
        }
        for (slot, w) in control::function_workers(maps, &f.entry)? {
            let i = f.entry.worker_index(slot as u32);
            let traffic = maps.worker_traffic(i)?;
            out.push(WorkerInfo {
                function: f.id,
                slot,
                addr: crate::endpoints::worker_socket_addr(&w),
                mac: w
                    .mac
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(":"),
                weight: w.weight,
                state: WorkerState::of(w.state),
                load: maps.loads.get(&i, 0)?.in_flight as u64,
                packets: traffic.packets,
                bytes: traffic.bytes,
            });
        }
    }
    Ok(out)
}

pub fn workflows(maps: &Maps) -> Result<Vec<WorkflowInfo>> {
    let mut out = Vec::new();
    for entry in maps.workflows.iter() {
        let (id, w) = entry?;
        let n = (w.step_count as usize).min(MAX_WORKFLOW_STEPS);
        out.push(WorkflowInfo {
            id,
            steps: w.functions[..n].to_vec(),
        });
    }
    out.sort_by_key(|w| w.id);
    Ok(out)
}

/// Renders rows of `Serialize` values as an aligned text table, columns
/// in field order.
pub fn table<T: Serialize>(rows: &[T]) -> String {
    let values: Vec<serde_json::Map<String, serde_json::Value>> = rows
        .iter()
        .filter_map(|r| serde_json::to_value(r).ok()?.as_object().cloned())
        .collect();
    let Some(first) = values.first() else {
        return "(none)\n".to_string();
    };
    let headers: Vec<String> = first.keys().cloned().collect();
    let cell = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(a) => a
            .iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(","),
        serde_json::Value::Null => "-".to_string(),
        other => other.to_string(),
    };
    let cells: Vec<Vec<String>> = values
        .iter()
        .map(|row| headers.iter().map(|h| cell(&row[h])).collect())
        .collect();
    let widths: Vec<usize> = headers
        .iter()
        .enumerate()
        .map(|(i, h)| {
            cells
                .iter()
                .map(|r| r[i].len())
                .chain([h.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for (i, h) in headers.iter().enumerate() {
        let _ = write!(out, "{h:<w$}  ", w = widths[i]);
    }
    out = out.trim_end().to_string() + "\n";
    for row in cells {
        let mut line = String::new();
        for (i, c) in row.iter().enumerate() {
            let _ = write!(line, "{c:<w$}  ", w = widths[i]);
        }
        out += line.trim_end();
        out.push('\n');
    }
    out
}
