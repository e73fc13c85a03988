//! Shared pieces of the project's end-to-end and in-kernel tests: packet
//! fixtures built with etherparse, network-namespace testbeds, and the
//! standard end-to-end fixture on one (`bed`).

pub mod bed;
pub mod bpf_trace;
pub mod cluster;
pub mod examples;
pub mod packets;
pub mod testbed;
pub mod xdp;
