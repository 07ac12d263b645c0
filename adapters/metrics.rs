//! Prometheus metrics for `confab serve --metrics-listen ADDR`: what the engine did (read from
//! [`Engine::stats`] at scrape time, so the engine's hot path only bumps relaxed atomics) and
//! what the RPCs did ([`RpcMetrics`], fed by the gRPC layer in
//! [`grpc::observe`](crate::grpc::observe)), served as OpenMetrics text on `GET /metrics`.
//!
//! Every metric name and meaning is listed in README's "Metrics" section; [`ENGINE_METRICS`]
//! and the `RPC_*` constants here are the source of those names.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use confab_actors::{Engine, StatsSnapshot};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// The path metrics are served on.
pub const METRICS_PATH: &str = "/metrics";

/// The content type of OpenMetrics text, which Prometheus scrapes.
const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Histogram buckets of RPC handling time, in seconds: 100 µs, then x3 up to ~5.9 s (11
/// buckets), which spans an in-memory unary call to a durable send under heavy load.
const HANDLING_SECONDS_BUCKET_FIRST: f64 = 0.000_1;
const HANDLING_SECONDS_BUCKET_FACTOR: f64 = 3.0;
const HANDLING_SECONDS_BUCKET_COUNT: u16 = 11;

/// RPCs started, by RPC (`confab_rpc_started_total`).
pub const RPC_STARTED: &str = "confab_rpc_started";
/// RPCs open now, by RPC: for a streaming RPC, its open streams (`confab_rpc_open`).
pub const RPC_OPEN: &str = "confab_rpc_open";
/// RPCs finished, by RPC and final status code (`confab_rpc_finished_total`).
pub const RPC_FINISHED: &str = "confab_rpc_finished";
/// Time from a call's arrival to its response head, by RPC (`confab_rpc_handling_seconds`).
pub const RPC_HANDLING_SECONDS: &str = "confab_rpc_handling_seconds";

/// One engine metric: read from a [`StatsSnapshot`] at each scrape.
#[derive(Clone, Copy, Debug)]
pub struct EngineMetric {
    /// Its name (a counter is exported with `_total` appended).
    pub name: &'static str,
    /// What it counts.
    pub help: &'static str,
    /// Counter or gauge.
    pub kind: EngineMetricKind,
    /// How to read it.
    pub read: fn(&StatsSnapshot) -> u64,
}

/// Every engine metric.
pub const ENGINE_METRICS: &[EngineMetric] = &[
    EngineMetric { name: "confab_rooms", help: "Rooms live now.", kind: EngineMetricKind::Gauge, read: |s| s.rooms },
    EngineMetric {
        name: "confab_rooms_created",
        help: "Rooms created or restored from the store since start.",
        kind: EngineMetricKind::Counter,
        read: |s| s.rooms_created,
    },
    EngineMetric {
        name: "confab_sessions",
        help: "Bidirectional Session streams open now.",
        kind: EngineMetricKind::Gauge,
        read: |s| s.sessions,
    },
    EngineMetric {
        name: "confab_sessions_opened",
        help: "Sessions opened since start.",
        kind: EngineMetricKind::Counter,
        read: |s| s.sessions_opened,
    },
    EngineMetric {
        name: "confab_messages_appended",
        help: "Messages numbered by rooms (Send, session posts, upload commits; retries not counted).",
        kind: EngineMetricKind::Counter,
        read: |s| s.messages_appended,
    },
    EngineMetric {
        name: "confab_deliveries",
        help: "Room events queued to a subscriber (stream or session), one per subscriber per event.",
        kind: EngineMetricKind::Counter,
        read: |s| s.deliveries,
    },
    EngineMetric {
        name: "confab_deliveries_dropped",
        help: "Deliveries not queued because the subscriber's queue was full (a lag marker follows).",
        kind: EngineMetricKind::Counter,
        read: |s| s.deliveries_dropped,
    },
    EngineMetric {
        name: "confab_lag_events",
        help: "Lag markers (Lagged: you missed a to b) handed to subscribers.",
        kind: EngineMetricKind::Counter,
        read: |s| s.lag_markers,
    },
    EngineMetric {
        name: "confab_session_frames_refused",
        help: "Session frames refused with an Error frame (the session went on).",
        kind: EngineMetricKind::Counter,
        read: |s| s.session_frames_refused,
    },
    EngineMetric {
        name: "confab_subscribers_closed_stalled",
        help: "Subscribers closed for reading nothing while lagging for --subscriber-stall.",
        kind: EngineMetricKind::Counter,
        read: |s| s.subscribers_closed_stalled,
    },
];

/// Whether an engine metric only goes up or goes up and down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineMetricKind {
    /// Only goes up; exported with a `_total` suffix.
    Counter,
    /// A current level.
    Gauge,
}

/// Labels of a per-RPC metric: the RPC as `package.Service/Method` (or `unknown`, so a client
/// inventing paths cannot grow the label set).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    /// `confab.v1.Chat/Send`, `chat.ChatService/ChatStream`, `grpc.health.v1.Health/Check`, …
    pub rpc: &'static str,
}

