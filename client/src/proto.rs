//! Code generated from `proto/confab/v1/chat.proto` by this crate's `build.rs` (protox +
//! tonic-prost-build): the messages and the `Chat` client stub, for calls the [`Client`]
//! does not wrap (`Send`, `History`, `Subscribe`, `Upload`, `ListRooms`). Connect with
//! [`connect`](crate::connect()).
//!
//! [`Client`]: crate::Client

/// `confab.v1`: the engine's own API.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod confab_v1 {
    tonic::include_proto!("confab.v1");
}
