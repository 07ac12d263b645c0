//! `RoomActor`: one per room. Each handler feeds the [`Room`] state machine, then executes its
//! effects: published events go once into the room's ring (its readers take them from there),
//! messages to make durable go to the room's log ([`RoomLog`]) through its [`Appender`] (one
//! conditional append in flight; what the log answers comes back as a message). The actor
//! arms one timer, for the ring's stall sweep. In cluster mode the room reports its local
//! members and typing to the node's presence task and hears other nodes' users from it
//! ([`RemoteMembers`], [`RemoteTyping`]).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use confab_engine::{
    Appender, Draft, HistoryPage, Limits, LogEntry, Origin, Position, Ring, Room, RoomEffect, RoomError, RoomName,
    Sent, Seq, Step, SubscriberId, Subscription, Time, UserName,
};
use futures::future::BoxFuture;
use kameo::Actor;
use kameo::actor::{ActorRef, WeakActorRef};
use kameo::error::ActorStopReason;
use kameo::message::{Context, Message};
use kameo::reply::{DelegatedReply, ReplySender};
use tokio::sync::mpsc;

use crate::answer::Answer;
use crate::clock::Clock;
use crate::presence::PresenceHandle;
use crate::ring::{RingReader, SharedRing};
use crate::room_log::{AppendOutcome, RoomLog};
use crate::stats::EngineStats;

/// How long a room waits before sending an append again whose outcome was unknown, or reading
/// its log again after a read failed or found nothing new: a log that keeps failing fast is
/// not hammered in a loop.
const LOG_RETRY_DELAY: Duration = Duration::from_millis(50);

/// Entries a room reads from its log at once after a conflict.
const LOG_READ_LEN_MAX: usize = 1_000;

/// How long the senders of an append whose outcome stays unknown (a log that lost its quorum
/// answers nothing in time) wait before they are answered UNAVAILABLE, so no client waits
/// forever. The room goes on sending that append again until the log says what became of it
/// (it may still commit: a sender that resends with the same client message id learns its
/// number, G4), and meanwhile refuses new sends at once, without sequencing them.
pub const UNKNOWN_OUTCOME_ANSWER_AFTER: Duration = Duration::from_secs(10);

/// A durable room's log, and where the room stands in it.
pub(crate) struct Durability {
    /// Where its messages are committed.
    pub(crate) log: Arc<dyn RoomLog>,
    /// This node's run, marking its appends (see [`Origin`]).
    pub(crate) node: u64,
    /// The position of the room's last entry when it was loaded.
    pub(crate) last_position: Position,
    /// Whether other nodes append to the log too (cluster mode).
    pub(crate) replicated: bool,
}