/// Labels of a finished RPC: the RPC and its final gRPC status code (`OK`, `INVALID_ARGUMENT`,
/// …). The non-OK codes are the refusals, by reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcCodeLabels {
    /// As in [`RpcLabels`].
    pub rpc: &'static str,
    /// The status code's name as the gRPC spec writes it.
    pub code: &'static str,
}

fn handling_histogram() -> Histogram {
    Histogram::new(exponential_buckets(
        HANDLING_SECONDS_BUCKET_FIRST,
        HANDLING_SECONDS_BUCKET_FACTOR,
        HANDLING_SECONDS_BUCKET_COUNT,
    ))
}

/// Per-RPC counters, fed by the transport for every call (cheap clones share the same series).
#[derive(Clone, Debug)]
pub struct RpcMetrics {
    started: Family<RpcLabels, Counter>,
    open: Family<RpcLabels, Gauge>,
    finished: Family<RpcCodeLabels, Counter>,
    handling: Family<RpcLabels, Histogram, fn() -> Histogram>,
}

impl Default for RpcMetrics {
    fn default() -> Self {
        Self {
            started: Family::default(),
            open: Family::default(),
            finished: Family::default(),
            handling: Family::new_with_constructor(handling_histogram),
        }
    }
}

impl RpcMetrics {
    /// The series of `rpc`, resolved now, for a caller that keeps them (see [`RpcSeries`]).
    pub fn series(&self, rpc: &'static str) -> RpcSeries {
        let labels = RpcLabels { rpc };
        RpcSeries {
            rpc,
            started: self.started.get_or_create(&labels).clone(),
            open: self.open.get_or_create(&labels).clone(),
            handling: self.handling.get_or_create(&labels).clone(),
            finished: std::array::from_fn(|_| OnceLock::new()),
            metrics: self.clone(),
        }
    }
}

/// gRPC's status codes, 0 (`OK`) to 16 (`UNAUTHENTICATED`).
const STATUS_CODES: usize = 17;

/// One RPC's series, resolved once (the families' lookups take a lock and hash the labels)
/// and shared by all its calls; a finished series per status code is resolved the first time
/// a call ends with that code.
#[derive(Debug)]
pub struct RpcSeries {
    rpc: &'static str,
    started: Counter,
    open: Gauge,
    handling: Histogram,
    finished: [OnceLock<Counter>; STATUS_CODES],
    /// Where the finished series come from.
    metrics: RpcMetrics,
}

impl RpcSeries {
    /// A call arrived.
    pub fn started(&self) {
        self.started.inc();
        self.open.inc();
    }

    /// A call produced its response head after `elapsed`.
    pub fn responded(&self, elapsed: Duration) {
        self.handling.observe(elapsed.as_secs_f64());
    }

    /// A call ended with status `code` (its number), named `code_name` (e.g. `OK`).
    pub fn finished(&self, code: usize, code_name: &'static str) {
        let Some(slot) = self.finished.get(code) else {
            // Not a gRPC code: counted, but not kept.
            self.metrics.finished.get_or_create(&RpcCodeLabels { rpc: self.rpc, code: code_name }).inc();
            return;
        };
        let labels = RpcCodeLabels { rpc: self.rpc, code: code_name };
        slot.get_or_init(|| self.metrics.finished.get_or_create(&labels).clone()).inc();
    }

    /// A call is no longer open (its response is done or dropped).
    pub fn closed(&self) {
        self.open.dec();
    }
}

/// The engine's counters, read at each scrape.
struct EngineCollector {
    engine: Engine,
}

impl std::fmt::Debug for EngineCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineCollector").finish_non_exhaustive()
    }
}

impl Collector for EngineCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = self.engine.stats();
        for EngineMetric { name, help, kind, read } in ENGINE_METRICS {
            let value = read(&stats);
            match kind {
                EngineMetricKind::Counter => {
                    let counter = ConstCounter::new(value);
                    counter.encode(encoder.encode_descriptor(name, help, None, counter.metric_type())?)?;
                }
                EngineMetricKind::Gauge => {
                    let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
                    gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
                }
            }
        }
        Ok(())
    }
}

/// Everything one server exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    /// Metrics of `engine` and of the calls counted in `rpc`.
    pub fn new(engine: Engine, rpc: &RpcMetrics) -> Self {
        let mut registry = Registry::default();
        registry.register(RPC_STARTED, "RPCs started, by RPC.", rpc.started.clone());
        registry.register(RPC_OPEN, "RPCs open now, by RPC (for streaming RPCs: open streams).", rpc.open.clone());
        registry.register(
            RPC_FINISHED,
            "RPCs finished, by RPC and final gRPC status code; non-OK codes are refusals by reason.",
            rpc.finished.clone(),
        );
        registry.register(
            RPC_HANDLING_SECONDS,
            "Seconds from a call's arrival to its response head, by RPC (unary: the whole call; \
             streaming: until the stream is open).",
            rpc.handling.clone(),
        );
        registry.register_collector(Box::new(EngineCollector { engine }));
        Self { registry }
    }

    /// The metrics as OpenMetrics text.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown` completes.
pub async fn serve_metrics(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = Router::new().route(METRICS_PATH, get(scrape)).with_state(metrics);
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}

async fn scrape(State(metrics): State<Arc<Metrics>>) -> Response {
    match metrics.encode() {
        Ok(text) => ([(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], text).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "encoding the metrics failed").into_response(),
    }
}
