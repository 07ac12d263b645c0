//! Several engines as nodes of one replicated log ([`MemoryLog`]): every node sequences its
//! own clients' messages, the log admits one per position, and every node delivers the same
//! room in the same order (G1, G2), keeps each sender's order (G3) and each retry once (G4),
//! and reads its own and other nodes' acknowledged writes (G7).

use std::sync::Arc;

use confab_actors::room_log::MemoryLog;
use confab_actors::{Engine, EngineConfig, Replicated};
use confab_engine::Seq;

use super::{draft, messages, room, subscribed};

/// Runs a test's body with a deadline: a node that never answers fails the test instead of
/// hanging it.
async fn within<T>(body: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(std::time::Duration::from_secs(20), body).await.expect("the nodes answered in time")
}

fn node(log: &Arc<MemoryLog>, node: u64) -> Engine {
    let replicated = Replicated::new(Arc::clone(log) as _, node);
    Engine::start(EngineConfig { replicated: Some(replicated), ..EngineConfig::default() })
        .expect("inside a tokio runtime")
}

#[tokio::test(flavor = "current_thread")]
async fn nodes_sending_at_once_deliver_one_order_everywhere() {
    within(async {
        let log = Arc::new(MemoryLog::new());
        let nodes = [node(&log, 1), node(&log, 2), node(&log, 3)];
        let lobby = room("lobby");
        let mut readers = Vec::new();
        for engine in &nodes {
            let mut events = engine.subscribe(&lobby, None, None).await.expect("subscribed");
            subscribed(&mut events).await;
            readers.push(events);
        }
        // Each node's client sends 20 messages without waiting for the others: the nodes race
        // for every position.
        let senders = nodes.iter().enumerate().map(|(index, engine)| {
            let (engine, lobby) = (engine.clone(), lobby.clone());
            tokio::spawn(async move {
                let who = ["ann", "bob", "cy"][index];
                let mut seqs = Vec::new();
                for number in 0..20 {
                    let sent = engine.send(&lobby, draft(who, &format!("{number}"), &format!("{number}"))).await;
                    seqs.push(sent.expect("sent").seq);
                }
                seqs
            })
        });
        let acked: Vec<Vec<Seq>> =
            futures::future::join_all(senders).await.into_iter().map(|seqs| seqs.expect("ran")).collect();
        for seqs in &acked {
            assert!(seqs.windows(2).all(|pair| pair[0] < pair[1]), "G3: each sender's messages in order: {seqs:?}");
        }
        let entries = log.entries(&lobby);
        assert_eq!(entries.len(), 60, "every message in the log once");
        let logged: Vec<(Seq, String, String)> = entries
            .iter()
            .map(|entry| (entry.message.seq, entry.message.user.to_string(), entry.message.body.to_string()))
            .collect();
        assert_eq!(logged.iter().map(|(seq, ..)| *seq).collect::<Vec<_>>(), (1..=60).collect::<Vec<_>>(), "G1");
        for (index, seqs) in acked.iter().enumerate() {
            let who = ["ann", "bob", "cy"][index];
            for (number, seq) in seqs.iter().enumerate() {
                assert_eq!(logged[*seq as usize - 1], (*seq, who.to_owned(), number.to_string()), "acked as {seq}");
            }
        }
        for (index, events) in readers.iter_mut().enumerate() {
            let delivered = tokio::time::timeout(std::time::Duration::from_secs(10), messages(events, 60)).await;
            assert_eq!(
                delivered.expect("every node delivers the whole room"),
                logged,
                "node {index} delivers the log's order"
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_retry_on_another_node_is_kept_once_and_read_there_at_once() {
    within(async {
        let log = Arc::new(MemoryLog::new());
        let (first, second) = (node(&log, 1), node(&log, 2));
        let lobby = room("lobby");
        let sent = first.send(&lobby, draft("ann", "m1", "hello")).await.expect("sent");
        // The nodes hear of each other's appends late: only the log itself is up to date.
        log.pause_feed(true);
        // The client did not see the answer, reconnects to the other node and sends again.
        let again = second.send(&lobby, draft("ann", "m1", "hello")).await.expect("sent again");
        assert_eq!((again.seq, again.duplicate), (sent.seq, true), "G4 across nodes");
        assert_eq!(log.entries(&lobby).len(), 1);
        // Acknowledged on the second node, readable on the first at once (G7), and the other way.
        let reply = second.send(&lobby, draft("bob", "r1", "hi ann")).await.expect("sent");
        let page = first.history(&lobby, 0, 10).await.expect("history");
        assert_eq!(page.messages.iter().map(|message| message.seq).collect::<Vec<_>>(), vec![sent.seq, reply.seq]);
        let mut events = first.subscribe(&lobby, None, Some(0)).await.expect("subscribed");
        assert_eq!(subscribed(&mut events).await, (true, 1));
        assert_eq!(messages(&mut events, 2).await.len(), 2);
        log.pause_feed(false);
    })
    .await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_node_that_starts_late_loads_the_room_from_the_log() {
    within(async {
        let log = Arc::new(MemoryLog::new());
        let first = node(&log, 1);
        let lobby = room("lobby");
        for number in 0..5 {
            first.send(&lobby, draft("ann", &format!("{number}"), "x")).await.expect("sent");
        }
        let late = node(&log, 2);
        let sent = late.send(&lobby, draft("bob", "b", "y")).await.expect("sent");
        assert_eq!(sent.seq, 6, "continues the room");
        let page = first.history(&lobby, 5, 10).await.expect("history");
        assert_eq!(page.messages.len(), 1, "the first node reads the late node's message");
        assert_eq!(page.epoch, late.history(&lobby, 0, 1).await.expect("history").epoch, "one epoch on every node");
    })
    .await;
}
