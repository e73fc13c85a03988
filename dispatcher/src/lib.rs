//! The user-space half of the FaaS dispatcher.
//!
//! Layers, each using only the ones below it:
//! - [`cli`]-facing commands live in `main.rs` and stay thin;
//! - [`daemon`]: `dispatcher run`, keeps the data plane configured;
//! - [`data_plane`]: loads, attaches and pins the XDP program and gives typed
//!   access to its maps;
//! - [`config`]: the TOML configuration;
//! - [`worker`] (`dispatcher serve`) and [`client`] (`dispatcher invoke`)
//!   speak only the wire protocol, never the maps.
//!
//! [`cli`]: https://docs.rs/clap

pub mod bpffs;
pub mod client;
pub mod config;
pub mod control;
pub mod daemon;
pub mod health;
pub mod heartbeat;
pub mod inspect;
pub mod data_plane;
pub mod metrics;
pub mod neighbours;
pub mod pktgen;
pub mod privileges;
pub mod service;
pub mod stats;
pub mod tables;
pub mod worker;
pub mod wire;
