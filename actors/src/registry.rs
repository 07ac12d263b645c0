//! `Registry`: the one actor that knows every room. It creates a room on first use, finds
//! existing ones, and retires idle rooms lazily (checked while resolving, at most every quarter
//! of the idle time), so no timer task is needed and virtual time stays in charge.
//!
//! It does no store I/O in its mailbox: a durable room that is not live is loaded on a blocking
//! thread, and the callers asking for it wait while the registry answers for other rooms (a big
//! room's load once stalled every new room behind it). Listing rooms does not pass through the
//! registry at all (`Engine::rooms_page`).

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use confab_engine::{InjectedBug, Limits, Persistence, Room, RoomError, RoomName, Time};
use kameo::Actor;
use kameo::actor::{ActorRef, Spawn};
use kameo::mailbox;
use kameo::message::{Context, Message};
use kameo::reply::{DelegatedReply, ReplySender};

use crate::answer::Answer;
use crate::clock::Clock;
use crate::presence::PresenceHandle;
use crate::room_actor::{Durability, RetireIfIdle, RoomActor};
use crate::room_log::{LoadedRoom, RoomLog};
use crate::stats::EngineStats;
use crate::store::HistoryStore;
use crate::store::writer::{Writer, WriterThread};

/// The registry's map of live rooms, shared read-only with every [`Directory`](crate::directory)
/// so that a request to a known room skips the registry's mailbox. Only the registry writes it.
#[derive(Clone, Default)]
pub(crate) struct RoomTable(Arc<RwLock<BTreeMap<RoomName, ActorRef<RoomActor>>>>);

