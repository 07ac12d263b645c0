//! Code generated from `proto/` by `build.rs` (protox + tonic-prost-build): the `confab.v1`
//! messages every transport speaks (gRPC as protobuf, the WebSocket as protobuf or JSON), and
//! the tonic clients and servers of the gRPC transport, which [`crate::grpc`] re-exports.

/// `confab.v1`: the engine's own API.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod confab_v1 {
    tonic::include_proto!("confab.v1");
}

/// `chat`: the seed's ChatService, unchanged.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod chat {
    tonic::include_proto!("chat");
}

/// Both protos (and what they import) as an encoded `FileDescriptorSet`, written by `build.rs`,
/// for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/confab_descriptor.bin"));
