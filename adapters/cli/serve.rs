//! `confab serve`.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use confab_actors::cluster::{
    ClusterLog, LogOptions, NatsPresenceBus, RetentionTask, presence_subject, retention_pass_interval, spawn_retention,
};
use confab_actors::store::{HistoryStore, RedbStore, Retention};
use confab_actors::{Engine, EngineConfig, PresenceConfig, Replicated};
use confab_engine::{Limits, SendRate, limits};
use tracing::{error, info, warn};

use crate::grpc::auth::{Authenticator, Tokens};
use crate::grpc::jwt::{JwtPolicy, JwtVerifier};
use crate::grpc::quota::QuotaLimits;
use crate::grpc::rate::{RateLimits, SendLimiter};
use crate::grpc::server::{ServerOptions, serve_with};
use crate::metrics::{METRICS_PATH, Metrics, RpcMetrics, serve_metrics};
use crate::net::{self, ConnectionLimits};

/// Flags of `confab serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port; the chosen address is printed).
    #[arg(long, default_value = "127.0.0.1:50051", value_name = "ADDR")]
    listen: SocketAddr,
    /// How long to wait for open calls to finish after SIGINT/SIGTERM before exiting anyway.
    #[arg(long, default_value = "10s", value_parser = super::parse_duration, value_name = "DURATION")]
    shutdown_grace: Duration,
    /// Directory of the durable history (created if missing). A send is acknowledged only once
    /// it is on disk there; after a restart, numbering, History and resume carry on.
    #[arg(long, default_value = "confab-data", value_name = "DIR", conflicts_with = "in_memory")]
    data_dir: PathBuf,
    /// Keep history in memory only: faster, but a restart loses every room.
    #[arg(long)]
    in_memory: bool,
    /// Also drop stored messages older than this (by default only the newest
    /// --history-len-max per room are kept). With --nats, every node purges them from the
    /// JetStream streams about every tenth of this (1 s to 1 min); each room keeps at least its
    /// last message. Rooms already loaded forget them too, as they are read (also with
    /// --in-memory).
    #[arg(long, value_parser = super::parse_duration, value_name = "DURATION")]
    retention_age: Option<Duration>,
    /// Also serve Prometheus metrics (OpenMetrics text) on http://ADDR/metrics. Off by default;
    /// port 0 picks a free port (the chosen address is printed).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Log line format on stderr: `text` for people, `json` (one object per line) for log
    /// collectors. Filter with RUST_LOG (default `info`).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(flatten)]
    cluster: ClusterArgs,
    #[command(flatten)]
    security: SecurityArgs,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    connections: ConnectionArgs,
    #[command(flatten)]
    web: super::web::WebArgs,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, fields included.
    Json,
}

/// Cluster mode: this node is one of several sharing rooms through NATS JetStream.
#[derive(Debug, Args)]
#[command(next_help_heading = "Cluster")]
struct ClusterArgs {
    /// Cluster mode: keep every room in the NATS JetStream servers at these URLs
    /// (comma-separated, e.g. nats://10.0.0.1:4222,nats://10.0.0.2:4222), shared with every
    /// node given the same servers; clients of any node may use any room. A send is
    /// acknowledged once a quorum of the servers stored it. Needs nats-server 2.12 or later and
    /// --node-id; history lives in JetStream, so --data-dir and --in-memory are refused with it.
    /// Without it the server runs alone, as before.
    #[arg(
        long,
        value_name = "URL,...",
        requires = "node_id",
        conflicts_with_all = ["data_dir", "in_memory"]
    )]
    nats: Option<String>,
    /// This node's name in the cluster (required with --nats; no default, so two nodes never
    /// share one by accident): it names the node in logs. Each run also draws a fresh writer
    /// id from it, the start time and the pid, so a restarted node never takes its earlier
    /// run's appends for its own.
    #[arg(long, value_name = "NAME", requires = "nats")]
    node_id: Option<String>,
    /// With --nats: how many JetStream streams rooms are spread over (by a hash of the room
    /// name). Every node must agree: a node whose streams disagree is refused at start-up.
    #[arg(long, default_value_t = NATS_SHARDS, value_parser = clap::value_parser!(u32).range(1..=1_000))]
    nats_shards: u32,
    /// With --nats: replicas of each stream (1 to 5): 3 survives the loss of one server. Every
    /// node must agree.
    #[arg(long, default_value_t = NATS_REPLICAS, value_parser = clap::value_parser!(u64).range(1..=5))]
    nats_replicas: u64,
}

/// Default of `--nats-shards`: spreads rooms' appends over 16 stream leaders (and so over every
/// server of a small cluster) while each node follows only 16 feeds.
const NATS_SHARDS: u32 = 16;

/// Default of `--nats-replicas`: a quorum of 2 of 3 servers, so one may die with nothing lost.
const NATS_REPLICAS: u64 = 3;

