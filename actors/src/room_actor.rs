//! `RoomActor`: one per room. Each handler feeds the [`Room`] state machine and then executes
//! its deliveries into the subscribers' sinks, reporting full and closed ones back.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use confab_engine::{
    Delivery, Draft, HistoryPage, Room, RoomError, RoomName, Sent, Seq, SubscriberId, Subscription, UserName,
};
use kameo::Actor;
use kameo::actor::ActorRef;
use kameo::message::{Context, Message};
use kameo::reply::{DelegatedReply, ReplySender};

use crate::answer::Answer;
use crate::clock::Clock;
use crate::sink::{EventSink, SinkError, Stalled};
use crate::stats::{EngineStats, RoomCounts};
use crate::store::writer::{WriteRequest, Writer};
use crate::store::{RoomAppend, StoreError};

/// A snapshot of a room, for listings, operations and tests.
#[derive(Clone, Debug, PartialEq, Eq, kameo::Reply)]
pub struct RoomInfo {
    /// The room.
    pub name: RoomName,
    /// Its epoch.
    pub epoch: u64,
    /// Its last sequence number.
    pub last_seq: Seq,
    /// Its oldest retained sequence number.
    pub first_retained_seq: Seq,
    /// Subscribers (streams and sessions) right now.
    pub subscribers: usize,
    /// Users present, in name order.
    pub present: Vec<UserName>,
}

/// The actor around one [`Room`].
#[derive(Actor)]
pub(crate) struct RoomActor {
    room: Room,
    /// Where each subscriber's deliveries go; keyed like the room's subscribers.
    sinks: BTreeMap<SubscriberId, Box<dyn EventSink>>,
    clock: Clock,
    /// The durable store's writer; `None` for an in-memory room (durable when sequenced).
    writer: Option<Writer>,
    /// Senders waiting for their message to become durable before they get an answer.
    waiters: VecDeque<Waiter>,
    /// A subscriber's queue was full since the last lag-marker retry.
    lagged: bool,
    /// A [`RetryLagMarkers`] is on its way.
    retry_scheduled: bool,
    /// The engine's counters, and this room's delivery counts not yet added to them.
    stats: Arc<EngineStats>,
    counts: RoomCounts,
}

/// How long after a full queue the room retries a lone lag marker for that subscriber: it
/// bounds how late a subscriber that drained its queue learns of a gap no message followed.
pub(crate) const LAG_MARKER_RETRY: std::time::Duration = std::time::Duration::from_millis(100);

/// A reply held back until the message it acknowledges is durable.
enum Waiter {
    Send { sent: Sent, reply: ReplySender<Answer<Sent, RoomError>> },
    Batch { run: (Seq, Seq), reply: ReplySender<Answer<Option<(Seq, Seq)>, RoomError>> },
}

impl Waiter {
    /// The sequence number that must be durable first.
    fn seq(&self) -> Seq {
        match self {
            Waiter::Send { sent, .. } => sent.seq,
            Waiter::Batch { run, .. } => run.1,
        }
    }

    fn answer(self, outcome: Result<(), RoomError>) {
        match self {
            Waiter::Send { sent, reply } => reply.send(Answer(outcome.map(|()| sent))),
            Waiter::Batch { run, reply } => reply.send(Answer(outcome.map(|()| Some(run)))),
        }
    }
}

impl RoomActor {
    pub(crate) fn new(room: Room, clock: Clock, writer: Option<Writer>, stats: Arc<EngineStats>) -> Self {
        Self {
            room,
            sinks: BTreeMap::new(),
            clock,
            writer,
            waiters: VecDeque::new(),
            lagged: false,
            retry_scheduled: false,
            stats,
            counts: RoomCounts::default(),
        }
    }

    /// Hands newly sequenced messages to the writer (durable rooms only).
    fn persist(&mut self, me: &ActorRef<Self>) {
        let messages = self.room.take_to_persist();
        if messages.is_empty() {
            return;
        }
        let Some(writer) = &self.writer else { return };
        let append = RoomAppend { room: self.room.name().clone(), epoch: self.room.epoch(), messages };
        if let Err(error) = writer.submit(WriteRequest { append, room: me.clone() }) {
            self.persist_failed(&error);
        }
    }

    fn persist_failed(&mut self, error: &StoreError) {
        self.room.handle_persist_failed();
        let failure = RoomError::Storage { reason: error.to_string() };
        for waiter in self.waiters.drain(..) {
            waiter.answer(Err(failure.clone()));
        }
    }

    /// Answers now if `seq` is durable, or holds the reply until it is.
    fn answer_when_durable<R>(
        &mut self,
        seq: Seq,
        ctx: &mut Context<Self, DelegatedReply<Answer<R, RoomError>>>,
        waiter: impl FnOnce(ReplySender<Answer<R, RoomError>>) -> Waiter,
        now: Answer<R, RoomError>,
    ) -> DelegatedReply<Answer<R, RoomError>>
    where
        R: Send + 'static,
    {
        if seq <= self.room.durable_seq() {
            return ctx.reply(now);
        }
        let (delegated, reply) = ctx.reply_sender();
        if let Some(reply) = reply {
            self.waiters.push_back(waiter(reply));
        }
        delegated
    }

