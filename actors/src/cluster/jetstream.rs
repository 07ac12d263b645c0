//! [`JetStreamLog`]: the JetStream client for cluster mode's room log.
//!
//! Every room is one subject in one of K shard streams (`confab-rooms-<k>`, see
//! [`super::subject`]). A room's own sequence numbers (1, 2, 3, … within an epoch) travel in the
//! [`HEADER_SEQ`] and [`HEADER_EPOCH`] headers, because the stream sequence ([`Position`]) is
//! global across every room of the shard. They stay contiguous because every append is
//! conditional on the room's last position (`Nats-Expected-Last-Subject-Sequence`): the stream
//! admits one append per position.
//!
//! Why the publish acknowledgement is parsed here rather than by async-nats: its `PublishError`
//! keeps 10071 ("wrong last sequence: N") only as text inside a boxed source and folds 10164
//! (a conditional publish already in flight on the subject) into `Other`, and the caller must
//! tell those apart from "not committed" and from "maybe committed".

use std::fmt;
use std::time::Duration;

use async_nats::jetstream::stream::{self, DiscardPolicy, RetentionPolicy, StorageType};
use async_nats::{HeaderMap, RequestErrorKind, ServerAddr};
use bytes::Bytes;

use super::batch;
use super::subject::{RoomSubject, room_of_subject, room_subject, shard_filter};

/// The oldest nats-server release with every primitive used here: a conditional append that
/// clustered mode rechecks when it applies the write (fixed in 2.9.21, nats-server #4320) and
/// atomic batch publish (2.12, ADR-50).
pub const SERVER_VERSION_MIN: (u64, u64) = (2, 12);
/// The most messages in one atomic batch: the server's default limit (ADR-50). A server
/// configured higher still gets no bigger batch from here unless [`LogOptions::batch_len_max`]
/// says so.
pub const BATCH_LEN_MAX: usize = 1_000;
/// The most entries one [`JetStreamLog::read_after`] returns: each is one leader round trip.
pub const READ_LEN_MAX: usize = 1_000;
/// The header with the room's own sequence number of an entry.
pub const HEADER_SEQ: &str = "Confab-Seq";
/// The header with the room's epoch at the time of an entry.
pub const HEADER_EPOCH: &str = "Confab-Epoch";
/// The most shard streams a deployment may have.
pub const SHARDS_MAX: u32 = 1_024;
/// The shortest wait for one stream-setup request at connect (a creation waits for the
/// stream's placement); timed-out requests are asked again until `setup_wait_max`.
const SETUP_REQUEST_TIMEOUT_MIN: Duration = Duration::from_secs(5);
/// How often [`JetStreamLog::connect`] asks whether a new stream has elected its leader.
const LEADER_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// The server's error code for a stale `Nats-Expected-Last-Subject-Sequence`
/// ("wrong last sequence: N").
const ERROR_WRONG_LAST_SEQUENCE: u64 = 10071;
/// The server's error code for a conditional publish on a subject that already has one in
/// flight.
const ERROR_EXPECTED_IN_FLIGHT: u64 = 10164;
/// The server's error code for "JetStream cluster not available" (no quorum, no leader).
const ERROR_CLUSTER_NOT_AVAILABLE: u64 = 10008;
/// The header that makes a publish conditional on the subject's last stream sequence.
const HEADER_EXPECTED_LAST_SUBJECT_SEQUENCE: &str = "Nats-Expected-Last-Subject-Sequence";

/// A stream sequence: where a message sits in its shard stream. For a room, the position of its
/// last message; [`Position::NONE`] (0) when the room has none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position(pub u64);

impl Position {
    /// No message: the expectation of a room's first append.
    pub const NONE: Position = Position(0);
}

impl fmt::Display for Position {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}", self.0)
    }
}

/// One message to append to a room. The payload is opaque: the caller encodes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The room's own sequence number of this message (sent as [`HEADER_SEQ`]).
    pub seq: u64,
    /// The room's epoch (sent as [`HEADER_EPOCH`]): a seq is only meaningful within it.
    pub epoch: u64,
    /// The encoded message.
    pub payload: Bytes,
}

