//! The `confab` binary: see `confab --help`.

/// mimalloc instead of the system allocator: under load, glibc's malloc spent ~12% of the
/// server's CPU, much of it contending on arena locks between the runtime's threads.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    confab::cli::main()
}
