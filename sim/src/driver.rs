//! The driver: seeded simulated clients acting on the real engine through the same [`Engine`]
//! handle the transports use, reporting everything they observe to the [`Checker`].
//!
//! Each client is one task with its own random generator, seeded from the run's seed and the
//! client's number, so what a client does never depends on what another drew. A client either
//! subscribes to a room and sends with unary calls (a "stream client"), or drives a
//! bidirectional session (a "session client", pipelining its sends). Actions come at
//! exponentially distributed intervals; each is a send or, with the fault mix's
//! probabilities, a fault or probe.
//!
//! With `--crash-interval`, nodes crash (see `crash_nodes` in the crate root): a client whose
//! node crashes stops believing anything that node says from then on, reconnects to the next
//! node that is up (with one node, waits for its restart), resumes after what it had seen, and
//! sends again, with the same client message ids, what the crash left unanswered.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use confab_actors::{Engine, EngineError, RoomEvents, SessionEvents, SessionSender, StreamEnd, StreamItem};
use confab_engine::{ClientFrame, Draft, FrameError, RoomError, RoomEvent, RoomName, Sent, ServerFrame, UserName};
use confab_engine::{ClientMsgId, Seq};
use futures::StreamExt;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::Notify;
use tokio::time::{Instant, sleep_until};

use crate::checker::{Action, Checker, SubId};
use crate::options::SimOptions;

/// How long a client whose node crashed waits before it looks again for a node that is up
/// (when none is: every node crashed, or the only one is restarting).
const RECONNECT_DELAY: Duration = Duration::from_millis(100);

/// Whether a node is serving, and which of its runs (engines) it is on: a client connected to
/// run `run` has lost its node once the node is down or on a later run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct NodeState {
    pub(crate) run: u64,
    pub(crate) up: bool,
}

/// One node: its engine while it is up, and its state, which clients watch for crashes.
/// (Not a `tokio::sync::watch`: it spreads its waiters over several queues at random, so the
/// order in which a crash wakes clients would differ between runs.)
pub(crate) struct Node {
    engine: Mutex<Option<Engine>>,
    state: Mutex<NodeState>,
    /// Wakes every client waiting for a change of `state`, in the order they began to wait.
    changed: Notify,
}

impl Node {
    pub(crate) fn new(engine: Engine) -> Self {
        Node {
            engine: Mutex::new(Some(engine)),
            state: Mutex::new(NodeState { run: 0, up: true }),
            changed: Notify::new(),
        }
    }

    /// The engine, if the node is up.
    pub(crate) fn engine(&self) -> Option<Engine> {
        // One thread; a panic fails the run anyway.
        self.engine.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    pub(crate) fn state(&self) -> NodeState {
        *self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The node crashed: its clients stop believing it, and its engine is handed back to stop.
    pub(crate) fn crash(&self) -> Option<Engine> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner).up = false;
        self.changed.notify_waiters();
        self.engine.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take()
    }

    /// The node is up again, on its next run, with this engine.
    pub(crate) fn restart(&self, engine: Engine) {
        *self.engine.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(engine);
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *state = NodeState { run: state.run + 1, up: true };
        drop(state);
        self.changed.notify_waiters();
    }
}

/// What every client shares.
pub(crate) struct World {
    /// The nodes: one engine, or several over one simulated replicated log.
    pub(crate) nodes: Vec<Node>,
    pub(crate) options: SimOptions,
    pub(crate) rooms: Vec<RoomName>,
    pub(crate) checker: Mutex<Checker>,
    /// Virtual start of the run.
    pub(crate) start: Instant,
    /// Clients stop acting here...
    pub(crate) deadline: Instant,
    /// ...and stop reading here.
    pub(crate) end: Instant,
    /// Bodies are slices of this.
    filler: String,
}

impl World {
    pub(crate) fn new(engines: Vec<Engine>, options: SimOptions, rooms: Vec<RoomName>, checker: Checker) -> Self {
        let start = Instant::now();
        let deadline = start + options.duration;
        let filler = "confab simulated chat ".repeat(options.body_bytes as usize * 2 / 22 + 1);
        World {
            nodes: engines.into_iter().map(Node::new).collect(),
            rooms,
            checker: Mutex::new(checker),
            start,
            deadline,
            end: deadline + crate::DRAIN,
            filler,
            options,
        }
    }

