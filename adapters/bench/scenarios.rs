//! The scenarios. Every worker runs until the window ends, counts only what completes inside
//! the measured window (after the warm-up), and keeps its own histogram; they are merged at the
//! end, so workers never contend on shared counters.

use std::str::FromStr;
use std::time::Duration;

use futures::StreamExt;
use hdrhistogram::Histogram;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use super::process;
use super::report::Report;
use super::{BenchError, BenchOptions};
use crate::grpc::client::{ClientChannel as Channel, ClientError, connect};
use crate::grpc::proto::chat::{Message, chat_service_client::ChatServiceClient};
use crate::grpc::proto::confab_v1::{
    self as v1, SendRequest, SubscribeRequest, UploadChunk, chat_client::ChatClient, client_frame, room_event,
    server_frame,
};

/// The scenarios `confab bench` runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// confab.v1 `Send`, concurrent callers in a loop.
    UnarySend,
    /// The seed's `SayHello`, concurrent callers in a loop.
    UnaryHello,
    /// The seed's `ChatStream`, one participant per room: send, wait for it to come back.
    Pingpong,
    /// One publisher, many `Subscribe` streams in one room; publish-to-receive latency.
    Fanout,
    /// confab.v1 `Upload` calls of a fixed number of messages.
    Upload,
    /// `Session` clients spread over rooms, each sending at its share of the rate.
    Mix,
    /// `concurrency` idle `Subscribe` streams held open: with `--server-pid`, the server's
    /// memory per idle stream.
    Idle,
}

impl Scenario {
    /// Every scenario, with its command-line name.
    pub const ALL: [(&'static str, Scenario); 7] = [
        ("unary-send", Scenario::UnarySend),
        ("unary-hello", Scenario::UnaryHello),
        ("pingpong", Scenario::Pingpong),
        ("fanout", Scenario::Fanout),
        ("upload", Scenario::Upload),
        ("mix", Scenario::Mix),
        ("idle", Scenario::Idle),
    ];

    /// The command-line name.
    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(_, scenario)| *scenario == self).map_or("?", |(name, _)| name)
    }
}

impl FromStr for Scenario {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let names: Vec<&str> = Self::ALL.iter().map(|(name, _)| *name).collect();
        Self::ALL
            .iter()
            .find(|(name, _)| *name == text)
            .map(|(_, scenario)| *scenario)
            .ok_or_else(|| format!("unknown scenario {text:?}; one of {}", names.join(", ")))
    }
}

/// When counting starts and ends, and the origin of the timestamps publishers put in bodies.
#[derive(Clone, Copy)]
struct Window {
    origin: Instant,
    start: Instant,
    end: Instant,
}

impl Window {
    fn counts(&self, at: Instant) -> bool {
        at >= self.start && at <= self.end
    }

    fn open(&self) -> bool {
        Instant::now() < self.end
    }

    /// A body of `bytes` bytes (at least the stamp) that carries the send time.
    fn stamped_body(&self, bytes: usize) -> String {
        let stamp = format!("t={};", self.origin.elapsed().as_nanos());
        let pad = bytes.saturating_sub(stamp.len());
        stamp + &"x".repeat(pad)
    }

    /// The publish-to-receive latency of a stamped body received now.
    fn latency_of(&self, body: &str) -> Option<Duration> {
        let nanos: u64 = body.strip_prefix("t=")?.split(';').next()?.parse().ok()?;
        Some(self.origin.elapsed().saturating_sub(Duration::from_nanos(nanos)))
    }
}

/// One worker's tally.
struct Tally {
    operations: u64,
    errors: u64,
    lag_events: u64,
    latency_us: Histogram<u64>,
}

impl Tally {
    fn new() -> Self {
        Self { operations: 0, errors: 0, lag_events: 0, latency_us: Report::histogram() }
    }

    fn record(&mut self, window: &Window, done_at: Instant, latency: Duration) {
        if window.counts(done_at) {
            self.operations += 1;
            let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX).max(1);
            self.latency_us.saturating_record(micros);
        }
    }

    fn merge(&mut self, other: Tally) {
        self.operations += other.operations;
        self.errors += other.errors;
        self.lag_events += other.lag_events;
        // Same bounds everywhere, so adding cannot fail.
        let _ = self.latency_us.add(&other.latency_us);
    }
}

