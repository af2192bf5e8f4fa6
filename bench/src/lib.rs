//! Benchmark harness for Nimbus. The interesting parts are the two binaries and `bench/run.sh`:
//!
//! - `bare-host`: a minimal `wasmtime-wasi-http` server (modelled on `wasmtime serve`) with the
//!   same pooling-allocator settings as Nimbus, minus fuel and epoch interruption: the baseline a
//!   platform built on Wasmtime is measured against;
//! - `native-hello`: a plain hyper hello world, the upper bound of this machine.
