fn main() -> std::process::ExitCode {
    nimbus_cli::main()
}
