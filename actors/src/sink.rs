//! Where a room puts deliveries: a subscription's bounded channel or a session actor's bounded
//! mailbox. Both are non-blocking: a full one is reported back to the room, which turns it into
//! a lag marker (G2); a room never waits for a slow subscriber.

use std::sync::{Arc, OnceLock};

use confab_engine::{Delivery, Lag, RoomEvent, RoomName};
use kameo::actor::ActorRef;
use kameo::error::SendError;
use tokio::sync::mpsc;

use crate::session_actor::{RoomDelivery, SessionActor};

/// Why a delivery was not queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SinkError {
    /// The queue is at its bound: the subscriber lags.
    Full,
    /// The receiver is gone: drop the subscriber.
    Closed,
}

/// A destination for one subscriber's deliveries.
pub(crate) trait EventSink: Send + 'static {
    /// Queues the delivery whole (lag marker and event together) without waiting.
    fn try_deliver(&self, delivery: &Delivery) -> Result<(), SinkError>;
    /// Whether the receiving end is gone.
    fn is_closed(&self) -> bool;
    /// The room closes this subscriber because it stalled; the room drops the sink next.
    fn close_stalled(&self, stalled: Stalled);
}

/// Why a room closed a subscription: its reader took nothing for
/// [`Limits::subscriber_stall_ms`](confab_engine::Limits::subscriber_stall_ms) while lagging.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stalled {
    /// The room that closed it.
    pub room: RoomName,
    /// What it missed: from where its deliveries stopped to the room's last message then.
    pub lag: Lag,
}

/// Where a room leaves a [`Stalled`] notice for the receiving side, which reads it once its
/// queue ends. Set at most once.
#[derive(Clone, Debug, Default)]
pub(crate) struct StallNotice(Arc<OnceLock<Stalled>>);

impl StallNotice {
    pub(crate) fn set(&self, stalled: Stalled) {
        let _ = self.0.set(stalled);
    }

    pub(crate) fn get(&self) -> Option<&Stalled> {
        self.0.get()
    }
}

/// The sink of a `subscribe` stream: its bounded queue, and the notice it reads when the queue
/// ends.
pub(crate) struct StreamSink {
    pub(crate) queue: mpsc::Sender<Queued>,
    pub(crate) stall_notice: StallNotice,
}

/// The sink of a session's subscription: the session actor's mailbox. A stalled session is
/// stopped as a whole (its client reads nothing, so nothing else could reach it either).
pub(crate) struct SessionSink {
    pub(crate) actor: ActorRef<SessionActor>,
    pub(crate) stall_notice: StallNotice,
}

/// One item of a subscription's channel: the lag marker (if any) and the event it precedes.
pub(crate) type Queued = (Option<Lag>, RoomEvent);

impl EventSink for StreamSink {
    fn try_deliver(&self, delivery: &Delivery) -> Result<(), SinkError> {
        self.queue.try_send((delivery.lag, delivery.event.clone())).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => SinkError::Full,
            mpsc::error::TrySendError::Closed(_) => SinkError::Closed,
        })
    }

    fn is_closed(&self) -> bool {
        self.queue.is_closed()
    }

    fn close_stalled(&self, stalled: Stalled) {
        self.stall_notice.set(stalled);
    }
}

impl EventSink for SessionSink {
    fn try_deliver(&self, delivery: &Delivery) -> Result<(), SinkError> {
        let message = RoomDelivery { from: delivery.to, lag: delivery.lag, event: delivery.event.clone() };
        self.actor.tell(message).try_send().map_err(|error| match error {
            SendError::MailboxFull(_) => SinkError::Full,
            _ => SinkError::Closed,
        })
    }

    fn is_closed(&self) -> bool {
        !self.actor.is_alive()
    }

    fn close_stalled(&self, stalled: Stalled) {
        self.stall_notice.set(stalled);
        // Its mailbox is full and it may be waiting on its client: stopping it politely
        // would queue behind the backlog, so stop it now. Dropping the actor drops its
        // outbound queue, which ends the client's frame stream.
        self.actor.kill();
    }
}
