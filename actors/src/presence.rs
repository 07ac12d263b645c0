//! Presence and typing across nodes (cluster mode): the shell of the engine's
//! [`Roster`] over a [`PresenceBus`].
//!
//! One task per engine drives the roster: it takes what the node's rooms report (their local
//! members, a local user typing, a room that started and needs the remote members), the bus's
//! messages and the roster's one timer; it publishes what the roster has to send through a
//! bounded outbox, and tells live rooms what other nodes' users did (`RemoteMembers`,
//! `RemoteTyping`).
//!
//! Rooms report through an `Inbox` rather than a channel: a room's local members replace
//! what it reported before (so a burst of joins costs one announcement and nothing is lost to
//! a full queue), while typing notices, ephemeral, go through a bounded queue and are dropped
//! (and counted) when it is full.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use confab_engine::presence::{self, PresenceEvent, Roster};
use confab_engine::{RoomName, UserName};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use kameo::actor::ActorRef;
use tokio::sync::{Notify, broadcast, mpsc, oneshot};

use crate::clock::Clock;
use crate::room_actor::{RemoteMembers, RemoteTyping, RoomActor};

/// Encoded presence messages waiting to be published; more are dropped (and counted): a
/// presence message that cannot go out now is healed by the next full snapshot.
pub const OUTBOX_LEN_MAX: usize = 1_024;

/// Local typing notices waiting for the presence task; more are dropped (and counted).
pub const TYPING_QUEUE_LEN_MAX: usize = 1_024;

/// Messages a [`MemoryBus`] keeps for a subscriber that is behind; older ones are lost to it,
/// as a slow core NATS subscriber loses messages.
pub const MEMORY_BUS_LEN_MAX: usize = 4_096;

/// How soon the task tells a room again what it could not tell it (its mailbox was full).
const RETELL_DELAY: Duration = Duration::from_millis(100);

/// Why a [`PresenceBus`] could not do what was asked.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// The bus cannot be reached (no connection, closed).
    #[error("presence bus unavailable: {reason}")]
    Unavailable {
        /// What went wrong.
        reason: String,
    },
}

/// Where nodes publish presence messages and hear every node's (their own included), at most
/// once, in each sender's order, with loss allowed: core NATS, or [`MemoryBus`] in tests.
pub trait PresenceBus: Send + Sync + 'static {
    /// Publishes one encoded message to every subscriber.
    fn publish(&self, payload: Vec<u8>) -> BoxFuture<'static, Result<(), BusError>>;

    /// Every message published from now on.
    fn subscribe(&self) -> BoxFuture<'static, Result<BoxStream<'static, Vec<u8>>, BusError>>;
}

/// A bus in one process, for tests: every clone is the same bus. It can be told to lose
/// every message for a while ([`MemoryBus::set_losing`]).
#[derive(Clone, Debug)]
pub struct MemoryBus {
    sender: broadcast::Sender<Arc<Vec<u8>>>,
    losing: Arc<AtomicBool>,
}

impl Default for MemoryBus {
    fn default() -> Self {
        Self { sender: broadcast::channel(MEMORY_BUS_LEN_MAX).0, losing: Arc::new(AtomicBool::new(false)) }
    }
}

impl MemoryBus {
    /// A new bus with no subscriber.
    pub fn new() -> Self {
        Self::default()
    }

    /// While `losing`, every message published is lost (a partition, or a faulty network).
    pub fn set_losing(&self, losing: bool) {
        self.losing.store(losing, Ordering::Relaxed);
    }
}

impl PresenceBus for MemoryBus {
    fn publish(&self, payload: Vec<u8>) -> BoxFuture<'static, Result<(), BusError>> {
        if !self.losing.load(Ordering::Relaxed) {
            // No subscriber is not an error: nobody is listening yet.
            let _ = self.sender.send(Arc::new(payload));
        }
        Box::pin(async { Ok(()) })
    }

    fn subscribe(&self) -> BoxFuture<'static, Result<BoxStream<'static, Vec<u8>>, BusError>> {
        let receiver = self.sender.subscribe();
        Box::pin(async move {
            let stream = futures::stream::unfold(receiver, |mut receiver| async move {
                loop {
                    match receiver.recv().await {
                        Ok(payload) => return Some(((*payload).clone(), receiver)),
                        // Lost to a slow subscriber, as on core NATS: snapshots heal it.
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            });
            Ok(stream.boxed())
        })
    }
}

/// Presence across nodes for an engine ([`crate::EngineConfig::presence`]).
#[derive(Clone)]
#[non_exhaustive]
pub struct PresenceConfig {
    /// Where the nodes' presence messages go.
    pub bus: Arc<dyn PresenceBus>,
    /// The node's name, the same across its runs (`--node-id`), at most
    /// [`presence::NODE_NAME_BYTES_MAX`] bytes.
    pub node: String,
    /// This run of the node: must grow between runs (a server passes its start time), so the
    /// other nodes replace what the previous run said.
    pub incarnation: u64,
}

impl PresenceConfig {
    /// Run `incarnation` of node `node` on `bus`.
    pub fn new(bus: Arc<dyn PresenceBus>, node: impl Into<String>, incarnation: u64) -> Self {
        Self { bus, node: node.into(), incarnation }
    }
}

/// What the presence task counted, for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PresenceCounters {
    /// Messages handed to the bus.
    pub published: u64,
    /// Messages dropped because the outbox was full, or the bus refused them.
    pub publish_dropped: u64,
    /// Messages received from the bus (this node's own included).
    pub received: u64,
    /// Messages received that did not decode.
    pub undecodable: u64,
    /// Local typing notices dropped because their queue was full.
    pub typing_dropped: u64,
    /// Peers heard from and not gone.
    pub peers: u64,
}

