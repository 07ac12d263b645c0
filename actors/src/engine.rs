//! The [`Engine`] handle: the one API that transports, the simulator and embedders use.
//!
//! Its futures and streams only use tokio's runtime-independent channels, so they can be
//! awaited from any executor (tokio, smol, async-std, `futures::executor`). The actors
//! themselves always run on a tokio runtime: the caller's ([`Engine::start`]) or a thread of the
//! engine's own ([`Engine::start_background`]). Actor spawns enter that runtime's context, so
//! even those work from a thread that runs no tokio.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use confab_engine::{
    ClientFrame, Draft, HistoryPage, Limits, Receipt, RoomError, RoomEvent, RoomName, Sent, Seq, ServerFrame, Session,
    UploadAggregator, UserName,
};
use futures::stream::FuturesUnordered;
use futures::{Stream, StreamExt as _};
use kameo::actor::{ActorRef, Spawn, WeakActorRef};
use kameo::mailbox;
use tokio::sync::{mpsc, oneshot};

use crate::clock::Clock;
use crate::directory::Directory;
use crate::error::{EngineError, StartError};
use crate::health::EngineHealth;
use crate::log_health::{self, LogHealth};
use crate::presence::{Presence, PresenceConfig, PresenceCounters};
use crate::registry::{Durable, EngineLog, Registry, RoomTable, StopRooms, Storage, SweepIdle};
use crate::ring::{ReaderItem, RingReader, SharedEvent, Stalled, StreamEnd};
use crate::room_actor::{History, Info, LogEntries, RoomInfo, SendMessage, Subscribe, Typing};
use crate::room_log::RoomLog;
use crate::session_actor::{Close, Disconnect, Frame, Outbound, RoomStopped, SessionActor};
use crate::stats::{EngineStats, StatsSnapshot};
use crate::store::LocalLog;
use crate::store::writer::Writer;
use crate::store::{HistoryStore, StoreState};
use crate::upload_actor::{Chunk, Commit, UploadActor};

/// Capacity of the registry's mailbox: every room lookup passes through it.
const REGISTRY_MAILBOX_LEN: usize = 4_096;

/// Capacity of an upload actor's mailbox: a client streams chunks into it.
const UPLOAD_MAILBOX_LEN: usize = 64;

/// Up to `len` stored rooms after `after` that `visible` keeps, read a page of records at a time.
fn visible_summaries(
    store: &dyn HistoryStore,
    mut after: Option<RoomName>,
    len: usize,
    visible: &(dyn Fn(&RoomName) -> bool + Send + Sync),
) -> Result<Vec<crate::store::StoredSummary>, crate::store::StoreError> {
    let mut kept = Vec::new();
    loop {
        let read = store.room_summaries(after.as_ref(), ROOMS_PAGE_MAX)?;
        let last_page = read.len() < ROOMS_PAGE_MAX;
        after = read.last().map(|summary| summary.name.clone());
        kept.extend(read.into_iter().filter(|summary| visible(&summary.name)));
        if kept.len() >= len || last_page {
            kept.truncate(len);
            return Ok(kept);
        }
    }
}

/// Most rooms one [`Engine::rooms_page`] (and one ListRooms call) returns.
pub const ROOMS_PAGE_MAX: usize = 1_000;

/// One page of [`Engine::rooms_page`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RoomsPage {
    /// The rooms, in name order.
    pub rooms: Vec<RoomInfo>,
    /// Where the next page starts (pass it as `after`); `None` on the last page.
    pub next_after: Option<RoomName>,
}

/// How an engine is set up.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct EngineConfig {
    /// The limits it enforces.
    pub limits: Limits,
    /// Epoch of the first room created; later rooms count up from it. A server passes
    /// something that differs between runs (its start time), the simulator passes 0.
    pub epoch_base: u64,
    /// Where history is made durable. `None`: in memory only (a message is acknowledged as
    /// soon as it is sequenced, and a restart loses everything). With a store, a send is
    /// acknowledged and delivered only after the store made it durable (group commit).
    pub storage: Option<Arc<dyn HistoryStore>>,
    /// What engine time (`accepted_at`) reads at start, in milliseconds. A server passes the
    /// Unix time so timestamps survive restarts; the simulator passes 0.
    pub time_origin_ms: u64,
    /// Cluster mode: rooms are kept in this log, which other engines (nodes) append to too;
    /// each node sequences its own clients' messages, the log admits one per position, and a
    /// node that lost a position sequences its messages again after the winner. Reads catch
    /// up with the log first (read-your-writes across nodes). Exclusive with `storage`.
    pub replicated: Option<Replicated>,
    /// Presence and typing across nodes (cluster mode): each room shows the users of every
    /// node that shares this bus, and typing crosses nodes. `None`: presence stays local.
    pub presence: Option<PresenceConfig>,
    /// What only the simulator and tests set (feature `test-hooks`).
    #[cfg(feature = "test-hooks")]
    pub test_hooks: TestHooks,
}

/// Hooks for the simulator and tests, behind the `test-hooks` feature: a program has no use
/// for them, so they are not part of its [`EngineConfig`].
#[cfg(feature = "test-hooks")]
#[derive(Clone, Default)]
pub struct TestHooks {
    /// A log only this process writes, in place of the one `storage` would make: the
    /// simulator's store with injected faults (failed commits, crashes), so it drives the
    /// single-node durable path (pipelined appends, rollback) in virtual time, where the
    /// real writer thread would read the wall clock. Exclusive with `storage` and
    /// `replicated`; the log must say [`RoomLog::is_single_writer`].
    pub local_log: Option<Arc<dyn RoomLog>>,
    /// A deliberate defect in every room, to prove checkers catch it.
    pub injected_bug: Option<confab_engine::InjectedBug>,
}

