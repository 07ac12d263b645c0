//! Several nodes sequencing one room through a shared log (cluster mode), driven by proptest:
//! each node is a deferred [`Room`] with its [`Appender`]; the log admits an append only if
//! its expectation is the room's last position; the network loses appends and answers, and
//! delivers answers and each node's live feed of the log late and in any order; clients move
//! to another node and send their unacknowledged messages again there.
//!
//! Checked after every step: the log numbers the room 1, 2, 3… with no gap (G1); each node
//! publishes a prefix of the log, in order (G1, G2); an acknowledged send is in the log at
//! the number it was given; no (user, client message id) is in the log twice (G4); each
//! client's messages are in the log in the order it sent them (G3). After the faults stop and
//! everything is delivered: every node published the whole log and every send was answered.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use confab_engine::{
    Append, Appender, ChatMessage, ClientMsgId, Draft, Limits, LogEntry, Persistence, Position, Room, RoomEffect,
    RoomEvent, Seq, Step, Time,
};
use proptest::prelude::*;

use super::{at, room_name, user};

const NODES: usize = 3;
const CLIENTS: usize = 4;

#[derive(Clone, Debug)]
enum Op {
    /// A client sends its next message through its node.
    Send { client: usize },
    /// A client's connection moves to `node`: it sends its unacknowledged messages again
    /// there, in order.
    Move { client: usize, node: usize },
    /// The log takes an append off the network; `answer_lost`: it applies it, but its
    /// answer is lost (the node learns only that the outcome is unknown).
    Deliver { index: usize, answer_lost: bool },
    /// An append is lost on its way to the log (the node learns the outcome is unknown).
    Lose { index: usize },
    /// An answer reaches its node.
    Answer { index: usize },
    /// A node's live feed brings up to `count` more entries of the log.
    Feed { node: usize, count: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..CLIENTS).prop_map(|client| Op::Send { client }),
        1 => (0..CLIENTS, 0..NODES).prop_map(|(client, node)| Op::Move { client, node }),
        5 => (any::<usize>(), proptest::bool::weighted(0.2)).prop_map(|(index, answer_lost)| Op::Deliver { index, answer_lost }),
        1 => any::<usize>().prop_map(|index| Op::Lose { index }),
        5 => any::<usize>().prop_map(|index| Op::Answer { index }),
        3 => (0..NODES, 1..4usize).prop_map(|(node, count)| Op::Feed { node, count }),
    ]
}

/// What the log answers an append.
#[derive(Debug)]
enum Answer {
    Appended(Position),
    Conflict,
    Unknown,
}

/// One node: its room, its appender, whom it owes an answer, and what it published.
struct Node {
    room: Room,
    appender: Appender,
    /// Sends waiting for their message to be committed: (sequence number, client, message).
    waiting: Vec<(Seq, usize, u64)>,
    /// The sequence numbers of the messages it published, in order.
    published: Vec<Seq>,
    /// How far its live feed has read the log (an index into it).
    fed: usize,
}

/// The log of the one room: entries in order, at positions 2, 4, 6… (other rooms' entries
/// would sit in between in a shared stream).
#[derive(Default)]
struct Log {
    entries: Vec<LogEntry>,
}

impl Log {
    fn last(&self) -> Position {
        self.entries.last().map_or(Position(0), |entry| entry.position)
    }

    /// Admits `append` if its expectation is the last position: its last position, or `None`.
    fn append(&mut self, append: &Append) -> Option<Position> {
        if append.expected_last != self.last() {
            return None;
        }
        for message in &append.messages {
            let position = Position(self.last().0 + 2);
            self.entries.push(LogEntry { position, origin: append.origin, message: Arc::clone(message) });
        }
        Some(self.last())
    }

    fn after(&self, position: Position) -> Vec<LogEntry> {
        self.entries.iter().filter(|entry| entry.position > position).cloned().collect()
    }
}

struct Cluster {
    nodes: Vec<Node>,
    log: Log,
    /// Appends on their way to the log: (node, append).
    requests: Vec<(usize, Append)>,
    /// Answers on their way to their node: (node, origin's append number, answer).
    answers: Vec<(usize, Append, Answer)>,
    /// Each client's node, how many messages it sent, and which are not yet acknowledged.
    clients: Vec<(usize, u64, VecDeque<u64>)>,
    /// Acknowledgements: (client, message) → the sequence number it was given.
    acked: BTreeMap<(usize, u64), Seq>,
    now: u64,
}

fn client_user(client: usize) -> confab_engine::UserName {
    user(["ann", "bob", "cy", "dee"][client])
}

fn id_of(message: u64) -> ClientMsgId {
    ClientMsgId::new(&format!("m{message}")).expect("valid id").expect("not empty")
}

