//! The actor layer against raw tokio baselines, in one run (ratios, not absolute numbers, are
//! the point on a shared machine):
//! - room fan-out, per delivery: `Engine::send` into a room with N subscribed streams, every
//!   stream reading every message, against `tokio::sync::broadcast` with N receivers;
//! - request/reply: kameo `ask` against an mpsc channel carrying a oneshot reply.
//!
//! `cargo bench -p confab-actors --bench actor_layer`

// criterion's macros generate undocumented public functions.
#![allow(missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use confab_actors::{Engine, EngineConfig, StreamItem};
use confab_engine::{Draft, RoomEvent, RoomName, UserName};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use futures::StreamExt;
use kameo::Actor;
use kameo::actor::Spawn;
use kameo::message::{Context, Message};
use tokio::sync::{broadcast, mpsc, oneshot};

const SUBSCRIBERS: [usize; 2] = [100, 1_000];
const MESSAGES: usize = 200;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

/// Time for `MESSAGES` messages to reach all `subscribers` streams through a room actor.
async fn engine_fanout(engine: &Engine, room: &RoomName, subscribers: usize) -> Duration {
    let mut readers = Vec::with_capacity(subscribers);
    for _ in 0..subscribers {
        let mut events = engine.subscribe(room, None, None).await.expect("subscribe");
        let _subscribed = events.next().await;
        readers.push(tokio::spawn(async move {
            let mut seen = 0;
            while seen < MESSAGES {
                if let Some(StreamItem::Next(RoomEvent::Message(_))) = events.next().await {
                    seen += 1;
                }
            }
        }));
    }
    let user = UserName::new("bench").expect("user");
    let started = Instant::now();
    for _ in 0..MESSAGES {
        let draft = Draft { user: user.clone(), client_msg_id: None, body: Arc::from("payload") };
        engine.send(room, draft).await.expect("send");
    }
    for reader in readers {
        reader.await.expect("reader");
    }
    started.elapsed()
}

/// The same with a bare broadcast channel.
async fn broadcast_fanout(subscribers: usize) -> Duration {
    let (sender, _) = broadcast::channel::<Arc<str>>(1_024);
    let readers: Vec<_> = (0..subscribers)
        .map(|_| {
            let mut receiver = sender.subscribe();
            tokio::spawn(async move {
                for _ in 0..MESSAGES {
                    receiver.recv().await.expect("no lag at this capacity");
                }
            })
        })
        .collect();
    let payload: Arc<str> = Arc::from("payload");
    let started = Instant::now();
    for _ in 0..MESSAGES {
        sender.send(Arc::clone(&payload)).expect("receivers exist");
        // Yield like the engine's send does while awaiting its reply, so readers interleave.
        tokio::task::yield_now().await;
    }
    for reader in readers {
        reader.await.expect("reader");
    }
    started.elapsed()
}

fn fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("fanout_per_delivery");
    group.sample_size(10).measurement_time(Duration::from_secs(4));
    for subscribers in SUBSCRIBERS {
        group.throughput(Throughput::Elements((subscribers * MESSAGES) as u64));
        group.bench_with_input(BenchmarkId::new("engine_room", subscribers), &subscribers, |b, &n| {
            let rt = runtime();
            b.iter_custom(|iterations| {
                rt.block_on(async {
                    let engine = Engine::start(EngineConfig::default()).expect("engine");
                    let mut total = Duration::ZERO;
                    for i in 0..iterations {
                        let room = RoomName::new(&format!("fanout{i}")).expect("room");
                        total += engine_fanout(&engine, &room, n).await;
                    }
                    total
                })
            });
        });
        group.bench_with_input(BenchmarkId::new("tokio_broadcast", subscribers), &subscribers, |b, &n| {
            let rt = runtime();
            b.iter_custom(|iterations| {
                rt.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iterations {
                        total += broadcast_fanout(n).await;
                    }
                    total
                })
            });
        });
    }
    group.finish();
}

/// A counter actor: the smallest useful ask.
#[derive(Actor, Default)]
struct Counter {
    count: u64,
}

struct Increment;

impl Message<Increment> for Counter {
    type Reply = u64;

    async fn handle(&mut self, _: Increment, _: &mut Context<Self, u64>) -> u64 {
        self.count += 1;
        self.count
    }
}

fn request_reply(c: &mut Criterion) {
    let mut group = c.benchmark_group("request_reply");
    group.throughput(Throughput::Elements(1));
    let rt = runtime();
    let actor = rt.block_on(async { Counter::spawn(Counter::default()) });
    group.bench_function("kameo_ask", |b| b.to_async(&rt).iter(|| async { actor.ask(Increment).await.expect("ask") }));
    let requests = rt.block_on(async {
        let (requests, mut queue) = mpsc::channel::<oneshot::Sender<u64>>(64);
        tokio::spawn(async move {
            let mut count = 0;
            while let Some(reply) = queue.recv().await {
                count += 1;
                let _ = reply.send(count);
            }
        });
        requests
    });
    group.bench_function("mpsc_oneshot", |b| {
        b.to_async(&rt).iter(|| async {
            let (reply, answer) = oneshot::channel();
            requests.send(reply).await.expect("send");
            answer.await.expect("reply")
        })
    });
    let tells = rt.block_on(async { Counter::spawn(Counter::default()) });
    group.bench_function("kameo_tell", |b| {
        b.to_async(&rt).iter(|| async { tells.tell(Increment).await.expect("tell") })
    });
    group.finish();
}

criterion_group!(benches, fanout, request_reply);
criterion_main!(benches);