impl EngineConfig {
    /// With these limits.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// With history made durable in `store` ([`EngineConfig::storage`]).
    pub fn with_storage(mut self, store: Arc<dyn HistoryStore>) -> Self {
        self.storage = Some(store);
        self
    }

    /// In cluster mode, over `replicated` ([`EngineConfig::replicated`]).
    pub fn with_replicated(mut self, replicated: Replicated) -> Self {
        self.replicated = Some(replicated);
        self
    }

    /// With presence and typing across nodes ([`EngineConfig::presence`]).
    pub fn with_presence(mut self, presence: PresenceConfig) -> Self {
        self.presence = Some(presence);
        self
    }

    /// With the first room's epoch ([`EngineConfig::epoch_base`]).
    pub fn with_epoch_base(mut self, epoch_base: u64) -> Self {
        self.epoch_base = epoch_base;
        self
    }

    /// With engine time starting at `time_origin_ms` ([`EngineConfig::time_origin_ms`]).
    pub fn with_time_origin_ms(mut self, time_origin_ms: u64) -> Self {
        self.time_origin_ms = time_origin_ms;
        self
    }

    /// The test hooks' local log and injected bug (none without the `test-hooks` feature).
    fn hooks(&self) -> (Option<Arc<dyn RoomLog>>, Option<confab_engine::InjectedBug>) {
        #[cfg(feature = "test-hooks")]
        return (self.test_hooks.local_log.clone(), self.test_hooks.injected_bug);
        #[cfg(not(feature = "test-hooks"))]
        (None, None)
    }
}

impl std::fmt::Debug for EngineConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineConfig")
            .field("limits", &self.limits)
            .field("epoch_base", &self.epoch_base)
            .field("durable", &self.storage.is_some())
            .field("time_origin_ms", &self.time_origin_ms)
            .finish_non_exhaustive()
    }
}

/// A log several engines share (see [`EngineConfig::replicated`]).
#[derive(Clone)]
#[non_exhaustive]
pub struct Replicated {
    /// The log.
    pub log: Arc<dyn RoomLog>,
    /// This engine's run among the log's writers: unique to the run (a restarted node must
    /// not take an earlier run's appends for its own), and never 0 (the local log's).
    pub node: u64,
}

impl Replicated {
    /// Engine run `node` (not 0) of the writers of `log`.
    pub fn new(log: Arc<dyn RoomLog>, node: u64) -> Self {
        Self { log, node }
    }
}

/// How a session behaves, for [`Engine::open_session_with`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SessionOptions {
    /// Acknowledge each accepted send with a [`ServerFrame::SendAck`] (default). Off for a
    /// transport that has no place for acknowledgements; refusals are still sent.
    pub acks: bool,
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self { acks: true }
    }
}

impl SessionOptions {
    /// No [`ServerFrame::SendAck`] frames.
    pub fn without_acks() -> Self {
        Self { acks: false }
    }
}

/// A handle to a running engine. Cheap to clone; the engine stops when the last clone is
/// dropped or [`Engine::shutdown`] is called.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use confab_actors::{Engine, EngineConfig, StreamItem};
/// use confab_engine::{Draft, RoomName, UserName};
/// use futures::StreamExt;
///
/// let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
/// runtime.block_on(async {
///     let engine = Engine::start(EngineConfig::default())?;
///     let room = RoomName::new("lobby")?;
///     let mut events = engine.subscribe(&room, None, None).await?;
///     let draft = Draft { user: UserName::new("ann")?, client_msg_id: None, body: "hello".into() };
///     let sent = engine.send(&room, draft).await?;
///     assert_eq!(sent.seq, 1);
///     let _subscribed = events.next().await; // first event: where the subscription starts
///     let Some(StreamItem::Next(message)) = events.next().await else { panic!("the message") };
///     assert_eq!(message.seq(), Some(1));
///     Ok::<_, Box<dyn std::error::Error>>(())
/// })?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    directory: Directory,
    /// The room table, read by [`Engine::stats`] to count live rooms.
    rooms: RoomTable,
    stats: Arc<EngineStats>,
    /// Whether the store commits (durable engines), for [`Engine::health`].
    store_state: Option<Arc<StoreState>>,
    /// Whether the replicated log commits (cluster mode), for [`Engine::health`].
    log_health: Option<Arc<LogHealth>>,
    /// The store, for listing rooms. Weak: the registry owns it and drops it at shutdown, which
    /// closes the file; a listing after that sees no store.
    store: std::sync::Weak<dyn HistoryStore>,
    limits: Arc<Limits>,
    runtime: tokio::runtime::Handle,
    /// Cluster mode: dropping it ends the task that feeds the log's entries to the rooms.
    _follower: Option<oneshot::Sender<()>>,
    /// Cluster mode: dropping it ends the task that probes the log for `log_health`.
    _prober: Option<oneshot::Sender<()>>,
    /// Presence across nodes: dropping it ends the presence task.
    presence: Option<Presence>,
    /// For `start_background`: dropping it ends the runtime thread.
    _background: Option<oneshot::Sender<()>>,
}

/// Entries a follower takes from the log's feed at once.
const FOLLOW_BATCH_LEN_MAX: usize = 256;