pub(super) async fn run(options: &BenchOptions) -> Result<Report, BenchError> {
    if options.connections == 0 || options.concurrency == 0 {
        return Err(BenchError::Options("--connections and --concurrency must be at least 1".into()));
    }
    let mut channels = Vec::with_capacity(options.connections);
    for _ in 0..options.connections {
        let channel = connect(&options.server, &options.security).await.map_err(|error| match error {
            ClientError::Options(message) => BenchError::Options(message),
            ClientError::Connect { server, reason } => BenchError::Connect { server, reason },
        })?;
        channels.push(channel);
    }
    let now = Instant::now();
    let window = Window { origin: now, start: now + options.warmup, end: now + options.warmup + options.duration };
    let before = options.server_pid.and_then(process::sample);
    let (unit, tally) = match options.scenario {
        Scenario::UnarySend | Scenario::UnaryHello | Scenario::Pingpong | Scenario::Upload => {
            let workers = (0..options.concurrency).map(|worker| {
                let channel = channels[worker % channels.len()].clone();
                let options = options.clone();
                tokio::spawn(async move { closed_loop(options, channel, worker, window).await })
            });
            let tally = join(workers.collect()).await;
            let unit = match options.scenario {
                Scenario::Pingpong => "round trips",
                Scenario::Upload => "messages",
                _ => "calls",
            };
            (unit, tally)
        }
        Scenario::Fanout => ("deliveries", fanout(options, &channels, window).await?),
        Scenario::Mix => ("deliveries", mix(options, &channels, window).await),
        Scenario::Idle => ("streams", idle(options, &channels, window).await),
    };
    let server = options.server_pid.and_then(|pid| Some((before?, process::sample(pid)?)));
    Ok(Report {
        scenario: options.scenario.name().to_owned(),
        unit,
        operations: tally.operations,
        elapsed: options.duration,
        latency_us: tally.latency_us,
        errors: tally.errors,
        lag_events: tally.lag_events,
        server,
    })
}

/// The user name a client puts in its messages: its own, or none with a token, since an
/// authenticated server takes the sender from the token and refuses any other name.
fn user_name(options: &BenchOptions, name: String) -> String {
    if options.security.token.is_some() { String::new() } else { name }
}

async fn join(workers: Vec<tokio::task::JoinHandle<Tally>>) -> Tally {
    let mut total = Tally::new();
    for worker in workers {
        match worker.await {
            Ok(tally) => total.merge(tally),
            Err(_) => total.errors += 1,
        }
    }
    total
}

/// Unary calls, pingpong round trips or uploads, one after another, until the window ends.
async fn closed_loop(options: BenchOptions, channel: Channel, worker: usize, window: Window) -> Tally {
    let mut tally = Tally::new();
    let body = "x".repeat(options.body_bytes);
    match options.scenario {
        Scenario::UnarySend => {
            let mut client = ChatClient::new(channel);
            while window.open() {
                let started = Instant::now();
                let request = SendRequest {
                    room: "bench-unary".into(),
                    user: user_name(&options, format!("w{worker}")),
                    client_msg_id: String::new(),
                    body: body.clone(),
                };
                match client.send(request).await {
                    Ok(_) => tally.record(&window, Instant::now(), started.elapsed()),
                    Err(_) => tally.errors += 1,
                }
            }
        }
        Scenario::UnaryHello => {
            let mut client = ChatServiceClient::new(channel);
            while window.open() {
                let started = Instant::now();
                let user = user_name(&options, format!("w{worker}"));
                let mut request = tonic::Request::new(Message { user, content: body.clone() });
                request.metadata_mut().insert("room", tonic::metadata::MetadataValue::from_static("bench-hello"));
                match client.say_hello(request).await {
                    Ok(_) => tally.record(&window, Instant::now(), started.elapsed()),
                    Err(_) => tally.errors += 1,
                }
            }
        }
        Scenario::Pingpong => {
            let user = user_name(&options, format!("w{worker}"));
            pingpong(ChatServiceClient::new(channel), worker, user, &body, window, &mut tally).await
        }
        Scenario::Upload => {
            let mut client = ChatClient::new(channel);
            while window.open() {
                let started = Instant::now();
                let room = format!("bench-upload-{worker}");
                let chunks: Vec<UploadChunk> = (0..options.upload_batch)
                    .map(|_| UploadChunk {
                        room: room.clone(),
                        user: user_name(&options, format!("w{worker}")),
                        body: body.clone(),
                    })
                    .collect();
                match client.upload(tokio_stream::iter(chunks)).await {
                    Ok(receipt) => {
                        let done = Instant::now();
                        for _ in 0..receipt.into_inner().count {
                            tally.record(&window, done, started.elapsed());
                        }
                    }
                    Err(_) => tally.errors += 1,
                }
            }
        }
        Scenario::Fanout | Scenario::Mix | Scenario::Idle => unreachable!("not a closed-loop scenario"),
    }
    tally
}

