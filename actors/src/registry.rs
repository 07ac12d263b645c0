//! `Registry`: the one actor that knows every room. It creates a room on first use, finds
//! existing ones, lists them, and retires idle rooms lazily (checked while resolving, at most
//! every quarter of the idle time), so no timer task is needed and virtual time stays in charge.

use std::collections::BTreeMap;
use std::sync::Arc;

use confab_engine::{InjectedBug, Limits, Room, RoomError, RoomName, Time};
use kameo::Actor;
use kameo::actor::{ActorRef, Spawn};
use kameo::mailbox;
use kameo::message::{Context, Message};

use crate::answer::Answer;
use crate::clock::Clock;
use crate::room_actor::{Info, RetireIfIdle, RoomActor, RoomInfo};

/// Capacity of a room actor's mailbox: requests from many clients queue here.
pub(crate) const ROOM_MAILBOX_LEN: usize = 4_096;

/// The room registry actor.
#[derive(Actor)]
pub(crate) struct Registry {
    rooms: BTreeMap<RoomName, ActorRef<RoomActor>>,
    limits: Arc<Limits>,
    clock: Clock,
    /// Epoch of the next room created: `epoch_base + rooms created so far`, so a recreated room
    /// never reuses an epoch within one engine.
    next_epoch: u64,
    last_sweep: Time,
    /// Handed to every room created (tests of the checkers only).
    injected_bug: Option<InjectedBug>,
}

impl Registry {
    pub(crate) fn new(limits: Arc<Limits>, clock: Clock, epoch_base: u64, injected_bug: Option<InjectedBug>) -> Self {
        Self {
            rooms: BTreeMap::new(),
            limits,
            clock,
            next_epoch: epoch_base,
            last_sweep: Time::from_millis(0),
            injected_bug,
        }
    }

    /// Retires every idle room. Returns how many.
    async fn sweep(&mut self) -> usize {
        self.last_sweep = self.clock.now();
        let mut retired = Vec::new();
        for (name, room) in &self.rooms {
            // A room that already stopped counts as retired.
            if room.ask(RetireIfIdle).await.unwrap_or(true) {
                retired.push(name.clone());
            }
        }
        for name in &retired {
            self.rooms.remove(name);
        }
        retired.len()
    }

    async fn sweep_if_due(&mut self) {
        let interval = (self.limits.room_idle_ms / 4).max(1);
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
    type Reply = Answer<Option<ActorRef<RoomActor>>, RoomError>;

    async fn handle(&mut self, resolve: Resolve, _: &mut Context<Self, Self::Reply>) -> Self::Reply {
        self.sweep_if_due().await;
        if let Some(room) = self.rooms.get(&resolve.room) {
            if room.is_alive() {
                return Answer(Ok(Some(room.clone())));
            }
            self.rooms.remove(&resolve.room);
        }
        if !resolve.create {
            return Answer(Ok(None));
        }
        if self.rooms.len() >= self.limits.rooms_max && self.sweep().await == 0 {
            return Answer(Err(RoomError::TooManyRooms { rooms_max: self.limits.rooms_max }));
        }
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        let mut room = Room::new(resolve.room.clone(), epoch, &self.limits, self.clock.now());
        if let Some(bug) = self.injected_bug {
            room.inject_bug(bug);
        }
        let actor = RoomActor::spawn_with_mailbox(RoomActor::new(room, self.clock), mailbox::bounded(ROOM_MAILBOX_LEN));
        self.rooms.insert(resolve.room, actor.clone());
        Answer(Ok(Some(actor)))
    }
}

/// Snapshots of every room, in name order.
pub(crate) struct ListRooms;

impl Message<ListRooms> for Registry {
    type Reply = Vec<RoomInfo>;

    async fn handle(&mut self, _: ListRooms, _: &mut Context<Self, Self::Reply>) -> Vec<RoomInfo> {
        self.sweep_if_due().await;
        let mut infos = Vec::with_capacity(self.rooms.len());
        for room in self.rooms.values() {
            if let Ok(info) = room.ask(Info).await {
                infos.push(info);
            }
        }
        infos
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

    async fn handle(&mut self, _: StopRooms, _: &mut Context<Self, Self::Reply>) {
        for (_, room) in std::mem::take(&mut self.rooms) {
            room.kill();
            room.wait_for_shutdown().await;
        }
    }
}