/// The counters, shared by the task and the engine handle.
#[derive(Debug, Default)]
pub(crate) struct PresenceStats {
    published: AtomicU64,
    publish_dropped: AtomicU64,
    received: AtomicU64,
    undecodable: AtomicU64,
    typing_dropped: AtomicU64,
    peers: AtomicU64,
}

impl PresenceStats {
    pub(crate) fn snapshot(&self) -> PresenceCounters {
        PresenceCounters {
            published: self.published.load(Ordering::Relaxed),
            publish_dropped: self.publish_dropped.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
            undecodable: self.undecodable.load(Ordering::Relaxed),
            typing_dropped: self.typing_dropped.load(Ordering::Relaxed),
            peers: self.peers.load(Ordering::Relaxed),
        }
    }
}

/// What the rooms reported and the task has not taken yet.
#[derive(Default)]
struct Reports {
    /// Each room's latest local members (a later report replaces an earlier one).
    members: BTreeMap<RoomName, BTreeSet<UserName>>,
    /// Rooms that started and need the remote members.
    started: Vec<(RoomName, ActorRef<RoomActor>)>,
    /// Local typing notices, at most [`TYPING_QUEUE_LEN_MAX`].
    typing: VecDeque<(RoomName, UserName)>,
}

/// Where rooms report to the presence task (see the module).
#[derive(Default)]
struct Inbox {
    reports: Mutex<Reports>,
    notify: Notify,
}

/// How a room reaches the presence task. Cheap to clone.
#[derive(Clone)]
pub(crate) struct PresenceHandle {
    inbox: Arc<Inbox>,
    stats: Arc<PresenceStats>,
}

impl PresenceHandle {
    /// `room`'s local members are now `users`.
    pub(crate) fn local_members(&self, room: &RoomName, users: BTreeSet<UserName>) {
        self.report(|reports| {
            reports.members.insert(room.clone(), users);
        });
    }

