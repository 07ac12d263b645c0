//! Cluster mode's durable log: rooms as subjects of NATS JetStream shard streams (issue 15).
//!
//! Built with the `cluster` feature. [`ClusterLog`] is the [`RoomLog`](crate::room_log::RoomLog)
//! an engine in cluster mode keeps its rooms in ([`crate::EngineConfig::replicated`]); proven
//! against a real 3-server cluster by `actors/tests/cluster/`.
//!
//! # Layout
//! - [`subject`]: room name → shard and subject (stable FNV-1a hash, hex-encoded name).
//! - [`jetstream`]: [`JetStreamLog`]: connect (server version and stream config checks),
//!   conditional append, read after a position, the leader's last position, a shard's live
//!   feed.
//! - `batch`: an atomic batch publish (ADR-50 headers), which async-nats 0.51 lacks.
//! - `presence_bus`: [`NatsPresenceBus`], presence and typing across nodes on a core NATS
//!   subject of the cluster's own ([`presence_subject`]).
//! - `retention`: age retention ([`spawn_retention`], [`JetStreamLog::purge_before`]): purges
//!   each room's messages older than the age, never its last one.
//! - `room_log`: [`ClusterLog`], the engine's room log over [`JetStreamLog`]: entries carry the
//!   appending node's origin and the message in the store's record format; every shard's feed
//!   followed from its end.
//!
//! Data flow: a caller appends a run of [`Entry`]s to a room, conditional on the room's last
//! [`Position`]; one entry is one conditional publish, several are one atomic batch. The stream
//! admits exactly one append per position, so two nodes appending at the same position get one
//! [`Appended`] and one [`AppendError::Conflict`] naming the winner's position.

mod batch;
pub mod jetstream;
mod presence_bus;
mod retention;
mod room_log;
pub mod subject;

/// Payloads are shared bytes; re-exported so callers need no `bytes` dependency of their own.
pub use bytes::Bytes;
pub use jetstream::{
    AppendError, Appended, BATCH_LEN_MAX, ClusterError, Entry, HEADER_EPOCH, HEADER_SEQ, JetStreamLog, LogOptions,
    Position, READ_LEN_MAX, ReadError, SERVER_VERSION_MIN, StoredEntry,
};
pub use presence_bus::{NatsPresenceBus, PRESENCE_SUBJECT_PREFIX, presence_subject};
pub use retention::{
    PassReport, RETENTION_PASS_INTERVAL, RETENTION_PASS_INTERVAL_MIN, RETENTION_ROOMS_PER_PASS_MAX, RetentionError,
    RetentionTask, retention_pass_interval, spawn_retention,
};
pub use room_log::ClusterLog;
pub use subject::{RoomSubject, room_of_subject, room_subject, shard_of};