/// The room's log and its appends to it.
struct Logged {
    log: Arc<dyn RoomLog>,
    appender: Appender,
    /// Appends on their way, to the task that tells the room their outcomes in the order they
    /// were sent (a failure must not overtake the success of an earlier pipelined append).
    /// Made with the first append; dropped when the actor stops, which ends the task.
    answers: Option<mpsc::UnboundedSender<(Origin, BoxFuture<'static, AppendOutcome>)>>,
    /// A read of the log is on its way: one at a time.
    reading: bool,
    /// Whether other nodes write the log too (cluster mode): then reads catch up first.
    replicated: bool,
    /// When the append in flight was first sent (its resends keep this time).
    sent_at: Time,
    /// Whether the append in flight has had no known outcome: `None` while the log answers.
    /// Bounds its senders' wait ([`UNKNOWN_OUTCOME_ANSWER_AFTER`]).
    unknown: Option<UnknownOutcome>,
}

/// An append in flight whose outcome has stayed unknown.
struct UnknownOutcome {
    /// When its first attempt was sent: its senders have waited since then, or less.
    since: Time,
    /// Why the last attempt's outcome was unknown, for the senders' answer.
    reason: String,
}

/// A snapshot of a room, for listings, operations and tests.
#[derive(Clone, Debug, PartialEq, Eq, kameo::Reply)]
#[non_exhaustive]
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
pub(crate) struct RoomActor {
    room: Room,
    /// Where the room's events wait for its readers; closed when the actor goes.
    ring: SharedRing,
    clock: Clock,
    /// The room's log; `None` for an in-memory room (durable when sequenced).
    logged: Option<Logged>,
    /// Senders waiting for their message to become durable before they get an answer.
    waiters: VecDeque<Waiter>,
    /// Readers waiting for the room to catch up with its log up to a position ([`CatchUp`]).
    catching_up: Vec<(Position, ReplySender<Answer<(), RoomError>>)>,
    /// When the one armed timer fires, if one is armed.
    timer_at: Option<Time>,
    /// When the ring last said it needs its sweep (it can change only when the actor
    /// publishes or sweeps, so the actor keeps it instead of asking under the lock).
    ring_due: Option<Time>,
    /// The engine's counters.
    stats: Arc<EngineStats>,
    /// The node's presence task (cluster mode): told the room's local members and typing.
    presence: Option<PresenceHandle>,
}

/// A reply held back until the message it acknowledges is durable.
enum Waiter {
    Send { sent: Sent, reply: ReplySender<Answer<Sent, RoomError>> },
    Batch { run: (Seq, Seq), reply: ReplySender<Answer<Option<(Seq, Seq)>, RoomError>> },
}

impl Waiter {
    /// The room sequenced its messages again (another node took their numbers):
    /// `moved` maps old sequence numbers to what became of them.
    fn moved(&mut self, moved: &std::collections::BTreeMap<Seq, Sent>) {
        match self {
            Waiter::Send { sent, .. } => {
                if let Some(now) = moved.get(&sent.seq) {
                    *sent = Sent { seq: now.seq, duplicate: sent.duplicate || now.duplicate };
                }
            }
            Waiter::Batch { run, .. } => {
                if let (Some(first), Some(last)) = (moved.get(&run.0), moved.get(&run.1)) {
                    *run = (first.seq, last.seq);
                }
            }
        }
    }

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
    /// The actor for `room`, whose ring keeps `limits.subscriber_queue_len_max` events: the
    /// distance a reader may fall behind before it lags.
    pub(crate) fn new(
        room: Room,
        limits: &Limits,
        clock: Clock,
        durability: Option<Durability>,
        stats: Arc<EngineStats>,
        presence: Option<PresenceHandle>,
    ) -> Self {
        let mut ring = Ring::new(limits.subscriber_queue_len_max, room.durable_seq(), limits.subscriber_stall_ms);
        if let Some(bug) = room.injected_bug() {
            ring.inject_bug(bug);
        }
        let room_last_seq = room.durable_seq();
        Self {
            room,
            ring: SharedRing::new(ring),
            clock,
            logged: durability.map(|durability| {
                let appender = Appender::new(durability.node, durability.last_position, room_last_seq)
                    .with_append_len_max(durability.log.append_len_max());
                let appender = if durability.log.is_single_writer() { appender.pipelined() } else { appender };
                Logged {
                    appender,
                    log: durability.log,
                    answers: None,
                    reading: false,
                    replicated: durability.replicated,
                    sent_at: clock.now(),
                    unknown: None,
                }
            }),
            waiters: VecDeque::new(),
            catching_up: Vec::new(),
            timer_at: None,
            ring_due: None,
            stats,
            presence,
        }
    }

    /// Executes the room's effects: readers that left are unsubscribed, events published once
    /// (one wake per parked reader), new messages handed to the log; then arms the timer.
    fn flush(&mut self, me: &ActorRef<Self>) {
        let now = self.clock.now();
        for id in self.ring.take_departed() {
            self.room.handle_unsubscribe(id, now);
        }
        let mut events = Vec::new();
        while let Some(effect) = self.room.poll_effect() {
            match effect {
                RoomEffect::Publish(event) => events.push(event),
                RoomEffect::Persist(messages) => {
                    if let Some(logged) = &mut self.logged {
                        logged.appender.handle_persist(messages);
                    }
                }
            }
        }
        if !events.is_empty() {
            self.ring_due = self.ring.publish(events, now);
        }
        if let Some(users) = self.room.poll_local_members()
            && let Some(presence) = &self.presence
        {
            presence.local_members(self.room.name(), users);
        }
        self.send_appends(me);
        self.arm_timer(me);
    }