/// Entries of one room a follower holds while the room's mailbox is full (a room starved of
/// CPU under a hot room), to hand over in one message once it has room. Past this the oldest
/// are let go: the room sees the gap and reads them from the log instead.
const FOLLOW_HELD_PER_ROOM_MAX: usize = 4_096;

/// How soon a follower holding entries tries again to hand them to their rooms.
const FOLLOW_RETRY_INTERVAL: std::time::Duration = std::time::Duration::from_millis(5);

/// The node's follower: hands each room the entries of its log that the feed brings, in order.
/// It never waits for one room's full mailbox (every other room's feed would wait too): it
/// holds that room's entries and tries again, so a room that falls behind gets them late, in
/// one message, rather than not at all (losing them would make it read the log, and a room
/// further behind than the log keeps must reload).
async fn follow_log(
    feed: futures::stream::BoxStream<'static, confab_engine::LogEntry>,
    rooms: RoomTable,
    mut stopped: oneshot::Receiver<()>,
) {
    use futures::StreamExt;
    let mut batches = feed.ready_chunks(FOLLOW_BATCH_LEN_MAX);
    let mut held: BTreeMap<RoomName, Vec<confab_engine::LogEntry>> = BTreeMap::new();
    loop {
        let batch = tokio::select! {
            biased;
            _ = &mut stopped => return,
            batch = batches.next() => match batch {
                Some(batch) => batch,
                None => return,
            },
            () = tokio::time::sleep(FOLLOW_RETRY_INTERVAL), if !held.is_empty() => Vec::new(),
        };
        for entry in batch {
            held.entry(entry.message.room.clone()).or_default().push(entry);
        }
        hand_over(&mut held, &rooms);
    }
}

/// Tells each room its held entries; keeps (at most [`FOLLOW_HELD_PER_ROOM_MAX`] of) those of
/// rooms whose mailbox is full. A room that is not running forgets them: it loads from the log
/// when it is used again.
fn hand_over(held: &mut BTreeMap<RoomName, Vec<confab_engine::LogEntry>>, rooms: &RoomTable) {
    held.retain(|room, entries| {
        let Some(actor) = rooms.get(room) else { return false };
        let run = std::mem::take(entries);
        match actor.tell(LogEntries { entries: Ok(run), read: false }).try_send() {
            Err(kameo::error::SendError::MailboxFull(LogEntries { entries: Ok(back), .. })) => {
                *entries = back;
                let excess = entries.len().saturating_sub(FOLLOW_HELD_PER_ROOM_MAX);
                entries.drain(..excess);
                true
            }
            _ => false,
        }
    });
}