impl ClusterArgs {
    /// The log's options: the streams keep `--history-len-max` messages per room.
    fn log_options(&self, limits: &Limits) -> LogOptions {
        LogOptions::default()
            .shards(self.nats_shards)
            .replicas(usize::try_from(self.nats_replicas).unwrap_or(usize::MAX))
            .history_len_max(i64::try_from(limits.history_len_max).unwrap_or(i64::MAX))
    }
}

/// This run's writer id in the cluster log ([`Replicated::new`]): FNV-1a of the node's name,
/// then of the start time in nanoseconds and the pid. The engine tells its own appends from
/// other nodes' by this id, so it must differ from every earlier run's: a node restarted under
/// the same name that took its last run's appends (still in the log, or in another node's
/// retry) for its own would acknowledge or drop them wrongly. The time and pid make a repeat
/// need the same name, the same nanosecond and the same pid. Never 0 (the local log's id).
fn run_id(node_id: &str, start_ns: u128, pid: u32) -> u64 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let bytes = node_id.bytes().chain([0]).chain(start_ns.to_le_bytes()).chain(pid.to_le_bytes());
    let hash = bytes.fold(FNV_OFFSET, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME));
    hash.max(1)
}

/// Connects to the cluster log (`--nats`) and makes this run one of its writers; presence
/// and typing cross nodes on a core NATS subject of the cluster's own, over the same
/// connection, with the start time as this run's incarnation. With `--retention-age`, this node
/// also runs the log's retention passes (idempotent, so every node may); the returned task
/// stops them when dropped.
async fn connect_cluster(
    args: &ServeArgs,
    urls: &str,
    node_id: &str,
    limits: &Limits,
) -> anyhow::Result<(Replicated, PresenceConfig, Option<RetentionTask>)> {
    let options = args.cluster.log_options(limits);
    let subject = presence_subject(&options.stream_prefix);
    info!(urls, node_id, shards = options.shards, replicas = options.replicas, "connecting to the cluster log");
    let log = ClusterLog::connect(urls, options).await.with_context(|| format!("--nats {urls}"))?;
    let start_ns = SystemTime::now().duration_since(UNIX_EPOCH).map(|since| since.as_nanos()).unwrap_or(0);
    let node = run_id(node_id, start_ns, std::process::id());
    info!(node_id, run = node, "joined the cluster");
    let bus = NatsPresenceBus::new(log.jetstream().client().clone(), subject);
    let incarnation = u64::try_from(start_ns).unwrap_or(u64::MAX);
    let presence = PresenceConfig::new(Arc::new(bus), node_id, incarnation);
    let retention = args.retention_age.map(|age| {
        info!(node_id, ?age, interval = ?retention_pass_interval(age), "purging messages older than the retention age");
        spawn_retention(log.jetstream().clone(), age)
    });
    Ok((Replicated::new(Arc::new(log), node), presence, retention))
}

/// Who may call, and over what.
#[derive(Debug, Args)]
#[command(next_help_heading = "Security")]
struct SecurityArgs {
    /// Require `authorization: Bearer <token>` on every call, with the tokens in FILE: one
    /// `TOKEN USER` per line, optionally followed by `rooms=P1,P2` and `read_rooms=P3` lines,
    /// `#` comments (README, "Running in production"). The sender of a
    /// message is the token's user. The web port takes it in a WebSocket subprotocol
    /// (`confab.bearer.<base64url>`) or an `Authorization` header. Without it the
    /// server is open: anyone may call as anyone.
    #[arg(long, value_name = "FILE")]
    tokens: Option<PathBuf>,
    /// Also take JWTs signed with HS256 and the secret in FILE (at least 32 bytes; a final
    /// newline is dropped): `sub` is the user, `exp` is required, optional `rooms` and
    /// `read_rooms` claims limit the rooms (README, "Authentication"). Alone or with --tokens.
    #[arg(long, value_name = "FILE", conflicts_with = "jwt_public_key_file")]
    jwt_hmac_secret_file: Option<PathBuf>,
    /// Also take JWTs signed with the private half of the PEM public key in FILE: RS256 for an
    /// RSA key, ES256 for an EC P-256 key. Claims as for --jwt-hmac-secret-file.
    #[arg(long, value_name = "FILE")]
    jwt_public_key_file: Option<PathBuf>,
    /// How long past its `exp` (and before its `nbf`) a JWT is still taken, for clock skew;
    /// streams opened with a token end this long after its `exp`. Whole seconds.
    #[arg(long, default_value = "5s", value_parser = super::parse_duration, value_name = "DURATION")]
    jwt_leeway: Duration,
    /// Accepted `aud` values of JWTs (comma-separated); without it a JWT must carry no `aud`.
    #[arg(long, value_name = "AUD", value_delimiter = ',')]
    jwt_audience: Vec<String>,
    /// Accepted `iss` values of JWTs (comma-separated); without it `iss` is not checked.
    #[arg(long, value_name = "ISS", value_delimiter = ',')]
    jwt_issuer: Vec<String>,
    /// Serve TLS with this PEM certificate chain (leaf first), on the gRPC port and the web
    /// port; needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

impl SecurityArgs {
    fn tokens(&self) -> anyhow::Result<Option<Tokens>> {
        let Some(path) = &self.tokens else { return Ok(None) };
        Tokens::load(path).map(Some).with_context(|| format!("--tokens {}", path.display()))
    }

