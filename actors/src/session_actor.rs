//! `SessionActor`: one per connected bidirectional client. Client frames and the close signal
//! arrive through its mailbox, so they are handled in one order; each handler feeds the
//! [`Session`] state machine and executes its commands in order (sends are awaited one by one,
//! which is what makes a stream's messages keep their order, G3).
//!
//! Room events do not pass through this actor: once a subscription's backlog is out, the
//! actor hands the room's ring reader to the client's stream ([`Outbound::Attach`]), which
//! reads the ring itself. Everything the actor says goes through one ordered channel.

use std::collections::BTreeMap;
use std::sync::Arc;

use confab_engine::{
    ClientFrame, RoomError, RoomName, Seq, ServerFrame, Session, SessionCommand, SubscriberId, Subscription,
};
use kameo::Actor;
use kameo::actor::{ActorId, ActorRef};
use kameo::message::{Context, Message};
use tokio::sync::mpsc;

use crate::directory::Directory;
use crate::error::EngineError;
use crate::ring::{ReaderHandle, RingReader};
use crate::room_actor::{RoomActor, SendMessage, Subscribe, Typing};
use crate::stats::{EngineStats, SessionGuard};

/// A subscription as the directory hands it back: the room, its start and backlog, the reader.
type Subscribed = (ActorRef<RoomActor>, (Subscription, RingReader));

/// What a session actor tells its client's stream, in order.
pub(crate) enum Outbound {
    /// A frame for the client.
    Frame(ServerFrame),
    /// From here on, read this room's events from its ring.
    Attach(RingReader),
    /// Stop reading this room (the session left it).
    Detach(RoomName),
    /// The session finished: end once each listed room was read up to the given message.
    Finish(Vec<(RoomName, Seq)>),
}

/// The actor around one [`Session`].
#[derive(Actor)]
pub(crate) struct SessionActor {
    session: Session,
    directory: Directory,
    /// Everything for the client's stream; `None` once finished or once the client stopped
    /// reading.
    outbound: Option<mpsc::Sender<Outbound>>,
    /// The room actors this session subscribed to (to send without a lookup), and its cursor
    /// on each room's ring (to leave at once, and to check acknowledgements).
    rooms: BTreeMap<RoomName, (ActorRef<RoomActor>, ReaderHandle)>,
    /// Ring readers whose subscription's backlog is not yet out (see `SessionCommand::Attach`).
    unattached: BTreeMap<RoomName, RingReader>,
    /// The engine's counters; the guard counts this session as open until the actor is dropped.
    stats: Arc<EngineStats>,
    _open: SessionGuard,
}

impl SessionActor {
    pub(crate) fn new(
        session: Session,
        directory: Directory,
        outbound: mpsc::Sender<Outbound>,
        stats: Arc<EngineStats>,
    ) -> Self {
        let open = stats.session_opened();
        Self {
            session,
            directory,
            outbound: Some(outbound),
            rooms: BTreeMap::new(),
            unattached: BTreeMap::new(),
            stats,
            _open: open,
        }
    }

