//! A session driven by its own response stream: the transport's writer polls
//! [`SessionStream`], and each poll moves the session along. Frames the session says go
//! straight from the rooms' rings to the writer, and the client's frames go from the
//! transport's reader to the session actor's mailbox, with no task of the transport's own in
//! between (one hop and one task wake less per message than a pump task with a channel).
//!
//! Used by the gRPC `confab.v1.Chat/Session` and the seed's `chat.ChatService/ChatStream`: one
//! pump, two vocabularies ([`SessionOutput`]). Each poll serves output first (a client that
//! reads is served before more of its input is taken), then takes input until the session's
//! mailbox is full or the input is pending, and checks shutdown with one atomic load.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use confab_actors::{Engine, EngineError, SessionEvents, SessionItem, SessionOptions, SessionSender, TrySend};
use confab_engine::{ClientFrame, RateLimited, RoomName, UserName};
use futures::{Stream, StreamExt};
use tokio::time::Sleep;

use super::error::ApiError;
use super::quota::Held;
use super::rate::{SenderRate, frame_rate};
use super::shutdown::{ShutdownSignal, ShutdownWatch};
use super::transport::Inbound;

/// Client frames one poll takes at most before yielding: a client that sends without pause
/// cannot keep its stream's task from serving others.
pub const INBOUND_FRAMES_PER_POLL_MAX: usize = 64;

/// What happens to a frame over its sender's rate (posts, typing, joins and leaves).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RatePolicy {
    /// Refused with a refusal item; the session goes on (`confab.v1` sessions).
    Refuse,
    /// Held until the rate allows it (protocols that cannot refuse one message and go on, like
    /// the seed's `ChatStream`); the client's later frames wait behind it.
    Pace,
}

/// What the sender's rates and quotas say about one client frame.
#[derive(Debug)]
pub enum Admission {
    /// Pass it on to the session.
    Pass,
    /// Over a rate: refuse it, or wait as long as it says ([`RatePolicy`]).
    OverRate(RateLimited),
    /// Over a quota (rooms held, rooms created): refused, whatever the policy.
    Refused(ApiError),
}

/// A session's share of its sender's rates and quotas: it holds a session slot while it
/// lives, and one room slot per room it joined (the transport cannot see which joins the
/// session refused, so a refused join holds its slot until a leave of it or the session's
/// end; only the sender's own quota pays for that). Shared by both session pumps.
pub struct SessionGuard {
    engine: Engine,
    rate: SenderRate,
    _session: Held,
    /// The rooms joined, by the name the client gave.
    rooms: HashMap<String, Held>,
}

impl SessionGuard {
    /// Takes a session slot of the sender's: RESOURCE_EXHAUSTED over its quota.
    pub fn open(engine: &Engine, rate: SenderRate) -> Result<Self, ApiError> {
        let session = rate.hold_session()?;
        Ok(Self { engine: engine.clone(), rate, _session: session, rooms: HashMap::new() })
    }

    /// Checks one client frame against the sender's rates and quotas, and counts it.
    pub fn admit(&mut self, frame: &ClientFrame) -> Admission {
        let Some((kind, room)) = frame_rate(frame) else { return Admission::Pass };
        if let Err(limited) = self.rate.try_take(kind) {
            return Admission::OverRate(limited);
        }
        match frame {
            ClientFrame::Join { room, .. } if !self.rooms.contains_key(room) => match self.hold(room) {
                Ok(held) => {
                    self.rooms.insert(room.clone(), held);
                    Admission::Pass
                }
                Err(error) => Admission::Refused(error),
            },
            ClientFrame::Leave { .. } => {
                self.rooms.remove(room);
                Admission::Pass
            }
            _ => Admission::Pass,
        }
    }

    /// A room slot for a join, after its creation token if the join would create the room.
    fn hold(&self, room: &str) -> Result<Held, ApiError> {
        // An invalid name is the session's to refuse; it creates nothing.
        if let Ok(name) = RoomName::new(room) {
            self.rate.check_creation(&self.engine, &name)?;
        }
        self.rate.hold_room(room)
    }
}

/// What one session frame becomes on a transport.
#[derive(Debug)]
pub enum Output<T> {
    /// Nothing: the transport has no place for this frame.
    Skip,
    /// This item.
    Item(T),
    /// This item, and then the stream ends (a terminal status).
    Last(T),
}