/// One message read back from a room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEntry {
    /// Its stream sequence.
    pub position: Position,
    /// The room's sequence number from its [`HEADER_SEQ`].
    pub seq: u64,
    /// The room's epoch from its [`HEADER_EPOCH`].
    pub epoch: u64,
    /// The payload exactly as appended.
    pub payload: Bytes,
}

/// One entry of a shard's live feed ([`JetStreamLog::feed`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedItem {
    /// The room it was appended to (decoded from its subject).
    pub room: String,
    /// The entry.
    pub entry: StoredEntry,
}

/// A committed append: the positions of its first and last entry (contiguous).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    /// Position of the first entry.
    pub first: Position,
    /// Position of the last entry: the room's new last position.
    pub last: Position,
}

/// Options of a [`JetStreamLog`]. Every node of a deployment must use the same shard count,
/// replicas and history length: [`JetStreamLog::connect`] refuses a stream that disagrees.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct LogOptions {
    /// How many shard streams (K); rooms are spread over them by [`super::shard_of`].
    pub shards: u32,
    /// Replicas of each stream: 3 in production (survives the loss of one server).
    pub replicas: usize,
    /// Messages kept per room (`max_msgs_per_subject`); older ones are discarded.
    pub history_len_max: i64,
    /// The most entries in one atomic append (the server's batch limit).
    pub batch_len_max: usize,
    /// How long one request (an append, one read) waits for the server. An append that times
    /// out is [`AppendError::Unknown`].
    pub request_timeout: Duration,
    /// Stream names are `<prefix>-<k>`.
    pub stream_prefix: String,
    /// How long [`JetStreamLog::connect`] waits for each shard stream to be read or created
    /// (creating an R3 stream is a meta-leader round across the servers) and then to have a
    /// leader (until a new stream elects one, appends find no responders).
    pub setup_wait_max: Duration,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            shards: 16,
            replicas: 3,
            history_len_max: 10_000,
            batch_len_max: BATCH_LEN_MAX,
            request_timeout: Duration::from_secs(5),
            stream_prefix: "confab-rooms".to_owned(),
            setup_wait_max: Duration::from_secs(30),
        }
    }
}

impl LogOptions {
    /// Sets the shard count (K).
    pub fn shards(mut self, shards: u32) -> Self {
        self.shards = shards;
        self
    }
    /// Sets the replicas of each stream.
    pub fn replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas;
        self
    }
    /// Sets the messages kept per room.
    pub fn history_len_max(mut self, history_len_max: i64) -> Self {
        self.history_len_max = history_len_max;
        self
    }
    /// Sets the most entries in one atomic append.
    pub fn batch_len_max(mut self, batch_len_max: usize) -> Self {
        self.batch_len_max = batch_len_max;
        self
    }
    /// Sets how long one request waits for the server.
    pub fn request_timeout(mut self, request_timeout: Duration) -> Self {
        self.request_timeout = request_timeout;
        self
    }
    /// Sets the stream name prefix (tests use one per test).
    pub fn stream_prefix(mut self, stream_prefix: impl Into<String>) -> Self {
        self.stream_prefix = stream_prefix.into();
        self
    }
    /// Sets how long connecting waits for each shard stream's creation and leader.
    pub fn setup_wait_max(mut self, setup_wait_max: Duration) -> Self {
        self.setup_wait_max = setup_wait_max;
        self
    }
}

/// Why [`JetStreamLog::connect`] refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// The options cannot work (no shards, a zero history length, …).
    #[error("invalid cluster log options: {reason}")]
    Options {
        /// What is wrong.
        reason: String,
    },
    /// No server could be reached.
    #[error("cannot connect to NATS at {urls}: {reason}")]
    Connect {
        /// The URLs tried.
        urls: String,
        /// The client's error.
        reason: String,
    },
    /// The server is older than [`SERVER_VERSION_MIN`].
    #[error(
        "nats-server {found} is too old: cluster mode needs 2.12 or later (atomic batches, and a conditional append that clustered mode rechecks)"
    )]
    ServerTooOld {
        /// The version the server reported.
        found: String,
    },
    /// An existing shard stream's configuration disagrees with this node's.
    #[error("stream {stream} has {field} = {found}, but this node is configured for {wanted}; refusing to use it")]
    ConfigMismatch {
        /// The stream.
        stream: String,
        /// The configuration field that differs.
        field: &'static str,
        /// This node's value.
        wanted: String,
        /// The stream's value.
        found: String,
    },
    /// A shard stream could not be read or created (no JetStream, no quorum, …).
    #[error("stream {stream} is unavailable: {reason}")]
    Stream {
        /// The stream.
        stream: String,
        /// The server's or client's error.
        reason: String,
    },
}