    fn jwt(&self) -> anyhow::Result<Option<JwtVerifier>> {
        let policy =
            JwtPolicy { leeway: self.jwt_leeway, audience: self.jwt_audience.clone(), issuer: self.jwt_issuer.clone() };
        match (&self.jwt_hmac_secret_file, &self.jwt_public_key_file) {
            (Some(path), _) => JwtVerifier::hmac_secret_file(path, &policy)
                .map(Some)
                .with_context(|| format!("--jwt-hmac-secret-file {}", path.display())),
            (None, Some(path)) => JwtVerifier::public_key_file(path, &policy)
                .map(Some)
                .with_context(|| format!("--jwt-public-key-file {}", path.display())),
            (None, None) => Ok(None),
        }
    }

    fn tls(&self) -> anyhow::Result<Option<Arc<tokio_rustls::rustls::ServerConfig>>> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Ok(Some(crate::grpc::tls::server_config(cert, key)?)),
            _ => Ok(None),
        }
    }

    /// The web port serves TLS with the same certificate.
    fn web_tls(&self) -> anyhow::Result<Option<Arc<tokio_rustls::rustls::ServerConfig>>> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Ok(Some(crate::grpc::tls::web_config(cert, key)?)),
            _ => Ok(None),
        }
    }
}

/// Every engine limit as a flag; the defaults are the engine's named constants.
#[derive(Debug, Args)]
#[command(next_help_heading = "Limits")]
struct LimitArgs {
    /// Largest message body, in bytes (bigger: RESOURCE_EXHAUSTED).
    #[arg(long, default_value_t = limits::MESSAGE_BYTES_MAX as u64, value_parser = clap::value_parser!(u64).range(1..))]
    message_bytes_max: u64,
    /// Messages each room retains for History and resume.
    #[arg(long, default_value_t = limits::HISTORY_LEN_MAX as u64, value_parser = clap::value_parser!(u64).range(1..))]
    history_len_max: u64,
    /// Largest History page, in messages.
    #[arg(long, default_value_t = limits::HISTORY_PAGE_MAX as u64, value_parser = clap::value_parser!(u64).range(1..))]
    history_page_max: u64,
    /// Largest History page, in bytes of messages: a page stops early there (with at least one
    /// message), and the client continues after its last message.
    #[arg(long, default_value_t = limits::HISTORY_PAGE_BYTES_MAX as u64, value_parser = clap::value_parser!(u64).range(1..))]
    history_page_bytes_max: u64,
    /// Bytes of messages each room retains for History and resume, besides --history-len-max:
    /// beyond it the oldest are dropped (the newest is always kept).
    #[arg(long, default_value_t = limits::HISTORY_BYTES_MAX as u64, value_parser = clap::value_parser!(u64).range(1..))]
    history_bytes_max: u64,
    /// Client message ids each room remembers for dedupe of retries.
    #[arg(long, default_value_t = limits::DEDUPE_WINDOW_LEN as u64)]
    dedupe_window_len: u64,
    /// Subscribers (streams and sessions) per room.
    #[arg(long, default_value_t = limits::ROOM_SUBSCRIBERS_MAX as u64, value_parser = clap::value_parser!(u64).range(1..))]
    room_subscribers_max: u64,
    /// Rooms one session may join at once.
    #[arg(long, default_value_t = limits::SESSION_ROOMS_MAX as u64, value_parser = clap::value_parser!(u64).range(1..))]
    session_rooms_max: u64,
    /// Messages in one upload.
    #[arg(long, default_value_t = limits::UPLOAD_MESSAGES_MAX as u64, value_parser = clap::value_parser!(u64).range(1..))]
    upload_messages_max: u64,
    /// Body bytes in one upload.
    #[arg(long, default_value_t = limits::UPLOAD_BYTES_MAX as u64, value_parser = clap::value_parser!(u64).range(1..))]
    upload_bytes_max: u64,
    /// Events each room's ring keeps: how far a subscriber may fall behind before it lags.
    #[arg(long, default_value_t = limits::SUBSCRIBER_QUEUE_LEN_MAX as u64, value_parser = clap::value_parser!(u64).range(1..))]
    subscriber_queue_len_max: u64,
    /// Frames queued per session before the session stops reading its client.
    #[arg(long, default_value_t = limits::SESSION_OUTBOUND_LEN_MAX as u64, value_parser = clap::value_parser!(u64).range(1..))]
    session_outbound_len_max: u64,
    /// Rooms that may exist at once.
    #[arg(long, default_value_t = limits::ROOMS_MAX as u64, value_parser = clap::value_parser!(u64).range(1..))]
    rooms_max: u64,
    /// A room with no subscriber and no activity for this long is retired (its history dropped).
    #[arg(long, default_value = "1h", value_parser = super::parse_duration, value_name = "DURATION")]
    room_idle: Duration,
    /// A room that never got a message (a subscription or join created it) is retired this long
    /// after its last subscriber left, instead of --room-idle.
    #[arg(long, default_value = "60s", value_parser = super::parse_duration, value_name = "DURATION")]
    empty_room_idle: Duration,
    /// A subscriber (stream or session) that stays lagged this long without reading a single
    /// event is closed with RESOURCE_EXHAUSTED, naming what it missed.
    #[arg(long, default_value = "60s", value_parser = super::parse_duration, value_name = "DURATION")]
    subscriber_stall: Duration,
    /// Calls (HTTP/2 streams) open at once on one connection; clients queue calls beyond it.
    #[arg(long, default_value_t = limits::STREAMS_PER_CONNECTION_MAX, value_parser = clap::value_parser!(u32).range(1..))]
    streams_per_connection_max: u32,
    /// Sends per second per user (with --tokens) or per client connection (open server), in one
    /// bucket over unary Send and SayHello (RESOURCE_EXHAUSTED), Session and WebSocket posts (an
    /// Error frame), seed ChatStream messages and uploaded messages (paced), on both ports.
    /// 0 turns the limit off (for load tests).
    #[arg(long, default_value_t = limits::SENDS_PER_SECOND_MAX)]
    sends_per_second_max: u32,
    /// Sends allowed at once after a quiet spell (the token bucket's size, refilled at
    /// --sends-per-second-max).
    #[arg(long, default_value_t = limits::SEND_BURST_MAX, value_parser = clap::value_parser!(u32).range(1..))]
    send_burst_max: u32,
    /// Typing notices per second per user or connection, in a bucket of their own (over it: an
    /// Error frame). 0 turns the limit off.
    #[arg(long, default_value_t = limits::TYPING_PER_SECOND_MAX)]
    typing_per_second_max: u32,
    /// Typing notices allowed at once after a quiet spell.
    #[arg(long, default_value_t = limits::TYPING_BURST_MAX, value_parser = clap::value_parser!(u32).range(1..))]
    typing_burst_max: u32,
    /// Joins and leaves together per second per user or connection, in a bucket of their own
    /// (over it: an Error frame; a seed ChatStream's join is paced). 0 turns the limit off.
    #[arg(long, default_value_t = limits::JOINS_PER_SECOND_MAX)]
    joins_per_second_max: u32,
    /// Joins and leaves allowed at once after a quiet spell.
    #[arg(long, default_value_t = limits::JOIN_BURST_MAX, value_parser = clap::value_parser!(u32).range(1..))]
    join_burst_max: u32,
    /// Rooms one user (with --tokens) or client connection (open server) may create per second:
    /// a send, subscribe, join or upload to a room that is not live takes a token
    /// (RESOURCE_EXHAUSTED over it). 0 turns the limit off.
    #[arg(long, default_value_t = limits::ROOMS_CREATED_PER_SECOND_MAX)]
    rooms_created_per_second_max: u32,
    /// Rooms one user or connection may create at once after a quiet spell.
    #[arg(long, default_value_t = limits::ROOM_CREATION_BURST_MAX, value_parser = clap::value_parser!(u32).range(1..))]
    room_creation_burst_max: u32,
    /// Distinct rooms one user (with --tokens) or client connection (open server) may hold
    /// joined or subscribed at once, over all its sessions and Subscribe streams.
    #[arg(long, default_value_t = limits::ROOMS_PER_USER_MAX as u64, value_parser = clap::value_parser!(u64).range(1..))]
    rooms_per_user_max: u64,
    /// Sessions (gRPC Session, seed ChatStream, WebSocket) one user or connection may have open.
    #[arg(long, default_value_t = limits::SESSIONS_PER_USER_MAX as u64, value_parser = clap::value_parser!(u64).range(1..))]
    sessions_per_user_max: u64,
    /// Uploads one user or connection may have open at once.
    #[arg(long, default_value_t = limits::UPLOADS_PER_USER_MAX as u64, value_parser = clap::value_parser!(u64).range(1..))]
    uploads_per_user_max: u64,
    /// Bytes of message bodies all open uploads together may hold, server-wide (a chunk past it:
    /// RESOURCE_EXHAUSTED, and the upload commits nothing).
    #[arg(long, default_value_t = limits::UPLOAD_BYTES_IN_FLIGHT_MAX as u64, value_parser = clap::value_parser!(u64).range(1..))]
    upload_bytes_in_flight_max: u64,
    /// Bytes of message bodies one user's (or connection's) open uploads may hold together.
    #[arg(long, default_value_t = limits::UPLOAD_BYTES_PER_USER_MAX as u64, value_parser = clap::value_parser!(u64).range(1..))]
    upload_bytes_per_user_max: u64,
}

