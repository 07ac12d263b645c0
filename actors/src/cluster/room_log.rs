//! [`ClusterLog`]: the [`RoomLog`] of cluster mode, over [`JetStreamLog`].
//!
//! Each entry's payload is the appending node's [`Origin`] (two u64, little-endian) followed by
//! the message in the durable store's record format (checksummed), so every node can tell its
//! own appends from other nodes' and decode what others wrote. The room and sequence number
//! travel in the subject and the `Confab-Seq` header.

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use confab_engine::{Append, LogEntry, Origin, Position, RoomError, RoomName};
use futures::future::{BoxFuture, FutureExt};
use futures::stream::{BoxStream, StreamExt};

use super::jetstream::{self as js, AppendError, ClusterError, JetStreamLog, LogOptions, ReadError, StoredEntry};
use crate::room_log::{AppendOutcome, LoadedRoom, RoomLog};
use crate::store::{decode_record, encode_record};

/// Bytes of the origin in front of each entry's record.
const ORIGIN_BYTES: usize = 16;

/// How often an append the server calls busy (another conditional append on the room is in
/// flight, error 10164: nothing was stored) is sent again before the room hears the outcome is
/// unknown (and sends it again itself, after a pause).
const BUSY_RETRIES_MAX: u32 = 20;

/// The pause between those retries.
const BUSY_RETRY_DELAY: Duration = Duration::from_millis(5);

/// How long an append the log cannot take now (no responders while a stream's leader is
/// elected, no connection) is tried again before its senders hear UNAVAILABLE: rides out a
/// short blip, not an outage.
const UNAVAILABLE_RETRY_FOR: Duration = Duration::from_secs(2);

/// The pause between those tries.
const UNAVAILABLE_RETRY_DELAY: Duration = Duration::from_millis(100);

/// How long a shard's feed waits before it is made again after it failed.
const FEED_RETRY_DELAY: Duration = Duration::from_secs(1);

/// Cluster mode's room log (see the module). Cheap to clone.
#[derive(Clone, Debug)]
pub struct ClusterLog {
    log: JetStreamLog,
    epoch: u64,
}

impl ClusterLog {
    /// Connects to the JetStream servers `urls` (comma-separated) and checks or creates the
    /// shard streams ([`JetStreamLog::connect`]); reads the log's epoch.
    pub async fn connect(urls: &str, options: LogOptions) -> Result<Self, ClusterError> {
        let log = JetStreamLog::connect(urls, options).await?;
        let epoch = log.epoch().await.map_err(|error| ClusterError::Stream {
            stream: log.stream_name(0),
            reason: format!("reading its creation time (the epoch): {error}"),
        })?;
        Ok(Self { log, epoch })
    }

    /// The JetStream client underneath.
    pub fn jetstream(&self) -> &JetStreamLog {
        &self.log
    }
}

