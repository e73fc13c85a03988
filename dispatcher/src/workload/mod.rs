//! What runs beside the dispatcher rather than in it: the worker runtime
//! (`dispatcher serve`, with the hosting of the user's functions), the
//! client (`dispatcher invoke`) and the load generator (`dispatcher
//! pktgen`, with its plots). They speak only the wire protocol
//! ([`crate::wire`], [`crate::heartbeat`]), never the maps; a worker joins
//! a cluster through its keys in etcd ([`register`], [`crate::cluster`]).

pub mod client;
pub mod hosting;
pub mod pktgen;
pub mod plot;
pub mod register;
pub mod worker;