impl Engine {
    /// Starts an engine on the current tokio runtime.
    pub fn start(config: EngineConfig) -> Result<Self, StartError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| StartError::NoRuntime)?;
        Self::start_on(runtime, config, None)
    }

    /// Starts an engine on a tokio runtime thread of its own, for programs that run no tokio
    /// (smol, async-std, plain threads). The thread ends when the last handle is dropped.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use confab_actors::{Engine, EngineConfig};
    /// use confab_engine::{Draft, RoomName, UserName};
    ///
    /// let engine = Engine::start_background(EngineConfig::default())?;
    /// let room = RoomName::new("lobby")?;
    /// let draft = Draft { user: UserName::new("ann")?, client_msg_id: None, body: "hi".into() };
    /// let sent = futures::executor::block_on(engine.send(&room, draft))?;
    /// assert_eq!(sent.seq, 1);
    /// # Ok(())
    /// # }
    /// ```
    pub fn start_background(config: EngineConfig) -> Result<Self, StartError> {
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(StartError::Runtime)?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("confab-engine".into())
            .spawn(move || {
                // Runs the actors until every Engine handle is gone.
                let _ = runtime.block_on(stopped);
            })
            .map_err(StartError::Runtime)?;
        Self::start_on(handle, config, Some(stop))
    }

    fn start_on(
        runtime: tokio::runtime::Handle,
        config: EngineConfig,
        background: Option<oneshot::Sender<()>>,
    ) -> Result<Self, StartError> {
        let (local_log, injected_bug) = config.hooks();
        let mut limits = config.limits;
        if let Some(replicated) = &config.replicated {
            // An upload is one append, all or nothing (G6): no longer than the log takes.
            limits.upload_messages_max = limits.upload_messages_max.min(replicated.log.append_len_max());
        }
        let limits = Arc::new(limits);
        let store_state = config.storage.as_ref().map(|_| Arc::new(StoreState::default()));
        let store = match &config.storage {
            Some(store) => Arc::downgrade(store),
            None => std::sync::Weak::<crate::store::MemoryStore>::new() as std::sync::Weak<dyn HistoryStore>,
        };
        let logs = [config.storage.is_some(), config.replicated.is_some(), local_log.is_some()];
        if logs.into_iter().filter(|given| *given).count() > 1 {
            return Err(StartError::Config(
                "an engine keeps rooms in one place: a store, a replicated log or a local log",
            ));
        }
        if local_log.as_ref().is_some_and(|log| !log.is_single_writer()) {
            return Err(StartError::Config("a local log must be one only this process writes"));
        }
        if config.replicated.as_ref().is_some_and(|replicated| replicated.node == 0) {
            return Err(StartError::Config("a replicated log's node number must not be 0 (the local log's)"));
        }
        let storage = match (config.storage, &store_state) {
            (Some(store), Some(state)) => {
                let (writer, thread) =
                    Writer::start(Arc::clone(&store), Arc::clone(state)).map_err(StartError::Writer)?;
                Some(Storage { store, writer, thread })
            }
            _ => None,
        };
        let durable = match (storage, &config.replicated) {
            // A single process writes the local log: its appends all come from node 0.
            (Some(storage), _) => Some(Durable {
                log: EngineLog {
                    log: Arc::new(LocalLog::new(Arc::clone(&storage.store), storage.writer.clone())),
                    node: 0,
                    replicated: false,
                },
                storage: Some(storage),
            }),
            (None, Some(replicated)) => Some(Durable {
                log: EngineLog { log: Arc::clone(&replicated.log), node: replicated.node, replicated: true },
                storage: None,
            }),
            // Like the store's local log, with the simulator's store behind it.
            (None, None) => {
                local_log.map(|log| Durable { log: EngineLog { log, node: 0, replicated: false }, storage: None })
            }
        };
        let follow = config.replicated.as_ref().and_then(|replicated| replicated.log.follow());
        let rooms = RoomTable::default();
        let stats = Arc::new(EngineStats::default());
        let (registry, presence) = {
            let _context = runtime.enter();
            let clock = Clock::start(config.time_origin_ms);
            let presence = config.presence.map(|presence| Presence::start(presence, clock, rooms.clone()));
            let registry = Registry::new(
                Arc::clone(&limits),
                clock,
                config.epoch_base,
                injected_bug,
                durable,
                rooms.clone(),
                Arc::clone(&stats),
            )
            .with_presence(presence.as_ref().map(|presence| presence.handle.clone()));
            (Registry::spawn_with_mailbox(registry, mailbox::bounded(REGISTRY_MAILBOX_LEN)), presence)
        };
        let (log_health, prober) = match &config.replicated {
            Some(replicated) => {
                let _context = runtime.enter();
                log_health::start(&replicated.log).unzip()
            }
            None => (None, None),
        };
        let follower = follow.map(|feed| {
            let (stop, stopped) = oneshot::channel();
            runtime.spawn(follow_log(feed, rooms.clone(), stopped));
            stop
        });
        let directory = Directory::new(registry, rooms.clone(), config.replicated.is_some(), log_health.clone());
        let inner = Inner {
            directory,
            rooms,
            stats,
            store_state,
            log_health,
            store,
            limits,
            runtime,
            _follower: follower,
            _prober: prober,
            presence,
            _background: background,
        };
        Ok(Self { inner: Arc::new(inner) })
    }

    /// The limits this engine enforces.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// A snapshot of the engine's counters (rooms, sessions, messages, deliveries, lag), for
    /// metrics. Cheap: a few relaxed atomic loads and one pass over the room table.
    pub fn stats(&self) -> StatsSnapshot {
        let rooms = u64::try_from(self.inner.rooms.live_len()).unwrap_or(u64::MAX);
        self.inner.stats.snapshot(rooms)
    }

    /// What presence across nodes counted (`None` without [`EngineConfig::presence`]).
    pub fn presence_counters(&self) -> Option<PresenceCounters> {
        self.inner.presence.as_ref().map(|presence| presence.handle.counters())
    }

    /// Whether the engine can serve: its registry runs, its store (if any) commits, and its
    /// replicated log (cluster mode) passed its last probe. A health check reads it; it is
    /// cheap (an atomic load and a lock held for a copy).
    pub fn health(&self) -> EngineHealth {
        if !self.inner.directory.registry().is_alive() {
            return EngineHealth::Stopped;
        }
        if let Some(error) = self.inner.store_state.as_ref().and_then(|state| state.failure()) {
            return EngineHealth::StoreFailing(error);
        }
        match self.inner.log_health.as_ref().and_then(|health| health.failure()) {
            Some(cause) => EngineHealth::LogUnavailable(cause),
            None => EngineHealth::Serving,
        }
    }

    /// Sequences one message in `room` (created on first use). Returns its sequence number,
    /// or the original one for a retry with the same client message id (G4). When this
    /// returns, history and new subscriptions include the message (G7).
    pub async fn send(&self, room: &RoomName, draft: Draft) -> Result<Sent, EngineError> {
        let (_, sent) =
            self.existing(self.inner.directory.request(room, true, || SendMessage(draft.clone())).await?)?;
        Ok(sent)
    }

    /// Whether `room` is live in memory now: a read of the room table, no actor hop. A
    /// transport counts a use of a room that is not live as a creation (a stored room being
    /// loaded counts too).
    pub fn has_live_room(&self, room: &RoomName) -> bool {
        self.inner.rooms.get(room).is_some()
    }

    /// A page of `room`'s retained history after `after_seq`. `RoomError::NotFound` if the
    /// room does not exist.
    pub async fn history(&self, room: &RoomName, after_seq: Seq, limit: usize) -> Result<HistoryPage, EngineError> {
        let make = |unconfirmed| History { after_seq, limit, unconfirmed };
        match self.inner.directory.read(room, false, make).await? {
            Some((_, page)) => Ok(page),
            None => Err(RoomError::NotFound.into()),
        }
    }

    /// Subscribes to `room` (created on first use): live from now (`after_seq = None`) or
    /// resuming after `after_seq` (G5). The stream starts with [`RoomEvent::Subscribed`], then
    /// the backlog, then live events; its last item says why it ended ([`StreamEnd`]: the room
    /// stopped, or closed it for stalling). A `user` counts in the room's presence while
    /// subscribed.
    pub async fn subscribe(
        &self,
        room: &RoomName,
        user: Option<UserName>,
        after_seq: Option<Seq>,
    ) -> Result<RoomEvents, EngineError> {
        let make = |unconfirmed| Subscribe { user: user.clone(), after_seq, unconfirmed };
        let (_, (subscription, reader)) = self.existing(self.inner.directory.read(room, true, make).await?)?;
        let mut head = VecDeque::with_capacity(subscription.backlog.len() + 1);
        head.push_back(RoomEvent::Subscribed {
            room: room.clone(),
            epoch: subscription.epoch,
            recovered: subscription.recovered,
            first_seq: subscription.first_seq,
        });
        head.extend(subscription.backlog.into_iter().map(RoomEvent::Message));
        Ok(RoomEvents { head, reader, ended: false })
    }

    /// Tells `room`'s subscribers that `user` is typing.
    pub async fn typing(&self, room: &RoomName, user: UserName) -> Result<(), EngineError> {
        self.existing(self.inner.directory.request(room, true, || Typing(user.clone())).await?)?;
        Ok(())
    }

    /// Starts an upload into `room`: push messages, then [`Upload::commit`] appends them as
    /// one contiguous run (G6). Dropping the upload without committing aborts it.
    pub fn upload(&self, room: &RoomName) -> Upload {
        let aggregator = UploadAggregator::new(room.clone(), &self.inner.limits);
        let actor = {
            let _context = self.inner.runtime.enter();
            let upload = UploadActor::new(aggregator, self.inner.directory.clone());
            UploadActor::spawn_with_mailbox(upload, mailbox::bounded(UPLOAD_MAILBOX_LEN))
        };
        Upload { actor, finished: false }
    }

    /// Opens a bidirectional session for `user`: send [`ClientFrame`]s with the
    /// [`SessionSender`], read [`ServerFrame`]s from [`SessionEvents`].
    pub fn open_session(&self, user: UserName) -> (SessionSender, SessionEvents) {
        self.open_session_with(user, SessionOptions::default())
    }

    /// [`Engine::open_session`] with options.
    pub fn open_session_with(&self, user: UserName, options: SessionOptions) -> (SessionSender, SessionEvents) {
        let (outbound, control) = mpsc::channel(self.inner.limits.session_outbound_len_max.max(1));
        let mut session = Session::new(user, self.inner.limits.session_rooms_max);
        if !options.acks {
            session = session.without_acks();
        }
        let actor = {
            let _context = self.inner.runtime.enter();
            let stats = Arc::clone(&self.inner.stats);
            let actor = SessionActor::new(session, self.inner.directory.clone(), outbound, stats);
            // Client frames wait in this mailbox (room events never do: the stream reads rings).
            let mailbox = mailbox::bounded(self.inner.limits.subscriber_queue_len_max.max(1));
            SessionActor::spawn_with_mailbox(actor, mailbox)
        };
        if !self.inner.directory.registry().is_alive() {
            // The engine shut down: the session is closed at once (its sends answer
            // `SessionClosed`, its stream ends) rather than refusing every join as retired.
            actor.kill();
        }
        let events = SessionEvents {
            control,
            control_open: true,
            readers: BTreeMap::new(),
            finish: None,
            ready: VecDeque::new(),
            ended: false,
            actor: actor.downgrade(),
            notices: FuturesUnordered::new(),
        };
        (SessionSender { actor, closed: false }, events)
    }

    /// Every room, in name order: [`Engine::rooms_page`] until the last page.
    pub async fn rooms(&self) -> Result<Vec<RoomInfo>, EngineError> {
        let mut rooms = Vec::new();
        let mut after = None;
        loop {
            let page = self.rooms_page(after.as_ref(), ROOMS_PAGE_MAX).await?;
            rooms.extend(page.rooms);
            match page.next_after {
                Some(next) => after = Some(next),
                None => return Ok(rooms),
            }
        }
    }

    /// Up to `limit` rooms (at least 1, at most [`ROOMS_PAGE_MAX`]) named after `after`, in
    /// name order: live rooms with their subscribers and presence, and stored rooms nobody has
    /// used since the start from their stored numbers (no subscribers, nobody present).
    ///
    /// Listing loads no room and does not pass through the registry: the live rooms answer
    /// for themselves, concurrently, and the store is read on a blocking thread, one room
    /// record and one key per stored room. So a listing after a restart costs neither memory
    /// for every stored history nor a stall of the rooms being created meanwhile.
    pub async fn rooms_page(&self, after: Option<&RoomName>, limit: usize) -> Result<RoomsPage, EngineError> {
        self.visible_rooms_page(after, limit, Arc::new(|_: &RoomName| true)).await
    }

    /// [`Engine::rooms_page`] of only the rooms `visible` keeps (a caller's permissions): the
    /// page is filled with up to `limit` visible rooms, and `next_after` is the last of them, so
    /// no name the filter hides leaves the engine. Finding them may read past many hidden
    /// rooms (on a blocking thread, their records only).
    pub async fn visible_rooms_page(
        &self,
        after: Option<&RoomName>,
        limit: usize,
        visible: Arc<dyn Fn(&RoomName) -> bool + Send + Sync>,
    ) -> Result<RoomsPage, EngineError> {
        let limit = limit.clamp(1, ROOMS_PAGE_MAX);
        // One more than the page from each side tells whether a next page exists.
        let live = self.inner.rooms.page_after(after, limit + 1, visible.as_ref());
        let stored = match self.inner.store.upgrade() {
            Some(store) => {
                let after = after.cloned();
                let read = move || visible_summaries(store.as_ref(), after, limit + 1, visible.as_ref());
                match self.inner.runtime.spawn_blocking(read).await {
                    Ok(Ok(stored)) => stored,
                    Ok(Err(error)) => return Err(EngineError::Room(RoomError::Storage { reason: error.to_string() })),
                    Err(_) => return Err(EngineError::Stopped),
                }
            }
            None => Vec::new(),
        };
        let infos = futures::future::join_all(live.into_iter().map(|(_, actor)| async move { actor.ask(Info).await }));
        let mut merged: BTreeMap<RoomName, RoomInfo> = stored
            .into_iter()
            .map(|summary| {
                let info = RoomInfo {
                    name: summary.name.clone(),
                    epoch: summary.epoch,
                    last_seq: summary.last_seq,
                    first_retained_seq: summary.first_retained_seq,
                    subscribers: 0,
                    present: Vec::new(),
                };
                (summary.name, info)
            })
            .collect();
        // A live room's own answer wins; one that stopped meanwhile keeps its stored numbers.
        for info in infos.await.into_iter().flatten() {
            merged.insert(info.name.clone(), info);
        }
        let mut rooms: Vec<RoomInfo> = merged.into_values().take(limit + 1).collect();
        let next_after = if rooms.len() > limit {
            rooms.truncate(limit);
            rooms.last().map(|info| info.name.clone())
        } else {
            None
        };
        Ok(RoomsPage { rooms, next_after })
    }

    /// One room's snapshot, `None` if it does not exist.
    pub async fn room(&self, room: &RoomName) -> Result<Option<RoomInfo>, EngineError> {
        match self.inner.directory.resolve(room, false).await? {
            Some(actor) => actor.ask(Info).await.map(Some).map_err(|_| EngineError::Stopped),
            None => Ok(None),
        }
    }

    /// Retires idle rooms now (it also happens lazily); returns how many.
    pub async fn retire_idle_rooms(&self) -> Result<usize, EngineError> {
        self.inner.directory.registry().ask(SweepIdle).await.map_err(|_| EngineError::Stopped)
    }

    /// Stops every room, for good: subscriptions end after what their rooms published, the
    /// store (if any) finishes its writes and closes, and every later call is refused with
    /// [`EngineError::Stopped`] (a session opened later is closed at once). A second
    /// `shutdown` is refused the same way.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use confab_actors::{Engine, EngineConfig, EngineError};
    /// use confab_engine::{Draft, RoomName, UserName};
    ///
    /// let engine = Engine::start_background(EngineConfig::default())?;
    /// let room = RoomName::new("lobby")?;
    /// let draft = || Draft { user: UserName::new("ann").unwrap(), client_msg_id: None, body: "hi".into() };
    /// futures::executor::block_on(async {
    ///     engine.send(&room, draft()).await?;
    ///     engine.shutdown().await?;
    ///     assert_eq!(engine.send(&room, draft()).await, Err(EngineError::Stopped));
    ///     Ok::<_, EngineError>(())
    /// })?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn shutdown(&self) -> Result<(), EngineError> {
        self.inner.directory.registry().ask(StopRooms).await.map_err(|_| EngineError::Stopped)
    }

    fn existing<T>(&self, found: Option<T>) -> Result<T, EngineError> {
        // Only requests that create the room come here, so `None` means the registry is gone.
        found.ok_or(EngineError::Stopped)
    }
}