/// What a connection may hold and how long it may stay silent, on both ports.
#[derive(Debug, Args)]
#[command(next_help_heading = "Connections")]
pub(crate) struct ConnectionArgs {
    /// TCP connections open at once on each port (gRPC and web); more are closed on accept.
    #[arg(long, default_value_t = net::CONNECTIONS_MAX as u64, value_parser = clap::value_parser!(u64).range(1..))]
    connections_max: u64,
    /// TCP connections open at once on each port from one peer IP address (an IPv6 peer counts
    /// by its /64 network).
    #[arg(long, default_value_t = net::CONNECTIONS_PER_PEER_MAX as u64, value_parser = clap::value_parser!(u64).range(1..))]
    connections_per_peer_max: u64,
    /// Idle time before the kernel probes a connection (TCP keepalive), on both ports.
    #[arg(long, default_value = "60s", value_parser = super::parse_positive_duration, value_name = "DURATION")]
    tcp_keepalive: Duration,
    /// A new connection must finish its TLS handshake (or, in plaintext, send the HTTP/2
    /// preface) within this long, or it is closed.
    #[arg(long, default_value = "10s", value_parser = super::parse_positive_duration, value_name = "DURATION")]
    handshake_timeout: Duration,
    /// The gRPC port pings (HTTP/2 PING) a connection it has not heard from for this long.
    #[arg(long, default_value = "30s", value_parser = super::parse_positive_duration, value_name = "DURATION")]
    http2_keepalive_interval: Duration,
    /// A gRPC connection that does not answer a ping within this long is closed; its calls
    /// end, and its sessions' presence with them.
    #[arg(long, default_value = "20s", value_parser = super::parse_positive_duration, value_name = "DURATION")]
    http2_keepalive_timeout: Duration,
    /// A gRPC connection with no call in progress for this long is closed (keepalive pings do
    /// not count); its client reconnects on its next call.
    #[arg(long, default_value = "15m", value_parser = super::parse_positive_duration, value_name = "DURATION")]
    grpc_connection_idle: Duration,
}