impl RoomLog for ClusterLog {
    fn load(&self, room: &RoomName) -> BoxFuture<'static, Result<Option<LoadedRoom>, RoomError>> {
        let (this, room) = (self.clone(), room.clone());
        async move {
            let Some((last_position, last_seq)) = this.log.last_position(room.as_str()).await.map_err(unreadable)?
            else {
                return Ok(None);
            };
            // The subject keeps the room's retained history (`max_msgs_per_subject`). Other
            // nodes may append (and the stream trim) while it is read, and a read served by a
            // replica may stop short: the room continues from the last entry actually read, so
            // its history always ends at its last sequence number without holes, and it
            // catches up with the rest as any room does (reads, the feed).
            let mut tail: Vec<LogEntry> = Vec::new();
            let mut after = js::Position::NONE;
            while after < last_position {
                let read = this.log.read_after(room.as_str(), after, js::READ_LEN_MAX).await.map_err(unreadable)?;
                let Some(last) = read.last() else { break };
                after = last.position;
                for stored in read {
                    let entry = entry(&room, stored)?;
                    if entry.position > Position(last_position.0) {
                        break;
                    }
                    // The stream trims a busy room's oldest messages while it is read: a load
                    // slower than the room can find the trim front past its cursor. What was
                    // read before such a gap is older than what the stream keeps; the tail is
                    // what follows it.
                    if tail.last().is_some_and(|last: &LogEntry| entry.message.seq != last.message.seq + 1) {
                        tail.clear();
                    }
                    tail.push(entry);
                }
            }
            let (last_position, last_seq) = match tail.last() {
                Some(last) => (last.position, last.message.seq),
                None => (Position(last_position.0), last_seq),
            };
            Ok(Some(LoadedRoom {
                epoch: this.epoch,
                last_seq,
                last_position,
                tail: tail.into_iter().map(|entry| (*entry.message).clone()).collect(),
            }))
        }
        .boxed()
    }

    fn append(&self, room: &RoomName, epoch: u64, append: Append) -> BoxFuture<'static, AppendOutcome> {
        let (log, room) = (self.log.clone(), room.clone());
        async move {
            let entries: Vec<js::Entry> = append
                .messages
                .iter()
                .map(|message| {
                    let mut payload = BytesMut::with_capacity(ORIGIN_BYTES + 64 + message.body.len());
                    payload.put_u64_le(append.origin.node);
                    payload.put_u64_le(append.origin.append);
                    let mut record = Vec::new();
                    encode_record(message, &mut record);
                    payload.put_slice(&record);
                    js::Entry { seq: message.seq, epoch, payload: payload.freeze() }
                })
                .collect();
            let expected = js::Position(append.expected_last.0);
            let (mut busy, started) = (0, tokio::time::Instant::now());
            while busy < BUSY_RETRIES_MAX {
                match log.append(room.as_str(), expected, &entries).await {
                    Ok(appended) => return AppendOutcome::Appended(Position(appended.last.0)),
                    Err(AppendError::Conflict { .. }) => return AppendOutcome::Conflict,
                    Err(AppendError::Busy) => {
                        busy += 1;
                        tokio::time::sleep(BUSY_RETRY_DELAY).await;
                    }
                    // Nothing was stored: the same append may be sent again.
                    Err(AppendError::Unavailable { reason }) if started.elapsed() < UNAVAILABLE_RETRY_FOR => {
                        tracing::debug!(room = %room, %reason, "the cluster log is unavailable; trying again");
                        tokio::time::sleep(UNAVAILABLE_RETRY_DELAY).await;
                    }
                    Err(AppendError::Unknown { reason }) => {
                        tracing::debug!(room = %room, %reason, "append outcome unknown; sending it again");
                        return AppendOutcome::Unknown { reason: format!("cluster log: {reason}") };
                    }
                    Err(error) => {
                        return AppendOutcome::Failed(RoomError::Storage { reason: format!("cluster log: {error}") });
                    }
                }
            }
            AppendOutcome::Unknown {
                reason: format!("cluster log: another append on the room stayed in flight {BUSY_RETRIES_MAX} times"),
            }
        }
        .boxed()
    }

    fn read_after(
        &self,
        room: &RoomName,
        after: Position,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<LogEntry>, RoomError>> {
        let (log, room) = (self.log.clone(), room.clone());
        async move {
            let read = log.read_after(room.as_str(), js::Position(after.0), limit).await.map_err(unreadable)?;
            read.into_iter().map(|stored| entry(&room, stored)).collect()
        }
        .boxed()
    }

    fn last_position(&self, room: &RoomName) -> BoxFuture<'static, Result<Position, RoomError>> {
        let (log, room) = (self.log.clone(), room.clone());
        async move {
            let last = log.last_position(room.as_str()).await.map_err(unreadable)?;
            Ok(Position(last.map_or(0, |(position, _)| position.0)))
        }
        .boxed()
    }

    fn append_len_max(&self) -> usize {
        self.log.options().batch_len_max
    }

    fn epoch(&self) -> Option<u64> {
        Some(self.epoch)
    }

    fn follow(&self) -> Option<BoxStream<'static, LogEntry>> {
        let feeds = (0..self.log.shards()).map(|shard| shard_feed(self.log.clone(), shard));
        Some(futures::stream::select_all(feeds).boxed())
    }

    fn probe(&self) -> Option<BoxFuture<'static, Result<(), String>>> {
        let log = self.log.clone();
        Some(async move { log.probe().await.map_err(|error| format!("cluster log: {error}")) }.boxed())
    }
}

