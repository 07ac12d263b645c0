//! Presence across simulated nodes: a presence bus that loses messages (a fault), and the
//! convergence check: once the bus stops losing and a quiet spell has passed, every node shows
//! the same users in each room (each node's view is the union of every node's local users).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use confab_actors::presence::BusError;
use confab_actors::{Engine, MemoryBus, PresenceBus, RoomInfo};
use confab_engine::RoomName;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Share of presence messages the bus loses while the clients act.
pub const PRESENCE_LOSS: f64 = 0.05;

/// How long the run waits, with no loss, before it checks convergence: a full snapshot
/// period and two beats of slack (within the clients' drain, while they still hold their
/// subscriptions).
pub const QUIET_MS: u64 = (confab_engine::presence::SNAPSHOT_EVERY_BEATS + 2) * confab_engine::presence::BEAT_MS;

const _: () = assert!(QUIET_MS < crate::options::DRAIN.as_millis() as u64, "the check runs within the drain");

/// A [`MemoryBus`] that loses [`PRESENCE_LOSS`] of what is published, drawn from a generator
/// of its own (so presence does not change what the clients draw), until told to stop.
#[derive(Clone)]
pub struct LossyBus {
    bus: MemoryBus,
    rng: Arc<Mutex<ChaCha8Rng>>,
    losing: Arc<AtomicBool>,
    lost: Arc<std::sync::atomic::AtomicU64>,
}

impl LossyBus {
    /// A bus whose losses follow `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            bus: MemoryBus::new(),
            rng: Arc::new(Mutex::new(ChaCha8Rng::seed_from_u64(seed))),
            losing: Arc::new(AtomicBool::new(true)),
            lost: Arc::default(),
        }
    }

    /// From now on nothing is lost.
    pub fn stop_losing(&self) {
        self.losing.store(false, Ordering::Relaxed);
    }

    /// Messages lost so far.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }
}

impl PresenceBus for LossyBus {
    fn publish(&self, payload: Vec<u8>) -> BoxFuture<'static, Result<(), BusError>> {
        let lose = self.losing.load(Ordering::Relaxed)
            && self.rng.lock().unwrap_or_else(PoisonError::into_inner).random_bool(PRESENCE_LOSS);
        if lose {
            self.lost.fetch_add(1, Ordering::Relaxed);
            return Box::pin(async { Ok(()) });
        }
        self.bus.publish(payload)
    }

    fn subscribe(&self) -> BoxFuture<'static, Result<BoxStream<'static, Vec<u8>>, BusError>> {
        self.bus.subscribe()
    }
}

/// For each room live on more than one node, where the nodes disagree on who is present:
/// one line per room, naming each node's list.
pub async fn divergences(engines: &[Engine], rooms: &[RoomName]) -> Vec<String> {
    let mut found = Vec::new();
    for room in rooms {
        let mut views: Vec<(usize, RoomInfo)> = Vec::new();
        for (index, engine) in engines.iter().enumerate() {
            // Only rooms live there: asking another would start it, and a room that just
            // started has not heard the remote members yet.
            if !engine.has_live_room(room) {
                continue;
            }
            if let Ok(Some(info)) = engine.room(room).await {
                views.push((index, info));
            }
        }
        let Some((_, first)) = views.first() else { continue };
        if views.iter().any(|(_, info)| info.present != first.present) {
            let lists: Vec<String> = views
                .iter()
                .map(|(index, info)| {
                    let names: Vec<&str> = info.present.iter().map(|user| user.as_str()).collect();
                    format!("node {} [{}]", index + 1, names.join(","))
                })
                .collect();
            found.push(format!("room {room}: {}", lists.join(" vs ")));
        }
    }
    found
}