    pub(crate) fn checker(&self) -> MutexGuard<'_, Checker> {
        // A panic elsewhere already fails the run; a poisoned lock adds nothing.
        self.checker.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn now_ms(&self) -> u64 {
        u64::try_from(Instant::now().saturating_duration_since(self.start).as_millis()).unwrap_or(u64::MAX)
    }
}

/// The seed of one client's generator: the run's seed and the client number, mixed
/// (splitmix64) so that neighbouring clients draw unrelated sequences.
fn client_seed(seed: u64, client: u32) -> u64 {
    let mut z = seed ^ (u64::from(client) + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// An exponentially distributed duration with this mean.
fn exponential(rng: &mut ChaCha8Rng, mean: Duration) -> Duration {
    let uniform: f64 = rng.random_range(f64::EPSILON..1.0);
    mean.mul_f64(-uniform.ln()).max(Duration::from_millis(1))
}

/// What a client does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Send,
    Stall,
    Disconnect,
    Retry,
    Upload,
    Abort,
    Churn,
    ReadCheck,
}

fn pick_step(rng: &mut ChaCha8Rng, options: &SimOptions) -> Step {
    let faults = &options.faults;
    let mut draw: f64 = rng.random();
    let choices = [
        (faults.slow, Step::Stall),
        (faults.disconnect, Step::Disconnect),
        (faults.retry, Step::Retry),
        (faults.upload, Step::Upload),
        (faults.abort, Step::Abort),
        (faults.churn, Step::Churn),
        (faults.read_check, Step::ReadCheck),
    ];
    for (probability, step) in choices {
        if draw < probability {
            return step;
        }
        draw -= probability;
    }
    Step::Send
}

/// A client's connection to its current room.
enum Conn {
    Stream {
        events: RoomEvents,
        sub: SubId,
    },
    Session {
        sender: SessionSender,
        events: SessionEvents,
        sub: SubId,
        pending: VecDeque<Pending>,
        /// Rooms this session left whose `Left` has not come back yet: their events may still
        /// be on the way, so the session does not join them again before (they would mix
        /// into the new subscription's). A session answers in order, and a send it waits on
        /// (a slow commit, a log election) holds its `Leave` back too.
        leaving: Vec<u32>,
    },
}

/// A session send awaiting its acknowledgement, in send order.
struct Pending {
    id: Arc<str>,
    kind: SendKind,
    /// The room it went to and its body: to send it again after a crash.
    room: u32,
    body: Arc<str>,
}

/// What a send is to the checker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SendKind {
    /// A new message.
    First,
    /// The same message again at once (same client message id): the ack must repeat the
    /// original's sequence number, when it is this one (for a session, looked up in `acked`).
    Retry(Option<Seq>),
    /// Sent again after a crash left it unanswered: new or a duplicate, it is stored once.
    Resend,
}

/// A send a crash left unanswered, to send again after the reconnect.
struct Unanswered {
    id: Arc<str>,
    room: u32,
    draft: Draft,
}

impl Conn {
    fn sub(&self) -> SubId {
        match self {
            Conn::Stream { sub, .. } | Conn::Session { sub, .. } => *sub,
        }
    }
}

/// One simulated client.
struct Client {
    world: Arc<World>,
    number: u32,
    user: UserName,
    rng: ChaCha8Rng,
    session: bool,
    room: u32,
    sent: u64,
    /// The sequence number each recent session send got, for its retry.
    acked: VecDeque<(Arc<str>, Seq)>,
    /// The node it is connected to (modulo the nodes): its number at first, the next one after
    /// each reconnect.
    node: usize,
    /// The run of that node it connected to: a later run, or the node down, is a crash.
    run: u64,
    /// Sends a crash left unanswered, oldest first.
    unanswered: Vec<Unanswered>,
}

/// Returns once `node` is down or on another run than `run`.
async fn crashed(node: &Node, run: u64) {
    loop {
        // Waiting before looking: a change between the two still wakes it.
        let changed = node.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let state = node.state();
        if !state.up || state.run != run {
            return;
        }
        changed.await;
    }
}

