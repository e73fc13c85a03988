//! The user-space half of the FaaS dispatcher.
//!
//! Layers, each using only the ones below it:
//! - the commands live in `main.rs` and stay thin (parse, call, render);
//! - [`daemon`]: `dispatcher run`: attaches or adopts the data plane, and
//!   runs the slow path ([`service`]), health ([`health`], fed by
//!   [`heartbeat`]s), neighbour MACs ([`neighbours`]), [`metrics`], reloads;
//! - [`control`]: turns configuration and CLI changes into map contents in
//!   a safe order, with [`tables`] computing rings and Maglev tables;
//!   [`inspect`] reads the state back;
//! - [`data_plane`]: loads, attaches and pins the XDP program and gives typed
//!   access to its maps; [`config`] is the TOML configuration;
//! - [`worker`] (`dispatcher serve`), [`client`] (`dispatcher invoke`) and
//!   [`pktgen`] speak only the wire protocol ([`wire`]), never the maps.

pub mod bpffs;
pub mod client;
pub mod config;
pub mod control;
pub mod daemon;
pub mod data_plane;
pub mod health;
pub mod heartbeat;
pub mod inspect;
pub mod kernel_log;
pub mod map_batch;
pub mod metrics;
pub mod neighbours;
pub mod offload;
pub mod offload_check;
pub mod pktgen;
pub mod plot;
pub mod privileges;
pub mod service;
pub mod stats;
pub mod tables;
pub mod udp_batch;
pub mod user_mode;
pub mod veth;
pub mod wire;
pub mod worker;