impl Cluster {
    fn new() -> Self {
        let limits = Limits::default();
        let nodes = (0..NODES)
            .map(|node| {
                let mut room = Room::new(room_name("lobby"), 1, &limits, at(0));
                room.set_persistence(Persistence::Deferred);
                Node {
                    room,
                    // Nodes take 1, 2 and 3 messages per append at most (a bounded batch).
                    appender: Appender::new(node as u64 + 1, Position(0), 0).with_append_len_max(node + 1),
                    waiting: Vec::new(),
                    published: Vec::new(),
                    fed: 0,
                }
            })
            .collect();
        Self {
            nodes,
            log: Log::default(),
            requests: Vec::new(),
            answers: Vec::new(),
            clients: (0..CLIENTS).map(|client| (client % NODES, 0, VecDeque::new())).collect(),
            acked: BTreeMap::new(),
            now: 0,
        }
    }

    fn time(&mut self) -> Time {
        self.now += 1;
        at(self.now)
    }

    /// Client `client` sends message `message` through `node`.
    fn send(&mut self, node: usize, client: usize, message: u64) {
        let now = self.time();
        let draft = Draft {
            user: client_user(client),
            client_msg_id: Some(id_of(message)),
            body: Arc::from(format!("{client}:{message}")),
        };
        let sent = self.nodes[node].room.handle_send(draft, now).expect("the room accepts the message");
        self.nodes[node].waiting.push((sent.seq, client, message));
        self.settle(node);
    }

    /// Applies the appender's steps to the room, then runs the room's effects and sends what
    /// the appender has due; answers the sends now committed.
    fn apply(&mut self, node: usize, steps: Vec<Step>) {
        let now = self.time();
        for step in steps {
            match step {
                Step::Durable(upto) => self.nodes[node].room.handle_durable(upto),
                Step::Committed(messages) => {
                    let moved = self.nodes[node].room.handle_committed(messages, now);
                    let moved: BTreeMap<Seq, Seq> = moved.into_iter().map(|(old, sent)| (old, sent.seq)).collect();
                    for waiting in &mut self.nodes[node].waiting {
                        if let Some(&seq) = moved.get(&waiting.0) {
                            waiting.0 = seq;
                        }
                    }
                }
            }
        }
        self.settle(node);
    }

    fn settle(&mut self, node: usize) {
        let state = &mut self.nodes[node];
        while let Some(effect) = state.room.poll_effect() {
            match effect {
                RoomEffect::Publish(RoomEvent::Message(message)) => state.published.push(message.seq),
                RoomEffect::Publish(_) => {}
                RoomEffect::Persist(messages) => state.appender.handle_persist(messages),
            }
        }
        while let Some(append) = state.appender.poll_append() {
            self.requests.push((node, append));
        }
        let durable = state.room.durable_seq();
        let (done, waiting): (Vec<_>, Vec<_>) = state.waiting.drain(..).partition(|(seq, ..)| *seq <= durable);
        state.waiting = waiting;
        for (seq, client, message) in done {
            self.acknowledge(client, message, seq);
        }
    }

    fn acknowledge(&mut self, client: usize, message: u64, seq: Seq) {
        let entry = self.log.entries.get(seq as usize - 1).expect("an acknowledged message is in the log");
        assert_eq!(entry.message.user, client_user(client), "acknowledged {client}:{message} as {seq}");
        assert_eq!(entry.message.client_msg_id, Some(id_of(message)), "acknowledged {client}:{message} as {seq}");
        self.acked.insert((client, message), seq);
        self.clients[client].2.retain(|&unacked| unacked != message);
    }

    fn run(&mut self, op: &Op) {
        match *op {
            Op::Send { client } => {
                let (node, sent, _) = &mut self.clients[client];
                *sent += 1;
                let (node, message) = (*node, *sent);
                self.clients[client].2.push_back(message);
                self.send(node, client, message);
            }
            Op::Move { client, node } => {
                self.clients[client].0 = node;
                let unacked: Vec<u64> = self.clients[client].2.iter().copied().collect();
                for message in unacked {
                    self.send(node, client, message);
                }
            }
            Op::Deliver { index, answer_lost } => {
                if self.requests.is_empty() {
                    return;
                }
                let (node, append) = self.requests.remove(index % self.requests.len());
                let answer = match self.log.append(&append) {
                    Some(_) if answer_lost => Answer::Unknown,
                    Some(last) => Answer::Appended(last),
                    None => Answer::Conflict,
                };
                self.check_log();
                self.answers.push((node, append, answer));
            }
            Op::Lose { index } => {
                if self.requests.is_empty() {
                    return;
                }
                let (node, append) = self.requests.remove(index % self.requests.len());
                self.answers.push((node, append, Answer::Unknown));
            }
            Op::Answer { index } => {
                if self.answers.is_empty() {
                    return;
                }
                let (node, append, answer) = self.answers.remove(index % self.answers.len());
                self.answer(node, &append, answer);
            }
            Op::Feed { node, count } => self.feed(node, count),
        }
        self.check();
    }