/// Runs client `number` until the end of the run.
pub(crate) async fn run_client(world: Arc<World>, number: u32) {
    let mut rng = ChaCha8Rng::seed_from_u64(client_seed(world.options.seed, number));
    let session = rng.random_bool(world.options.session_share);
    let room = rng.random_range(0..world.options.rooms);
    let user = UserName::new(&format!("c{number}")).expect("a valid user name");
    let node = number as usize % world.nodes.len();
    let run = world.nodes[node].state().run;
    let mut client = Client {
        world,
        number,
        user,
        rng,
        session,
        room,
        sent: 0,
        acked: VecDeque::new(),
        node,
        run,
        unanswered: Vec::new(),
    };
    let crashes = client.world.options.crash_interval.is_some();
    let Some(mut conn) = client.connect(None).await else { return };
    let first_action = Instant::now() + exponential(&mut client.rng, client.world.options.send_interval);
    // One timer, reset after each action: re-creating it for every delivery would cost a
    // timer-wheel insertion and removal per message.
    let timer = sleep_until(first_action.min(client.world.deadline));
    tokio::pin!(timer);
    // After the deadline the timer is set to the end of the drain: no more actions, read what
    // is still coming.
    let mut draining = false;
    'run: loop {
        tokio::select! {
            biased;
            // First: once its node crashed, nothing more it says is believed.
            () = crashed(&client.world.nodes[client.node], client.run), if crashes => {
                match Box::pin(client.recover(conn)).await {
                    Some(next) => conn = next,
                    None => return,
                }
            }
            item = next_item(&mut conn) => {
                let mut item = item;
                loop {
                    if client.is_own_room_stopped(&item) {
                        // A session hears of it in a `Left`; it resumes like a stream.
                        item = Item::Ended { resume: Some(Action::RoomStopped) };
                    }
                    if let Item::Ended { resume } = item {
                        let Some(why) = resume else {
                            if client.node_crashed() {
                                // The crash branch recovers.
                                continue 'run;
                            }
                            return;
                        };
                        if why == Action::RoomStopped && client.node_crashed() {
                            continue 'run;
                        }
                        match Box::pin(client.resume_after_end(conn, why)).await {
                            Some(next) => conn = next,
                            None => return,
                        }
                        continue 'run;
                    }
                    if !client.observe(&mut conn, item) {
                        return;
                    }
                    // Everything else this wake brought, before the timer is polled again (it
                    // would lose to a ready item anyway: the select is biased).
                    match ready_item(&mut conn).await {
                        Some(next) => item = next,
                        None => break,
                    }
                }
            }
            () = &mut timer => {
                if draining {
                    break;
                }
                if Instant::now() >= client.world.deadline {
                    draining = true;
                    timer.as_mut().reset(client.world.end);
                    continue;
                }
                let step = pick_step(&mut client.rng, &client.world.options);
                // Boxed: actions are rare, and keeping their futures out of the task keeps
                // every client's task small (10,000 of them must stay cache-friendly).
                match Box::pin(client.act(conn, step)).await {
                    Some(next) => conn = next,
                    None => return,
                }
                let next_action = Instant::now() + exponential(&mut client.rng, client.world.options.send_interval);
                timer.as_mut().reset(next_action.min(client.world.deadline));
            }
        }
    }
    drop(conn);
}

/// Either kind of inbound item.
enum Item {
    Event(RoomEvent),
    Frame(ServerFrame),
    /// The connection's last item. `resume` says why the client comes back at once: the room
    /// closed it because its reader stalled too long, or the room stopped under it; `None` if
    /// the engine or node stopped.
    Ended {
        resume: Option<Action>,
    },
}

impl Item {
    /// A stream's item as the driver's, `next` wrapping what it carries. `None` (not reached:
    /// the driver stops reading at the end) counts as an end.
    fn of<T>(item: Option<StreamItem<T>>, next: impl FnOnce(T) -> Item) -> Item {
        match item {
            Some(StreamItem::Next(carried)) => next(carried),
            Some(StreamItem::End(end)) => Item::Ended {
                resume: match end {
                    StreamEnd::Stalled(_) => Some(Action::ClosedForStalling),
                    StreamEnd::RoomStopped => Some(Action::RoomStopped),
                    _ => None,
                },
            },
            None => Item::Ended { resume: None },
        }
    }
}