/// Why an append did not (or may not have) committed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum AppendError {
    /// The room's last position is not the expected one: nothing was stored. Catch up to
    /// `actual_last` and re-drive.
    #[error("conflict: the room's last position is {actual_last}")]
    Conflict {
        /// The room's actual last position, from the server's "wrong last sequence: N".
        actual_last: Position,
    },
    /// Another conditional append on this room is in flight on the server (error 10164):
    /// nothing was stored; retry after it settles.
    #[error("another conditional append on this room is in flight")]
    Busy,
    /// Nothing was stored: no stream answers (no responders), no quorum, or not connected.
    #[error("log unavailable: {reason}")]
    Unavailable {
        /// The cause, for the caller's UNAVAILABLE status.
        reason: String,
    },
    /// The append may or may not have committed (no answer in time, connection lost after
    /// sending). Resend the identical append: its expectation makes that safe (a committed
    /// first attempt turns the resend into a [`AppendError::Conflict`] at its last position).
    #[error("append outcome unknown: {reason}")]
    Unknown {
        /// The cause.
        reason: String,
    },
    /// More entries than one atomic append may hold; nothing was sent.
    #[error("{len} entries in one append, the most is {max}")]
    TooLarge {
        /// Entries asked for.
        len: usize,
        /// [`LogOptions::batch_len_max`].
        max: usize,
    },
    /// No entries; nothing was sent.
    #[error("an append needs at least one entry")]
    Empty,
    /// The server refused the append for another reason; nothing was stored.
    #[error("append refused by the server: {description} (error {code})")]
    Refused {
        /// The server's error code.
        code: u64,
        /// The server's description.
        description: String,
    },
}

/// Why a read failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReadError {
    /// The stream leader did not answer: no quorum, no connection, or no answer in time.
    #[error("log unavailable: {reason}")]
    Unavailable {
        /// The cause.
        reason: String,
    },
    /// A stored message lacks a readable confab header: not written by this client.
    #[error("the message at position {position} is malformed: {reason}")]
    Malformed {
        /// Its position.
        position: Position,
        /// What is wrong with it.
        reason: String,
    },
}

/// The JetStream client for cluster mode's room log: K shard streams, one subject per room.
///
/// Cheap to clone (the connection is shared).
#[derive(Clone, Debug)]
pub struct JetStreamLog {
    client: async_nats::Client,
    /// One handle per shard, index = shard; reads go through them (with the request timeout).
    streams: Vec<stream::Stream<()>>,
    options: LogOptions,
}

