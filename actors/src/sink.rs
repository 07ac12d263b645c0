//! Where a room puts deliveries: a subscription's bounded channel or a session actor's bounded
//! mailbox. Both are non-blocking: a full one is reported back to the room, which turns it into
//! a lag marker (G2); a room never waits for a slow subscriber.

use confab_engine::{Delivery, Lag, RoomEvent};
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
}

/// One item of a subscription's channel: the lag marker (if any) and the event it precedes.
pub(crate) type Queued = (Option<Lag>, RoomEvent);

impl EventSink for mpsc::Sender<Queued> {
    fn try_deliver(&self, delivery: &Delivery) -> Result<(), SinkError> {
        self.try_send((delivery.lag, delivery.event.clone())).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => SinkError::Full,
            mpsc::error::TrySendError::Closed(_) => SinkError::Closed,
        })
    }

    fn is_closed(&self) -> bool {
        mpsc::Sender::is_closed(self)
    }
}

impl EventSink for ActorRef<SessionActor> {
    fn try_deliver(&self, delivery: &Delivery) -> Result<(), SinkError> {
        let message = RoomDelivery { from: delivery.to, lag: delivery.lag, event: delivery.event.clone() };
        self.tell(message).try_send().map_err(|error| match error {
            SendError::MailboxFull(_) => SinkError::Full,
            _ => SinkError::Closed,
        })
    }

    fn is_closed(&self) -> bool {
        !self.is_alive()
    }
}