    /// Executes the session's commands until none is left.
    async fn run(&mut self, ctx: &mut Context<Self, ()>) {
        while let Some(command) = self.session.poll_command() {
            match command {
                SessionCommand::Subscribe { room, user, after_seq } => {
                    let make = |unconfirmed| Subscribe { user: Some(user.clone()), after_seq, unconfirmed };
                    let result = self.directory.read(&room, true, make).await;
                    let result = self.remember(&room, result);
                    self.session.handle_subscribed(room, result);
                }
                SessionCommand::Attach { room } => {
                    if let Some(reader) = self.unattached.remove(&room)
                        && !self.tell_client(Outbound::Attach(reader)).await
                    {
                        return self.disconnect(ctx);
                    }
                }
                SessionCommand::Unsubscribe { room, .. } => {
                    self.unattached.remove(&room);
                    if let Some((_, reader)) = self.rooms.remove(&room) {
                        reader.leave();
                        if !self.tell_client(Outbound::Detach(room)).await {
                            return self.disconnect(ctx);
                        }
                    }
                }
                SessionCommand::Send { room, draft } => {
                    let client_msg_id = draft.client_msg_id.clone();
                    let result = match self.rooms.get(&room) {
                        Some((actor, _)) => match actor.ask(SendMessage(draft)).await {
                            Ok(answer) => answer.0,
                            Err(_) => Err(RoomError::Retired),
                        },
                        None => Err(RoomError::NotFound),
                    };
                    self.session.handle_sent(room, client_msg_id, result);
                }
                SessionCommand::Typing { room, user } => {
                    if let Some((actor, _)) = self.rooms.get(&room) {
                        let _ = actor.tell(Typing(user)).try_send();
                    }
                }
                SessionCommand::Emit(frame) => {
                    if matches!(frame, ServerFrame::Error { .. }) {
                        self.stats.session_frame_refused();
                    }
                    if !self.tell_client(Outbound::Frame(frame)).await {
                        // The client stopped reading: nobody is left to serve.
                        return self.disconnect(ctx);
                    }
                }
                SessionCommand::Finish { echoes } => {
                    let _ = self.tell_client(Outbound::Finish(echoes)).await;
                    self.outbound = None;
                    ctx.stop();
                    return;
                }
            }
        }
    }

    /// Puts one item on the client's stream, in order; `false` if the client is gone.
    async fn tell_client(&self, item: Outbound) -> bool {
        match &self.outbound {
            Some(outbound) => outbound.send(item).await.is_ok(),
            None => false,
        }
    }

    /// Tells the session how far the client's stream has read `room` (acks are checked
    /// against it).
    fn report_delivered(&mut self, room: &str) {
        let Ok(room) = RoomName::new(room) else { return };
        if let Some(delivered) = self.rooms.get(&room).and_then(|(_, reader)| reader.delivered()) {
            self.session.handle_delivered(&room, delivered);
        }
    }

    fn remember(
        &mut self,
        room: &RoomName,
        result: Result<Option<Subscribed>, EngineError>,
    ) -> Result<Subscription, RoomError> {
        match result {
            Ok(Some((actor, (subscription, reader)))) => {
                self.rooms.insert(room.clone(), (actor, reader.handle().clone()));
                self.unattached.insert(room.clone(), reader);
                Ok(subscription)
            }
            Ok(None) => Err(RoomError::NotFound),
            Err(EngineError::Room(error)) => Err(error),
            Err(_) => Err(RoomError::Retired),
        }
    }

    fn disconnect(&mut self, ctx: &mut Context<Self, ()>) {
        self.session.handle_disconnect();
        while let Some(command) = self.session.poll_command() {
            if let SessionCommand::Unsubscribe { room, .. } = command
                && let Some((_, reader)) = self.rooms.remove(&room)
            {
                reader.leave();
            }
        }
        self.unattached.clear();
        self.outbound = None;
        ctx.stop();
    }
}

/// A frame from the client.
pub(crate) struct Frame(pub(crate) ClientFrame);

impl Message<Frame> for SessionActor {
    type Reply = ();

    async fn handle(&mut self, Frame(frame): Frame, ctx: &mut Context<Self, ()>) {
        if let ClientFrame::Ack { room, .. } = &frame {
            self.report_delivered(room);
        }
        self.session.handle_frame(frame);
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

/// A joined room's ring ended under the client's stream (the room stopped: a cluster node's
/// room reloads after falling behind the log, or its actor failed). It names the subscription
/// ([`ReaderHandle::identity`]), so news of one that was already left is ignored.
pub(crate) struct RoomStopped {
    pub(crate) room: RoomName,
    pub(crate) subscription: (ActorId, SubscriberId),
}

impl Message<RoomStopped> for SessionActor {
    type Reply = ();

    async fn handle(&mut self, stopped: RoomStopped, ctx: &mut Context<Self, ()>) {
        let current = self.rooms.get(&stopped.room).map(|(_, reader)| reader.identity());
        if current == Some(stopped.subscription) {
            self.session.handle_room_stopped(stopped.room);
            self.run(ctx).await;
        }
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