/// The next item if one is ready now, without waiting (the task's waker stays registered).
async fn ready_item(conn: &mut Conn) -> Option<Item> {
    std::future::poll_fn(|cx| {
        let polled = match conn {
            Conn::Stream { events, .. } => events.poll_next_unpin(cx).map(|event| Item::of(event, Item::Event)),
            Conn::Session { events, .. } => events.poll_next_unpin(cx).map(|frame| Item::of(frame, Item::Frame)),
        };
        std::task::Poll::Ready(match polled {
            std::task::Poll::Ready(item) => Some(item),
            std::task::Poll::Pending => None,
        })
    })
    .await
}

async fn next_item(conn: &mut Conn) -> Item {
    match conn {
        Conn::Stream { events, .. } => Item::of(events.next().await, Item::Event),
        Conn::Session { events, .. } => Item::of(events.next().await, Item::Frame),
    }
}

impl Client {
    /// The engine of the node this client is connected to, `None` if that node crashed.
    fn engine(&self) -> Option<Engine> {
        if self.node_crashed() {
            return None;
        }
        self.world.nodes[self.node].engine()
    }

    /// Whether the node this client connected to crashed since.
    fn node_crashed(&self) -> bool {
        let state = self.world.nodes[self.node].state();
        !state.up || state.run != self.run
    }

    /// Awaits an engine call unless the client's node crashes first: `None` if it did, before
    /// or during the call (an answer from a crashed node is not believed: the client cannot
    /// tell it from one lost in the crash).
    async fn until_crash<T>(&mut self, call: impl Future<Output = T>) -> Option<T> {
        let answer = tokio::select! {
            biased;
            () = crashed(&self.world.nodes[self.node], self.run) => None,
            answer = call => Some(answer),
        };
        answer.filter(|_| !self.node_crashed())
    }

    /// Makes node `node`, on its current run, the client's node.
    fn attach(&mut self, node: usize) {
        self.node = node;
        self.run = self.world.nodes[node].state().run;
    }

    /// Connects (resuming after `after`) to the first node that is up from `first` on, waiting
    /// while none is. `None` if the run ends first or the engine refuses.
    async fn connect_to_any(&mut self, first: usize, after: Option<(u64, Seq)>) -> Option<Conn> {
        let nodes = self.world.nodes.len();
        loop {
            if Instant::now() >= self.world.end {
                return None;
            }
            let up = (0..nodes).map(|step| (first + step) % nodes).find(|&node| self.world.nodes[node].state().up);
            if let Some(node) = up {
                self.attach(node);
                let conn = self.connect(after).await;
                if !self.node_crashed() {
                    return conn;
                }
            }
            tokio::time::sleep(RECONNECT_DELAY).await;
        }
    }

    /// The client's node crashed: it reconnects elsewhere (or to the restarted node), resumes
    /// after what it had seen, and sends again what the crash left unanswered.
    async fn recover(&mut self, conn: Conn) -> Option<Conn> {
        let room = self.room;
        if let Conn::Session { pending, .. } = &conn {
            // A retry's original was answered (or is pending before it): only the rest is owed.
            let owed = pending.iter().filter(|pending| pending.kind != SendKind::Retry(None));
            for pending in owed {
                let draft = self.draft_with_body(&pending.id, pending.body.clone());
                self.unanswered.push(Unanswered { id: pending.id.clone(), room: pending.room, draft });
            }
        }
        let resume = self.close_for_resume(conn, Action::Reconnect);
        let mut conn = self.connect_to_any(self.node + 1, resume).await?;
        if let Conn::Stream { .. } = conn {
            // Subscribed first, so the resends' acknowledgements are checked in the room's log.
            match self.until_crash(next_item(&mut conn)).await {
                Some(item) => {
                    if !self.observe(&mut conn, item) {
                        return None;
                    }
                }
                None => return Some(conn),
            }
        }
        // Sends to a room the client has left since are not owed any more: nobody checks them.
        let owed: Vec<Unanswered> = std::mem::take(&mut self.unanswered);
        for unanswered in owed.into_iter().filter(|unanswered| unanswered.room == room) {
            conn = self.send_draft(conn, unanswered.id, unanswered.draft, SendKind::Resend).await?;
        }
        Some(conn)
    }

