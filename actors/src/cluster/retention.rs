//! Age retention for cluster mode (`confab serve --nats … --retention-age DUR`).
//!
//! The shard streams keep `--history-len-max` messages per room by themselves
//! (`max_msgs_per_subject`); age is not a stream limit, because a stream's `max_age` would also
//! remove a quiet room's last message, and with it the room's last position and seq, which the
//! conditional append and the room's numbering rest on. So a pass purges each room's old
//! messages itself and always keeps the room's last one:
//!
//! 1. list the shard's room subjects with their message counts (stream info with a subjects
//!    filter); a room with one message has nothing to purge;
//! 2. find the room's first message, and its first message at or after the cutoff (now − age),
//!    by a leader message get with `start_time`; none at or after it means every message is
//!    old, and then the room keeps its last one;
//! 3. purge the subject below that position (`{filter: subject, seq: N}` removes the subject's
//!    messages with a stream sequence under N).
//!
//! A pass is idempotent (a second one finds each room's first message already at its cut), so
//! every node runs it, and no node has to be elected for it. [`spawn_retention`] runs passes on
//! [`retention_pass_interval`].

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::stream;
use futures::{StreamExt, TryStreamExt};

use super::jetstream::JetStreamLog;
use super::subject::shard_filter;

/// The longest pause between two retention passes: a message is purged at most this long
/// after it is older than the age (plus the pass's own time).
pub const RETENTION_PASS_INTERVAL: Duration = Duration::from_secs(60);
/// The shortest pause between two passes, however short the age: a pass costs a few requests
/// per room with old messages, which must not become a busy loop.
pub const RETENTION_PASS_INTERVAL_MIN: Duration = Duration::from_secs(1);
/// The most rooms of one shard a pass sends requests for (rooms with one message cost nothing
/// and do not count). The rest wait for a later pass: the server lists a shard's subjects in
/// no fixed order, so later passes reach them.
pub const RETENTION_ROOMS_PER_PASS_MAX: usize = 10_000;
/// The server's error code for "no message found" (a message get past a subject's end).
const ERROR_NO_MESSAGE_FOUND: u64 = 10037;

/// How long to wait between passes for `age`: a tenth of it (a message outlives the age by
/// about a tenth at most), clamped to [`RETENTION_PASS_INTERVAL_MIN`] and
/// [`RETENTION_PASS_INTERVAL`].
pub fn retention_pass_interval(age: Duration) -> Duration {
    (age / 10).clamp(RETENTION_PASS_INTERVAL_MIN, RETENTION_PASS_INTERVAL)
}

/// Why a pass left a shard or a room untouched. The next pass tries again.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RetentionError {
    /// The shard's rooms could not be listed: the whole shard waits for the next pass.
    #[error("listing the rooms of stream {stream}: {reason}")]
    List {
        /// The shard's stream.
        stream: String,
        /// The server's or client's error.
        reason: String,
    },
    /// A room's messages could not be read.
    #[error("reading {subject} in stream {stream}: {reason}")]
    Read {
        /// The shard's stream.
        stream: String,
        /// The room's subject.
        subject: String,
        /// The server's or client's error.
        reason: String,
    },
    /// The purge itself failed.
    #[error("purging {subject} in stream {stream}: {reason}")]
    Purge {
        /// The shard's stream.
        stream: String,
        /// The room's subject.
        subject: String,
        /// The server's or client's error.
        reason: String,
    },
}

impl RetentionError {
    /// The failure's kind, for logging each kind once rather than once per room.
    pub fn kind(&self) -> &'static str {
        match self {
            RetentionError::List { .. } => "list",
            RetentionError::Read { .. } => "read",
            RetentionError::Purge { .. } => "purge",
        }
    }
}

/// What one pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Rooms with more than one message that the pass looked at.
    pub rooms_checked: usize,
    /// Rooms it purged messages of.
    pub rooms_purged: usize,
    /// Messages purged, as the server counted them.
    pub messages_purged: u64,
    /// Failures by kind ([`RetentionError::kind`]): how many, and the first one.
    pub failures: BTreeMap<&'static str, (usize, RetentionError)>,
}

impl PassReport {
    fn failed(&mut self, error: RetentionError) {
        self.failures.entry(error.kind()).and_modify(|(count, _)| *count += 1).or_insert((1, error));
    }
}

