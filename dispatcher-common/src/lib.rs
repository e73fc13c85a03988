//! Types and constants shared by the XDP data plane (`dispatcher-ebpf`) and
//! user space (`dispatcher`).
//!
//! Everything that crosses the kernel/user boundary is defined here exactly
//! once: the FaaS wire header ([`protocol`]), the numbers of the headers
//! below it ([`net`]), the BPF map keys and values
//! ([`maps`]), the named counters ([`stats`]) and the checksum arithmetic both
//! halves must agree on ([`checksum`]).
//!
//! Map types are `#[repr(C)]` with explicit padding fields so that every byte
//! is initialised, which is what makes the `aya::Pod` impls (behind the
//! `user` feature) sound.
#![no_std]

pub mod checksum;
pub mod hash;
pub mod maps;
pub mod model;
pub mod net;
pub mod protocol;
pub mod stats;
pub mod trace;