    /// Executes every planned delivery. Full sinks become lag, closed ones are unsubscribed.
    fn flush(&mut self, me: &ActorRef<Self>) {
        self.deliver_pending();
        self.counts.publish(&self.stats);
        self.schedule_lag_markers(me);
    }

    /// Fans out every event the room has planned.
    fn deliver_pending(&mut self) {
        while let Some(delivery) = self.room.poll_delivery() {
            self.deliver(&delivery);
        }
    }

    fn deliver(&mut self, delivery: &Delivery) {
        let outcome = self.sinks.get(&delivery.to).map(|sink| sink.try_deliver(delivery));
        match outcome {
            Some(Ok(())) => {
                self.counts.deliveries += 1;
                self.counts.lag_markers += u64::from(delivery.lag.is_some());
            }
            Some(Err(SinkError::Full)) => {
                self.counts.deliveries_dropped += 1;
                self.room.handle_delivery_full(delivery);
                self.lagged = true;
            }
            Some(Err(SinkError::Closed)) | None => self.drop_subscriber(delivery.to),
        }
    }

    /// After a full queue, comes back later with lone lag markers (G2 at the tail).
    fn schedule_lag_markers(&mut self, me: &ActorRef<Self>) {
        if !self.lagged || self.retry_scheduled {
            return;
        }
        self.retry_scheduled = true;
        let me = me.downgrade();
        tokio::spawn(async move {
            tokio::time::sleep(LAG_MARKER_RETRY).await;
            if let Some(me) = me.upgrade() {
                let _ = me.tell(RetryLagMarkers).await;
            }
        });
    }

    /// Closes the subscribers that stalled (see [`Room::take_stalled`]), telling each why.
    fn close_stalled(&mut self) {
        for (id, lag) in self.room.take_stalled(self.clock.now()) {
            if let Some(sink) = self.sinks.remove(&id) {
                tracing::debug!(room = %self.room.name(), ?lag, "closing a stalled subscriber");
                sink.close_stalled(Stalled { room: self.room.name().clone(), lag });
                self.stats.subscriber_closed_stalled();
            }
        }
    }

    fn drop_subscriber(&mut self, id: SubscriberId) {
        self.sinks.remove(&id);
        self.room.handle_unsubscribe(id, self.clock.now());
    }

    fn info(&self) -> RoomInfo {
        RoomInfo {
            name: self.room.name().clone(),
            epoch: self.room.epoch(),
            last_seq: self.room.last_seq(),
            first_retained_seq: self.room.first_retained_seq(),
            subscribers: self.room.subscriber_count(),
            present: self.room.present_users(),
        }
    }
}

/// Sequence one message.
pub(crate) struct SendMessage(pub(crate) Draft);

impl Message<SendMessage> for RoomActor {
    type Reply = DelegatedReply<Answer<Sent, RoomError>>;

    async fn handle(&mut self, SendMessage(draft): SendMessage, ctx: &mut Context<Self, Self::Reply>) -> Self::Reply {
        let result = self.room.handle_send(draft, self.clock.now());
        if matches!(&result, Ok(sent) if !sent.duplicate) {
            self.stats.messages_appended(1);
        }
        self.persist(ctx.actor_ref());
        self.flush(ctx.actor_ref());
        match result {
            Ok(sent) => self.answer_when_durable(sent.seq, ctx, |reply| Waiter::Send { sent, reply }, Answer(Ok(sent))),
            Err(error) => ctx.reply(Answer(Err(error))),
        }
    }
}

/// Sequence a batch as one contiguous run (an upload's commit).
pub(crate) struct SendBatch(pub(crate) Vec<Draft>);

impl Message<SendBatch> for RoomActor {
    type Reply = DelegatedReply<Answer<Option<(Seq, Seq)>, RoomError>>;

    async fn handle(&mut self, SendBatch(drafts): SendBatch, ctx: &mut Context<Self, Self::Reply>) -> Self::Reply {
        let result = self.room.handle_send_batch(drafts, self.clock.now());
        if let Ok(Some((first, last))) = &result {
            self.stats.messages_appended(last - first + 1);
        }
        self.persist(ctx.actor_ref());
        self.flush(ctx.actor_ref());
        match result {
            Ok(Some(run)) => {
                self.answer_when_durable(run.1, ctx, |reply| Waiter::Batch { run, reply }, Answer(Ok(Some(run))))
            }
            other => ctx.reply(Answer(other)),
        }
    }
}

/// The writer's answer: messages up to this sequence number are durable, or writing failed.
pub(crate) struct Persisted(pub(crate) Result<Seq, StoreError>);

