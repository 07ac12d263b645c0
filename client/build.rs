//! Compiles `proto/confab/v1/chat.proto` in pure Rust (protox), so building needs no system
//! `protoc`; client stubs only. The server compiles the same file itself (the root `build.rs`):
//! the client must not depend on the server's crate to get its types.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=../proto");
    let files = protox::compile(["confab/v1/chat.proto"], ["../proto"])?;
    tonic_prost_build::configure().build_server(false).compile_fds(files)?;
    Ok(())
}