impl JetStreamLog {
    /// Connects to the servers in `urls` (comma-separated), checks the server's version is at
    /// least [`SERVER_VERSION_MIN`], and makes sure every shard stream exists with this node's
    /// configuration: created if missing, refused with [`ClusterError::ConfigMismatch`] naming
    /// the field if it disagrees. Returns once every stream has a leader (at most
    /// [`LogOptions::setup_wait_max`] for each stream).
    pub async fn connect(urls: &str, options: LogOptions) -> Result<Self, ClusterError> {
        validate(&options)?;
        let connect_error = |reason: String| ClusterError::Connect { urls: urls.to_owned(), reason };
        let addresses = urls
            .split(',')
            .map(|url| url.trim().parse::<ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| connect_error(error.to_string()))?;
        let client = async_nats::ConnectOptions::new()
            .request_timeout(Some(options.request_timeout))
            .connect(addresses)
            .await
            .map_err(|error| connect_error(error.to_string()))?;
        let found = client.server_info().version;
        if !version_at_least(&found, SERVER_VERSION_MIN) {
            return Err(ClusterError::ServerTooOld { found });
        }
        // Setting streams up may wait for the meta leader and for elections: a longer timeout
        // than the appends and reads get.
        let mut setup = async_nats::jetstream::new(client.clone());
        setup.set_timeout(options.request_timeout.max(SETUP_REQUEST_TIMEOUT_MIN));
        let mut reads = async_nats::jetstream::new(client.clone());
        reads.set_timeout(options.request_timeout);
        let mut streams = Vec::with_capacity(options.shards as usize);
        for shard in 0..options.shards {
            let wanted = stream_config(&options, shard);
            let name = wanted.name.clone();
            let stream_error = |reason: String| ClusterError::Stream { stream: name.clone(), reason };
            // A cluster that just elected its meta leader, or a loaded one, may time a
            // creation out: asked again until the setup deadline.
            let deadline = tokio::time::Instant::now() + options.setup_wait_max;
            let mut stream = loop {
                match setup.get_or_create_stream(wanted.clone()).await {
                    Ok(stream) => break stream,
                    Err(error) if tokio::time::Instant::now() < deadline => {
                        tracing::debug!(stream = %name, %error, "creating a stream failed; asking again");
                        tokio::time::sleep(LEADER_POLL_INTERVAL).await;
                    }
                    Err(error) => return Err(stream_error(error.to_string())),
                }
            };
            let found = &stream.info().await.map_err(|error| stream_error(error.to_string()))?.config;
            check_config(&wanted, found)?;
            loop {
                let info = stream.get_info().await.map_err(|error| stream_error(error.to_string()))?;
                if info.cluster.and_then(|cluster| cluster.leader).is_some() {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(stream_error(format!("no stream leader after {:?}", options.setup_wait_max)));
                }
                tokio::time::sleep(LEADER_POLL_INTERVAL).await;
            }
            streams.push(reads.get_stream_no_info(&name).await.map_err(|error| stream_error(error.to_string()))?);
        }
        Ok(JetStreamLog { client, streams, options })
    }

    /// The NATS connection underneath (presence shares it: [`super::NatsPresenceBus`]).
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// The options this log was connected with.
    pub fn options(&self) -> &LogOptions {
        &self.options
    }

    /// Where `room` lives: its shard and subject.
    pub fn room_subject(&self, room: &str) -> RoomSubject {
        room_subject(room, self.options.shards)
    }

    /// The name of shard `shard`'s stream.
    pub fn stream_name(&self, shard: u32) -> String {
        stream_name(&self.options, shard)
    }

    /// The server name of shard `shard`'s stream leader, as the meta leader reports it (`None`
    /// while there is none). For health reports and tests.
    pub async fn shard_leader(&self, shard: u32) -> Result<Option<String>, ReadError> {
        let stream = self.stream(shard)?;
        let info = stream.get_info().await.map_err(unavailable)?;
        Ok(info.cluster.and_then(|cluster| cluster.leader))
    }

    /// Appends `entries` to `room` if and only if the room's last position is `expected_last`:
    /// one conditional publish for one entry, one atomic batch (all or nothing) for several.
    pub async fn append(
        &self,
        room: &str,
        expected_last: Position,
        entries: &[Entry],
    ) -> Result<Appended, AppendError> {
        if entries.is_empty() {
            return Err(AppendError::Empty);
        }
        if entries.len() > self.options.batch_len_max {
            return Err(AppendError::TooLarge { len: entries.len(), max: self.options.batch_len_max });
        }
        if self.client.connection_state() != async_nats::connection::State::Connected {
            // Not sent at all: async-nats would buffer it and send it after a reconnect, when
            // the caller has long given up on it.
            return Err(AppendError::Unavailable { reason: "not connected to NATS".to_owned() });
        }
        let subject = self.room_subject(room).subject;
        let acknowledgement = if let [entry] = entries {
            let mut headers = entry_headers(entry);
            expect_last(&mut headers, expected_last);
            let request = async_nats::Request::new()
                .headers(headers)
                .payload(entry.payload.clone())
                .timeout(Some(self.options.request_timeout));
            let reply = self.client.send_request(subject, request).await.map_err(committed_unknown)?;
            parse_acknowledgement(&reply.payload)?
        } else {
            batch::publish(&self.client, subject, expected_last, entries, self.options.request_timeout).await?
        };
        let count = u64::try_from(entries.len()).expect("a batch length fits a u64");
        if acknowledgement.count.unwrap_or(1) != count || acknowledgement.seq < count {
            // Something was acknowledged, but not what was sent: the caller cannot know what is
            // stored, and resending (safe by the expectation) finds out.
            return Err(AppendError::Unknown {
                reason: format!(
                    "acknowledgement for {} messages ending at {} does not match the {count} sent",
                    acknowledgement.count.unwrap_or(1),
                    acknowledgement.seq
                ),
            });
        }
        Ok(Appended { first: Position(acknowledgement.seq - count + 1), last: Position(acknowledgement.seq) })
    }

