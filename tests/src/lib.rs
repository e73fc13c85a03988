//! Shared pieces of the project's end-to-end and in-kernel tests: packet
//! fixtures built with etherparse, and network-namespace testbeds.

pub mod packets;
pub mod testbed;
pub mod xdp;