/// One item of a [`RoomEvents`] or [`SessionEvents`] stream: what it carries, then, as its last
/// item, why it ended; `None` follows the end.
#[derive(Clone, Debug, PartialEq, Eq)]
// Deliberately exhaustive: an item carries something or ends the stream, nothing else.
pub enum StreamItem<T> {
    /// An event (of a room subscription) or a frame (of a session).
    Next(T),
    /// The stream is over, for this reason.
    End(StreamEnd),
}

impl<T> StreamItem<T> {
    fn map<U>(self, change: impl FnOnce(T) -> U) -> StreamItem<U> {
        match self {
            StreamItem::Next(next) => StreamItem::Next(change(next)),
            StreamItem::End(end) => StreamItem::End(end),
        }
    }
}

/// The events of one room subscription. Dropping it unsubscribes.
///
/// It reads the room's ring directly: everything ready is taken in one go, and a reader that
/// fell more than [`Limits::subscriber_queue_len_max`] events behind gets a
/// [`RoomEvent::Lagged`] for exactly what it missed, then carries on (G2). Its last item is
/// [`StreamItem::End`]: [`StreamEnd::RoomStopped`] once it has read everything the stopped room
/// published, or [`StreamEnd::Stalled`] (after a final [`RoomEvent::Lagged`]) if the room
/// closed it for taking nothing for [`Limits::subscriber_stall_ms`] while lagging.
pub struct RoomEvents {
    /// `Subscribed` and the backlog, handed out before the ring is read.
    head: VecDeque<RoomEvent>,
    reader: RingReader,
    /// The end was handed out: only `None` follows.
    ended: bool,
}