impl ConnectionArgs {
    /// The caps and deadlines of one port (each port counts its own connections).
    pub(crate) fn limits(&self) -> ConnectionLimits {
        let size = |value: u64| usize::try_from(value).unwrap_or(usize::MAX);
        ConnectionLimits {
            connections_max: size(self.connections_max),
            connections_per_peer_max: size(self.connections_per_peer_max),
            tcp_keepalive: self.tcp_keepalive,
            handshake_timeout: self.handshake_timeout,
        }
    }
}

impl LimitArgs {
    /// Each sender's rates.
    fn rates(&self) -> RateLimits {
        RateLimits {
            send: SendRate { per_second: self.sends_per_second_max, burst: self.send_burst_max },
            typing: SendRate { per_second: self.typing_per_second_max, burst: self.typing_burst_max },
            membership: SendRate { per_second: self.joins_per_second_max, burst: self.join_burst_max },
            creation: SendRate { per_second: self.rooms_created_per_second_max, burst: self.room_creation_burst_max },
        }
    }

    /// Each sender's quotas.
    fn quotas(&self) -> QuotaLimits {
        let size = |value: u64| usize::try_from(value).unwrap_or(usize::MAX);
        QuotaLimits {
            rooms_per_user_max: size(self.rooms_per_user_max),
            sessions_per_user_max: size(self.sessions_per_user_max),
            uploads_per_user_max: size(self.uploads_per_user_max),
            upload_bytes_in_flight_max: size(self.upload_bytes_in_flight_max),
            upload_bytes_per_user_max: size(self.upload_bytes_per_user_max),
        }
    }

    fn limits(&self) -> Limits {
        let size = |value: u64| usize::try_from(value).unwrap_or(usize::MAX);
        Limits {
            message_bytes_max: size(self.message_bytes_max),
            history_len_max: size(self.history_len_max),
            history_page_max: size(self.history_page_max),
            history_page_bytes_max: size(self.history_page_bytes_max),
            history_bytes_max: size(self.history_bytes_max),
            dedupe_window_len: size(self.dedupe_window_len),
            room_subscribers_max: size(self.room_subscribers_max),
            session_rooms_max: size(self.session_rooms_max),
            upload_messages_max: size(self.upload_messages_max),
            upload_bytes_max: size(self.upload_bytes_max),
            subscriber_queue_len_max: size(self.subscriber_queue_len_max),
            session_outbound_len_max: size(self.session_outbound_len_max),
            rooms_max: size(self.rooms_max),
            room_idle_ms: u64::try_from(self.room_idle.as_millis()).unwrap_or(u64::MAX),
            empty_room_idle_ms: u64::try_from(self.empty_room_idle.as_millis()).unwrap_or(u64::MAX),
            subscriber_stall_ms: u64::try_from(self.subscriber_stall.as_millis()).unwrap_or(u64::MAX),
            // Set from --retention-age, which is a flag of the store, not of these limits.
            history_age_max_ms: None,
        }
    }
}

