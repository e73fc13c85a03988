//! The user-space half of the FaaS dispatcher.
//!
//! Its parts, each using only the ones below it (docs/architecture.md
//! draws the picture and says where a new feature goes):
//! - the `dispatcher` binary's commands (`src/main.rs`, `src/cli/`) stay
//!   thin: parse, call a part below, render;
//! - [`daemon`]: `dispatcher run`: chooses the attach mode, attaches or
//!   adopts the data plane, and runs the slow path, health, neighbour MACs,
//!   metrics, the kernel's log, reloads and cluster membership from etcd;
//!   also `--mode user`;
//! - [`control`]: turns configuration and CLI changes into map contents in
//!   a safe order (rings and Maglev tables in [`control::tables`]) and reads
//!   the state back ([`control::inspect`], [`control::stats`]);
//! - [`data_plane`]: the XDP object, loading, attaching, pinning, binding to
//!   a NIC, typed access to the maps; it knows no configuration;
//! - [`offload_check`]: the static checker of the NFP's offload rules;
//! - [`workload`]: the worker runtime (`serve`), the client (`invoke`) and
//!   `pktgen`, which speak only the wire protocol, never the maps;
//! - at the bottom: [`config`] (the TOML file), [`cluster`] (cluster
//!   mode's key layout in etcd and the membership it holds), [`wire`] (the FaaS header
//!   on sockets), [`heartbeat`] (the worker control protocol),
//!   [`endpoints`] (socket addresses <-> map entries), [`udp_batch`],
//!   [`systemd`] (readiness and reloads told to the service manager).

pub mod cluster;
pub mod config;
pub mod control;
pub mod daemon;
pub mod data_plane;
pub mod endpoints;
pub mod heartbeat;
pub mod offload_check;
pub mod systemd;
pub mod udp_batch;
pub mod wire;
pub mod workload;