/// A message get request (`$JS.API.STREAM.MSG.GET.<stream>`): async-nats 0.51's builder has no
/// `start_time`, so it is sent as JSON here. Only the stream leader answers it (the streams
/// have `allow_direct` off), so it sees every acknowledged append.
#[derive(serde::Serialize)]
struct MessageGetRequest<'a> {
    next_by_subj: &'a str,
    /// RFC 3339: the first message of the subject stored at or after this time.
    start_time: String,
}

#[derive(serde::Deserialize)]
struct MessageGetReply {
    #[serde(default)]
    message: Option<MessageGetMessage>,
    #[serde(default)]
    error: Option<ApiError>,
}

#[derive(serde::Deserialize)]
struct MessageGetMessage {
    seq: u64,
}

#[derive(serde::Deserialize)]
struct ApiError {
    #[serde(default)]
    err_code: u64,
    #[serde(default)]
    description: String,
}

impl JetStreamLog {
    /// One retention pass over every shard: purges each room's messages stored before
    /// `cutoff`, except its last message. Idempotent; failures are counted in the report and
    /// leave their shard or room for the next pass.
    pub async fn purge_before(&self, cutoff: SystemTime) -> PassReport {
        let mut report = PassReport::default();
        for shard in 0..self.shards() {
            self.purge_shard_before(shard, cutoff, &mut report).await;
        }
        report
    }

    async fn purge_shard_before(&self, shard: u32, cutoff: SystemTime, report: &mut PassReport) {
        let stream_name = self.stream_name(shard);
        let list_error =
            |error: &dyn fmt::Display| RetentionError::List { stream: stream_name.clone(), reason: error.to_string() };
        let stream = match self.shard_stream(shard) {
            Some(stream) => stream,
            None => return report.failed(list_error(&format!("no shard {shard}"))),
        };
        // Only rooms with more than one message can have something to purge.
        let listing = match stream.info_with_subjects(shard_filter(shard)).await {
            Ok(listing) => listing,
            Err(error) => return report.failed(list_error(&error)),
        };
        let subjects: Result<Vec<String>, _> = listing
            .try_filter(|(_, count)| futures::future::ready(*count > 1))
            .map_ok(|(subject, _)| subject)
            .take(RETENTION_ROOMS_PER_PASS_MAX)
            .try_collect()
            .await;
        let subjects = match subjects {
            Ok(subjects) => subjects,
            Err(error) => return report.failed(list_error(&error)),
        };
        for subject in subjects {
            report.rooms_checked += 1;
            match self.purge_room_before(stream, &stream_name, &subject, cutoff).await {
                Ok(0) => {}
                Ok(purged) => {
                    report.rooms_purged += 1;
                    report.messages_purged += purged;
                }
                Err(error) => report.failed(error),
            }
        }
    }

    /// Purges `subject`'s messages stored before `cutoff`, never its last one; how many went.
    async fn purge_room_before(
        &self,
        stream: &stream::Stream<()>,
        stream_name: &str,
        subject: &str,
        cutoff: SystemTime,
    ) -> Result<u64, RetentionError> {
        let read_error = |reason: String| RetentionError::Read {
            stream: stream_name.to_owned(),
            subject: subject.to_owned(),
            reason,
        };
        let first = match stream.raw_message_builder().sequence(1).next_by_subject(subject).send().await {
            Ok(message) => message.sequence,
            Err(error) if error.kind() == stream::RawMessageErrorKind::NoMessageFound => return Ok(0),
            Err(error) => return Err(read_error(error.to_string())),
        };
        // Keep from the first message at or after the cutoff; with none, keep the last one.
        let keep_from = match self.first_at_or_after(stream_name, subject, cutoff).await.map_err(read_error)? {
            Some(position) => position,
            None => match stream.get_last_raw_message_by_subject(subject).await {
                Ok(message) => message.sequence,
                Err(error) if error.kind() == stream::LastRawMessageErrorKind::NoMessageFound => return Ok(0),
                Err(error) => return Err(read_error(error.to_string())),
            },
        };
        if first >= keep_from {
            return Ok(0);
        }
        let purged =
            stream.purge().filter(subject).sequence(keep_from).await.map_err(|error| RetentionError::Purge {
                stream: stream_name.to_owned(),
                subject: subject.to_owned(),
                reason: error.to_string(),
            })?;
        Ok(purged.purged)
    }