impl RoomEvents {
    /// The next item, its event as shared with the room's other subscribers (for a transport
    /// that encodes each event once for all of them); the [`Stream`] gives the same items, each
    /// event owned.
    pub fn poll_next_shared(&mut self, cx: &mut TaskContext<'_>) -> Poll<Option<StreamItem<SharedEvent>>> {
        self.poll_item(cx, true)
    }

    fn poll_item(&mut self, cx: &mut TaskContext<'_>, shared: bool) -> Poll<Option<StreamItem<SharedEvent>>> {
        if let Some(event) = self.head.pop_front() {
            return Poll::Ready(Some(StreamItem::Next(SharedEvent::Own(event))));
        }
        if self.ended {
            return Poll::Ready(None);
        }
        let end = match self.reader.poll_item(cx, shared) {
            Poll::Ready(ReaderItem::Event(event)) => return Poll::Ready(Some(StreamItem::Next(event))),
            Poll::Ready(ReaderItem::Stalled(stalled)) => StreamEnd::Stalled(stalled),
            Poll::Ready(ReaderItem::Ended) => StreamEnd::RoomStopped,
            Poll::Pending => return Poll::Pending,
        };
        self.ended = true;
        Poll::Ready(Some(StreamItem::End(end)))
    }
}

impl Stream for RoomEvents {
    type Item = StreamItem<RoomEvent>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<StreamItem<RoomEvent>>> {
        self.poll_item(cx, false).map(|item| item.map(|item| item.map(SharedEvent::into_event)))
    }
}