/// A transport's vocabulary for a session.
pub trait SessionOutput: Send + Unpin + 'static {
    /// What the stream yields.
    type Item;
    /// Whether this vocabulary has a place for send acknowledgements: without one the session
    /// sends none (each would only cost the stream a wake-up to skip it).
    const ACKS: bool;
    /// A frame from the session; a room event comes as shared with the room's other readers,
    /// so a vocabulary can encode it once for all of them ([`SharedEvent::encoded`]). Never
    /// [`SessionItem::End`]: the session's end comes to [`SessionOutput::end`].
    ///
    /// [`SharedEvent::encoded`]: confab_actors::SharedEvent::encoded
    fn item(&mut self, item: &SessionItem) -> Output<Self::Item>;
    /// A frame about `room` refused without ending the session: a post over the rate
    /// ([`RatePolicy::Refuse`]), or a frame the token's room permissions do not allow.
    fn refusal(&mut self, room: &str, error: ApiError) -> Option<Self::Item>;
    /// The last item: `None` when the session finished normally, or why it ended.
    fn end(&mut self, reason: Option<ApiError>) -> Option<Self::Item>;
}

type Sending = Pin<Box<dyn Future<Output = Result<(), EngineError>> + Send>>;

/// One session, as the stream of what its client is sent.
pub struct SessionStream<In, Out: SessionOutput> {
    /// The client's frames; `None` once it half-closed or went away.
    inbound: Option<In>,
    /// `None` once half-closed (dropping it unclosed disconnects the session at once).
    sender: Option<SessionSender>,
    events: SessionEvents,
    /// Frames to give the session before more input is read: the transport's opening frames,
    /// and a post the rate holds back.
    outgoing: VecDeque<ClientFrame>,
    /// A frame (or the half-close) waiting for room in the session's mailbox.
    sending: Option<Sending>,
    /// [`RatePolicy::Pace`]: the wait for the next token.
    pacing: Option<Pin<Box<Sleep>>>,
    /// The client's input ended: half-close once `outgoing` is through.
    input_done: bool,
    /// The sender's buckets and quotas, shared with its other sessions, streams and unary calls.
    guard: SessionGuard,
    policy: RatePolicy,
    output: Out,
    /// Refusals waiting to be yielded.
    refusals: VecDeque<Out::Item>,
    shutdown: ShutdownWatch,
    done: bool,
}

