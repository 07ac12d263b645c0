//! Compiles the protos in pure Rust (protox), so building needs no system `protoc`. Also writes
//! the encoded file descriptor set to `OUT_DIR/confab_descriptor.bin`, which server reflection
//! serves (`include_bytes!` in `adapters/grpc/proto.rs`).

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let files = protox::compile(["confab/v1/chat.proto", "chat/chat.proto"], ["proto"])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("confab_descriptor.bin"), files.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(files)?;
    Ok(())
}