    fn now_ms(&self) -> u64 {
        self.world.now_ms()
    }

    fn room_name(&self) -> RoomName {
        self.world.rooms[self.room as usize].clone()
    }

    fn next_id(&mut self, prefix: &str) -> Arc<str> {
        self.sent += 1;
        Arc::from(format!("{prefix}{}-{}", self.number, self.sent))
    }

    fn body(&mut self) -> Arc<str> {
        let len = self.rng.random_range(1..=self.world.options.body_bytes as usize * 2);
        Arc::from(&self.world.filler[..len])
    }

    fn draft(&mut self, id: &Arc<str>) -> Draft {
        let body = self.body();
        self.draft_with_body(id, body)
    }

    fn draft_with_body(&self, id: &Arc<str>, body: Arc<str>) -> Draft {
        let client_msg_id = ClientMsgId::new(id).expect("a valid client message id");
        Draft { user: self.user.clone(), client_msg_id, body }
    }

    /// Connects to the current room, live or resuming after `after` (epoch, sequence number).
    /// `None` if the engine refused, or the node crashed (then the subscription is closed).
    async fn connect(&mut self, after: Option<(u64, Seq)>) -> Option<Conn> {
        let room = self.room_name();
        let sub = self.world.checker().open(self.number, self.room, after, self.now_ms());
        let conn = match self.engine() {
            None => None,
            Some(engine) if self.session => {
                let (sender, events) = engine.open_session(self.user.clone());
                let join = ClientFrame::Join { room: room.as_str().to_owned(), after_seq: after.map(|(_, seq)| seq) };
                match self.until_crash(sender.send(join)).await {
                    Some(Ok(())) => {
                        Some(Conn::Session { sender, events, sub, pending: VecDeque::new(), leaving: Vec::new() })
                    }
                    _ => None,
                }
            }
            Some(engine) => {
                let subscribing = engine.subscribe(&room, Some(self.user.clone()), after.map(|(_, seq)| seq));
                match self.until_crash(subscribing).await {
                    Some(Ok(events)) => Some(Conn::Stream { events, sub }),
                    Some(Err(_)) => {
                        self.world.checker().refused(sub, self.now_ms());
                        None
                    }
                    None => None,
                }
            }
        };
        if self.node_crashed() {
            // Whatever the crashed node answered is not believed.
            self.world.checker().close(sub, self.now_ms());
            return None;
        }
        conn
    }

