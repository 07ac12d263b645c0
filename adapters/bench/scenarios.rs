//! The scenarios. Every worker runs until the window ends, counts only what completes inside
//! the measured window (after the warm-up), and keeps its own histogram; they are merged at the
//! end, so workers never contend on shared counters.

use std::str::FromStr;
use std::time::Duration;

use futures::StreamExt;
use hdrhistogram::Histogram;
use rand::{Rng as _, SeedableRng as _};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use super::process;
use super::report::{Report, StalledTally};
use super::{BenchError, BenchOptions};
use crate::grpc::proto::chat::{Message, chat_service_client::ChatServiceClient};
use crate::grpc::proto::confab_v1::{
    self as v1, SendRequest, SubscribeRequest, UploadChunk, chat_client::ChatClient, client_frame, room_event,
    server_frame,
};
use confab_client::{ClientChannel as Channel, connect};

/// The scenarios `confab bench` runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// confab.v1 `Send`, concurrent callers in a loop.
    UnarySend,
    /// The seed's `SayHello`, concurrent callers in a loop.
    UnaryHello,
    /// The seed's `ChatStream`, one participant per room: send, wait for it to come back.
    Pingpong,
    /// The seed's `ChatStream`, every participant in one room: send, wait for its own message
    /// to come back (every message goes to every participant).
    PingpongRoom,
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
    pub const ALL: [(&'static str, Scenario); 8] = [
        ("unary-send", Scenario::UnarySend),
        ("unary-hello", Scenario::UnaryHello),
        ("pingpong", Scenario::Pingpong),
        ("pingpong-room", Scenario::PingpongRoom),
        ("fanout", Scenario::Fanout),
        ("upload", Scenario::Upload),
        ("mix", Scenario::Mix),
        ("idle", Scenario::Idle),
    ];

    /// Rooms the scenario spreads its clients over unless told (`--rooms`).
    pub fn default_rooms(self) -> usize {
        match self {
            Scenario::Mix => 10,
            _ => 1,
        }
    }

    /// The scenario's name on the command line.
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
    /// Order checks that failed (fanout, mix: see [`OrderCheck`]).
    order_violations: u64,
    /// Reconnects after a chosen disconnect (mix).
    reconnects: u64,
    latency_us: Histogram<u64>,
}

impl Tally {
    fn new() -> Self {
        Self {
            operations: 0,
            errors: 0,
            lag_events: 0,
            order_violations: 0,
            reconnects: 0,
            latency_us: Report::histogram(),
        }
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
        self.order_violations += other.order_violations;
        self.reconnects += other.reconnects;
        // Same bounds everywhere, so adding cannot fail.
        let _ = self.latency_us.add(&other.latency_us);
    }
}

pub(super) async fn run(options: &BenchOptions) -> Result<Report, BenchError> {
    if options.connections == 0 || options.concurrency == 0 {
        return Err(BenchError::Options("--connections and --concurrency must be at least 1".into()));
    }
    if options.stalled > 0 && options.scenario != Scenario::Fanout {
        return Err(BenchError::Options("--stalled applies to the fanout scenario only".into()));
    }
    let servers = options.servers();
    if options.connections < servers.len() {
        return Err(BenchError::Options(format!(
            "--connections {} leaves some of the {} servers without clients",
            options.connections,
            servers.len()
        )));
    }
    let mut channels = Vec::with_capacity(options.connections);
    for connection in 0..options.connections {
        channels.push(open_connection(options, servers[connection % servers.len()]).await?);
    }
    let now = Instant::now();
    let window = Window { origin: now, start: now + options.warmup, end: now + options.warmup + options.duration };
    let before = options.server_pid.and_then(process::sample);
    let mut stalled = None;
    let (unit, tally) = match options.scenario {
        Scenario::UnarySend | Scenario::UnaryHello | Scenario::Pingpong | Scenario::PingpongRoom | Scenario::Upload => {
            let workers = (0..options.concurrency).map(|worker| {
                let channel = channels[worker % channels.len()].clone();
                let options = options.clone();
                tokio::spawn(async move { closed_loop(options, channel, worker, window).await })
            });
            let tally = join(workers.collect()).await;
            let unit = match options.scenario {
                Scenario::Pingpong | Scenario::PingpongRoom => "round trips",
                Scenario::Upload => "messages",
                _ => "calls",
            };
            (unit, tally)
        }
        Scenario::Fanout => {
            let (tally, stalled_tally) = fanout(options, &channels, window).await?;
            stalled = stalled_tally;
            ("deliveries", tally)
        }
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
        order_violations: tally.order_violations,
        reconnects: tally.reconnects,
        server,
        stalled,
    })
}

