//! kill -9 of a confab node mid-conversation: its clients resend elsewhere.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use confab::grpc::proto::confab_v1::{ChatMessage, UploadChunk, UploadReceipt};

use crate::nats::{ClusterOptions, NatsCluster};
use crate::{Node, bounded, check_history, send};

/// Clients of the node that dies.
const SENDERS: usize = 4;

/// Messages acknowledged (all senders together) before the node is killed.
const ACKNOWLEDGED_BEFORE_KILL: usize = 40;

/// New messages each sender posts on the other node after resending.
const AFTER_RESEND: usize = 3;

/// Uploads acknowledged before the node is killed.
const UPLOADS_BEFORE_KILL: usize = 3;

/// Messages in each upload of the uploader on the node that dies.
const UPLOAD_LEN: usize = 20;

/// The uploader's room.
const UPLOADS: &str = "crash-uploads";

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

    // Meanwhile one client uploads into a room of its own on the doomed node, one upload after
    // another, until one fails: each upload is all or nothing (G6), also the one in flight
    // when the node dies.
    let receipts = Arc::new(Mutex::new(Vec::<UploadReceipt>::new()));
    let uploader = {
        let (doomed, receipts) = (doomed.address.clone(), Arc::clone(&receipts));
        tokio::spawn(async move {
            let mut client = crate::client(&doomed).await;
            for upload in 0..100_000 {
                let chunks: Vec<UploadChunk> = (0..UPLOAD_LEN)
                    .map(|index| UploadChunk {
                        room: UPLOADS.into(),
                        user: "uploader".into(),
                        body: format!("{upload}.{index}"),
                    })
                    .collect();
                match tokio::time::timeout(crate::SEND_WAIT, client.upload(tokio_stream::iter(chunks))).await {
                    Ok(Ok(receipt)) => receipts.lock().expect("receipts").push(receipt.into_inner()),
                    _ => return,
                }
            }
            panic!("the uploader's node was never killed");
        })
    };

    bounded(async {
        while acknowledged.lock().expect("ledger").len() < ACKNOWLEDGED_BEFORE_KILL
            || receipts.lock().expect("receipts").len() < UPLOADS_BEFORE_KILL
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    doomed.kill().await;
    for sender in senders {
        bounded(sender).await.expect("a sender");
    }
    bounded(uploader).await.expect("the uploader");
    let receipts = std::mem::take(&mut *receipts.lock().expect("receipts"));
    check_uploads(&crate::history(&mut survivor.client().await, UPLOADS).await, &receipts);

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

/// The uploads room holds whole uploads only, each a contiguous run in chunk order, and every
/// acknowledged one at the numbers its receipt gave; the upload in flight at the kill is either
/// all there or not at all.
fn check_uploads(messages: &[ChatMessage], receipts: &[UploadReceipt]) {
    assert!(!receipts.is_empty(), "the uploader completed no upload before the kill");
    assert_eq!(messages.len() % UPLOAD_LEN, 0, "only whole uploads are stored: {} messages", messages.len());
    for (number, upload) in messages.chunks(UPLOAD_LEN).enumerate() {
        let first = upload[0].seq;
        for (index, message) in upload.iter().enumerate() {
            assert_eq!(message.seq, first + index as u64, "upload {number} is one contiguous run");
            assert_eq!(message.body, format!("{number}.{index}"), "upload {number} is stored whole, in order");
        }
    }
    for (number, receipt) in receipts.iter().enumerate() {
        let stored = &messages[number * UPLOAD_LEN..(number + 1) * UPLOAD_LEN];
        assert_eq!(
            (receipt.first_seq, receipt.last_seq),
            (stored[0].seq, stored[UPLOAD_LEN - 1].seq),
            "upload {number}"
        );
        assert_eq!(receipt.count, UPLOAD_LEN as u64);
    }
    assert!(messages.len() / UPLOAD_LEN <= receipts.len() + 1, "at most the one upload in flight beyond the receipts");
}