pub(crate) fn run(args: ServeArgs) -> anyhow::Result<()> {
    init_logs(args.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    runtime.block_on(serve_until_signal(args))
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init(),
        LogFormat::Json => logs.json().init(),
    }
}

async fn serve_until_signal(args: ServeArgs) -> anyhow::Result<()> {
    // Checked before binding, so a bad file never leaves a half-started server.
    let tokens = args.security.tokens()?.map(Arc::new);
    let jwt = args.security.jwt()?.map(Arc::new);
    let tls = args.security.tls()?;
    let web_tls = args.security.web_tls()?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("--listen {}: cannot bind", args.listen))?;
    let address = listener.local_addr().context("reading the bound address")?;
    let web_listener = args.web.bind().await?;
    let limits = Limits {
        // What the store or the cluster log purges by age, loaded rooms forget too.
        history_age_max_ms: args.retention_age.map(|age| u64::try_from(age.as_millis()).unwrap_or(u64::MAX)),
        ..args.limits.limits()
    };
    // `_retention` runs the cluster's retention passes until this function returns.
    let (storage, replicated, presence, history, _retention) = match (&args.cluster.nats, &args.cluster.node_id) {
        (Some(urls), Some(node_id)) => {
            let (replicated, presence, retention) = connect_cluster(&args, urls, node_id, &limits).await?;
            let history = format!(
                "cluster node {node_id}, history in NATS JetStream at {urls} ({} streams, {} replicas)",
                args.cluster.nats_shards, args.cluster.nats_replicas
            );
            (None, Some(replicated), Some(presence), history, retention)
        }
        // clap refuses --nats without --node-id and the other way round.
        (Some(_), None) | (None, Some(_)) => anyhow::bail!("--nats and --node-id go together"),
        (None, None) => {
            let storage = open_storage(&args, &limits)?;
            let history = match &storage {
                Some(_) => format!("durable history in {}", args.data_dir.join(RedbStore::FILE_NAME).display()),
                None => "in-memory history (--in-memory: a restart loses it)".to_owned(),
            };
            (storage, None, None, history, None)
        }
    };
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    // A new room's epoch must differ from any earlier run's, so a client never mistakes a
    // recreated room's numbers for the old ones: start from the time, with room for 1,000
    // rooms per millisecond.
    let epoch_base = now_ms.saturating_mul(1_000);
    // In cluster mode rooms take the log's epoch instead (the same on every node).
    let mut config =
        EngineConfig::default().with_limits(limits).with_epoch_base(epoch_base).with_time_origin_ms(now_ms);
    (config.storage, config.replicated, config.presence) = (storage, replicated, presence);
    let metrics_listener = match args.metrics_listen {
        Some(metrics_address) => Some(
            tokio::net::TcpListener::bind(metrics_address)
                .await
                .with_context(|| format!("--metrics-listen {metrics_address}: cannot bind"))?,
        ),
        None => None,
    };
    let engine = Engine::start(config)?;
    let access = match (&tokens, &args.security.tokens, &jwt) {
        (Some(tokens), Some(path), _) => format!(
            "bearer tokens required ({} tokens of {} users from {}, {} limited to some rooms{})",
            tokens.len(),
            tokens.user_count(),
            path.display(),
            tokens.restricted_count(),
            jwt.as_ref().map(|jwt| format!(", or {:?} JWTs", jwt.algorithm())).unwrap_or_default()
        ),
        (_, _, Some(jwt)) => format!("bearer tokens required ({:?} JWTs)", jwt.algorithm()),
        _ => "OPEN: serving without authentication, anyone may send as anyone (--tokens FILE to require tokens)"
            .to_owned(),
    };
    let transport = if tls.is_some() { "TLS" } else { "plaintext" };
    // Not println!: a parent that read only the first line may have closed the pipe, and a
    // failed print must not stop the server.
    let _ = writeln!(
        std::io::stdout(),
        "confab listening on {address} (confab.v1.Chat, chat.ChatService), {history}; {access}; {transport}; Ctrl-C stops"
    );
    if tokens.is_none() && jwt.is_none() {
        warn!(%address, "serving without authentication: anyone who can reach this address may send as anyone");
        if !address.ip().is_loopback() {
            warn!(%address, "an open server on a non-loopback address: use --tokens (and TLS) unless this network is trusted");
        }
    }
    let rates = args.limits.rates();
    let rate = rates.send;
    // One table for both ports: a user's posts over gRPC and the web count against one bucket.
    let limiter = SendLimiter::with_rates(rates).with_quotas(args.limits.quotas());
    let web = web_listener
        .map(|listener| {
            listener
                .with_guards(limiter.clone(), Authenticator::new(tokens.clone()).with_jwt(jwt.clone()))
                .with_transport(args.connections.limits(), web_tls)
                .start(engine.clone())
        })
        .transpose()?;
    info!(%address, limits = ?engine.limits(), rates = ?rates, quotas = ?limiter.quotas(), transport, "serving");
    let rpc_metrics = RpcMetrics::default();
    // Metrics stay up while the server drains, so the drain itself can be watched.
    let metrics_stop = tokio_util::sync::CancellationToken::new();
    if let Some(metrics_listener) = metrics_listener {
        let metrics_address = metrics_listener.local_addr().context("reading the metrics address")?;
        let metrics = Arc::new(Metrics::new(engine.clone(), &rpc_metrics));
        let _ = writeln!(std::io::stdout(), "metrics on http://{metrics_address}{METRICS_PATH}");
        info!(address = %metrics_address, path = METRICS_PATH, "serving metrics");
        let stop = metrics_stop.clone().cancelled_owned();
        tokio::spawn(async move {
            if let Err(error) = serve_metrics(metrics_listener, metrics, stop).await {
                warn!(%error, "the metrics endpoint failed");
            }
        });
    }
    let options = ServerOptions {
        tokens,
        jwt,
        tls,
        streams_per_connection_max: args.limits.streams_per_connection_max,
        send_rate: rate,
        limiter: Some(limiter),
        metrics: rpc_metrics,
        connections: args.connections.limits(),
        http2_keepalive_interval: args.connections.http2_keepalive_interval,
        http2_keepalive_timeout: args.connections.http2_keepalive_timeout,
        connection_idle: args.connections.grpc_connection_idle,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_with(listener, engine.clone(), options, async {
        let _ = stopped.await;
    }));
    shutdown_signal().await;
    info!(grace = ?args.shutdown_grace, "shutting down: refusing new connections, ending open streams");
    let _ = stop.send(());
    let web_stopped = async {
        match web {
            Some(web) => web.stop(args.shutdown_grace).await,
            None => Ok(()),
        }
    };
    let (served, web_stopped) = tokio::join!(tokio::time::timeout(args.shutdown_grace, server), web_stopped);
    web_stopped?;
    match served {
        Ok(Ok(Ok(()))) => info!("stopped cleanly"),
        Ok(Ok(Err(error))) => return Err(error).context("serving"),
        Ok(Err(error)) => return Err(error).context("the server task failed"),
        Err(_) => warn!("calls still open after the grace period; exiting anyway"),
    }
    metrics_stop.cancel();
    engine.shutdown().await.ok();
    Ok(())
}