    /// Up to `limit` (at most [`READ_LEN_MAX`]) of `room`'s entries after position `after`, in
    /// order.
    ///
    /// Each entry is one "next message on this subject from position p" get
    /// (`$JS.API.STREAM.MSG.GET`), which only the stream leader answers: exact (it sees every
    /// acknowledged append, unlike a direct get that a lagging replica may answer), simple (no
    /// consumer to create and clean up), and bounded by `limit`. The price is a round trip per
    /// entry, which catch-up reads of a few pages can afford; the live feed is the bulk path.
    pub async fn read_after(&self, room: &str, after: Position, limit: usize) -> Result<Vec<StoredEntry>, ReadError> {
        let RoomSubject { shard, subject } = self.room_subject(room);
        let stream = self.stream(shard)?;
        let limit = limit.min(READ_LEN_MAX);
        let mut entries = Vec::with_capacity(limit.min(64));
        let mut from = after.0.saturating_add(1);
        while entries.len() < limit {
            let message = stream.raw_message_builder().sequence(from).next_by_subject(subject.clone()).send().await;
            let message = match message {
                Ok(message) => message,
                Err(error) if error.kind() == stream::RawMessageErrorKind::NoMessageFound => break,
                Err(error) => return Err(unavailable(error)),
            };
            let entry = stored_entry(message.sequence, &message.headers, message.payload)?;
            from = entry.position.0.saturating_add(1);
            entries.push(entry);
        }
        Ok(entries)
    }

    /// The position and room seq of `room`'s last entry, as the stream leader sees it (`None`:
    /// the room has no entry).
    ///
    /// A leader read, not a replica's: this is a "last message for subject" get on
    /// `$JS.API.STREAM.MSG.GET.<stream>` (async-nats `get_last_raw_message_by_subject`), not the
    /// direct get (`$JS.API.DIRECT.GET`, which any replica answers when `allow_direct` is on).
    /// In clustered mode nats-server answers `STREAM.MSG.GET` only on the stream leader
    /// (`jsMsgGetRequest` in `server/jetstream_api.go`: "we need to be the stream leader to
    /// proceed"), and the leader has applied every acknowledged append. The streams are also
    /// created with `allow_direct` off.
    pub async fn last_position(&self, room: &str) -> Result<Option<(Position, u64)>, ReadError> {
        let RoomSubject { shard, subject } = self.room_subject(room);
        let stream = self.stream(shard)?;
        match stream.get_last_raw_message_by_subject(&subject).await {
            Ok(message) => {
                let entry = stored_entry(message.sequence, &message.headers, message.payload)?;
                Ok(Some((entry.position, entry.seq)))
            }
            Err(error) if error.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(error) => Err(unavailable(error)),
        }
    }