    /// Hands one inbound item to the checker; `false` when the connection ended.
    fn observe(&mut self, conn: &mut Conn, item: Item) -> bool {
        let now = self.now_ms();
        let sub = conn.sub();
        match item {
            Item::Ended { .. } => return false,
            Item::Event(event) => self.world.checker().event(sub, &event, now),
            Item::Frame(ServerFrame::Event(event)) => {
                // After a churn, events of the room left may still arrive: they belong to no
                // open subscription of this client any more.
                if event.room() == &self.world.rooms[self.room as usize] {
                    self.world.checker().event(sub, &event, now);
                }
            }
            Item::Frame(ServerFrame::SendAck { client_msg_id, seq, duplicate, .. }) => {
                let Conn::Session { pending, .. } = conn else { return true };
                let Some(expected) = pending.pop_front() else { return true };
                let echoed = client_msg_id.as_ref().map(|id| id.as_str());
                let mut checker = self.world.checker();
                if echoed != Some(&*expected.id) {
                    // Acks come back in send order (G3); report it as a send out of order.
                    checker.sent(sub, Sent { seq: 0, duplicate: false }, None, now);
                    return true;
                }
                let sent = Sent { seq, duplicate };
                if expected.room != self.room {
                    // A send to the room the client left since (a slow commit answers after the
                    // churn): its subscription is closed, and the new room's order is another.
                    return true;
                }
                match expected.kind {
                    SendKind::Resend => checker.resent(sub, &expected.id, sent, now),
                    SendKind::Retry(_) => {
                        let retry_of = self.acked.iter().find(|(id, _)| *id == expected.id).map(|(_, seq)| *seq);
                        checker.sent_id(sub, &expected.id, sent, retry_of, now);
                    }
                    SendKind::First => {
                        self.acked.push_back((expected.id.clone(), seq));
                        if self.acked.len() > 8 {
                            self.acked.pop_front();
                        }
                        checker.sent_id(sub, &expected.id, sent, None, now);
                    }
                }
            }
            Item::Frame(ServerFrame::Left { room, .. }) => {
                if let Conn::Session { leaving, .. } = conn {
                    leaving.retain(|left| self.world.rooms[*left as usize] != room);
                }
            }
            Item::Frame(ServerFrame::Error { error, .. }) => {
                let failed_commit = matches!(error, FrameError::Room(RoomError::Storage { .. }));
                match conn {
                    // A session answers its sends in order: the oldest one's commit failed.
                    Conn::Session { pending, .. } if failed_commit && !pending.is_empty() => {
                        let failed = pending.pop_front().expect("not empty");
                        match pending.front_mut() {
                            // Its retry, right behind it, is a new send now (the room rolled
                            // the original back): new or not, it must be stored once.
                            Some(next) if next.id == failed.id => next.kind = SendKind::Resend,
                            _ if failed.kind != SendKind::Retry(None) => {
                                self.world.checker().send_failed(sub, &failed.id, now);
                            }
                            _ => self.world.checker().refused(sub, now),
                        }
                    }
                    _ => self.world.checker().refused(sub, now),
                }
            }
        }
        true
    }

    /// The room closed the connection for stalling (after its final lag marker) or stopped
    /// under it (`why`): the client comes back at once, resuming like after a disconnect.
    async fn resume_after_end(&mut self, conn: Conn, why: Action) -> Option<Conn> {
        let resume = self.close_for_resume(conn, why);
        self.connect_to_any(self.node, resume).await
    }

    /// Whether `item` is a session's news that the room this client is in stopped under it.
    fn is_own_room_stopped(&self, item: &Item) -> bool {
        matches!(
            item,
            Item::Frame(ServerFrame::Left { room, stopped: true }) if *room == self.world.rooms[self.room as usize]
        )
    }

    /// Records `action` and the end of `conn`, drops it, and says where to resume.
    fn close_for_resume(&mut self, conn: Conn, action: Action) -> Option<(u64, Seq)> {
        let now = self.now_ms();
        let mut checker = self.world.checker();
        checker.action(Some(conn.sub()), action, now);
        checker.close(conn.sub(), now);
        checker.resume_point(conn.sub())
    }

