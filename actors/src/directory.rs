//! The way every part of the actor layer reaches a room: resolve it through the registry and
//! run a request, resolving again if the room retired in between (at most a few times).

use std::sync::Arc;

use confab_engine::{RoomError, RoomName};
use kameo::actor::ActorRef;
use kameo::error::SendError;
use kameo::message::Message;

use crate::answer::Answer;
use crate::error::EngineError;
use crate::log_health::LogHealth;
use crate::registry::{Registry, Resolve, RoomTable};
use crate::room_actor::{CatchUp, RoomActor, Unconfirmed};

/// How often a request is retried against a freshly resolved room after finding the old one
/// retired. One retry suffices unless rooms retire within milliseconds; three is generous.
const RETIRED_RETRIES_MAX: usize = 3;

/// A handle to the registry and its room table, cheap to clone.
#[derive(Clone)]
pub(crate) struct Directory {
    registry: ActorRef<Registry>,
    /// Read first: a known, live room is reached without a registry round trip.
    rooms: RoomTable,
    /// Whether other engines write the rooms' log too (cluster mode): reads catch up first.
    replicated: bool,
    /// Cluster mode: the log's last probe. While it fails, reads do not wait for a leader that
    /// would not answer: they are answered from the cache at once, where that is exact.
    log_health: Option<Arc<LogHealth>>,
}

impl Directory {
    pub(crate) fn new(
        registry: ActorRef<Registry>,
        rooms: RoomTable,
        replicated: bool,
        log_health: Option<Arc<LogHealth>>,
    ) -> Self {
        Self { registry, rooms, replicated, log_health }
    }

    pub(crate) fn registry(&self) -> &ActorRef<Registry> {
        &self.registry
    }

    /// The room's actor, creating the room if `create` is set.
    pub(crate) async fn resolve(
        &self,
        room: &RoomName,
        create: bool,
    ) -> Result<Option<ActorRef<RoomActor>>, EngineError> {
        if let Some(actor) = self.rooms.get(room) {
            return Ok(Some(actor));
        }
        self.ask_registry(room, create).await
    }

    /// The room's actor as the registry sees it now (it also retires idle rooms lazily here).
    async fn ask_registry(&self, room: &RoomName, create: bool) -> Result<Option<ActorRef<RoomActor>>, EngineError> {
        let answer =
            self.registry.ask(Resolve { room: room.clone(), create }).await.map_err(|_| EngineError::Stopped)?;
        Ok(answer.0?)
    }

    /// [`Directory::request`] for a read (history, a subscription's backlog): in cluster mode
    /// the room first catches up with everything its log's leader has, so a message
    /// acknowledged on any node before the read is in it (G7).
    ///
    /// When the log cannot be asked (unreachable, no quorum), `make` gets the reason
    /// ([`Unconfirmed`]): the room then answers from its cache what is exact without the
    /// leader, and refuses the rest with that reason.
    pub(crate) async fn read<M, T>(
        &self,
        room: &RoomName,
        create: bool,
        make: impl Fn(Unconfirmed) -> M,
    ) -> Result<Option<(ActorRef<RoomActor>, T)>, EngineError>
    where
        M: Send + 'static,
        T: Send + 'static,
        RoomActor: Message<M>,
        <RoomActor as Message<M>>::Reply: kameo::Reply<Ok = Answer<T, RoomError>, Error = kameo::error::Infallible>,
    {
        let mut unconfirmed = None;
        if let Some(reason) = self.log_health.as_ref().and_then(|health| health.failure()) {
            unconfirmed = Some(RoomError::LogUnavailable { reason });
        } else if self.replicated {
            match self.catch_up(room, create).await {
                Ok(true) => {}
                Ok(false) => return Ok(None),
                Err(EngineError::Room(RoomError::Storage { reason })) => {
                    unconfirmed = Some(RoomError::LogUnavailable { reason });
                }
                Err(error) => return Err(error),
            }
        }
        self.request(room, create, || make(unconfirmed.clone())).await
    }

    /// Has the room catch up with its log; `false` if the room does not exist.
    async fn catch_up(&self, room: &RoomName, create: bool) -> Result<bool, EngineError> {
        Ok(self.request(room, create, || CatchUp).await?.is_some())
    }

    /// Runs `make()` as a request to the room, creating the room if `create` is set; retries on
    /// a room that retired meanwhile. `Ok(None)` if the room does not exist and `create` is off.
    pub(crate) async fn request<M, T>(
        &self,
        room: &RoomName,
        create: bool,
        make: impl Fn() -> M,
    ) -> Result<Option<(ActorRef<RoomActor>, T)>, EngineError>
    where
        M: Send + 'static,
        T: Send + 'static,
        RoomActor: Message<M>,
        <RoomActor as Message<M>>::Reply: kameo::Reply<Ok = Answer<T, RoomError>, Error = kameo::error::Infallible>,
    {
        for attempt in 0..=RETIRED_RETRIES_MAX {
            // A retry asks the registry itself: the table may still hold the retired room for
            // a moment, while the registry has already replaced or dropped it.
            let actor =
                if attempt == 0 { self.resolve(room, create).await? } else { self.ask_registry(room, create).await? };
            let Some(actor) = actor else { return Ok(None) };
            match actor.ask(make()).await {
                Ok(Answer(Err(RoomError::Retired))) => continue,
                Ok(Answer(result)) => return Ok(Some((actor, result?))),
                Err(SendError::ActorNotRunning(_) | SendError::ActorStopped) => continue,
                Err(_) => return Err(EngineError::Stopped),
            }
        }
        Err(EngineError::Room(RoomError::Retired))
    }
}