    /// Every entry appended to shard `shard` after position `after`, in stream order, then each
    /// new one as it commits: what a node follows to feed its local rooms.
    ///
    /// An ordered consumer (ephemeral, one replica, no acks): it notices a gap or a restart of
    /// its stream and recreates itself from the last position it delivered, so the feed has no
    /// holes and no repeats. An item is an error when a message is not one of this log's.
    pub async fn feed(
        &self,
        shard: u32,
        after: Position,
    ) -> Result<impl futures::Stream<Item = Result<FeedItem, ReadError>> + Send + 'static, ReadError> {
        use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
        use futures::StreamExt;
        let stream = self.stream(shard)?;
        let deliver_policy = match after {
            Position::NONE => DeliverPolicy::All,
            Position(last) => DeliverPolicy::ByStartSequence { start_sequence: last.saturating_add(1) },
        };
        let consumer = stream
            .create_consumer(OrderedConfig {
                filter_subject: shard_filter(shard),
                deliver_policy,
                ..Default::default()
            })
            .await
            .map_err(unavailable)?;
        let messages = consumer.messages().await.map_err(unavailable)?;
        Ok(messages.map(|message| {
            let message = message.map_err(unavailable)?;
            let position = message.info().map_err(unavailable)?.stream_sequence;
            let message = message.message;
            let room = room_of_subject(message.subject.as_str()).ok_or_else(|| ReadError::Malformed {
                position: Position(position),
                reason: format!("subject {} is not a room subject", message.subject),
            })?;
            let headers = message.headers.unwrap_or_default();
            Ok(FeedItem { room, entry: stored_entry(position, &headers, message.payload)? })
        }))
    }

    /// The number of shard streams.
    pub fn shards(&self) -> u32 {
        self.options.shards
    }

    /// When shard 0's stream was created, in Unix milliseconds: the epoch of every room of this
    /// log. The same on every node, and new when the streams are made again (their history
    /// starts over, so room numbers do too).
    pub async fn epoch(&self) -> Result<u64, ReadError> {
        let info = self.stream(0)?.get_info().await.map_err(unavailable)?;
        Ok(u64::try_from(info.created.unix_timestamp_nanos() / 1_000_000).unwrap_or(0))
    }

    /// Whether every shard stream can commit now: the client is connected, and each stream
    /// has a leader that counts a quorum of its replicas (itself included) current. `Err`
    /// names the first shard that cannot, and why. One stream info request per shard, sent
    /// together; each answered by the stream's leader (no leader: no answer in time).
    pub async fn probe(&self) -> Result<(), ReadError> {
        if self.client.connection_state() != async_nats::connection::State::Connected {
            return Err(ReadError::Unavailable { reason: "not connected to NATS".to_owned() });
        }
        let checks = (0..self.shards()).map(|shard| async move {
            let info = self.stream(shard)?.get_info().await.map_err(|error| ReadError::Unavailable {
                reason: format!("stream {}: {error}", self.stream_name(shard)),
            })?;
            let quorum_lost = |reason: String| ReadError::Unavailable {
                reason: format!("stream {} has no quorum: {reason}", self.stream_name(shard)),
            };
            let Some(cluster) = info.cluster else { return Ok(()) };
            let Some(leader) = cluster.leader else { return Err(quorum_lost("no leader".to_owned())) };
            // The leader counts itself; a replica counts while the leader hears from it.
            let current = 1 + cluster.replicas.iter().filter(|peer| peer.current && !peer.offline).count();
            let replicas = 1 + cluster.replicas.len();
            if current * 2 <= replicas {
                return Err(quorum_lost(format!("{current} of {replicas} replicas current (leader {leader})")));
            }
            Ok(())
        });
        futures::future::try_join_all(checks).await.map(|_| ())
    }

    /// The position of shard `shard`'s last message (of any room): where a feed of what comes
    /// next starts.
    pub async fn shard_last_position(&self, shard: u32) -> Result<Position, ReadError> {
        let info = self.stream(shard)?.get_info().await.map_err(unavailable)?;
        Ok(Position(info.state.last_sequence))
    }

    /// Shard `shard`'s stream handle (`None`: no such shard), for the retention pass.
    pub(super) fn shard_stream(&self, shard: u32) -> Option<&stream::Stream<()>> {
        self.streams.get(shard as usize)
    }

    fn stream(&self, shard: u32) -> Result<&stream::Stream<()>, ReadError> {
        self.streams.get(shard as usize).ok_or_else(|| ReadError::Unavailable { reason: format!("no shard {shard}") })
    }
}

fn validate(options: &LogOptions) -> Result<(), ClusterError> {
    let refuse = |reason: String| Err(ClusterError::Options { reason });
    if options.shards == 0 || options.shards > SHARDS_MAX {
        return refuse(format!("shards must be 1..={SHARDS_MAX}, not {}", options.shards));
    }
    if options.replicas == 0 || options.replicas > 5 {
        return refuse(format!("replicas must be 1..=5 (JetStream's limit), not {}", options.replicas));
    }
    if options.history_len_max < 1 {
        return refuse(format!("history_len_max must be positive, not {}", options.history_len_max));
    }
    if options.batch_len_max < 1 {
        return refuse("batch_len_max must be positive".to_owned());
    }
    Ok(())
}