    /// Performs one action; `None` if the client has to give up (the engine stopped). A
    /// crash during the action ends it early: the caller's loop then sees the crash.
    async fn act(&mut self, conn: Conn, step: Step) -> Option<Conn> {
        match step {
            Step::Send => self.send(conn, false).await,
            Step::Retry => self.send(conn, true).await,
            Step::Stall => {
                let stall = exponential(&mut self.rng, self.world.options.stall);
                self.world.checker().action(Some(conn.sub()), Action::Stall, self.now_ms());
                sleep_until((Instant::now() + stall).min(self.world.deadline)).await;
                Some(conn)
            }
            Step::Disconnect => {
                let resume = self.close_for_resume(conn, Action::Disconnect);
                let offline = exponential(&mut self.rng, self.world.options.offline);
                sleep_until((Instant::now() + offline).min(self.world.deadline)).await;
                // It comes back through the next node (with one node, the same one).
                self.connect_to_any(self.node + 1, resume).await
            }
            Step::Churn if self.world.options.rooms == 1 => self.send(conn, false).await,
            Step::Churn => {
                // Another room: a session routes events by room, so rejoining the same one
                // would mix the old subscription's events into the new one's.
                let rooms = self.world.options.rooms;
                let next_room = (self.room + self.rng.random_range(1..rooms)) % rooms;
                if let Conn::Session { leaving, .. } = &conn
                    && leaving.contains(&next_room)
                {
                    return self.send(conn, false).await;
                }
                let now = self.now_ms();
                {
                    let mut checker = self.world.checker();
                    checker.action(Some(conn.sub()), Action::Churn, now);
                    checker.close(conn.sub(), now);
                }
                let old_room = self.room;
                self.room = next_room;
                match conn {
                    Conn::Stream { events, .. } => {
                        drop(events);
                        self.connect_to_any(self.node, None).await
                    }
                    Conn::Session { sender, events, pending, mut leaving, .. } => {
                        leaving.push(old_room);
                        let leave =
                            ClientFrame::Leave { room: self.world.rooms[old_room as usize].as_str().to_owned() };
                        let left = self.until_crash(sender.send(leave)).await;
                        // Opened even after a crash: the client then resumes in the new room.
                        let sub = self.world.checker().open(self.number, self.room, None, self.now_ms());
                        let join = ClientFrame::Join { room: self.room_name().as_str().to_owned(), after_seq: None };
                        let joined = match left {
                            Some(Ok(())) => self.until_crash(sender.send(join)).await,
                            other => other,
                        };
                        if let Some(Err(_)) = joined {
                            return None;
                        }
                        Some(Conn::Session { sender, events, sub, pending, leaving })
                    }
                }
            }
            Step::Upload | Step::Abort => self.upload(conn, step == Step::Abort).await,
            Step::ReadCheck => self.read_check(conn).await,
        }
    }

    /// Uploads a run of messages and commits it, or with `abort` aborts it. A crash leaves its
    /// outcome unknown (uploads carry no client message ids to send them again by): nothing
    /// is checked of it then.
    async fn upload(&mut self, conn: Conn, abort: bool) -> Option<Conn> {
        let len = self.rng.random_range(1..=self.world.options.upload_len_max);
        let Some(engine) = self.engine() else { return Some(conn) };
        let mut upload = engine.upload(&self.room_name());
        let mut ids = Vec::with_capacity(len as usize);
        for _ in 0..len {
            // Uploads carry no client message ids: a unique body identifies the message.
            let id = self.next_id("u");
            let mut draft = self.draft(&id);
            draft.client_msg_id = None;
            draft.body = Arc::from(format!("{id} {}", draft.body));
            let body = draft.body.clone();
            match self.until_crash(upload.push(draft)).await {
                Some(Ok(())) => ids.push(body),
                Some(Err(_)) => {
                    self.world.checker().refused(conn.sub(), self.now_ms());
                    return Some(conn);
                }
                None => return Some(conn),
            }
        }
        if abort {
            upload.abort();
            self.world.checker().upload_aborted(conn.sub(), &ids, self.now_ms());
            return Some(conn);
        }
        match self.until_crash(upload.commit()).await {
            Some(Ok(receipt)) => self.world.checker().upload_committed(conn.sub(), &ids, &receipt, self.now_ms()),
            Some(Err(EngineError::Room(RoomError::Storage { .. }))) => {
                self.world.checker().upload_failed(conn.sub(), &ids, self.now_ms());
            }
            Some(Err(_)) => self.world.checker().refused(conn.sub(), self.now_ms()),
            None => {}
        }
        Some(conn)
    }

    /// Sends one message, and with `retry` the same one again.
    async fn send(&mut self, conn: Conn, retry: bool) -> Option<Conn> {
        let id = self.next_id("m");
        let draft = self.draft(&id);
        let Conn::Stream { sub, .. } = &conn else {
            let conn = self.send_draft(conn, id.clone(), draft.clone(), SendKind::First).await?;
            if !retry {
                return Some(conn);
            }
            return self.send_draft(conn, id, draft, SendKind::Retry(None)).await;
        };
        let sub = *sub;
        let first = self.unary_send(sub, &id, draft.clone(), SendKind::First).await?;
        if retry && let Some(seq) = first {
            self.unary_send(sub, &id, draft, SendKind::Retry(Some(seq))).await?;
        }
        Some(conn)
    }