impl RoomTable {
    fn read(&self) -> RwLockReadGuard<'_, BTreeMap<RoomName, ActorRef<RoomActor>>> {
        // Writers only insert or remove one entry, so a poisoned lock still holds a valid map.
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, BTreeMap<RoomName, ActorRef<RoomActor>>> {
        self.0.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// The room's actor, if it is live.
    pub(crate) fn get(&self, name: &RoomName) -> Option<ActorRef<RoomActor>> {
        self.read().get(name).filter(|actor| actor.is_alive()).cloned()
    }

    /// Up to `len` live rooms named after `after` that `visible` keeps, in name order (a copy:
    /// no lock is held across awaits).
    pub(crate) fn page_after(
        &self,
        after: Option<&RoomName>,
        len: usize,
        visible: &(dyn Fn(&RoomName) -> bool + Send + Sync),
    ) -> Vec<(RoomName, ActorRef<RoomActor>)> {
        let from = match after {
            Some(after) => std::ops::Bound::Excluded(after),
            None => std::ops::Bound::Unbounded,
        };
        let rooms = self.read();
        let live = rooms
            .range::<RoomName, _>((from, std::ops::Bound::Unbounded))
            .filter(|(name, actor)| actor.is_alive() && visible(name));
        live.take(len).map(|(name, actor)| (name.clone(), actor.clone())).collect()
    }

    fn len(&self) -> usize {
        self.read().len()
    }

    /// Rooms whose actor is still running (a retired room may linger in the map until the
    /// next lookup of its name).
    pub(crate) fn live_len(&self) -> usize {
        self.read().values().filter(|actor| actor.is_alive()).count()
    }

    fn insert(&self, name: RoomName, actor: ActorRef<RoomActor>) {
        self.write().insert(name, actor);
    }

    fn remove(&self, name: &RoomName) {
        self.write().remove(name);
    }

    /// Every room, in name order (a copy, so no lock is held across awaits).
    fn snapshot(&self) -> Vec<(RoomName, ActorRef<RoomActor>)> {
        self.read().iter().map(|(name, actor)| (name.clone(), actor.clone())).collect()
    }

    fn take(&self) -> BTreeMap<RoomName, ActorRef<RoomActor>> {
        std::mem::take(&mut *self.write())
    }
}

/// A durable engine's store and the writer thread that appends to it (the local log).
pub(crate) struct Storage {
    pub(crate) store: Arc<dyn HistoryStore>,
    pub(crate) writer: Writer,
    /// Joined at shutdown, so the last commit is done and the file closed before the process
    /// exits (a file left open needs redb's repair at the next start).
    pub(crate) thread: WriterThread,
}

/// Rooms whose stored history is damaged, remembered so that a client asking again and again
/// does not make the registry read the damage again; at most one entry per stored room.
type Fenced = BTreeMap<RoomName, RoomError>;

/// How long shutdown waits for the writer thread to finish its queued commits. A commit
/// takes milliseconds; this only bounds a stuck disk.
const WRITER_JOIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Capacity of a room actor's mailbox: requests from many clients queue here.
pub(crate) const ROOM_MAILBOX_LEN: usize = 4_096;

/// The room registry actor.
#[derive(Actor)]
pub(crate) struct Registry {
    rooms: RoomTable,
    limits: Arc<Limits>,
    clock: Clock,
    /// Epoch of the next room created: `epoch_base + rooms created so far`, so a recreated room
    /// never reuses an epoch within one engine.
    next_epoch: u64,
    last_sweep: Time,
    /// Handed to every room created (tests of the checkers only).
    injected_bug: Option<InjectedBug>,
    /// Where durable rooms are loaded from and append to; `None`: rooms live in memory only,
    /// or the engine has shut down (see `durable`).
    log: Option<EngineLog>,
    /// The local log's store and writer, to close at shutdown.
    storage: Option<Storage>,
    /// Whether the engine was started with a log: after shutdown took it, a durable
    /// engine refuses new rooms rather than quietly keeping them in memory.
    durable: bool,
    /// Rooms refused because their stored history is damaged.
    fenced: Fenced,
    /// Rooms being loaded from the store on a blocking thread, with the callers waiting for
    /// them: the registry goes on answering for other rooms meanwhile.
    loading: BTreeMap<RoomName, Vec<Waiter>>,
    /// The engine's counters, handed to every room.
    stats: Arc<EngineStats>,
    /// The node's presence task (cluster mode), handed to every room.
    presence: Option<PresenceHandle>,
}

/// A durable engine's room log, and who this engine is among the log's writers.
#[derive(Clone)]
pub(crate) struct EngineLog {
    pub(crate) log: Arc<dyn RoomLog>,
    /// This engine's run among the log's writers (0 for the local log: the one writer).
    pub(crate) node: u64,
    /// Whether other engines write the log too (cluster mode).
    pub(crate) replicated: bool,
}

/// Where a durable engine keeps its rooms: the log, and the local log's store and writer (to
/// close at shutdown).
pub(crate) struct Durable {
    pub(crate) log: EngineLog,
    pub(crate) storage: Option<Storage>,
}

/// The answer to a [`Resolve`].
type Resolved = Answer<Option<ActorRef<RoomActor>>, RoomError>;

/// A caller waiting for a room that is being loaded.
struct Waiter {
    create: bool,
    reply: ReplySender<Resolved>,
}

impl Registry {
    pub(crate) fn new(
        limits: Arc<Limits>,
        clock: Clock,
        epoch_base: u64,
        injected_bug: Option<InjectedBug>,
        durable: Option<Durable>,
        rooms: RoomTable,
        stats: Arc<EngineStats>,
    ) -> Self {
        let (log, storage) = match durable {
            Some(Durable { log, storage }) => (Some(log), storage),
            None => (None, None),
        };
        let last_sweep = Time::from_millis(0);
        let durable = log.is_some();
        let (fenced, loading) = (Fenced::new(), BTreeMap::new());
        Self {
            rooms,
            limits,
            clock,
            next_epoch: epoch_base,
            last_sweep,
            injected_bug,
            log,
            storage,
            durable,
            fenced,
            loading,
            stats,
            presence: None,
        }
    }

    /// Rooms report to and hear from this presence task (cluster mode).
    pub(crate) fn with_presence(mut self, presence: Option<PresenceHandle>) -> Self {
        self.presence = presence;
        self
    }