fn stream_name(options: &LogOptions, shard: u32) -> String {
    format!("{}-{shard}", options.stream_prefix)
}

/// The configuration every node wants for shard `shard`'s stream.
fn stream_config(options: &LogOptions, shard: u32) -> stream::Config {
    stream::Config {
        name: stream_name(options, shard),
        subjects: vec![shard_filter(shard)],
        retention: RetentionPolicy::Limits,
        storage: StorageType::File,
        num_replicas: options.replicas,
        max_messages_per_subject: options.history_len_max,
        discard: DiscardPolicy::Old,
        allow_atomic_publish: true,
        // Reads must be the leader's (see `last_position`); no replica serves direct gets.
        allow_direct: false,
        ..Default::default()
    }
}

/// Refuses an existing stream whose configuration disagrees on a field this log relies on,
/// naming the first such field.
fn check_config(wanted: &stream::Config, found: &stream::Config) -> Result<(), ClusterError> {
    let fields = [
        ("subjects", format!("{:?}", wanted.subjects), format!("{:?}", found.subjects)),
        ("num_replicas", wanted.num_replicas.to_string(), found.num_replicas.to_string()),
        ("storage", format!("{:?}", wanted.storage), format!("{:?}", found.storage)),
        ("retention", format!("{:?}", wanted.retention), format!("{:?}", found.retention)),
        (
            "max_msgs_per_subject",
            wanted.max_messages_per_subject.to_string(),
            found.max_messages_per_subject.to_string(),
        ),
        ("discard", format!("{:?}", wanted.discard), format!("{:?}", found.discard)),
        ("allow_atomic", wanted.allow_atomic_publish.to_string(), found.allow_atomic_publish.to_string()),
        ("allow_direct", wanted.allow_direct.to_string(), found.allow_direct.to_string()),
    ];
    match fields.into_iter().find(|(_, wanted, found)| wanted != found) {
        None => Ok(()),
        Some((field, wanted_value, found_value)) => Err(ClusterError::ConfigMismatch {
            stream: wanted.name.clone(),
            field,
            wanted: wanted_value,
            found: found_value,
        }),
    }
}

/// Whether a server version string (`2.14.6`, `2.12.0-beta.1`) is at least `minimum`.
fn version_at_least(version: &str, minimum: (u64, u64)) -> bool {
    let mut parts = version.trim_start_matches('v').split(['.', '-']).map(|part| part.parse::<u64>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= minimum,
        _ => false,
    }
}

/// The confab headers of an entry (the caller adds the expectation or batch headers).
pub(super) fn entry_headers(entry: &Entry) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(HEADER_SEQ, entry.seq.to_string().as_str());
    headers.insert(HEADER_EPOCH, entry.epoch.to_string().as_str());
    headers
}

/// Adds the expectation that makes a publish conditional on the room's last position.
pub(super) fn expect_last(headers: &mut HeaderMap, expected_last: Position) {
    headers.insert(HEADER_EXPECTED_LAST_SUBJECT_SEQUENCE, expected_last.0.to_string().as_str());
}

/// A publish acknowledgement, or the server's error, as JetStream sends it.
#[derive(serde::Deserialize)]
struct AcknowledgementJson {
    #[serde(default)]
    seq: u64,
    /// Messages in a committed atomic batch (absent for a single publish).
    #[serde(default)]
    count: Option<u64>,
    #[serde(default)]
    error: Option<ApiErrorJson>,
}

#[derive(serde::Deserialize)]
struct ApiErrorJson {
    #[serde(default)]
    err_code: u64,
    #[serde(default)]
    description: String,
}

/// What a successful acknowledgement says.
pub(super) struct Acknowledgement {
    /// Stream sequence of the (last) message stored.
    pub(super) seq: u64,
    /// Messages in a committed batch.
    pub(super) count: Option<u64>,
}

