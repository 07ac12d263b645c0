//! The driver: seeded simulated clients acting on the real engine through the same [`Engine`]
//! handle the transports use, reporting everything they observe to the [`Checker`].
//!
//! Each client is one task with its own random generator, seeded from the run's seed and the
//! client's number, so what a client does never depends on what another drew. A client either
//! subscribes to a room and sends with unary calls (a "stream client"), or drives a
//! bidirectional session (a "session client", pipelining its sends). Actions come at
//! exponentially distributed intervals; each is a send or, with the fault mix's
//! probabilities, a fault or probe.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use confab_actors::{Engine, RoomEvents, SessionEvents, SessionSender, StreamEnd, StreamItem};
use confab_engine::{ClientFrame, Draft, RoomEvent, RoomName, Sent, ServerFrame, UserName};
use confab_engine::{ClientMsgId, Seq};
use futures::StreamExt;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::time::{Instant, sleep_until};

use crate::checker::{Action, Checker, SubId};
use crate::options::SimOptions;

/// What every client shares.
pub(crate) struct World {
    /// The nodes: one engine, or several over one simulated replicated log.
    pub(crate) engines: Vec<Engine>,
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
            engines,
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
    Stream { events: RoomEvents, sub: SubId },
    Session { sender: SessionSender, events: SessionEvents, sub: SubId, pending: VecDeque<Pending> },
}

/// A session send awaiting its acknowledgement, in send order.
struct Pending {
    id: Arc<str>,
    /// For a retry: the id of the original, whose sequence number the ack must repeat.
    retry: bool,
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
}

