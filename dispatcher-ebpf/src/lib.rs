//! Empty on purpose: the data plane is the `dispatcher-ebpf` binary
//! (src/main.rs). This library target exists so that the `dispatcher` crate
//! can name this crate as a build-dependency and be rebuilt when it changes.
#![no_std]
