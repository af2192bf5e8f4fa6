// mimalloc rather than glibc's malloc: the request path allocates a few dozen small objects per
// invocation (store, WASI context, record, headers), and on the hello benchmark mimalloc gave
// Nimbus about 3% more requests per second (interleaved A/B, bench/interleaved.sh: 0.827 vs
// 0.800 of the bare host).
//
// mimalloc 2 (the crate's `v2` feature), not its default 3: Rust asks for every allocation with
// its alignment (`mi_malloc_aligned`), and mimalloc 3 serves a block over 1 KiB whose size class
// is not a power of two by over-allocating through its slow path, which wasmtime's per-instance
// allocations hit on every request. With 2 the allocator runs ~600 fewer instructions per hello
// request (callgrind) and takes ~0.7 µs less of its CPU time (`perf`; docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    nimbus_cli::main()
}