/// Everything appended to shard `shard` from the moment it is first polled, made again from
/// where it stopped if it fails. An entry that does not decode is skipped (a room reading the
/// log finds it and refuses it as damaged).
fn shard_feed(log: JetStreamLog, shard: u32) -> BoxStream<'static, LogEntry> {
    let start = (log, None, None::<BoxStream<'static, Result<js::FeedItem, ReadError>>>);
    futures::stream::unfold(start, move |(log, mut after, mut feed)| async move {
        loop {
            let Some(items) = feed.as_mut() else {
                let from = match after {
                    Some(after) => Ok(after),
                    None => log.shard_last_position(shard).await,
                };
                let made = match from {
                    Ok(from) => {
                        // Kept even if making the feed fails: a retry that read the end again
                        // would skip what was appended in between, and a room whose last
                        // entries were skipped never learns of them (found by cluster_e2e's
                        // order test, a feed that timed out under load).
                        after = Some(from);
                        log.feed(shard, from).await.map(|items| items.boxed())
                    }
                    Err(error) => Err(error),
                };
                match made {
                    Ok(items) => {
                        feed = Some(items);
                    }
                    Err(error) => {
                        tracing::warn!(shard, %error, "following the cluster log failed; trying again");
                        tokio::time::sleep(FEED_RETRY_DELAY).await;
                    }
                }
                continue;
            };
            match items.next().await {
                Some(Ok(item)) => {
                    after = Some(item.entry.position);
                    let decoded = RoomName::new(&item.room)
                        .map_err(|error| RoomError::DataLoss { reason: error.to_string() })
                        .and_then(|room| entry(&room, item.entry));
                    match decoded {
                        Ok(entry) => return Some((entry, (log, after, feed))),
                        Err(error) => tracing::warn!(shard, %error, "skipping an entry of the cluster log"),
                    }
                }
                Some(Err(error)) => tracing::warn!(shard, %error, "skipping an entry of the cluster log"),
                None => feed = None,
            }
        }
    })
    .boxed()
}

/// A stored entry of `room` as the engine's [`LogEntry`]; DATA_LOSS if it does not decode.
fn entry(room: &RoomName, stored: StoredEntry) -> Result<LogEntry, RoomError> {
    let damaged = |detail: String| RoomError::DataLoss {
        reason: format!("room {room}: cluster log entry at position {}: {detail}", stored.position),
    };
    let (origin, record) = stored.payload.split_at_checked(ORIGIN_BYTES).ok_or_else(|| damaged("too short".into()))?;
    let number = |bytes: &[u8]| u64::from_le_bytes(bytes.try_into().unwrap_or([0; 8]));
    let origin = Origin { node: number(&origin[..8]), append: number(&origin[8..]) };
    let message = decode_record(room, stored.seq, record).map_err(damaged)?;
    Ok(LogEntry { position: Position(stored.position.0), origin, message: std::sync::Arc::new(message) })
}

/// A read that failed: the caller's refusal (UNAVAILABLE, or DATA_LOSS for a damaged entry).
fn unreadable(error: ReadError) -> RoomError {
    match error {
        ReadError::Malformed { .. } => RoomError::DataLoss { reason: format!("cluster log: {error}") },
        _ => RoomError::Storage { reason: format!("cluster log: {error}") },
    }
}