/// Runs client `number` until the end of the run.
pub(crate) async fn run_client(world: Arc<World>, number: u32) {
    let mut rng = ChaCha8Rng::seed_from_u64(client_seed(world.options.seed, number));
    let session = rng.random_bool(world.options.session_share);
    let room = rng.random_range(0..world.options.rooms);
    let user = UserName::new(&format!("c{number}")).expect("a valid user name");
    let node = number as usize;
    let mut client = Client { world, number, user, rng, session, room, sent: 0, acked: VecDeque::new(), node };
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
            item = next_item(&mut conn) => {
                let mut item = item;
                loop {
                    if let Item::Ended { stalled } = item {
                        if !stalled {
                            return;
                        }
                        match Box::pin(client.resume_after_stall(conn)).await {
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
    /// The connection's last item: `stalled` if the room closed it because its reader stalled
    /// too long.
    Ended {
        stalled: bool,
    },
}

impl Item {
    /// A stream's item as the driver's, `next` wrapping what it carries. `None` (not reached:
    /// the driver stops reading at the end) counts as an end.
    fn of<T>(item: Option<StreamItem<T>>, next: impl FnOnce(T) -> Item) -> Item {
        match item {
            Some(StreamItem::Next(carried)) => next(carried),
            Some(StreamItem::End(end)) => Item::Ended { stalled: matches!(end, StreamEnd::Stalled(_)) },
            None => Item::Ended { stalled: false },
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
    /// The engine of the node this client is connected to.
    fn engine(&self) -> &Engine {
        &self.world.engines[self.node % self.world.engines.len()]
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
        let client_msg_id = ClientMsgId::new(id).expect("a valid client message id");
        Draft { user: self.user.clone(), client_msg_id, body: self.body() }
    }

    /// Connects to the current room, live or resuming after `after` (epoch, sequence number).
    async fn connect(&mut self, after: Option<(u64, Seq)>) -> Option<Conn> {
        let room = self.room_name();
        let sub = self.world.checker().open(self.number, self.room, after, self.now_ms());
        if self.session {
            let (sender, events) = self.engine().open_session(self.user.clone());
            let join = ClientFrame::Join { room: room.as_str().to_owned(), after_seq: after.map(|(_, seq)| seq) };
            sender.send(join).await.ok()?;
            Some(Conn::Session { sender, events, sub, pending: VecDeque::new() })
        } else {
            match self.engine().subscribe(&room, Some(self.user.clone()), after.map(|(_, seq)| seq)).await {
                Ok(events) => Some(Conn::Stream { events, sub }),
                Err(_) => {
                    self.world.checker().refused(sub, self.now_ms());
                    None
                }
            }
        }
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
                let retry_of = if expected.retry {
                    self.acked.iter().find(|(id, _)| *id == expected.id).map(|(_, seq)| *seq)
                } else {
                    self.acked.push_back((expected.id.clone(), seq));
                    if self.acked.len() > 8 {
                        self.acked.pop_front();
                    }
                    None
                };
                checker.sent(sub, Sent { seq, duplicate }, retry_of, now);
            }
            Item::Frame(ServerFrame::Left { .. }) => {}
            Item::Frame(ServerFrame::Error { .. }) => self.world.checker().refused(sub, now),
        }
        true
    }

    /// The room closed the connection for stalling (after its final lag marker): the client
    /// comes back at once, resuming like after a disconnect.
    async fn resume_after_stall(&mut self, conn: Conn) -> Option<Conn> {
        let resume = self.close_for_resume(conn, Action::ClosedForStalling);
        self.connect(resume).await
    }

    /// Records `action` and the end of `conn`, drops it, and says where to resume.
    fn close_for_resume(&mut self, conn: Conn, action: Action) -> Option<(u64, Seq)> {
        let now = self.now_ms();
        let mut checker = self.world.checker();
        checker.action(Some(conn.sub()), action, now);
        checker.close(conn.sub(), now);
        checker.resume_point(conn.sub())
    }

    /// Performs one action; `None` if the client has to give up (the engine stopped).
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
                self.node += 1;
                self.connect(resume).await
            }
            Step::Churn if self.world.options.rooms == 1 => self.send(conn, false).await,
            Step::Churn => {
                let now = self.now_ms();
                {
                    let mut checker = self.world.checker();
                    checker.action(Some(conn.sub()), Action::Churn, now);
                    checker.close(conn.sub(), now);
                }
                let old_room = self.room_name();
                // Another room: a session routes events by room, so rejoining the same one
                // would mix the old subscription's events into the new one's.
                let rooms = self.world.options.rooms;
                if rooms > 1 {
                    self.room = (self.room + self.rng.random_range(1..rooms)) % rooms;
                }
                match conn {
                    Conn::Stream { events, .. } => {
                        drop(events);
                        self.connect(None).await
                    }
                    Conn::Session { sender, events, pending, .. } => {
                        sender.send(ClientFrame::Leave { room: old_room.as_str().to_owned() }).await.ok()?;
                        let sub = self.world.checker().open(self.number, self.room, None, self.now_ms());
                        let join = ClientFrame::Join { room: self.room_name().as_str().to_owned(), after_seq: None };
                        sender.send(join).await.ok()?;
                        Some(Conn::Session { sender, events, sub, pending })
                    }
                }
            }
            Step::Upload | Step::Abort => {
                let len = self.rng.random_range(1..=self.world.options.upload_len_max);
                let mut upload = self.engine().upload(&self.room_name());
                let mut ids = Vec::with_capacity(len as usize);
                for _ in 0..len {
                    // Uploads carry no client message ids: a unique body identifies the message.
                    let id = self.next_id("u");
                    let mut draft = self.draft(&id);
                    draft.client_msg_id = None;
                    draft.body = Arc::from(format!("{id} {}", draft.body));
                    let body = draft.body.clone();
                    if upload.push(draft).await.is_err() {
                        self.world.checker().refused(conn.sub(), self.now_ms());
                        return Some(conn);
                    }
                    ids.push(body);
                }
                if step == Step::Abort {
                    upload.abort();
                    self.world.checker().upload_aborted(conn.sub(), &ids, self.now_ms());
                } else {
                    match upload.commit().await {
                        Ok(receipt) => self.world.checker().upload_committed(conn.sub(), &ids, &receipt, self.now_ms()),
                        Err(_) => self.world.checker().refused(conn.sub(), self.now_ms()),
                    }
                }
                Some(conn)
            }
            Step::ReadCheck => self.read_check(conn).await,
        }
    }

    /// Sends one message, and with `retry` the same one again.
    async fn send(&mut self, mut conn: Conn, retry: bool) -> Option<Conn> {
        let id = self.next_id("m");
        let draft = self.draft(&id);
        match &mut conn {
            Conn::Stream { sub, .. } => {
                let sub = *sub;
                let first = self.unary_send(sub, draft.clone(), None).await?;
                if retry && let Some(seq) = first {
                    self.unary_send(sub, draft, Some(seq)).await?;
                }
            }
            Conn::Session { sender, pending, .. } => {
                let room = self.world.rooms[self.room as usize].as_str().to_owned();
                let frame = ClientFrame::Send { room, client_msg_id: id.to_string(), body: draft.body.to_string() };
                pending.push_back(Pending { id: id.clone(), retry: false });
                if retry {
                    pending.push_back(Pending { id, retry: true });
                    sender.send(frame.clone()).await.ok()?;
                }
                sender.send(frame).await.ok()?;
            }
        }
        Some(conn)
    }

    /// A unary send reported to the checker: `Some(Some(seq))` when sequenced, `Some(None)` when
    /// refused, `None` when the engine stopped.
    async fn unary_send(&mut self, sub: SubId, draft: Draft, retry_of: Option<Seq>) -> Option<Option<Seq>> {
        match self.engine().send(&self.room_name(), draft).await {
            Ok(sent) => {
                self.world.checker().sent(sub, sent, retry_of, self.now_ms());
                Some(Some(sent.seq))
            }
            Err(confab_actors::EngineError::Stopped) => None,
            Err(_) => {
                self.world.checker().refused(sub, self.now_ms());
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
        let Some(seq) = self.unary_send(sub, draft, None).await? else { return Some(conn) };
        let room = self.room_name();
        if let Ok(page) = self.engine().history(&room, seq - 1, 1).await {
            self.world.checker().history_read(sub, seq, &id, &page, self.now_ms());
        }
        let epoch = self.world.checker().resume_point(sub).map(|(epoch, _)| epoch)?;
        let probe = self.world.checker().open(self.number, self.room, Some((epoch, seq - 1)), self.now_ms());
        if let Ok(mut events) = self.engine().subscribe(&room, None, Some(seq - 1)).await {
            // Subscribed, then the backlog starting with `seq`.
            for _ in 0..2 {
                let Some(StreamItem::Next(event)) = events.next().await else { break };
                self.world.checker().event(probe, &event, self.now_ms());
            }
        }
        self.world.checker().close(probe, self.now_ms());
        Some(conn)
    }
}