    /// Sends `draft` (client message id `id`) on the connection: a unary send, or a session
    /// frame whose acknowledgement comes later.
    async fn send_draft(&mut self, mut conn: Conn, id: Arc<str>, draft: Draft, kind: SendKind) -> Option<Conn> {
        match &mut conn {
            Conn::Stream { sub, .. } => {
                let sub = *sub;
                self.unary_send(sub, &id, draft, kind).await?;
            }
            Conn::Session { sender, pending, .. } => {
                let room = self.world.rooms[self.room as usize].as_str().to_owned();
                let frame = ClientFrame::Send { room, client_msg_id: id.to_string(), body: draft.body.to_string() };
                // Pending until acknowledged: after a crash, `recover` sends it again.
                pending.push_back(Pending { id, kind, room: self.room, body: draft.body });
                if let Some(Err(_)) = self.until_crash(sender.send(frame)).await {
                    return None;
                }
            }
        }
        Some(conn)
    }

    /// A unary send reported to the checker: `Some(Some(seq))` when sequenced, `Some(None)` when
    /// refused, failed or left unanswered by a crash (then owed: sent again after the
    /// reconnect), `None` when the engine stopped.
    async fn unary_send(&mut self, sub: SubId, id: &Arc<str>, draft: Draft, kind: SendKind) -> Option<Option<Seq>> {
        let room = self.room_name();
        let answer = match self.engine() {
            Some(engine) => self.until_crash(engine.send(&room, draft.clone())).await,
            None => None,
        };
        let now = self.now_ms();
        match answer {
            Some(Ok(sent)) => {
                let mut checker = self.world.checker();
                match kind {
                    SendKind::First => checker.sent_id(sub, id, sent, None, now),
                    SendKind::Retry(retry_of) => checker.sent_id(sub, id, sent, retry_of, now),
                    SendKind::Resend => checker.resent(sub, id, sent, now),
                }
                Some(Some(sent.seq))
            }
            Some(Err(EngineError::Stopped)) => None,
            Some(Err(EngineError::Room(RoomError::Storage { .. }))) if !matches!(kind, SendKind::Retry(_)) => {
                self.world.checker().send_failed(sub, id, now);
                Some(None)
            }
            Some(Err(_)) => {
                self.world.checker().refused(sub, now);
                Some(None)
            }
            None => {
                // A retry's original was answered: only the original could be owed.
                if !matches!(kind, SendKind::Retry(_)) {
                    self.unanswered.push(Unanswered { id: id.clone(), room: self.room, draft });
                }
                Some(None)
            }
        }
    }

    /// Read your writes (G7): a send, then a history read after it and a new subscription
    /// resuming just before it. Session clients make a plain send instead: a unary send beside
    /// their pipelined ones would make the per-stream order (G3) ambiguous.
    async fn read_check(&mut self, conn: Conn) -> Option<Conn> {
        let Conn::Stream { sub, .. } = &conn else { return self.send(conn, false).await };
        let sub = *sub;
        let id = self.next_id("m");
        let draft = self.draft(&id);
        let Some(seq) = self.unary_send(sub, &id, draft, SendKind::First).await? else { return Some(conn) };
        let room = self.room_name();
        let Some(engine) = self.engine() else { return Some(conn) };
        if let Some(Ok(page)) = self.until_crash(engine.history(&room, seq - 1, 1)).await {
            self.world.checker().history_read(sub, seq, &id, &page, self.now_ms());
        }
        if self.node_crashed() {
            return Some(conn);
        }
        let epoch = self.world.checker().resume_point(sub).map(|(epoch, _)| epoch)?;
        let probe = self.world.checker().open(self.number, self.room, Some((epoch, seq - 1)), self.now_ms());
        if let Some(Ok(mut events)) = self.until_crash(engine.subscribe(&room, None, Some(seq - 1))).await {
            // Subscribed, then the backlog starting with `seq`.
            for _ in 0..2 {
                let Some(Some(StreamItem::Next(event))) = self.until_crash(events.next()).await else { break };
                self.world.checker().event(probe, &event, self.now_ms());
            }
        }
        self.world.checker().close(probe, self.now_ms());
        Some(conn)
    }
}