impl<In, Out> SessionStream<In, Out>
where
    In: Stream<Item = Inbound> + Send + Unpin,
    Out: SessionOutput,
{
    /// Opens a session for `user`; `opening` frames go to it first (a seed `ChatStream`'s join
    /// and first post). The stream ends when the session finishes, the client goes away, or
    /// `shutdown` is cancelled ([`ApiError::ShuttingDown`]). `In` ending counts as a half-close.
    /// Refused (RESOURCE_EXHAUSTED) when the sender has as many sessions open as its quota.
    #[allow(clippy::too_many_arguments)] // Each is one independent part of a session's setup.
    pub fn open(
        engine: &Engine,
        user: UserName,
        inbound: In,
        opening: Vec<ClientFrame>,
        rate: SenderRate,
        policy: RatePolicy,
        output: Out,
        shutdown: &ShutdownSignal,
    ) -> Result<Self, ApiError> {
        let guard = SessionGuard::open(engine, rate)?;
        let options = if Out::ACKS { SessionOptions::default() } else { SessionOptions::without_acks() };
        let (sender, events) = engine.open_session_with(user, options);
        Ok(Self {
            inbound: Some(inbound),
            sender: Some(sender),
            events,
            outgoing: opening.into(),
            sending: None,
            pacing: None,
            input_done: false,
            guard,
            policy,
            output,
            refusals: VecDeque::new(),
            shutdown: ShutdownWatch::new(shutdown),
            done: false,
        })
    }

    /// Ends the stream with `reason`'s item, if the transport has one.
    fn finish(&mut self, reason: Option<ApiError>) -> Poll<Option<Out::Item>> {
        self.done = true;
        self.inbound = None;
        self.sending = None;
        Poll::Ready(self.output.end(reason))
    }

    /// Moves the client's input into the session until something must wait. `Err` ends the
    /// stream with that reason (`None`: silently, the client is gone).
    fn drive_input(&mut self, cx: &mut Context<'_>) -> Result<(), Option<ApiError>> {
        let mut budget = INBOUND_FRAMES_PER_POLL_MAX;
        loop {
            if let Some(sending) = self.sending.as_mut() {
                match sending.as_mut().poll(cx) {
                    Poll::Pending => return Ok(()),
                    Poll::Ready(Ok(())) => self.sending = None,
                    Poll::Ready(Err(_)) => return Err(None),
                }
            }
            if let Some(pacing) = self.pacing.as_mut() {
                if pacing.as_mut().poll(cx).is_pending() {
                    return Ok(());
                }
                self.pacing = None;
            }
            if let Some(frame) = self.outgoing.pop_front() {
                self.dispatch(frame)?;
                continue;
            }
            if self.input_done {
                if let Some(sender) = self.sender.take() {
                    self.sending = Some(Box::pin(sender.close()));
                    continue;
                }
                return Ok(());
            }
            let Some(inbound) = self.inbound.as_mut() else { return Ok(()) };
            if budget == 0 {
                cx.waker().wake_by_ref();
                return Ok(());
            }
            budget -= 1;
            match inbound.poll_next_unpin(cx) {
                Poll::Ready(Some(Inbound::Frame(frame))) => self.outgoing.push_back(frame),
                Poll::Ready(Some(Inbound::Finished) | None) => {
                    self.inbound = None;
                    self.input_done = true;
                }
                Poll::Ready(Some(Inbound::Malformed(error))) => return Err(Some(error)),
                Poll::Ready(Some(Inbound::Refused { room, error })) => {
                    let refusal = self.output.refusal(&room, error);
                    self.refusals.extend(refusal);
                }
                Poll::Ready(Some(Inbound::Gone)) => return Err(None),
                Poll::Pending => return Ok(()),
            }
        }
    }

    /// Gives one frame to the session, under its sender's rates and quotas. A refusal is an
    /// item ([`RatePolicy::Refuse`]) or ends the stream ([`RatePolicy::Pace`], which has no
    /// place for one), and a frame over a rate waits under [`RatePolicy::Pace`].
    fn dispatch(&mut self, frame: ClientFrame) -> Result<(), Option<ApiError>> {
        let refused = match self.guard.admit(&frame) {
            Admission::Pass => None,
            Admission::OverRate(limited) if self.policy == RatePolicy::Pace => {
                self.outgoing.push_front(frame);
                let wait = Duration::from_millis(limited.retry_after_ms);
                self.pacing = Some(Box::pin(tokio::time::sleep(wait)));
                return Ok(());
            }
            Admission::OverRate(limited) => Some(ApiError::from(limited)),
            Admission::Refused(error) => Some(error),
        };
        if let Some(error) = refused {
            if self.policy == RatePolicy::Pace {
                return Err(Some(error));
            }
            let room = frame_rate(&frame).map(|(_, room)| room).unwrap_or_default();
            let refusal = self.output.refusal(room, error);
            self.refusals.extend(refusal);
            return Ok(());
        }
        let Some(sender) = self.sender.as_ref() else { return Ok(()) };
        match sender.try_send(frame) {
            TrySend::Sent => Ok(()),
            TrySend::Full(frame) => {
                self.sending = Some(Box::pin(sender.send_later(frame)));
                Ok(())
            }
            TrySend::Closed => Err(None),
        }
    }
}

// Nothing in it is pinned structurally: the input is polled through `poll_next_unpin` (it
// must be `Unpin`) and every future it keeps is boxed.
impl<In, Out: SessionOutput> Unpin for SessionStream<In, Out> {}

impl<In, Out> Stream for SessionStream<In, Out>
where
    In: Stream<Item = Inbound> + Send + Unpin,
    Out: SessionOutput,
{
    type Item = Out::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Out::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if this.shutdown.started() {
            return this.finish(Some(ApiError::ShuttingDown));
        }
        if let Some(refusal) = this.refusals.pop_front() {
            return Poll::Ready(Some(refusal));
        }
        loop {
            match this.events.poll_next_shared(cx) {
                // Its last item: a room closed the session for stalling (say so), or it
                // finished or stopped.
                Poll::Ready(Some(SessionItem::End(end))) => return this.finish(ApiError::from_end(end)),
                Poll::Ready(Some(item)) => match this.output.item(&item) {
                    Output::Skip => continue,
                    Output::Item(item) => return Poll::Ready(Some(item)),
                    Output::Last(item) => {
                        this.done = true;
                        return Poll::Ready(Some(item));
                    }
                },
                // Not reached: the end came first and finished this stream.
                Poll::Ready(None) => return this.finish(None),
                Poll::Pending => break,
            }
        }
        if let Err(reason) = this.drive_input(cx) {
            return this.finish(reason);
        }
        if let Some(refusal) = this.refusals.pop_front() {
            return Poll::Ready(Some(refusal));
        }
        if this.shutdown.poll_started(cx) {
            return this.finish(Some(ApiError::ShuttingDown));
        }
        Poll::Pending
    }
}