    /// The stream sequence of `subject`'s first message stored at or after `cutoff` (`None`:
    /// every message of the subject is older).
    async fn first_at_or_after(
        &self,
        stream_name: &str,
        subject: &str,
        cutoff: SystemTime,
    ) -> Result<Option<u64>, String> {
        let request = MessageGetRequest { next_by_subj: subject, start_time: rfc3339(cutoff)? };
        let payload = serde_json::to_vec(&request).map_err(|error| error.to_string())?;
        let request = async_nats::Request::new().payload(payload.into()).timeout(Some(self.options().request_timeout));
        let reply = self
            .client()
            .send_request(format!("$JS.API.STREAM.MSG.GET.{stream_name}"), request)
            .await
            .map_err(|error| error.to_string())?;
        let reply: MessageGetReply = serde_json::from_slice(&reply.payload).map_err(|error| {
            format!("unreadable message get reply ({error}): {}", String::from_utf8_lossy(&reply.payload))
        })?;
        match (reply.message, reply.error) {
            (_, Some(error)) if error.err_code == ERROR_NO_MESSAGE_FOUND => Ok(None),
            (_, Some(error)) => Err(format!("{} (error {})", error.description, error.err_code)),
            (Some(message), None) => Ok(Some(message.seq)),
            (None, None) => Err("a message get reply with neither a message nor an error".to_owned()),
        }
    }
}

/// `time` in RFC 3339 (UTC, nanoseconds), as the server's `start_time` wants it.
fn rfc3339(time: SystemTime) -> Result<String, String> {
    let nanos = time.duration_since(UNIX_EPOCH).map_err(|error| error.to_string())?.as_nanos();
    let nanos = i128::try_from(nanos).map_err(|error| error.to_string())?;
    let time = time::OffsetDateTime::from_unix_timestamp_nanos(nanos).map_err(|error| error.to_string())?;
    time.format(&time::format_description::well_known::Rfc3339).map_err(|error| error.to_string())
}

/// The background task of [`spawn_retention`]; dropping it stops the passes.
#[derive(Debug)]
pub struct RetentionTask {
    handle: tokio::task::JoinHandle<()>,
}

impl Drop for RetentionTask {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// Runs a retention pass over `log` for messages older than `age` now and then every
/// [`retention_pass_interval`] of it, on the current Tokio runtime, until the task is dropped.
/// Logs a failure kind when it starts failing (once, not per room or per pass) and when passes
/// are clean again.
pub fn spawn_retention(log: JetStreamLog, age: Duration) -> RetentionTask {
    let interval = retention_pass_interval(age);
    let handle = tokio::spawn(async move {
        let mut failing: BTreeMap<&'static str, usize> = BTreeMap::new();
        loop {
            let cutoff = SystemTime::now().checked_sub(age).unwrap_or(UNIX_EPOCH);
            let report = log.purge_before(cutoff).await;
            if report.messages_purged > 0 {
                tracing::debug!(
                    rooms = report.rooms_purged,
                    messages = report.messages_purged,
                    "retention pass purged old messages"
                );
            }
            for (kind, (count, first)) in &report.failures {
                if !failing.contains_key(kind) {
                    tracing::warn!(kind, count, error = %first, "retention pass failed; retrying every pass");
                }
            }
            if report.failures.is_empty() && !failing.is_empty() {
                tracing::info!("retention passes succeed again");
            }
            failing = report.failures.iter().map(|(kind, (count, _))| (*kind, *count)).collect();
            tokio::time::sleep(interval).await;
        }
    });
    RetentionTask { handle }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pass_interval_is_a_tenth_of_the_age_within_its_bounds() {
        assert_eq!(retention_pass_interval(Duration::from_secs(3_600)), RETENTION_PASS_INTERVAL);
        assert_eq!(retention_pass_interval(Duration::from_secs(100)), Duration::from_secs(10));
        assert_eq!(retention_pass_interval(Duration::from_secs(2)), RETENTION_PASS_INTERVAL_MIN);
    }

    #[test]
    fn times_are_sent_in_rfc3339_utc() {
        let time = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(rfc3339(time).as_deref(), Ok("2023-11-14T22:13:20.123Z"));
    }
}
