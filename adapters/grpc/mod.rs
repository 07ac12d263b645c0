//! The gRPC transport: two tonic services over one [`Engine`](confab_actors::Engine).
//!
//! - [`proto`]: generated code for `confab.v1` and the seed's `chat`.
//! - [`convert`]: wire <-> engine types, and nothing else.
//! - [`status`]: every error -> `tonic::Status`, in one place.
//! - [`confab_service`]: `confab.v1.Chat`; [`chat_service`]: `chat.ChatService`.
//! - [`shutdown`]: ends open response streams with UNAVAILABLE when the server stops.
//! - [`server`]: [`server::serve`] runs both services on a listener until a shutdown future.

pub mod chat_service;
pub mod confab_service;
pub mod convert;
pub mod proto;
pub mod server;
pub mod shutdown;
pub mod status;