    /// Starts a room: restored from `stored` if its log holds it, else a new room if `create`
    /// is set, else `Ok(None)`. No I/O: a durable room was loaded before.
    fn start_room(
        &mut self,
        name: &RoomName,
        create: bool,
        stored: Option<LoadedRoom>,
    ) -> Result<Option<ActorRef<RoomActor>>, RoomError> {
        let now = self.clock.now();
        let persistence = if self.log.is_some() { Persistence::Deferred } else { Persistence::Immediate };
        let last_position = stored.as_ref().map(|stored| stored.last_position).unwrap_or_default();
        let mut room = match stored {
            Some(stored) => {
                // Refused here rather than trusted into a room whose invariants would then
                // fail (and take the registry down).
                if !stored.is_consistent() {
                    return Err(RoomError::DataLoss {
                        reason: format!(
                            "room {name}: its log's tail does not end at #{} without gaps; not loaded",
                            stored.last_seq
                        ),
                    });
                }
                Room::restore(name.clone(), stored.epoch, &self.limits, now, persistence, stored.last_seq, stored.tail)
            }
            None if create => {
                // A replicated log gives every room its epoch, the same on every node.
                let epoch = self.log.as_ref().and_then(|log| log.log.epoch()).unwrap_or_else(|| {
                    let epoch = self.next_epoch;
                    self.next_epoch += 1;
                    epoch
                });
                let mut room = Room::new(name.clone(), epoch, &self.limits, now);
                room.set_persistence(persistence);
                room
            }
            None => return Ok(None),
        };
        if let Some(bug) = self.injected_bug {
            room.inject_bug(bug);
        }
        let durability = self.log.as_ref().map(|log| Durability {
            log: Arc::clone(&log.log),
            node: log.node,
            last_position,
            replicated: log.replicated,
        });
        let actor =
            RoomActor::new(room, &self.limits, self.clock, durability, Arc::clone(&self.stats), self.presence.clone());
        self.stats.room_created();
        let actor = RoomActor::spawn_with_mailbox(actor, mailbox::bounded(ROOM_MAILBOX_LEN));
        self.rooms.insert(name.clone(), actor.clone());
        Ok(Some(actor))
    }

    /// Answers a [`Resolve`] now, or, for a durable room that is not live, loads it on a
    /// blocking thread and answers every caller waiting for it when [`Loaded`] comes back.
    async fn resolve(&mut self, name: RoomName, create: bool, reply: ReplySender<Resolved>, registry: &ActorRef<Self>) {
        if let Some(room) = self.rooms.get(&name) {
            return reply.send(Answer(Ok(Some(room))));
        }
        if let Some(refusal) = self.fenced.get(&name) {
            return reply.send(Answer(Err(refusal.clone())));
        }
        if let Some(waiters) = self.loading.get_mut(&name) {
            return waiters.push(Waiter { create, reply });
        }
        self.rooms.remove(&name);
        let taken = self.rooms.len() + self.loading.len();
        if taken >= self.limits.rooms_max && self.sweep().await == 0 {
            return reply.send(Answer(Err(RoomError::TooManyRooms { rooms_max: self.limits.rooms_max })));
        }
        let Some(log) = &self.log else {
            let answer = if self.durable {
                Err(RoomError::Storage { reason: "the engine has shut down".to_owned() })
            } else {
                self.start_room(&name, create, None)
            };
            return reply.send(Answer(answer));
        };
        self.loading.insert(name.clone(), vec![Waiter { create, reply }]);
        let (loading, registry) = (log.log.load(&name), registry.clone());
        tokio::spawn(async move {
            let stored = loading.await;
            // If the registry has stopped, the waiters' replies are dropped: they see it stopped.
            let _ = registry.tell(Loaded { room: name, stored }).await;
        });
    }

    /// Retires every idle room. Returns how many.
    async fn sweep(&mut self) -> usize {
        self.last_sweep = self.clock.now();
        // Every room is asked at once: one room with a long mailbox delays the sweep by its own
        // wait, not by the sum of all rooms' waits.
        let asks = self.rooms.snapshot().into_iter().map(|(name, room)| async move {
            // A room that already stopped counts as retired.
            (name, room.ask(RetireIfIdle).await.unwrap_or(true))
        });
        let mut retired = 0;
        for (name, idle) in futures::future::join_all(asks).await {
            if idle {
                self.rooms.remove(&name);
                retired += 1;
            }
        }
        retired
    }