/// The durable store, unless `--in-memory`.
fn open_storage(args: &ServeArgs, limits: &Limits) -> anyhow::Result<Option<Arc<dyn HistoryStore>>> {
    if args.in_memory {
        return Ok(None);
    }
    let retention = Retention { len_max: limits.history_len_max, age_max_ms: limits.history_age_max_ms };
    let store = RedbStore::open(&args.data_dir, retention)
        .with_context(|| format!("--data-dir {}", args.data_dir.display()))?;
    if store.needed_repair() {
        warn!(path = %store.path().display(), "the history store was not closed cleanly (a crash or kill); redb repaired it");
    }
    // Room records are cheap to verify here; messages are verified as each room loads (and
    // all at once by `confab store check`).
    let damaged = store.damaged_room_records().with_context(|| format!("--data-dir {}", args.data_dir.display()))?;
    for (room, damage) in &damaged {
        error!(path = %store.path().display(), room, %damage, "damaged room record: this room will answer DATA_LOSS");
    }
    Ok(Some(Arc::new(store)))
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::cli::{Cli, Command};
    use crate::grpc::idle::GRPC_CONNECTION_IDLE;
    use crate::grpc::server::{HTTP2_KEEPALIVE_INTERVAL, HTTP2_KEEPALIVE_TIMEOUT};
    use crate::ws::liveness::LivenessConfig;
    use crate::ws::server::{WS_HEADER_READ_TIMEOUT, WsConfig};

    /// The duration flags' defaults are written as text (`"60s"`): they must say what the
    /// named constants say, or the README's table would be wrong about one of them.
    #[test]
    fn connection_flag_defaults_are_the_named_constants() {
        let Ok(Cli { command: Command::Serve(args) }) = Cli::try_parse_from(["confab", "serve"]) else {
            panic!("`confab serve` parses")
        };
        let defaults = ConnectionLimits::default();
        let limits = args.connections.limits();
        assert_eq!(limits.connections_max, defaults.connections_max);
        assert_eq!(limits.connections_per_peer_max, defaults.connections_per_peer_max);
        assert_eq!(limits.tcp_keepalive, defaults.tcp_keepalive);
        assert_eq!(limits.handshake_timeout, defaults.handshake_timeout);
        assert_eq!(args.connections.http2_keepalive_interval, HTTP2_KEEPALIVE_INTERVAL);
        assert_eq!(args.connections.http2_keepalive_timeout, HTTP2_KEEPALIVE_TIMEOUT);
        assert_eq!(args.connections.grpc_connection_idle, GRPC_CONNECTION_IDLE);
        let web = args.web.config();
        assert_eq!(web.header_read_timeout, WS_HEADER_READ_TIMEOUT);
        assert_eq!(web.liveness, LivenessConfig::default());
        assert_eq!(web.frame_bytes_max, WsConfig::default().frame_bytes_max);
    }

    #[test]
    fn the_jwt_leeway_default_is_the_named_constant() {
        let Ok(Cli { command: Command::Serve(args) }) = Cli::try_parse_from(["confab", "serve"]) else {
            panic!("`confab serve` parses")
        };
        assert_eq!(args.security.jwt_leeway, crate::grpc::jwt::JWT_LEEWAY);
    }

    /// The same for the engine limits, the rates and the quotas (`--room-idle` and
    /// `--empty-room-idle` are written as text too).
    #[test]
    fn limit_rate_and_quota_flag_defaults_are_the_named_constants() {
        let Ok(Cli { command: Command::Serve(args) }) = Cli::try_parse_from(["confab", "serve"]) else {
            panic!("`confab serve` parses")
        };
        assert_eq!(args.limits.limits(), Limits::default());
        assert_eq!(args.limits.rates(), RateLimits::default());
        assert_eq!(args.limits.quotas(), QuotaLimits::default());
    }
    fn parse_serve(args: &[&str]) -> Result<ServeArgs, clap::Error> {
        let command = ["confab", "serve"].iter().chain(args).copied();
        let Cli { command: Command::Serve(args) } = Cli::try_parse_from(command)? else { panic!("parsed as serve") };
        Ok(args)
    }

    #[test]
    fn cluster_flags_default_to_one_node_and_to_the_named_constants() {
        let Ok(args) = parse_serve(&[]) else { panic!("`confab serve` parses") };
        assert_eq!(args.cluster.nats, None);
        assert_eq!((args.cluster.nats_shards, args.cluster.nats_replicas), (NATS_SHARDS, NATS_REPLICAS));
        let Ok(args) = parse_serve(&["--nats", "nats://127.0.0.1:4222", "--node-id", "a", "--history-len-max", "50"])
        else {
            panic!("--nats with --node-id parses")
        };
        let options = args.cluster.log_options(&args.limits.limits());
        assert_eq!((options.shards, options.replicas, options.history_len_max), (16, 3, 50));
    }

    /// History lives in JetStream in cluster mode: flags of the local store are contradictions,
    /// and a node needs its name. Age retention applies to the streams, so it is taken.
    #[test]
    fn cluster_mode_refuses_local_history_flags_and_a_missing_node_id() {
        let nats = ["--nats", "nats://127.0.0.1:4222", "--node-id", "a"];
        let Ok(args) = parse_serve(&[&nats[..], &["--retention-age", "1h"]].concat()) else {
            panic!("--nats with --retention-age parses")
        };
        assert_eq!(args.retention_age, Some(Duration::from_secs(3_600)));
        for extra in [&["--data-dir", "d"][..], &["--in-memory"]] {
            let args: Vec<&str> = nats.iter().chain(extra).copied().collect();
            let error = parse_serve(&args).err().unwrap_or_else(|| panic!("{args:?} is refused"));
            assert_eq!(error.kind(), clap::error::ErrorKind::ArgumentConflict, "{args:?}");
        }
        for args in [&["--nats", "nats://127.0.0.1:4222"][..], &["--node-id", "a"]] {
            let error = parse_serve(args).err().unwrap_or_else(|| panic!("{args:?} is refused"));
            assert_eq!(error.kind(), clap::error::ErrorKind::MissingRequiredArgument, "{args:?}");
        }
        assert!(parse_serve(&["--nats", "n", "--node-id", "a", "--nats-replicas", "6"]).is_err());
        assert!(parse_serve(&["--nats", "n", "--node-id", "a", "--nats-shards", "0"]).is_err());
    }

    /// A restarted node (same name, later start or another pid) writes as a new writer.
    #[test]
    fn run_ids_differ_between_runs_of_one_node_and_are_never_zero() {
        let first = run_id("node-1", 1_000, 42);
        assert_ne!(first, 0);
        assert_eq!(first, run_id("node-1", 1_000, 42));
        assert_ne!(first, run_id("node-1", 1_001, 42));
        assert_ne!(first, run_id("node-1", 1_000, 43));
        assert_ne!(first, run_id("node-2", 1_000, 42));
    }
}
