//! The `confab` binary: see `confab --help`.

fn main() -> std::process::ExitCode {
    confab::cli::main()
}