/// One more HTTP/2 connection to `server`, with the run's token and TLS settings.
async fn open_connection(options: &BenchOptions, server: &str) -> Result<Channel, BenchError> {
    Ok(connect(server, &options.security).await?)
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
            // One room (the default) keeps the name earlier measurements used.
            let room = match options.rooms {
                0 | 1 => "bench-unary".to_owned(),
                rooms => format!("bench-unary-{}", worker % rooms),
            };
            while window.open() {
                let started = Instant::now();
                let request = SendRequest {
                    room: room.clone(),
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
            let room = Some(format!("bench-pingpong-{worker}"));
            pingpong(ChatServiceClient::new(channel), room, worker, user, &body, window, &mut tally).await
        }
        Scenario::PingpongRoom => {
            let user = user_name(&options, format!("w{worker}"));
            pingpong(ChatServiceClient::new(channel), None, worker, user, &body, window, &mut tally).await
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

/// One `ChatStream`: send, wait for the reply, repeat. In a room of its own (`Some`) any
/// reply counts (so the Go echo peer, which answers with its own text, can be measured too);
/// in the shared room (`None`) it waits for its own message and skips the others'.
async fn pingpong(
    mut client: ChatServiceClient<Channel>,
    own_room: Option<String>,
    worker: usize,
    user: String,
    body: &str,
    window: Window,
    tally: &mut Tally,
) {
    let (outgoing, requests) = mpsc::channel(2);
    let mut request = tonic::Request::new(ReceiverStream::new(requests));
    let shared = own_room.is_none();
    let room = own_room.unwrap_or_else(|| "bench-pingpong-room".to_owned());
    request.metadata_mut().insert("room", room.parse().expect("ascii room"));
    // The worker's number in the body tells its own messages from the others' in a shared room.
    let content = format!("{worker} {body}");
    let first = Instant::now();
    if outgoing.send(Message { user: user.clone(), content: content.clone() }).await.is_err() {
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
            // The content alone: with a token the server names the user, not the worker.
            Ok(Some(message)) if !shared || message.content == content => {
                tally.record(&window, Instant::now(), started.elapsed())
            }
            Ok(Some(_)) => continue,
            _ => {
                tally.errors += 1;
                return;
            }
        }
        if !window.open() {
            return;
        }
        started = Instant::now();
        if outgoing.send(Message { user: user.clone(), content: content.clone() }).await.is_err() {
            tally.errors += 1;
            return;
        }
    }
}

/// One publisher, `concurrency` subscribers of one room over the connections, and
/// `stalled` subscribers that never read.
async fn fanout(
    options: &BenchOptions,
    channels: &[Channel],
    window: Window,
) -> Result<(Tally, Option<StalledTally>), BenchError> {
    const ROOM: &str = "bench-fanout";
    /// Stalled subscribers per connection of their own (HTTP/2 flow control is per
    /// connection: a stalled reader must not share one with the readers being measured).
    const STALLED_PER_CONNECTION: usize = 100;
    let mut stalled = Vec::with_capacity(options.stalled);
    let mut stalled_channel = None;
    for index in 0..options.stalled {
        if index % STALLED_PER_CONNECTION == 0 {
            stalled_channel = Some(open_connection(options, options.servers()[0]).await?);
        }
        let Some(channel) = stalled_channel.clone() else { unreachable!("connected just above") };
        let request = SubscribeRequest { room: ROOM.into(), after_seq: None, user: String::new() };
        let mut stream = ChatClient::new(channel)
            .subscribe(request)
            .await
            .map_err(|status| BenchError::Options(format!("subscribe failed: {status}")))?
            .into_inner();
        let _ = stream.message().await;
        stalled.push(stream);
    }
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
            let mut order = OrderCheck::default();
            let deadline = tokio::time::sleep_until(window.end);
            tokio::pin!(deadline);
            loop {
                let event = tokio::select! {
                    _ = &mut deadline => {
                        tally.order_violations += order.violations;
                        return tally;
                    }
                    event = stream.message() => event,
                };
                match event.map(|event| event.and_then(|e| e.event)) {
                    Ok(Some(room_event::Event::Message(message))) => {
                        order.message(message.seq);
                        if let Some(latency) = window.latency_of(&message.body) {
                            tally.record(&window, Instant::now(), latency);
                        }
                    }
                    Ok(Some(room_event::Event::Lagged(lag))) => {
                        order.lagged(lag.missed_from, lag.missed_to);
                        tally.lag_events += 1;
                    }
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
    let tally = join(subscribers).await;
    if stalled.is_empty() {
        return Ok((tally, None));
    }
    Ok((tally, Some(read_stalled(stalled).await)))
}

/// Reads each stalled subscriber again, briefly: a closed one shows a lag marker and then
/// RESOURCE_EXHAUSTED once its buffered messages are through.
async fn read_stalled(streams: Vec<tonic::Streaming<v1::RoomEvent>>) -> StalledTally {
    /// How long one stream may take to show how it ended.
    const READ_PATIENCE: Duration = Duration::from_secs(10);
    let readers = streams.into_iter().map(|mut stream| {
        tokio::spawn(async move {
            let mut lagged = false;
            let ending = tokio::time::timeout(READ_PATIENCE, async {
                loop {
                    match stream.message().await {
                        Ok(Some(event)) => lagged |= matches!(event.event, Some(room_event::Event::Lagged(_))),
                        Ok(None) => return None,
                        Err(status) => return Some(status.code()),
                    }
                }
            })
            .await;
            match ending {
                Ok(Some(tonic::Code::ResourceExhausted)) if lagged => (1, 0),
                Err(_) => (0, 1),
                Ok(_) => (0, 0),
            }
        })
    });
    let mut tally = StalledTally::default();
    for reader in readers.collect::<Vec<_>>() {
        tally.streams += 1;
        if let Ok((closed, open)) = reader.await {
            tally.closed += closed;
            tally.open += open;
        }
    }
    tally
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
/// With `disconnect_mean`, each client drops its connection now and then (exponential gaps,
/// seeded by its index) and comes back resuming after the last message it saw. Every client
/// checks its room's order as it goes (see [`OrderCheck`]).
async fn mix(options: &BenchOptions, channels: &[Channel], window: Window) -> Tally {
    let rooms = options.rooms.max(1);
    let per_client_rate = options.rate as f64 / options.concurrency as f64;
    let workers = (0..options.concurrency).map(|client_index| {
        let client = ChatClient::new(channels[client_index % channels.len()].clone());
        let room = format!("bench-mix-{}", client_index % rooms);
        let user = user_name(options, format!("mix{client_index}"));
        let (body_bytes, disconnect_mean) = (options.body_bytes, options.disconnect_mean);
        tokio::spawn(async move {
            let mut tally = Tally::new();
            let mut order = OrderCheck::default();
            let mut rng = rand::rngs::SmallRng::seed_from_u64(client_index as u64);
            while window.open() {
                let online_for = disconnect_mean.map(|mean| {
                    let uniform: f64 = rng.random_range(f64::EPSILON..1.0);
                    mean.mul_f64(-uniform.ln())
                });
                let resume = order.last_seq();
                let connection =
                    MixConnection { client: client.clone(), user: user.clone(), room: room.clone(), body_bytes };
                let ended = connection.run(per_client_rate, resume, online_for, window, &mut tally, &mut order).await;
                if ended == MixEnd::Failed || disconnect_mean.is_none() {
                    break;
                }
                tally.reconnects += 1;
            }
            tally.order_violations += order.violations;
            tally
        })
    });
    join(workers.collect()).await
}

/// How one mix connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MixEnd {
    /// The window closed or the client chose to disconnect.
    Done,
    /// The call failed or the server ended it.
    Failed,
}

/// One `Session` call of a mix client.
struct MixConnection {
    client: ChatClient<Channel>,
    /// The `user` metadata: empty with a token (the server takes the token's user).
    user: String,
    room: String,
    body_bytes: usize,
}

impl MixConnection {
    async fn run(
        mut self,
        per_client_rate: f64,
        resume: Option<u64>,
        online_for: Option<Duration>,
        window: Window,
        tally: &mut Tally,
        order: &mut OrderCheck,
    ) -> MixEnd {
        let (outgoing, requests) = mpsc::channel::<v1::ClientFrame>(16);
        let join = client_frame::Frame::Join(v1::Join { room: self.room.clone(), after_seq: resume });
        let _ = outgoing.send(v1::ClientFrame { frame: Some(join) }).await;
        let mut request = tonic::Request::new(ReceiverStream::new(requests));
        if !self.user.is_empty() {
            request.metadata_mut().insert("user", self.user.parse().expect("ascii user"));
        }
        let Ok(response) = self.client.session(request).await else {
            tally.errors += 1;
            return MixEnd::Failed;
        };
        order.joining(resume);
        let mut incoming = response.into_inner();
        let (room, body_bytes) = (self.room.clone(), self.body_bytes);
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
        let until = online_for.map_or(window.end, |online| (Instant::now() + online).min(window.end));
        let deadline = tokio::time::sleep_until(until);
        tokio::pin!(deadline);
        let ended = loop {
            let frame = tokio::select! {
                _ = &mut deadline => break MixEnd::Done,
                frame = incoming.next() => frame,
            };
            match frame.map(|frame| frame.map(|f| f.frame)) {
                Some(Ok(Some(server_frame::Frame::Event(event)))) => match event.event {
                    Some(room_event::Event::Message(message)) => {
                        order.message(message.seq);
                        if let Some(latency) = window.latency_of(&message.body) {
                            tally.record(&window, Instant::now(), latency);
                        }
                    }
                    Some(room_event::Event::Lagged(lag)) => {
                        order.lagged(lag.missed_from, lag.missed_to);
                        tally.lag_events += 1;
                    }
                    Some(room_event::Event::Subscribed(subscribed)) => order.subscribed(subscribed.first_seq),
                    _ => {}
                },
                Some(Ok(Some(server_frame::Frame::Error(_)))) => tally.errors += 1,
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    tally.errors += 1;
                    break MixEnd::Failed;
                }
            }
        };
        // Dropping the call's streams is the disconnect: the server sees the client go.
        sender.abort();
        ended
    }
}

/// One client's check of its room's order, the guarantees a client can see for itself: after
/// `Subscribed`, sequence numbers follow one another with no gap except one a lag marker
/// declares (G1, G2), and a resume continues right after the last message seen (G5; the room
/// retains far more than a bench client misses while offline).
#[derive(Debug, Default)]
struct OrderCheck {
    /// The next sequence number due; `None` before the first `Subscribed`.
    expected: Option<u64>,
    /// The last message seen, to resume after.
    last_seen: Option<u64>,
    /// The `after_seq` of the join in progress.
    resuming_after: Option<u64>,
    violations: u64,
}

impl OrderCheck {
    fn last_seq(&self) -> Option<u64> {
        self.last_seen
    }

    fn joining(&mut self, after_seq: Option<u64>) {
        self.expected = None;
        self.resuming_after = after_seq;
    }

    fn subscribed(&mut self, first_seq: u64) {
        if let Some(after) = self.resuming_after.take()
            && first_seq != after + 1
        {
            self.violations += 1;
        }
        self.expected = Some(first_seq);
    }

    fn message(&mut self, seq: u64) {
        if self.expected.is_some_and(|expected| seq != expected) {
            self.violations += 1;
        }
        self.expected = Some(seq + 1);
        self.last_seen = Some(seq);
    }

    fn lagged(&mut self, missed_from: u64, missed_to: u64) {
        if self.expected.is_some_and(|expected| missed_from != expected) || missed_to < missed_from {
            self.violations += 1;
        }
        self.expected = Some(missed_to + 1);
        self.last_seen = Some(missed_to);
    }
}

#[cfg(test)]
mod tests {
    use super::OrderCheck;

    #[test]
    fn order_check_accepts_declared_gaps_and_exact_resumes_only() {
        let mut order = OrderCheck::default();
        order.joining(None);
        order.subscribed(5);
        order.message(5);
        order.lagged(6, 9);
        order.message(10);
        assert_eq!((order.violations, order.last_seq()), (0, Some(10)));
        order.message(12);
        assert_eq!(order.violations, 1, "a silent gap");
        order.message(12);
        assert_eq!(order.violations, 2, "a repeat");
        order.lagged(20, 21);
        assert_eq!(order.violations, 3, "a lag marker that does not start where delivery stopped");
        order.joining(Some(21));
        order.subscribed(23);
        assert_eq!(order.violations, 4, "a resume that skips a message");
        order.joining(Some(21));
        order.subscribed(22);
        order.message(22);
        assert_eq!(order.violations, 4);
    }
}
