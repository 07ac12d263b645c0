//! `SessionActor`: one per connected bidirectional client. Client frames, room deliveries and
//! the close signal all arrive through its mailbox, so they are handled in one order; each
//! handler feeds the [`Session`] state machine and executes its commands in order (sends are
//! awaited one by one, which is what makes a stream's messages keep their order, G3).

use std::collections::BTreeMap;
use std::sync::Arc;

use confab_engine::{
    ClientFrame, Lag, RoomEvent, RoomName, ServerFrame, Session, SessionCommand, SubscriberId, Subscription,
};
use kameo::Actor;
use kameo::actor::ActorRef;
use kameo::message::{Context, Message};
use tokio::sync::mpsc;

use crate::directory::Directory;
use crate::error::EngineError;
use crate::room_actor::{RoomActor, SendMessage, Subscribe, Typing, Unsubscribe};
use crate::sink::{SessionSink, StallNotice};
use crate::stats::{EngineStats, SessionGuard};

/// The actor around one [`Session`].
#[derive(Actor)]
pub struct SessionActor {
    session: Session,
    directory: Directory,
    /// Frames for the client; `None` once finished or once the client stopped reading.
    outbound: Option<mpsc::Sender<ServerFrame>>,
    /// The room actors this session subscribed to, to unsubscribe and send without a lookup.
    rooms: BTreeMap<RoomName, ActorRef<RoomActor>>,
    /// Handed to every room sink of this session; the client side reads it when it ends.
    stall_notice: StallNotice,
    /// The engine's counters; the guard counts this session as open until the actor is dropped.
    stats: Arc<EngineStats>,
    _open: SessionGuard,
}

impl SessionActor {
    pub(crate) fn new(
        session: Session,
        directory: Directory,
        outbound: mpsc::Sender<ServerFrame>,
        stall_notice: StallNotice,
        stats: Arc<EngineStats>,
    ) -> Self {
        let open = stats.session_opened();
        Self { session, directory, outbound: Some(outbound), rooms: BTreeMap::new(), stall_notice, stats, _open: open }
    }

    /// Executes the session's commands until none is left.
    async fn run(&mut self, ctx: &mut Context<Self, ()>) {
        while let Some(command) = self.session.poll_command() {
            match command {
                SessionCommand::Subscribe { room, user, after_seq } => {
                    let (me, stall_notice) = (ctx.actor_ref(), &self.stall_notice);
                    let make = || Subscribe {
                        user: Some(user.clone()),
                        after_seq,
                        sink: Box::new(SessionSink { actor: me.clone(), stall_notice: stall_notice.clone() }),
                    };
                    let result = self.directory.request(&room, true, make).await;
                    let result = self.remember(&room, result);
                    self.session.handle_subscribed(room, result);
                }
                SessionCommand::Unsubscribe { room, subscriber } => {
                    if let Some(actor) = self.rooms.remove(&room) {
                        // The room also drops a sink whose session stopped, so a full
                        // mailbox here loses nothing.
                        let _ = actor.tell(Unsubscribe(subscriber)).try_send();
                    }
                }
                SessionCommand::Send { room, draft } => {
                    let client_msg_id = draft.client_msg_id.clone();
                    let result = match self.rooms.get(&room) {
                        Some(actor) => match actor.ask(SendMessage(draft)).await {
                            Ok(answer) => answer.0,
                            Err(_) => Err(confab_engine::RoomError::Retired),
                        },
                        None => Err(confab_engine::RoomError::NotFound),
                    };
                    self.session.handle_sent(room, client_msg_id, result);
                }
                SessionCommand::Typing { room, user } => {
                    if let Some(actor) = self.rooms.get(&room) {
                        let _ = actor.tell(Typing(user)).try_send();
                    }
                }
                SessionCommand::Emit(frame) => {
                    if matches!(frame, ServerFrame::Error { .. }) {
                        self.stats.session_frame_refused();
                    }
                    let delivered = match &self.outbound {
                        Some(outbound) => outbound.send(frame).await.is_ok(),
                        None => false,
                    };
                    if !delivered {
                        // The client stopped reading: nobody is left to serve.
                        self.disconnect(ctx);
                        return;
                    }
                }
                SessionCommand::Finish => {
                    self.outbound = None;
                    ctx.stop();
                    return;
                }
            }
        }
    }

    fn remember(
        &mut self,
        room: &RoomName,
        result: Result<Option<(ActorRef<RoomActor>, Subscription)>, EngineError>,
    ) -> Result<Subscription, confab_engine::RoomError> {
        match result {
            Ok(Some((actor, subscription))) => {
                self.rooms.insert(room.clone(), actor);
                Ok(subscription)
            }
            Ok(None) => Err(confab_engine::RoomError::NotFound),
            Err(EngineError::Room(error)) => Err(error),
            Err(_) => Err(confab_engine::RoomError::Retired),
        }
    }

    fn disconnect(&mut self, ctx: &mut Context<Self, ()>) {
        self.session.handle_disconnect();
        while let Some(command) = self.session.poll_command() {
            if let SessionCommand::Unsubscribe { room, subscriber } = command {
                if let Some(actor) = self.rooms.remove(&room) {
                    // Best effort: a room also drops the sink of a stopped session by itself.
                    let _ = actor.tell(Unsubscribe(subscriber)).try_send();
                }
            }
        }
        self.outbound = None;
        ctx.stop();
    }
}

/// A frame from the client.
pub(crate) struct Frame(pub(crate) ClientFrame);

impl Message<Frame> for SessionActor {
    type Reply = ();

    async fn handle(&mut self, Frame(frame): Frame, ctx: &mut Context<Self, ()>) {
        self.session.handle_frame(frame);
        self.run(ctx).await;
    }
}

/// A delivery from a room this session subscribed to.
pub(crate) struct RoomDelivery {
    pub(crate) from: SubscriberId,
    pub(crate) lag: Option<Lag>,
    pub(crate) event: RoomEvent,
}

impl Message<RoomDelivery> for SessionActor {
    type Reply = ();

    async fn handle(&mut self, delivery: RoomDelivery, ctx: &mut Context<Self, ()>) {
        self.session.handle_room_event(delivery.from, delivery.lag, delivery.event);
        self.run(ctx).await;
    }
}

/// The client half-closed: finish once its own messages have come back.
pub(crate) struct Close;

impl Message<Close> for SessionActor {
    type Reply = ();

    async fn handle(&mut self, _: Close, ctx: &mut Context<Self, ()>) {
        self.session.handle_close();
        self.run(ctx).await;
    }
}

/// The client went away: drop everything now.
pub(crate) struct Disconnect;

impl Message<Disconnect> for SessionActor {
    type Reply = ();

    async fn handle(&mut self, _: Disconnect, ctx: &mut Context<Self, ()>) {
        self.disconnect(ctx);
    }
}