/// An upload in progress. Push messages, then commit; dropping it aborts (commits nothing).
pub struct Upload {
    actor: ActorRef<UploadActor>,
    finished: bool,
}

impl Upload {
    /// Adds one message. A refused message (too big, over the upload's limits) leaves the
    /// upload as it was; the caller decides whether to abort.
    pub async fn push(&mut self, draft: Draft) -> Result<(), EngineError> {
        match self.actor.ask(Chunk(draft)).await {
            Ok(answer) => answer.0,
            Err(_) => Err(EngineError::Stopped),
        }
    }

    /// Commits every pushed message to the room as one contiguous run and returns the receipt.
    pub async fn commit(mut self) -> Result<Receipt, EngineError> {
        self.finished = true;
        match self.actor.ask(Commit).await {
            Ok(answer) => answer.0,
            Err(_) => Err(EngineError::Stopped),
        }
    }

    /// Aborts: nothing reaches the room (G6). Same as dropping the upload.
    pub fn abort(self) {}
}

impl Drop for Upload {
    fn drop(&mut self) {
        if !self.finished {
            self.actor.kill();
        }
    }
}

/// The client side of a session: frames in. Dropping it without [`SessionSender::close`]
/// disconnects the session at once.
pub struct SessionSender {
    actor: ActorRef<SessionActor>,
    closed: bool,
}

impl SessionSender {
    /// Sends one frame; waits while the session's mailbox is full (backpressure).
    pub async fn send(&self, frame: ClientFrame) -> Result<(), EngineError> {
        self.actor.tell(Frame(frame)).await.map_err(|_| EngineError::SessionClosed)
    }

    /// Sends one frame if the session's mailbox has room now. A full mailbox gives the frame
    /// back ([`TrySend::Full`]) for [`SessionSender::send_later`]; for a poll-driven
    /// transport that must not wait inside its `poll`.
    pub fn try_send(&self, frame: ClientFrame) -> TrySend {
        match self.actor.tell(Frame(frame)).try_send() {
            Ok(()) => TrySend::Sent,
            Err(kameo::error::SendError::MailboxFull(Frame(frame))) => TrySend::Full(frame),
            Err(_) => TrySend::Closed,
        }
    }

    /// Sends one frame once the session's mailbox has room, as a future that owns what it
    /// needs (to keep in a poll-driven transport's state).
    pub fn send_later(&self, frame: ClientFrame) -> impl Future<Output = Result<(), EngineError>> + Send + 'static {
        let actor = self.actor.clone();
        async move { actor.tell(Frame(frame)).await.map_err(|_| EngineError::SessionClosed) }
    }

    /// Half-closes: the session finishes (its event stream ends) once the client's own
    /// messages have come back to it.
    pub async fn close(mut self) -> Result<(), EngineError> {
        self.closed = true;
        self.actor.tell(Close).await.map_err(|_| EngineError::SessionClosed)
    }
}

impl Drop for SessionSender {
    fn drop(&mut self) {
        if !self.closed && self.actor.tell(Disconnect).try_send().is_err() {
            self.actor.kill();
        }
    }
}

/// What [`SessionSender::try_send`] did.
#[derive(Debug)]
// Deliberately exhaustive: a bounded mailbox takes the frame, is full, or is gone.
pub enum TrySend {
    /// The session has the frame.
    Sent,
    /// The session's mailbox is full: here is the frame back.
    Full(ClientFrame),
    /// The session is gone.
    Closed,
}