    /// Sends the append the appender has due, if any; its outcome comes back as [`Appended`].
    fn send_appends(&mut self, me: &ActorRef<Self>) {
        let now = self.clock.now();
        let Some(logged) = &mut self.logged else { return };
        while let Some(append) = logged.appender.poll_append() {
            if logged.unknown.is_none() {
                // A new append, not one sent again after an unknown outcome.
                logged.sent_at = now;
            }
            let origin = append.origin;
            let appending = logged.log.append(self.room.name(), self.room.epoch(), append);
            let answers = logged.answers.get_or_insert_with(|| {
                let (answers, mut outcomes) = mpsc::unbounded_channel::<(Origin, BoxFuture<'static, AppendOutcome>)>();
                let me = me.downgrade();
                tokio::spawn(async move {
                    while let Some((origin, appending)) = outcomes.recv().await {
                        let outcome = appending.await;
                        // A stopped room has nobody left to tell.
                        let Some(me) = me.upgrade() else { return };
                        let _ = me.tell(Appended { origin, outcome }).await;
                    }
                });
                answers
            });
            let _ = answers.send((origin, appending));
        }
    }

    /// Reads the room's log after the last entry it knows, now or after `delay`, unless a
    /// read is on its way already; the entries come back as [`LogEntries`].
    fn read_log(&mut self, me: &ActorRef<Self>, delay: Option<Duration>) {
        let Some(logged) = &mut self.logged else { return };
        if logged.reading {
            return;
        }
        logged.reading = true;
        let (log, room) = (Arc::clone(&logged.log), self.room.name().clone());
        let after = logged.appender.read_after();
        let me = me.downgrade();
        tokio::spawn(async move {
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            let entries = log.read_after(&room, after, LOG_READ_LEN_MAX).await;
            if let Some(me) = me.upgrade() {
                let _ = me.tell(LogEntries { entries, read: true }).await;
            }
        });
    }

    /// Applies what the log said to the room, answers the senders whose messages are now
    /// committed, and runs the effects.
    fn apply(&mut self, steps: Vec<Step>, me: &ActorRef<Self>) {
        for step in steps {
            match step {
                Step::Durable(upto) => self.room.handle_durable(upto),
                Step::Committed(messages) => {
                    let moved = self.room.handle_committed(messages, self.clock.now());
                    let moved = moved.into_iter().collect();
                    for waiter in &mut self.waiters {
                        waiter.moved(&moved);
                    }
                }
            }
        }
        let durable = self.room.durable_seq();
        let (ready, waiting): (VecDeque<Waiter>, VecDeque<Waiter>) =
            self.waiters.drain(..).partition(|waiter| waiter.seq() <= durable);
        self.waiters = waiting;
        for waiter in ready {
            waiter.answer(Ok(()));
        }
        self.flush(me);
    }

    /// The log refused an append for good: the room rolls back what it had not seen committed
    /// and every waiting sender hears why.
    fn persist_failed(&mut self, failure: RoomError) {
        self.room.handle_persist_failed();
        self.refuse_waiters(&failure);
    }

    /// Answers every sender still waiting for its message to become durable with `refusal`.
    fn refuse_waiters(&mut self, refusal: &RoomError) {
        for waiter in self.waiters.drain(..) {
            waiter.answer(Err(refusal.clone()));
        }
    }

    /// The room's log dropped entries after `known` that this node never applied (see
    /// [`LogEntries`]): everyone waiting on the room is answered before it stops. A sender's
    /// message may have been committed meanwhile; a resend with the same client message id
    /// tells (G4).
    fn fell_behind_the_log(&mut self, known: Position) {
        tracing::warn!(room = %self.room.name(), after = ?known, "the room's log dropped entries this node had not applied; the room reloads");
        let refusal = RoomError::Storage {
            reason: "this node fell behind the room's log by more than the log keeps; the room reloads: resend with \
                     the same client_msg_id"
                .to_owned(),
        };
        self.refuse_waiters(&refusal);
        for (_, reply) in self.catching_up.drain(..) {
            reply.send(Answer(Err(refusal.clone())));
        }
    }

    /// The append in flight has (still) no known outcome, for `reason`: its senders are
    /// answered once [`UNKNOWN_OUTCOME_ANSWER_AFTER`] has passed since it was first sent (a
    /// timer armed at its first unknown outcome says when; later attempts' outcomes check
    /// again, for senders who came since).
    fn outcome_unknown(&mut self, reason: String, me: &ActorRef<Self>) {
        let now = self.clock.now();
        let Some(logged) = &mut self.logged else { return };
        match &mut logged.unknown {
            Some(unknown) => unknown.reason = reason,
            None => {
                logged.unknown = Some(UnknownOutcome { since: logged.sent_at, reason });
                let waited = Duration::from_millis(now.millis_since(logged.sent_at));
                let me = me.downgrade();
                tokio::spawn(async move {
                    tokio::time::sleep(UNKNOWN_OUTCOME_ANSWER_AFTER.saturating_sub(waited)).await;
                    if let Some(me) = me.upgrade() {
                        let _ = me.tell(UnknownOutcomeDue).await;
                    }
                });
            }
        }
        self.answer_if_unknown_too_long();
    }

    /// How long the append in flight has had no known outcome, and why, once that reached
    /// [`UNKNOWN_OUTCOME_ANSWER_AFTER`].
    fn unknown_too_long(&self) -> Option<(u64, &str)> {
        let unknown = self.logged.as_ref()?.unknown.as_ref()?;
        let waited_ms = self.clock.now().millis_since(unknown.since);
        let bound_ms = u64::try_from(UNKNOWN_OUTCOME_ANSWER_AFTER.as_millis()).unwrap_or(u64::MAX);
        (waited_ms >= bound_ms).then_some((waited_ms / 1_000, unknown.reason.as_str()))
    }

    /// Answers every waiting sender UNAVAILABLE if the append in flight has had no known
    /// outcome for too long. Their messages stay sequenced: they may commit yet.
    fn answer_if_unknown_too_long(&mut self) {
        let Some((waited_s, reason)) = self.unknown_too_long() else { return };
        let refusal = RoomError::Storage {
            reason: format!(
                "{reason}; no outcome for {waited_s} s, so the message may yet be committed: resend it with the \
                 same client_msg_id to learn its number"
            ),
        };
        self.refuse_waiters(&refusal);
    }

    /// The refusal of a new send while the append in flight has had no known outcome for too
    /// long: the send is not sequenced.
    fn refusal_while_unknown(&self) -> Option<RoomError> {
        let (waited_s, reason) = self.unknown_too_long()?;
        // A retry of a message already in flight is refused too: this request stores nothing,
        // but the earlier one may still commit.
        Some(RoomError::Storage {
            reason: format!("{reason}; no outcome from the log for {waited_s} s, so this send is refused, unstored"),
        })
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

    /// Arms the one timer for the ring's next sweep, unless an earlier one is armed.
    fn arm_timer(&mut self, me: &ActorRef<Self>) {
        let Some(due) = self.ring_due else { return };
        if self.timer_at.is_some_and(|armed| armed <= due) {
            return;
        }
        self.timer_at = Some(due);
        let wait = Duration::from_millis(due.millis_since(self.clock.now()));
        let me = me.downgrade();
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            if let Some(me) = me.upgrade() {
                let _ = me.tell(Timeout).await;
            }
        });
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

impl Actor for RoomActor {
    type Args = Self;
    type Error = kameo::error::Infallible;

    async fn on_start(actor: Self, me: ActorRef<Self>) -> Result<Self, Self::Error> {
        if let Some(presence) = &actor.presence {
            presence.room_started(actor.room.name(), me);
        }
        Ok(actor)
    }

    /// However the actor stops (retired, killed at shutdown), its readers end once they have
    /// read what it published. Here rather than in `Drop`: the actor's state outlives its stop
    /// while any `ActorRef` to it does (every ring reader holds one).
    async fn on_stop(&mut self, _: WeakActorRef<Self>, _: ActorStopReason) -> Result<(), Self::Error> {
        self.ring.update(Ring::close);
        // Stopped with users in it (the engine shuts down): the other nodes hear they left
        // now, not when this node goes silent. A room that retires has none (and saying so
        // could overtake what a new room of the same name reports).
        if let Some(presence) = &self.presence
            && self.room.has_local_members()
        {
            presence.local_members(self.room.name(), std::collections::BTreeSet::new());
        }
        if let Some(logged) = &mut self.logged {
            // Ends the task that forwards append outcomes.
            logged.answers = None;
        }
        Ok(())
    }
}

/// Sequence one message.
pub(crate) struct SendMessage(pub(crate) Draft);

impl Message<SendMessage> for RoomActor {
    type Reply = DelegatedReply<Answer<Sent, RoomError>>;

    async fn handle(&mut self, SendMessage(draft): SendMessage, ctx: &mut Context<Self, Self::Reply>) -> Self::Reply {
        if let Some(refusal) = self.refusal_while_unknown() {
            return ctx.reply(Answer(Err(refusal)));
        }
        let result = self.room.handle_send(draft, self.clock.now());
        if matches!(&result, Ok(sent) if !sent.duplicate) {
            self.stats.messages_appended(1);
        }
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
        if let Some(refusal) = self.refusal_while_unknown() {
            return ctx.reply(Answer(Err(refusal)));
        }
        let result = self.room.handle_send_batch(drafts, self.clock.now());
        if let Ok(Some((first, last))) = &result {
            self.stats.messages_appended(last - first + 1);
        }
        self.flush(ctx.actor_ref());
        match result {
            Ok(Some(run)) => {
                self.answer_when_durable(run.1, ctx, |reply| Waiter::Batch { run, reply }, Answer(Ok(Some(run))))
            }
            other => ctx.reply(Answer(other)),
        }
    }
}

/// What the log answered an append.
pub(crate) struct Appended {
    origin: Origin,
    outcome: AppendOutcome,
}

impl Message<Appended> for RoomActor {
    type Reply = ();

    async fn handle(&mut self, appended: Appended, ctx: &mut Context<Self, Self::Reply>) {
        let Some(logged) = &mut self.logged else { return };
        let Appended { origin, outcome } = appended;
        if matches!(outcome, AppendOutcome::Appended(_) | AppendOutcome::Conflict) {
            logged.unknown = None;
        }
        match outcome {
            AppendOutcome::Appended(last) => {
                let steps = logged.appender.handle_appended(origin, last).into_iter().collect();
                self.apply(steps, ctx.actor_ref());
            }
            AppendOutcome::Conflict => {
                logged.appender.handle_conflict(origin);
                self.read_log(ctx.actor_ref(), None);
            }
            AppendOutcome::Unknown { reason } => {
                // Sent again unchanged (its expectation commits it at most once), after a
                // pause so a log that fails fast is not hammered.
                logged.appender.handle_unknown(origin);
                self.outcome_unknown(reason, ctx.actor_ref());
                schedule_resend(ctx.actor_ref());
            }
            AppendOutcome::Failed(failure) => {
                if logged.appender.handle_failed(origin) {
                    logged.unknown = None;
                    self.persist_failed(failure);
                    self.flush(ctx.actor_ref());
                } else {
                    // An earlier attempt may have committed: sent again after a pause, until
                    // the log says which.
                    self.outcome_unknown(failure.to_string(), ctx.actor_ref());
                    schedule_resend(ctx.actor_ref());
                }
            }
        }
    }
}

/// Sends the room a [`Resend`] after a pause.
fn schedule_resend(me: &ActorRef<RoomActor>) {
    let me = me.downgrade();
    tokio::spawn(async move {
        tokio::time::sleep(LOG_RETRY_DELAY).await;
        if let Some(me) = me.upgrade() {
            let _ = me.tell(Resend).await;
        }
    });
}

/// [`UNKNOWN_OUTCOME_ANSWER_AFTER`] has passed since an append's outcome became unknown.
struct UnknownOutcomeDue;

impl Message<UnknownOutcomeDue> for RoomActor {
    type Reply = ();

    async fn handle(&mut self, _: UnknownOutcomeDue, _: &mut Context<Self, Self::Reply>) {
        self.answer_if_unknown_too_long();
    }
}

/// Time to send again an append whose outcome was unknown.
struct Resend;

impl Message<Resend> for RoomActor {
    type Reply = ();

    async fn handle(&mut self, _: Resend, ctx: &mut Context<Self, Self::Reply>) {
        self.send_appends(ctx.actor_ref());
    }
}

/// Entries of the room's log: read after the last entry the room knew (after a conflict, a
/// gap, or to catch up), or from the node's live feed of the log.
pub(crate) struct LogEntries {
    pub(crate) entries: Result<Vec<LogEntry>, RoomError>,
    /// From the room's own read (not the feed).
    pub(crate) read: bool,
}

impl Message<LogEntries> for RoomActor {
    type Reply = ();

    async fn handle(&mut self, LogEntries { entries, read }: LogEntries, ctx: &mut Context<Self, Self::Reply>) {
        let Some(logged) = &mut self.logged else { return };
        if read {
            logged.reading = false;
        }
        let steps = match entries {
            Ok(entries) => logged.appender.handle_entries(entries),
            Err(error) => {
                tracing::debug!(room = %self.room.name(), %error, "reading the room's log failed");
                // Readers waiting to catch up hear why; an append waiting for the entries that
                // beat it keeps waiting (the log is read again below).
                for (_, reply) in self.catching_up.drain(..) {
                    reply.send(Answer(Err(error.clone())));
                }
                Vec::new()
            }
        };
        let (conflicted, behind) = (logged.appender.is_conflicted(), logged.appender.is_behind());
        let (before, unapplied) = (logged.appender.read_after(), logged.appender.has_unapplied());
        self.apply(steps, ctx.actor_ref());
        let known = self.logged.as_ref().map_or(Position(0), |logged| logged.appender.read_after());
        let (caught_up, waiting): (Vec<_>, Vec<_>) =
            self.catching_up.drain(..).partition(|(target, _)| *target <= known);
        self.catching_up = waiting;
        for (_, reply) in caught_up {
            reply.send(Answer(Ok(())));
        }
        if behind && !read {
            // The feed skipped entries (it started after them): read them now.
            self.read_log(ctx.actor_ref(), None);
        } else if behind {
            // The log itself no longer holds the entries that continue this room: it dropped
            // them (its per-room limit, age retention) while this node lagged behind. No
            // read can close that gap, so the room stops; the next call loads it afresh from
            // the log, and its readers resume with `after_seq`, told of what they missed.
            self.fell_behind_the_log(known);
            ctx.stop();
        } else if conflicted || !self.catching_up.is_empty() {
            // The read did not reach what an append or a reader waits for (a replica
            // behind): again, after a pause.
            self.read_log(ctx.actor_ref(), Some(LOG_RETRY_DELAY));
        } else if read && unapplied {
            // The feed brought entries beyond what this read found while it was on its way
            // (they were set aside, as they did not continue the room): read up to them, at
            // once if this read made progress, else after a pause (a replica behind the feed).
            let delay = (known == before).then_some(LOG_RETRY_DELAY);
            self.read_log(ctx.actor_ref(), delay);
        }
    }
}

/// Catch up with the room's log: answered once the room has every entry the log's leader
/// has now, so what was acknowledged anywhere before is in the room's history and backlogs
/// (read-your-writes across nodes, G7). At once for a room only this process writes.
pub(crate) struct CatchUp;

impl Message<CatchUp> for RoomActor {
    type Reply = DelegatedReply<Answer<(), RoomError>>;

    async fn handle(&mut self, _: CatchUp, ctx: &mut Context<Self, Self::Reply>) -> Self::Reply {
        let Some(logged) = self.logged.as_ref().filter(|logged| logged.replicated) else {
            return ctx.reply(Answer(Ok(())));
        };
        let (delegated, reply) = ctx.reply_sender();
        let Some(reply) = reply else { return delegated };
        let asking = logged.log.last_position(self.room.name());
        let me = ctx.actor_ref().downgrade();
        tokio::spawn(async move {
            let target = asking.await;
            if let Some(me) = me.upgrade() {
                let _ = me.tell(CatchUpTo { target, reply }).await;
            }
        });
        delegated
    }
}

/// The log's leader said where the room's log ends, for a [`CatchUp`].
struct CatchUpTo {
    target: Result<Position, RoomError>,
    reply: ReplySender<Answer<(), RoomError>>,
}

impl Message<CatchUpTo> for RoomActor {
    type Reply = ();

    async fn handle(&mut self, CatchUpTo { target, reply }: CatchUpTo, ctx: &mut Context<Self, Self::Reply>) {
        let known = self.logged.as_ref().map_or(Position(0), |logged| logged.appender.read_after());
        match target {
            Err(error) => reply.send(Answer(Err(error))),
            Ok(target) if target <= known => reply.send(Answer(Ok(()))),
            Ok(target) => {
                self.catching_up.push((target, reply));
                self.read_log(ctx.actor_ref(), None);
            }
        }
    }
}

/// Why a read could not catch up with the log's leader first (the log is unreachable or has
/// no quorum), or `None` when it did: the room then answers only what its cache holds exactly.
pub(crate) type Unconfirmed = Option<RoomError>;

/// Add a subscriber; it gets its backlog in the reply and reads live events from the ring.
pub(crate) struct Subscribe {
    pub(crate) user: Option<UserName>,
    pub(crate) after_seq: Option<Seq>,
    /// The room could not catch up with its log first. A subscription from the cache is still
    /// exact (whatever the node has not heard yet comes live, in order, once the log is back),
    /// unless the client already read past what the node has: that is refused with this.
    pub(crate) unconfirmed: Unconfirmed,
}

impl Message<Subscribe> for RoomActor {
    type Reply = Answer<(Subscription, RingReader), RoomError>;

    async fn handle(&mut self, subscribe: Subscribe, ctx: &mut Context<Self, Self::Reply>) -> Self::Reply {
        if let Some(error) = subscribe.unconfirmed
            && subscribe.after_seq.is_some_and(|after| after > self.room.durable_seq())
        {
            return Answer(Err(error));
        }
        let now = self.clock.now();
        self.room.handle_expire(now);
        let result = self.room.handle_subscribe(subscribe.user, subscribe.after_seq, now);
        // Publish its presence first: a subscriber does not see its own arrival.
        self.flush(ctx.actor_ref());
        Answer(result.map(|subscription| {
            let delivered = self.room.durable_seq();
            self.ring.with(|ring| ring.add_reader(subscription.id, delivered));
            let reader = RingReader::new(
                self.ring.clone(),
                subscription.id,
                self.room.name().clone(),
                ctx.actor_ref().clone(),
                Arc::clone(&self.stats),
            );
            (subscription, reader)
        }))
    }
}

/// Remove a subscriber (it may have left the ring already: then this only hurries it up).
pub(crate) struct Unsubscribe(pub(crate) SubscriberId);

impl Message<Unsubscribe> for RoomActor {
    type Reply = ();

    async fn handle(&mut self, Unsubscribe(id): Unsubscribe, ctx: &mut Context<Self, Self::Reply>) {
        self.ring.remove_reader(id);
        self.flush(ctx.actor_ref());
    }
}

/// Someone is typing.
pub(crate) struct Typing(pub(crate) UserName);

impl Message<Typing> for RoomActor {
    type Reply = Answer<(), RoomError>;

    async fn handle(&mut self, Typing(user): Typing, ctx: &mut Context<Self, Self::Reply>) -> Self::Reply {
        let result = self.room.handle_typing(user.clone(), self.clock.now());
        if result.is_ok()
            && let Some(presence) = &self.presence
        {
            presence.local_typing(self.room.name(), user);
        }
        self.flush(ctx.actor_ref());
        Answer(result)
    }
}

/// The users other nodes have in the room now (cluster mode), from the presence task.
pub(crate) struct RemoteMembers(pub(crate) std::collections::BTreeSet<UserName>);

impl Message<RemoteMembers> for RoomActor {
    type Reply = ();

    async fn handle(&mut self, RemoteMembers(users): RemoteMembers, ctx: &mut Context<Self, Self::Reply>) {
        self.room.handle_remote_members(users);
        self.flush(ctx.actor_ref());
    }
}

/// A user of another node is typing in the room (cluster mode), from the presence task.
pub(crate) struct RemoteTyping(pub(crate) UserName);

impl Message<RemoteTyping> for RoomActor {
    type Reply = ();

    async fn handle(&mut self, RemoteTyping(user): RemoteTyping, ctx: &mut Context<Self, Self::Reply>) {
        self.room.handle_remote_typing(user);
        self.flush(ctx.actor_ref());
    }
}

/// A page of history.
pub(crate) struct History {
    pub(crate) after_seq: Seq,
    pub(crate) limit: usize,
    /// The room could not catch up with its log first. A full page from the cache is still
    /// exact (messages never change); one that reaches the end of what the node has may miss
    /// newer messages, and is refused with this.
    pub(crate) unconfirmed: Unconfirmed,
}

impl Message<History> for RoomActor {
    type Reply = Answer<HistoryPage, RoomError>;

    async fn handle(&mut self, history: History, _: &mut Context<Self, Self::Reply>) -> Self::Reply {
        self.room.handle_expire(self.clock.now());
        let page = self.room.history(history.after_seq, history.limit);
        match (page, history.unconfirmed) {
            (Ok(page), Some(error)) if page.messages.len() < self.room.history_page_len(history.limit) => {
                Answer(Err(error))
            }
            (page, _) => Answer(page),
        }
    }
}

/// A snapshot of the room (readers that left are unsubscribed first, so counts are current).
pub(crate) struct Info;

impl Message<Info> for RoomActor {
    type Reply = RoomInfo;

    async fn handle(&mut self, _: Info, ctx: &mut Context<Self, Self::Reply>) -> RoomInfo {
        self.room.handle_expire(self.clock.now());
        self.flush(ctx.actor_ref());
        self.info()
    }
}

/// Retire and stop if idle; replies whether it did.
pub(crate) struct RetireIfIdle;

impl Message<RetireIfIdle> for RoomActor {
    type Reply = bool;

    async fn handle(&mut self, _: RetireIfIdle, ctx: &mut Context<Self, Self::Reply>) -> bool {
        self.flush(ctx.actor_ref());
        let appending = self.logged.as_ref().is_some_and(|logged| logged.appender.is_busy());
        if !self.waiters.is_empty() || appending {
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

/// The armed timer fired: the ring's stall sweep closes readers that stalled while lagging.
pub(crate) struct Timeout;

impl Message<Timeout> for RoomActor {
    type Reply = ();

    async fn handle(&mut self, _: Timeout, ctx: &mut Context<Self, Self::Reply>) {
        self.timer_at = None;
        let now = self.clock.now();
        // `update` wakes the closed readers, so each hands out its final lag and its end.
        let (stalled, due) = self.ring.update(|ring| (ring.handle_timeout(now), ring.poll_timeout()));
        self.ring_due = due;
        for (id, lag) in stalled {
            tracing::debug!(room = %self.room.name(), ?lag, "closing a stalled subscriber");
            self.room.handle_unsubscribe(id, now);
            self.stats.subscriber_closed_stalled();
        }
        self.flush(ctx.actor_ref());
    }
}
