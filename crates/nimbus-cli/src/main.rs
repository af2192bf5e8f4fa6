// mimalloc rather than glibc's malloc: the request path allocates a few dozen small objects per
// invocation (store, WASI context, record, headers), and on the hello benchmark mimalloc gave
// Nimbus about 3% more requests per second (interleaved A/B, bench/interleaved.sh: 0.827 vs
// 0.800 of the bare host).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    nimbus_cli::main()
}