async fn pingpong(
    mut client: ChatServiceClient<Channel>,
    worker: usize,
    user: String,
    body: &str,
    window: Window,
    tally: &mut Tally,
) {
    let (outgoing, requests) = mpsc::channel(2);
    let mut request = tonic::Request::new(ReceiverStream::new(requests));
    let room = format!("bench-pingpong-{worker}");
    request.metadata_mut().insert("room", room.parse().expect("ascii room"));
    let first = Instant::now();
    if outgoing.send(Message { user: user.clone(), content: body.to_owned() }).await.is_err() {
        tally.errors += 1;
        return;
    }
    let mut incoming = match client.chat_stream(request).await {
        Ok(response) => response.into_inner(),
        Err(_) => {
            tally.errors += 1;
            return;
        }
    };
    let mut started = first;
    loop {
        match incoming.message().await {
            Ok(Some(_)) => tally.record(&window, Instant::now(), started.elapsed()),
            _ => {
                tally.errors += 1;
                return;
            }
        }
        if !window.open() {
            return;
        }
        started = Instant::now();
        if outgoing.send(Message { user: user.clone(), content: body.to_owned() }).await.is_err() {
            tally.errors += 1;
            return;
        }
    }
}

/// One publisher, `concurrency` subscribers of one room over the connections.
async fn fanout(options: &BenchOptions, channels: &[Channel], window: Window) -> Result<Tally, BenchError> {
    const ROOM: &str = "bench-fanout";
    let mut subscribers = Vec::with_capacity(options.concurrency);
    for subscriber in 0..options.concurrency {
        let mut client = ChatClient::new(channels[subscriber % channels.len()].clone());
        let request = SubscribeRequest { room: ROOM.into(), after_seq: None, user: String::new() };
        let mut stream = client
            .subscribe(request)
            .await
            .map_err(|status| BenchError::Options(format!("subscribe failed: {status}")))?
            .into_inner();
        // The first event says the subscription is in place: publishing may start.
        let _ = stream.message().await;
        subscribers.push(tokio::spawn(async move {
            let mut tally = Tally::new();
            let deadline = tokio::time::sleep_until(window.end);
            tokio::pin!(deadline);
            loop {
                let event = tokio::select! {
                    _ = &mut deadline => return tally,
                    event = stream.message() => event,
                };
                match event.map(|event| event.and_then(|e| e.event)) {
                    Ok(Some(room_event::Event::Message(message))) => {
                        if let Some(latency) = window.latency_of(&message.body) {
                            tally.record(&window, Instant::now(), latency);
                        }
                    }
                    Ok(Some(room_event::Event::Lagged(_))) => tally.lag_events += 1,
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => {
                        tally.errors += 1;
                        return tally;
                    }
                }
            }
        }));
    }
    let publisher = {
        let mut client = ChatClient::new(channels[0].clone());
        let options = options.clone();
        tokio::spawn(async move {
            let mut tally = Tally::new();
            let mut ticks = (options.rate > 0).then(|| {
                let mut interval = tokio::time::interval(Duration::from_secs_f64(1.0 / options.rate as f64));
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                interval
            });
            while window.open() {
                if let Some(ticks) = ticks.as_mut() {
                    ticks.tick().await;
                }
                let request = SendRequest {
                    room: ROOM.into(),
                    user: user_name(&options, "publisher".into()),
                    client_msg_id: String::new(),
                    body: window.stamped_body(options.body_bytes),
                };
                if client.send(request).await.is_err() {
                    tally.errors += 1;
                }
            }
            tally.operations = 0;
            tally
        })
    };
    subscribers.push(publisher);
    Ok(join(subscribers).await)
}