    async fn sweep_if_due(&mut self) {
        // Often enough for a room that never got a message to go soon after its idle time.
        let interval = (self.limits.room_idle_ms / 4).min(self.limits.empty_room_idle_ms).max(1);
        if self.clock.now().millis_since(self.last_sweep) >= interval {
            self.sweep().await;
        }
    }
}

/// Find a room, creating it if `create` is set.
pub(crate) struct Resolve {
    pub(crate) room: RoomName,
    pub(crate) create: bool,
}

impl Message<Resolve> for Registry {
    type Reply = DelegatedReply<Resolved>;

    async fn handle(&mut self, resolve: Resolve, context: &mut Context<Self, Self::Reply>) -> Self::Reply {
        self.sweep_if_due().await;
        let registry = context.actor_ref().clone();
        let (delegated, reply) = context.reply_sender();
        // Always asked, never told: without a reply sender nobody is waiting.
        if let Some(reply) = reply {
            self.resolve(resolve.room, resolve.create, reply, &registry).await;
        }
        delegated
    }
}

/// A room's stored state, loaded away from the registry's mailbox.
struct Loaded {
    room: RoomName,
    stored: Result<Option<LoadedRoom>, RoomError>,
}

impl Message<Loaded> for Registry {
    type Reply = ();

    async fn handle(&mut self, loaded: Loaded, _: &mut Context<Self, Self::Reply>) {
        let Loaded { room: name, stored } = loaded;
        let waiters = self.loading.remove(&name).unwrap_or_default();
        let create = waiters.iter().any(|waiter| waiter.create);
        let answer = match (stored, &self.log) {
            (Err(refusal), _) => {
                if matches!(refusal, RoomError::DataLoss { .. }) {
                    tracing::error!(room = %name, %refusal, "a room's stored history is damaged; refusing that room");
                    self.fenced.insert(name.clone(), refusal.clone());
                }
                Err(refusal)
            }
            (Ok(stored), Some(_)) => self.start_room(&name, create, stored),
            (Ok(_), None) => Err(RoomError::Storage { reason: "the engine has shut down".to_owned() }),
        };
        // A room that one waiter asked to create exists for every waiter.
        for waiter in waiters {
            waiter.reply.send(Answer(answer.clone()));
        }
    }
}

/// Retire idle rooms now; replies how many were retired.
pub(crate) struct SweepIdle;

impl Message<SweepIdle> for Registry {
    type Reply = usize;

    async fn handle(&mut self, _: SweepIdle, _: &mut Context<Self, Self::Reply>) -> usize {
        self.sweep().await
    }
}

/// Stop every room (engine shutdown): their subscriptions end.
pub(crate) struct StopRooms;

impl Message<StopRooms> for Registry {
    type Reply = ();

    async fn handle(&mut self, _: StopRooms, ctx: &mut Context<Self, Self::Reply>) {
        // For good: once this is answered the registry is gone, so every later call is
        // refused (`EngineError::Stopped`) instead of starting rooms over with new epochs.
        ctx.stop();
        for (_, room) in self.rooms.take() {
            room.kill();
            room.wait_for_shutdown().await;
        }
        // The rooms held the other writer handles; dropping ours lets the thread finish
        // what is queued and end, and the store closes cleanly with the last `Arc`.
        self.log = None;
        if let Some(Storage { store, writer, thread }) = self.storage.take() {
            drop(writer);
            let joined = tokio::time::timeout(WRITER_JOIN_TIMEOUT, tokio::task::spawn_blocking(move || thread.join()));
            if !matches!(joined.await, Ok(Ok(()))) {
                tracing::warn!(timeout = ?WRITER_JOIN_TIMEOUT, "the history writer did not finish; the store may need repair at the next start");
            }
            drop(store);
        }
    }
}
