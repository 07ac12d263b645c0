//! Cluster mode's durable log: rooms as subjects of NATS JetStream shard streams (issue 15).
//!
//! Built with the `cluster` feature. Nothing in the engine uses it yet: this is the layer under
//! the coming `RoomLog` boundary, proven against a real 3-server cluster by
//! `actors/tests/cluster/`.
//!
//! # Layout
//! - [`subject`]: room name → shard and subject (stable FNV-1a hash, hex-encoded name).
//! - [`jetstream`]: [`JetStreamLog`]: connect (server version and stream config checks),
//!   conditional append, read after a position, the leader's last position, a shard's live
//!   feed.
//! - `batch`: an atomic batch publish (ADR-50 headers), which async-nats 0.51 lacks.
//!
//! Data flow: a caller appends a run of [`Entry`]s to a room, conditional on the room's last
//! [`Position`]; one entry is one conditional publish, several are one atomic batch. The stream
//! admits exactly one append per position, so two nodes appending at the same position get one
//! [`Appended`] and one [`AppendError::Conflict`] naming the winner's position.

mod batch;
pub mod jetstream;
pub mod subject;

/// Payloads are shared bytes; re-exported so callers need no `bytes` dependency of their own.
pub use bytes::Bytes;
pub use jetstream::{
    AppendError, Appended, BATCH_LEN_MAX, ClusterError, Entry, HEADER_EPOCH, HEADER_SEQ, JetStreamLog, LogOptions,
    Position, READ_LEN_MAX, ReadError, SERVER_VERSION_MIN, StoredEntry,
};
pub use subject::{RoomSubject, room_of_subject, room_subject, shard_of};