impl Message<Persisted> for RoomActor {
    type Reply = ();

    async fn handle(&mut self, Persisted(outcome): Persisted, ctx: &mut Context<Self, Self::Reply>) {
        match outcome {
            Ok(upto) => {
                self.room.handle_durable(upto);
                let (ready, waiting): (VecDeque<Waiter>, VecDeque<Waiter>) =
                    self.waiters.drain(..).partition(|waiter| waiter.seq() <= upto);
                self.waiters = waiting;
                for waiter in ready {
                    waiter.answer(Ok(()));
                }
                self.flush(ctx.actor_ref());
            }
            Err(error) => self.persist_failed(&error),
        }
    }
}

/// Add a subscriber whose deliveries go to `sink`.
pub(crate) struct Subscribe {
    pub(crate) user: Option<UserName>,
    pub(crate) after_seq: Option<Seq>,
    pub(crate) sink: Box<dyn EventSink>,
}

impl Message<Subscribe> for RoomActor {
    type Reply = Answer<Subscription, RoomError>;

    async fn handle(&mut self, subscribe: Subscribe, ctx: &mut Context<Self, Self::Reply>) -> Self::Reply {
        // Closed sinks would hold places in a room near its subscriber bound.
        self.prune_closed(ctx.actor_ref());
        let result = self.room.handle_subscribe(subscribe.user, subscribe.after_seq, self.clock.now());
        if let Ok(subscription) = &result {
            self.sinks.insert(subscription.id, subscribe.sink);
        }
        self.flush(ctx.actor_ref());
        Answer(result)
    }
}

impl RoomActor {
    fn prune_closed(&mut self, me: &ActorRef<Self>) {
        let closed: Vec<SubscriberId> =
            self.sinks.iter().filter(|(_, sink)| sink.is_closed()).map(|(&id, _)| id).collect();
        for id in closed {
            self.drop_subscriber(id);
        }
        self.flush(me);
    }
}

/// Remove a subscriber.
pub(crate) struct Unsubscribe(pub(crate) SubscriberId);

impl Message<Unsubscribe> for RoomActor {
    type Reply = ();

    async fn handle(&mut self, Unsubscribe(id): Unsubscribe, ctx: &mut Context<Self, Self::Reply>) {
        self.drop_subscriber(id);
        self.flush(ctx.actor_ref());
    }
}

/// Someone is typing.
pub(crate) struct Typing(pub(crate) UserName);

impl Message<Typing> for RoomActor {
    type Reply = Answer<(), RoomError>;

    async fn handle(&mut self, Typing(user): Typing, ctx: &mut Context<Self, Self::Reply>) -> Self::Reply {
        let result = self.room.handle_typing(user, self.clock.now());
        self.flush(ctx.actor_ref());
        Answer(result)
    }
}

/// A page of history.
pub(crate) struct History {
    pub(crate) after_seq: Seq,
    pub(crate) limit: usize,
}

impl Message<History> for RoomActor {
    type Reply = Answer<HistoryPage, RoomError>;

    async fn handle(&mut self, history: History, _: &mut Context<Self, Self::Reply>) -> Self::Reply {
        Answer(self.room.history(history.after_seq, history.limit))
    }
}

/// A snapshot of the room (closed subscribers are pruned first, so counts are current).
pub(crate) struct Info;

impl Message<Info> for RoomActor {
    type Reply = RoomInfo;

    async fn handle(&mut self, _: Info, ctx: &mut Context<Self, Self::Reply>) -> RoomInfo {
        self.prune_closed(ctx.actor_ref());
        self.info()
    }
}

/// Retire and stop if idle; replies whether it did.
pub(crate) struct RetireIfIdle;

impl Message<RetireIfIdle> for RoomActor {
    type Reply = bool;

    async fn handle(&mut self, _: RetireIfIdle, ctx: &mut Context<Self, Self::Reply>) -> bool {
        self.prune_closed(ctx.actor_ref());
        if !self.waiters.is_empty() {
            // Writes in flight: their senders are still owed an answer.
            return false;
        }
        let retired = self.room.handle_retire_if_idle(self.clock.now());
        if retired {
            ctx.stop();
        }
        retired
    }
}

/// Deliver lone lag markers to lagging subscribers whose queues may have drained.
pub(crate) struct RetryLagMarkers;

impl Message<RetryLagMarkers> for RoomActor {
    type Reply = ();

    async fn handle(&mut self, _: RetryLagMarkers, ctx: &mut Context<Self, Self::Reply>) {
        self.retry_scheduled = false;
        self.lagged = false;
        self.close_stalled();
        // Closing a subscriber may have queued a presence change: fan it out first.
        self.deliver_pending();
        for marker in self.room.take_lag_markers() {
            self.deliver(&marker);
        }
        self.counts.publish(&self.stats);
        self.schedule_lag_markers(ctx.actor_ref());
    }
}