/// Parses a publish reply: an acknowledgement, or the server's refusal mapped to an
/// [`AppendError`]. An empty reply (a batch's intermediate acknowledgement) is `Ok(None)`.
pub(super) fn parse_reply(payload: &[u8]) -> Result<Option<Acknowledgement>, AppendError> {
    if payload.is_empty() {
        return Ok(None);
    }
    let reply: AcknowledgementJson = serde_json::from_slice(payload).map_err(|error| AppendError::Unknown {
        reason: format!("unreadable acknowledgement ({error}): {}", String::from_utf8_lossy(payload)),
    })?;
    match reply.error {
        None => Ok(Some(Acknowledgement { seq: reply.seq, count: reply.count })),
        Some(error) => Err(refusal(error.err_code, error.description)),
    }
}

fn parse_acknowledgement(payload: &[u8]) -> Result<Acknowledgement, AppendError> {
    parse_reply(payload)?.ok_or_else(|| AppendError::Unknown { reason: "empty acknowledgement".to_owned() })
}

/// Maps a JetStream API error to what the caller should do about it.
fn refusal(code: u64, description: String) -> AppendError {
    match code {
        ERROR_WRONG_LAST_SEQUENCE => {
            match description.rsplit(':').next().and_then(|last| last.trim().parse::<u64>().ok()) {
                Some(actual_last) => AppendError::Conflict { actual_last: Position(actual_last) },
                None => AppendError::Refused { code, description },
            }
        }
        ERROR_EXPECTED_IN_FLIGHT => AppendError::Busy,
        ERROR_CLUSTER_NOT_AVAILABLE => AppendError::Unavailable { reason: description },
        _ => AppendError::Refused { code, description },
    }
}

/// Maps a failed request whose message may have reached the server.
pub(super) fn committed_unknown(error: async_nats::RequestError) -> AppendError {
    match error.kind() {
        // The server answers "no responders" when nothing serves the subject: not stored.
        RequestErrorKind::NoResponders => {
            AppendError::Unavailable { reason: "no responders: no JetStream stream serves this room".to_owned() }
        }
        RequestErrorKind::InvalidSubject | RequestErrorKind::MaxPayloadExceeded => {
            AppendError::Refused { code: 0, description: error.to_string() }
        }
        _ => AppendError::Unknown { reason: error.to_string() },
    }
}

/// Maps a failed request whose message certainly did not commit anything (a batch's message
/// before its commit).
pub(super) fn not_committed(error: async_nats::RequestError) -> AppendError {
    match committed_unknown(error) {
        AppendError::Unknown { reason } => AppendError::Unavailable { reason },
        other => other,
    }
}

fn unavailable(error: impl fmt::Display) -> ReadError {
    ReadError::Unavailable { reason: error.to_string() }
}

fn stored_entry(position: u64, headers: &HeaderMap, payload: Bytes) -> Result<StoredEntry, ReadError> {
    let position = Position(position);
    let number = |name: &str| -> Result<u64, ReadError> {
        headers
            .get(name)
            .and_then(|value| value.as_str().parse::<u64>().ok())
            .ok_or_else(|| ReadError::Malformed { position, reason: format!("no numeric {name} header") })
    };
    Ok(StoredEntry { position, seq: number(HEADER_SEQ)?, epoch: number(HEADER_EPOCH)?, payload })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_by_major_then_minor() {
        assert!(version_at_least("2.14.6", (2, 12)));
        assert!(version_at_least("2.12.0-RC.1", (2, 12)));
        assert!(version_at_least("3.0.0", (2, 12)));
        assert!(!version_at_least("2.9.10", (2, 12)));
        assert!(!version_at_least("2.11.99", (2, 12)));
        assert!(!version_at_least("", (2, 12)));
    }

    #[test]
    fn a_wrong_last_sequence_names_the_actual_position() {
        let reply =
            br#"{"error":{"code":400,"err_code":10071,"description":"wrong last sequence: 42"},"stream":"s","seq":0}"#;
        assert_eq!(parse_reply(reply).err(), Some(AppendError::Conflict { actual_last: Position(42) }));
        let busy = br#"{"error":{"code":400,"err_code":10164,"description":"in flight"}}"#;
        assert_eq!(parse_reply(busy).err(), Some(AppendError::Busy));
    }
}
