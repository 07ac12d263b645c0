//! The transport-neutral adapter layer.

pub mod auth;
pub mod convert;
pub mod error;
pub mod expiry;
pub mod jwt;
pub mod permissions;
pub mod quota;
pub mod rate;
pub mod session_stream;
pub mod shutdown;
pub mod transport;