    fn answer(&mut self, node: usize, append: &Append, answer: Answer) {
        let steps = match answer {
            Answer::Appended(last) => {
                self.nodes[node].appender.handle_appended(append.origin, last).into_iter().collect()
            }
            Answer::Unknown => {
                self.nodes[node].appender.handle_unknown(append.origin);
                Vec::new()
            }
            Answer::Conflict => {
                let appender = &mut self.nodes[node].appender;
                appender.handle_conflict(append.origin);
                let entries = self.log.after(appender.read_after());
                appender.handle_entries(entries)
            }
        };
        self.apply(node, steps);
    }

    fn feed(&mut self, node: usize, count: usize) {
        let from = self.nodes[node].fed;
        let to = from.saturating_add(count).min(self.log.entries.len());
        let entries = self.log.entries[from..to].to_vec();
        self.nodes[node].fed = to;
        let steps = self.nodes[node].appender.handle_entries(entries);
        self.apply(node, steps);
    }

    fn check_log(&self) {
        let mut ids = BTreeMap::new();
        let mut order: BTreeMap<usize, u64> = BTreeMap::new();
        for (index, entry) in self.log.entries.iter().enumerate() {
            let message: &ChatMessage = &entry.message;
            assert_eq!(message.seq, index as u64 + 1, "G1: the log numbers the room without gaps");
            let key = (message.user.clone(), message.client_msg_id.clone());
            assert!(ids.insert(key, message.seq).is_none(), "G4: {message:?} is in the log twice");
            let (client, number) = message.body.split_once(':').expect("body is client:message");
            let (client, number): (usize, u64) = (client.parse().expect("client"), number.parse().expect("number"));
            let previous = order.insert(client, number);
            assert!(previous < Some(number), "G3: client {client}'s message {number} after {previous:?}");
        }
    }

    fn check(&self) {
        self.check_log();
        for (node, state) in self.nodes.iter().enumerate() {
            let expected: Vec<Seq> = (1..=state.published.len() as u64).collect();
            assert_eq!(state.published, expected, "node {node} publishes the log's numbers in order");
            assert!(state.published.len() <= self.log.entries.len(), "node {node} published past the log");
        }
    }

    /// The faults stop: every append and answer is delivered and every feed read to the end,
    /// until nothing moves.
    fn drain(&mut self) {
        for _ in 0..10_000 {
            if !self.requests.is_empty() {
                self.run(&Op::Deliver { index: 0, answer_lost: false });
            } else if !self.answers.is_empty() {
                self.run(&Op::Answer { index: 0 });
            } else if let Some(node) = (0..NODES).find(|&node| self.nodes[node].fed < self.log.entries.len()) {
                self.run(&Op::Feed { node, count: usize::MAX });
            } else {
                return;
            }
        }
        panic!("the cluster did not settle");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn nodes_sharing_a_log_keep_every_guarantee(ops in proptest::collection::vec(op(), 1..120)) {
        let mut cluster = Cluster::new();
        for op in &ops {
            cluster.run(op);
        }
        cluster.drain();
        let last = cluster.log.entries.len() as u64;
        for (node, state) in cluster.nodes.iter().enumerate() {
            prop_assert_eq!(state.published.len() as u64, last, "node {} published the whole log", node);
            prop_assert!(state.waiting.is_empty(), "node {} still owes answers: {:?}", node, state.waiting);
            prop_assert!(!state.appender.is_busy(), "node {} still has appends", node);
        }
        for (client, (_, sent, unacked)) in cluster.clients.iter().enumerate() {
            prop_assert!(unacked.is_empty(), "client {} has unacknowledged messages {:?}", client, unacked);
            for message in 1..=*sent {
                prop_assert!(cluster.acked.contains_key(&(client, message)), "client {}'s message {} was never acknowledged", client, message);
            }
        }
    }
}

#[test]
fn a_node_that_lost_a_position_sequences_its_message_again_after_the_winner() {
    let mut cluster = Cluster::new();
    // Clients 0 and 1 are on nodes 0 and 1: both nodes give their message number 1.
    cluster.run(&Op::Send { client: 0 });
    cluster.run(&Op::Send { client: 1 });
    assert_eq!(cluster.requests.len(), 2);
    // Node 1's append reaches the log first; node 0's conflicts.
    cluster.run(&Op::Deliver { index: 1, answer_lost: false });
    cluster.run(&Op::Deliver { index: 0, answer_lost: false });
    cluster.drain();
    assert_eq!(cluster.acked[&(1, 1)], 1);
    assert_eq!(cluster.acked[&(0, 1)], 2, "the loser's message comes after the winner's");
    assert_eq!(cluster.nodes[0].published, vec![1, 2]);
}

#[test]
fn a_retry_on_another_node_is_kept_once() {
    let mut cluster = Cluster::new();
    cluster.run(&Op::Send { client: 0 });
    // Node 0's append commits but its answer is lost; the client moves to node 1 and retries.
    cluster.run(&Op::Deliver { index: 0, answer_lost: true });
    cluster.run(&Op::Move { client: 0, node: 1 });
    cluster.drain();
    assert_eq!(cluster.log.entries.len(), 1, "one message in the log");
    assert_eq!(cluster.acked[&(0, 1)], 1);
}