    /// A local user is typing in `room`.
    pub(crate) fn local_typing(&self, room: &RoomName, user: UserName) {
        let mut dropped = false;
        self.report(|reports| {
            if reports.typing.len() < TYPING_QUEUE_LEN_MAX {
                reports.typing.push_back((room.clone(), user));
            } else {
                dropped = true;
            }
        });
        if dropped {
            self.stats.typing_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `room` started on this node: the task tells it the other nodes' users there.
    pub(crate) fn room_started(&self, room: &RoomName, actor: ActorRef<RoomActor>) {
        self.report(|reports| reports.started.push((room.clone(), actor)));
    }

    /// What the presence task counted so far.
    pub(crate) fn counters(&self) -> PresenceCounters {
        self.stats.snapshot()
    }

    fn report(&self, change: impl FnOnce(&mut Reports)) {
        change(&mut self.inbox.reports.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        self.inbox.notify.notify_one();
    }
}

/// The running presence task, stopped when this is dropped.
pub(crate) struct Presence {
    pub(crate) handle: PresenceHandle,
    _stop: oneshot::Sender<()>,
}

impl Presence {
    /// Starts the presence task on the current runtime (call inside the engine's runtime's
    /// context). `rooms` finds a live room to tell.
    pub(crate) fn start(config: PresenceConfig, clock: Clock, rooms: crate::registry::RoomTable) -> Self {
        let inbox = Arc::new(Inbox::default());
        let stats = Arc::new(PresenceStats::default());
        let handle = PresenceHandle { inbox: Arc::clone(&inbox), stats: Arc::clone(&stats) };
        let (stop, stopped) = oneshot::channel();
        let (outbox, outgoing) = mpsc::channel(OUTBOX_LEN_MAX);
        tokio::spawn(publish(Arc::clone(&config.bus), outgoing, Arc::clone(&stats)));
        let roster = Roster::new(&config.node, config.incarnation, clock.now());
        let task = Task { roster, clock, rooms, inbox, stats, outbox, retell: BTreeSet::new() };
        tokio::spawn(task.run(config.bus, stopped));
        Self { handle, _stop: stop }
    }
}

/// Publishes the outbox's messages, in order, until the task drops the outbox.
async fn publish(bus: Arc<dyn PresenceBus>, mut outgoing: mpsc::Receiver<Vec<u8>>, stats: Arc<PresenceStats>) {
    while let Some(payload) = outgoing.recv().await {
        match bus.publish(payload).await {
            Ok(()) => stats.published.fetch_add(1, Ordering::Relaxed),
            Err(_) => stats.publish_dropped.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// The presence task's state.
struct Task {
    roster: Roster,
    clock: Clock,
    rooms: crate::registry::RoomTable,
    inbox: Arc<Inbox>,
    stats: Arc<PresenceStats>,
    outbox: mpsc::Sender<Vec<u8>>,
    /// Rooms whose mailbox was full when they were to hear of remote members: told again.
    retell: BTreeSet<RoomName>,
}

impl Task {
    async fn run(mut self, bus: Arc<dyn PresenceBus>, mut stopped: oneshot::Receiver<()>) {
        let mut inbound = match bus.subscribe().await {
            Ok(inbound) => inbound,
            Err(error) => {
                // Cluster mode goes on without presence across nodes rather than not at all.
                tracing::warn!(%error, "cannot subscribe to the presence bus; presence stays local");
                futures::stream::pending().boxed()
            }
        };
        loop {
            self.drain();
            let now = self.clock.now();
            let mut wait = Duration::from_millis(self.roster.poll_timeout().millis_since(now));
            if !self.retell.is_empty() {
                wait = wait.min(RETELL_DELAY);
            }
            tokio::select! {
                biased;
                _ = &mut stopped => return,
                () = self.inbox.notify.notified() => self.take_reports(),
                payload = inbound.next() => match payload {
                    Some(payload) => self.received(&payload),
                    None => {
                        tracing::warn!("the presence bus ended; presence stays local");
                        inbound = futures::stream::pending().boxed();
                    }
                },
                () = tokio::time::sleep(wait) => {
                    self.roster.handle_timeout(self.clock.now());
                    let retell = std::mem::take(&mut self.retell);
                    for room in retell {
                        let users = self.roster.remote_members(&room);
                        self.tell_members(room, users);
                    }
                }
            }
        }
    }

    /// What the rooms reported goes to the roster; started rooms hear the remote members.
    fn take_reports(&mut self) {
        let reports =
            std::mem::take(&mut *self.inbox.reports.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        for (room, users) in reports.members {
            self.roster.handle_local_members(room, users);
        }
        for (room, user) in reports.typing {
            self.roster.handle_local_typing(room, user);
        }
        for (room, actor) in reports.started {
            let users = self.roster.remote_members(&room);
            if !users.is_empty() && actor.tell(RemoteMembers(users)).try_send().is_err() {
                self.retell.insert(room);
            }
        }
    }

    fn received(&mut self, payload: &[u8]) {
        self.stats.received.fetch_add(1, Ordering::Relaxed);
        match presence::decode(payload) {
            Ok(message) => self.roster.handle_message(message, self.clock.now()),
            Err(error) => {
                self.stats.undecodable.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%error, "ignoring a presence message");
            }
        }
    }

    /// Publishes what the roster has to send and tells rooms what changed.
    fn drain(&mut self) {
        while let Some(message) = self.roster.poll_transmit() {
            if self.outbox.try_send(presence::encode(&message)).is_err() {
                self.stats.publish_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        while let Some(event) = self.roster.poll_event() {
            match event {
                PresenceEvent::Members { room, users } => self.tell_members(room, users),
                PresenceEvent::Typing { room, user } => {
                    if let Some(actor) = self.rooms.get(&room) {
                        // Ephemeral: a full mailbox loses it.
                        let _ = actor.tell(RemoteTyping(user)).try_send();
                    }
                }
            }
        }
        self.stats.peers.store(self.roster.peers().len() as u64, Ordering::Relaxed);
    }

    /// Tells `room`, if live here, its remote members; again later if its mailbox is full.
    fn tell_members(&mut self, room: RoomName, users: BTreeSet<UserName>) {
        let Some(actor) = self.rooms.get(&room) else { return };
        if let Err(kameo::error::SendError::MailboxFull(_)) = actor.tell(RemoteMembers(users)).try_send() {
            self.retell.insert(room);
        }
    }
}