/// The server side of a session: frames out. Its last item says why it ended
/// ([`StreamEnd`]): the session finished, a room closed it for stalling, or it stopped.
///
/// It merges what the session actor says (acks, errors, each subscription's start and backlog)
/// with the events of every joined room, which it reads from the rooms' rings itself. Frames
/// about one room keep their order; a room's events follow its subscription's backlog.
pub struct SessionEvents {
    control: mpsc::Receiver<Outbound>,
    /// The session actor may still say something.
    control_open: bool,
    /// The joined rooms' ring readers, read in name order.
    readers: BTreeMap<RoomName, RingReader>,
    /// Set when the session finished: the rooms and messages to read up to before ending.
    finish: Option<Vec<(RoomName, Seq)>>,
    /// Items taken and not yet handed out (the end, last, once the stream ended).
    ready: VecDeque<SessionItem>,
    /// The stream ended: its end is the last item in `ready`, then only `None` follows.
    ended: bool,
    /// The session actor, stopped at once if a room closes the session for stalling: its
    /// client reads nothing, so nothing else could reach it either.
    actor: WeakActorRef<SessionActor>,
    /// Rooms that stopped under the stream, being told to the session actor.
    notices: FuturesUnordered<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl SessionEvents {
    /// Takes what the session actor said, up to its first frame.
    fn poll_control(&mut self, cx: &mut TaskContext<'_>) {
        while self.control_open && self.ready.is_empty() {
            match self.control.poll_recv(cx) {
                Poll::Ready(Some(Outbound::Frame(frame))) => self.ready.push_back(SessionItem::Frame(frame)),
                Poll::Ready(Some(Outbound::Attach(reader))) => {
                    self.readers.insert(reader.room().clone(), reader);
                }
                Poll::Ready(Some(Outbound::Detach(room))) => {
                    self.readers.remove(&room);
                }
                Poll::Ready(Some(Outbound::Finish(echoes))) => self.finish = Some(echoes),
                Poll::Ready(None) => self.control_open = false,
                Poll::Pending => return,
            }
        }
    }

    /// Takes what every joined room has ready: a batch from each, in name order, so a busy
    /// room cannot starve a quiet one. Returns why a room closed the session, if one closed
    /// it for stalling (its final lag marker is then the last item taken).
    fn poll_rooms(&mut self, cx: &mut TaskContext<'_>) -> Option<Stalled> {
        let mut gone = Vec::new();
        for (room, reader) in &mut self.readers {
            loop {
                match reader.poll_item(cx, true) {
                    Poll::Ready(ReaderItem::Event(event)) => self.ready.push_back(SessionItem::Event(event)),
                    Poll::Ready(ReaderItem::Stalled(stalled)) => return Some(stalled),
                    Poll::Ready(ReaderItem::Ended) => {
                        // The room stopped (or the session just left it): the session actor
                        // tells the client, which may join again with `after_seq`.
                        gone.push((room.clone(), reader.handle().identity()));
                        break;
                    }
                    Poll::Pending => break,
                }
                if !reader.has_taken() {
                    break;
                }
            }
        }
        for (room, subscription) in gone {
            self.readers.remove(&room);
            if let Some(actor) = self.actor.upgrade() {
                // Delivered once the session's mailbox has room (polled with the stream).
                let notice = async move {
                    let _ = actor.tell(RoomStopped { room, subscription }).await;
                };
                self.notices.push(Box::pin(notice));
            }
        }
        None
    }

    /// Whether a finished session's stream has carried each of the client's own messages.
    fn echoes_done(&self) -> bool {
        let Some(echoes) = &self.finish else { return false };
        echoes.iter().all(|(room, echo)| {
            self.readers.get(room).and_then(|reader| reader.handle().delivered()).is_none_or(|seq| seq >= *echo)
        })
    }

    /// Ends the stream for `reason`, its last item: every room is left and the session actor
    /// hears the client is gone.
    fn end(&mut self, reason: StreamEnd) {
        self.ended = true;
        self.ready.push_back(SessionItem::End(reason));
        self.readers.clear();
        self.control.close();
    }
}

impl SessionEvents {
    /// The next item, a room event as shared with the room's other readers (so a transport
    /// can encode it once for all of them: [`SharedEvent::encoded`]), and last the end; the
    /// stream's `poll_next` gives the same items, each event owned in a frame.
    pub fn poll_next_shared(&mut self, cx: &mut TaskContext<'_>) -> Poll<Option<SessionItem>> {
        loop {
            if let Some(item) = self.ready.pop_front() {
                return Poll::Ready(Some(item));
            }
            if self.ended {
                return Poll::Ready(None);
            }
            self.poll_control(cx);
            if !self.ready.is_empty() {
                continue;
            }
            if let Some(stalled) = self.poll_rooms(cx) {
                // The final lag marker is in `ready`; the end follows it.
                self.end(StreamEnd::Stalled(stalled));
                if let Some(actor) = self.actor.upgrade() {
                    actor.kill();
                }
                continue;
            }
            if !self.ready.is_empty() {
                continue;
            }
            while let Poll::Ready(Some(())) = self.notices.poll_next_unpin(cx) {}
            // Nothing ready anywhere (every source registered this task's waker): the session
            // finished and its echoes came back, or its actor is gone without finishing.
            if self.echoes_done() {
                self.end(StreamEnd::Finished);
                continue;
            }
            if !self.control_open && self.finish.is_none() {
                self.end(StreamEnd::SessionStopped);
                continue;
            }
            return Poll::Pending;
        }
    }
}

impl Stream for SessionEvents {
    type Item = StreamItem<ServerFrame>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<StreamItem<ServerFrame>>> {
        self.poll_next_shared(cx).map(|item| {
            item.map(|item| match item {
                SessionItem::Frame(frame) => StreamItem::Next(frame),
                SessionItem::Event(event) => StreamItem::Next(ServerFrame::Event(event.into_event())),
                SessionItem::End(end) => StreamItem::End(end),
            })
        })
    }
}

/// One item of a session's output ([`SessionEvents::poll_next_shared`]).
#[derive(Clone, Debug)]
// Deliberately exhaustive: a frame for this session alone, a room's shared event, or the end.
pub enum SessionItem {
    /// A frame for this session alone (acks, errors, `Left`, its own `Subscribed`).
    Frame(ServerFrame),
    /// An event of a joined room, as shared with the room's other readers.
    Event(SharedEvent),
    /// The stream is over, for this reason: the last item.
    End(StreamEnd),
}
