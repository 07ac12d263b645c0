//! kill -9 of a confab node mid-conversation: its clients resend elsewhere.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::nats::{ClusterOptions, NatsCluster};
use crate::{Node, bounded, check_history, send};

/// Clients of the node that dies.
const SENDERS: usize = 4;

/// Messages acknowledged (all senders together) before the node is killed.
const ACKNOWLEDGED_BEFORE_KILL: usize = 40;

/// New messages each sender posts on the other node after resending.
const AFTER_RESEND: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_s_clients_resend_elsewhere_and_nothing_is_lost_or_doubled() {
    let cluster = NatsCluster::start(ClusterOptions::default());
    let mut doomed = Node::start(&cluster, "doomed").await;
    let survivor = Node::start(&cluster, "survivor").await;
    let room = "crash";
    let acknowledged = Arc::new(Mutex::new(Vec::<(u64, String)>::new()));

    // Each sender posts on the doomed node until a send fails (the node died), then resends
    // that message with the same id on the survivor, and goes on there.
    let senders: Vec<_> = (0..SENDERS)
        .map(|index| {
            let (doomed, survivor) = (doomed.address.clone(), survivor.address.clone());
            let acknowledged = Arc::clone(&acknowledged);
            tokio::spawn(async move {
                let user = format!("user{index}");
                let mut client = crate::client(&doomed).await;
                let mut number = 0;
                // Bounded: the node is killed long before this many.
                let unacknowledged = loop {
                    assert!(number < 100_000, "sender {index}: the node was never killed");
                    let id = format!("s{index}-{number}");
                    match send(&mut client, room, &user, &id).await {
                        Ok(seq) => acknowledged.lock().expect("ledger").push((seq, id)),
                        Err(_) => break id,
                    }
                    number += 1;
                };
                let mut client = crate::client(&survivor).await;
                let resent = send(&mut client, room, &user, &unacknowledged)
                    .await
                    .unwrap_or_else(|error| panic!("resend {unacknowledged} to the survivor: {error}"));
                acknowledged.lock().expect("ledger").push((resent, unacknowledged));
                for more in 1..=AFTER_RESEND {
                    let id = format!("s{index}-{}", number + more);
                    let seq = send(&mut client, room, &user, &id)
                        .await
                        .unwrap_or_else(|error| panic!("send {id} to the survivor: {error}"));
                    acknowledged.lock().expect("ledger").push((seq, id));
                }
            })
        })
        .collect();

    bounded(async {
        while acknowledged.lock().expect("ledger").len() < ACKNOWLEDGED_BEFORE_KILL {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    doomed.kill().await;
    for sender in senders {
        bounded(sender).await.expect("a sender");
    }

    let acknowledged = std::mem::take(&mut *acknowledged.lock().expect("ledger"));
    let messages = crate::history(&mut survivor.client().await, room).await;
    check_history(&messages, &acknowledged);
    // Nothing else either: each sender had one send unacknowledged, and its resend answered
    // for it, so the room holds exactly the acknowledged messages.
    let stored: BTreeSet<&str> = messages.iter().map(|message| message.client_msg_id.as_str()).collect();
    let expected: BTreeSet<&str> = acknowledged.iter().map(|(_, id)| id.as_str()).collect();
    assert_eq!(stored, expected, "the room holds exactly the acknowledged messages");
    assert!(messages.len() >= ACKNOWLEDGED_BEFORE_KILL + SENDERS * (1 + AFTER_RESEND));
}
