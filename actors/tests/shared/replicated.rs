//! Scenarios of several engines as nodes of one replicated log, run against the in-memory log
//! (`tests/actors/replicated.rs`) and against real JetStream (`tests/cluster/engine.rs`), so
//! the model and the server are held to the same behaviour: one order on every node (G1, G2),
//! each sender's order (G3), a retry kept once across nodes (G4), and a node reading what any
//! node acknowledged before (G7).

use std::time::Duration;

use confab_actors::{Engine, RoomEvents, StreamItem};
use confab_engine::{ClientMsgId, Draft, RoomEvent, RoomName, Seq, UserName};
use futures::StreamExt;

/// The longest a scenario waits for deliveries.
const DELIVERY_WAIT_MAX: Duration = Duration::from_secs(30);

fn draft(who: &str, id: &str, body: &str) -> Draft {
    Draft {
        user: UserName::new(who).expect("user"),
        client_msg_id: ClientMsgId::new(id).expect("id"),
        body: body.into(),
    }
}

/// A message as the scenarios compare them.
type Seen = (Seq, String, String);

async fn next_messages(events: &mut RoomEvents, count: usize) -> Vec<Seen> {
    let mut got = Vec::with_capacity(count);
    while got.len() < count {
        match events.next().await {
            Some(StreamItem::Next(RoomEvent::Message(message))) => {
                got.push((message.seq, message.user.to_string(), message.body.to_string()))
            }
            Some(StreamItem::Next(
                RoomEvent::Subscribed { .. } | RoomEvent::Presence { .. } | RoomEvent::Typing { .. },
            )) => {}
            other => panic!("expected a message, got {other:?}"),
        }
    }
    got
}

/// Every message of `room` as `engine`'s history has it, page by page.
async fn whole_history(engine: &Engine, room: &RoomName) -> Vec<Seen> {
    let mut all = Vec::new();
    loop {
        let after = all.last().map_or(0, |(seq, ..): &Seen| *seq);
        let page = engine.history(room, after, 0).await.expect("history");
        if page.messages.is_empty() {
            return all;
        }
        all.extend(page.messages.iter().map(|m| (m.seq, m.user.to_string(), m.body.to_string())));
    }
}

/// Each node's client sends `per_node` messages without waiting for the others, so the nodes
/// race for positions; every node delivers the same room, in the log's order.
pub(crate) async fn nodes_sending_at_once_deliver_one_order_everywhere(
    nodes: &[Engine],
    room: &RoomName,
    per_node: usize,
) {
    let mut readers = Vec::new();
    for engine in nodes {
        readers.push(engine.subscribe(room, None, None).await.expect("subscribed"));
    }
    let senders = nodes.iter().enumerate().map(|(index, engine)| {
        let (engine, room) = (engine.clone(), room.clone());
        async move {
            let who = format!("user{index}");
            let mut seqs = Vec::new();
            for number in 0..per_node {
                let sent = engine.send(&room, draft(&who, &number.to_string(), &number.to_string())).await;
                seqs.push(sent.expect("sent").seq);
            }
            seqs
        }
    });
    let acked: Vec<Vec<Seq>> = futures::future::join_all(senders).await;
    let total = nodes.len() * per_node;
    let history = whole_history(&nodes[0], room).await;
    let seqs: Vec<Seq> = history.iter().map(|(seq, ..)| *seq).collect();
    assert_eq!(seqs, (1..=total as u64).collect::<Vec<_>>(), "G1: every message once, numbered without gaps");
    for (index, seqs) in acked.iter().enumerate() {
        assert!(seqs.windows(2).all(|pair| pair[0] < pair[1]), "G3: user{index}'s messages in order: {seqs:?}");
        for (number, seq) in seqs.iter().enumerate() {
            let expected = (*seq, format!("user{index}"), number.to_string());
            assert_eq!(history[*seq as usize - 1], expected, "acknowledged as {seq}");
        }
    }
    for (index, events) in readers.iter_mut().enumerate() {
        let delivered = tokio::time::timeout(DELIVERY_WAIT_MAX, next_messages(events, total)).await;
        assert_eq!(
            delivered.expect("every node delivers the whole room"),
            history,
            "node {index} delivers the log's order"
        );
    }
}

/// A client whose send went through one node sends it again through another: kept once, and
/// what either node acknowledged is read on the other at once.
pub(crate) async fn a_retry_on_another_node_is_kept_once_and_read_there_at_once(
    first: &Engine,
    second: &Engine,
    room: &RoomName,
) {
    let sent = first.send(room, draft("ann", "m1", "hello")).await.expect("sent");
    let again = second.send(room, draft("ann", "m1", "hello")).await.expect("sent again");
    assert_eq!((again.seq, again.duplicate), (sent.seq, true), "G4 across nodes");
    let reply = second.send(room, draft("bob", "r1", "hi ann")).await.expect("sent");
    let history = whole_history(first, room).await;
    let seqs: Vec<Seq> = history.iter().map(|(seq, ..)| *seq).collect();
    assert_eq!(seqs, vec![sent.seq, reply.seq], "G7: the first node reads the second's write at once");
    let mut events = first.subscribe(room, None, Some(0)).await.expect("subscribed");
    match events.next().await {
        Some(StreamItem::Next(RoomEvent::Subscribed { recovered, first_seq, .. })) => {
            assert_eq!((recovered, first_seq), (true, 1))
        }
        other => panic!("expected Subscribed, got {other:?}"),
    }
    assert_eq!(next_messages(&mut events, 2).await, history, "the backlog has both");
}

/// A node that never used the room continues it from the log, in the same epoch.
pub(crate) async fn a_node_new_to_the_room_continues_it_from_the_log(first: &Engine, late: &Engine, room: &RoomName) {
    for number in 0..5 {
        first.send(room, draft("ann", &number.to_string(), "x")).await.expect("sent");
    }
    let sent = late.send(room, draft("bob", "b", "y")).await.expect("sent");
    assert_eq!(sent.seq, 6, "continues the room");
    let page = first.history(room, 5, 10).await.expect("history");
    assert_eq!(page.messages.len(), 1, "the first node reads the late node's message");
    assert_eq!(page.epoch, late.history(room, 0, 1).await.expect("history").epoch, "one epoch on every node");
}