/// Opens `concurrency` Subscribe streams over the connections (rooms of 1,000 streams each),
/// then holds them until the window ends. Each stream that stays open counts once; its
/// "latency" is how long opening it took.
async fn idle(options: &BenchOptions, channels: &[Channel], window: Window) -> Tally {
    /// Streams per room, so a large run does not hit the per-room subscriber limit.
    const STREAMS_PER_ROOM: usize = 1_000;
    let mut tally = Tally::new();
    let mut streams = Vec::with_capacity(options.concurrency);
    for stream in 0..options.concurrency {
        let mut client = ChatClient::new(channels[stream % channels.len()].clone());
        let room = format!("bench-idle-{}", stream / STREAMS_PER_ROOM);
        let started = Instant::now();
        let request = SubscribeRequest { room, after_seq: None, user: String::new() };
        match client.subscribe(request).await {
            Ok(response) => {
                let mut events = response.into_inner();
                let _ = events.message().await;
                tally.latency_us.saturating_record(started.elapsed().as_micros().max(1) as u64);
                streams.push(events);
            }
            Err(_) => tally.errors += 1,
        }
    }
    tokio::time::sleep_until(window.end).await;
    tally.operations = streams.len() as u64;
    tally
}

/// `concurrency` Session clients in `rooms` rooms, sending stamped messages at `rate` in all.
async fn mix(options: &BenchOptions, channels: &[Channel], window: Window) -> Tally {
    let rooms = options.rooms.max(1);
    let per_client_rate = options.rate as f64 / options.concurrency as f64;
    let workers = (0..options.concurrency).map(|client_index| {
        let mut client = ChatClient::new(channels[client_index % channels.len()].clone());
        let room = format!("bench-mix-{}", client_index % rooms);
        let user = user_name(options, format!("mix{client_index}"));
        let body_bytes = options.body_bytes;
        tokio::spawn(async move {
            let mut tally = Tally::new();
            let (outgoing, requests) = mpsc::channel::<v1::ClientFrame>(16);
            let join = client_frame::Frame::Join(v1::Join { room: room.clone(), after_seq: None });
            let _ = outgoing.send(v1::ClientFrame { frame: Some(join) }).await;
            let mut request = tonic::Request::new(ReceiverStream::new(requests));
            if !user.is_empty() {
                request.metadata_mut().insert("user", user.parse().expect("ascii user"));
            }
            let Ok(response) = client.session(request).await else {
                tally.errors += 1;
                return tally;
            };
            let mut incoming = response.into_inner();
            let sender = tokio::spawn(async move {
                if per_client_rate <= 0.0 {
                    return;
                }
                let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / per_client_rate));
                while window.open() {
                    ticks.tick().await;
                    let post = v1::Post {
                        room: room.clone(),
                        client_msg_id: String::new(),
                        body: window.stamped_body(body_bytes),
                    };
                    if outgoing.send(v1::ClientFrame { frame: Some(client_frame::Frame::Post(post)) }).await.is_err() {
                        return;
                    }
                }
            });
            let deadline = tokio::time::sleep_until(window.end);
            tokio::pin!(deadline);
            loop {
                let frame = tokio::select! {
                    _ = &mut deadline => break,
                    frame = incoming.next() => frame,
                };
                match frame.map(|frame| frame.map(|f| f.frame)) {
                    Some(Ok(Some(server_frame::Frame::Event(event)))) => match event.event {
                        Some(room_event::Event::Message(message)) => {
                            if let Some(latency) = window.latency_of(&message.body) {
                                tally.record(&window, Instant::now(), latency);
                            }
                        }
                        Some(room_event::Event::Lagged(_)) => tally.lag_events += 1,
                        _ => {}
                    },
                    Some(Ok(Some(server_frame::Frame::Error(_)))) => tally.errors += 1,
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => {
                        tally.errors += 1;
                        break;
                    }
                }
            }
            sender.abort();
            tally
        })
    });
    join(workers.collect()).await
}
