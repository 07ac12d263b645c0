//! One order on every node, and read-your-writes across nodes.

use confab::grpc::proto::confab_v1::{HistoryRequest, SubscribeRequest, room_event};

use crate::nats::{ClusterOptions, NatsCluster};
use crate::{Node, bounded, check_history, send};

/// Messages each of the three senders posts.
const PER_SENDER: usize = 25;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_delivers_one_order_and_reads_what_another_acknowledged() {
    let cluster = NatsCluster::start(ClusterOptions::default());
    let nodes = [Node::start(&cluster, "a").await, Node::start(&cluster, "b").await, Node::start(&cluster, "c").await];
    let room = "order";

    // A subscriber on every node, from the room's start.
    let mut streams = Vec::new();
    for node in &nodes {
        let request = SubscribeRequest { room: room.into(), after_seq: Some(0), user: String::new() };
        let mut stream = bounded(node.client().await.subscribe(request)).await.expect("subscribe").into_inner();
        match bounded(stream.message()).await.expect("a first event").and_then(|event| event.event) {
            Some(room_event::Event::Subscribed(_)) => {}
            other => panic!("expected Subscribed on {}, got {other:?}", node.name),
        }
        streams.push(stream);
    }

    // Three clients, one per node, post at once. After each acknowledgement the sender reads
    // the message on the next node: it must be there already (G7 across nodes).
    let senders: Vec<_> = (0..nodes.len())
        .map(|index| {
            let (writer, reader) = (nodes[index].address.clone(), nodes[(index + 1) % nodes.len()].address.clone());
            tokio::spawn(async move {
                let (mut writer, mut reader) = (crate::client(&writer).await, crate::client(&reader).await);
                let mut acknowledged = Vec::new();
                for number in 0..PER_SENDER {
                    let id = format!("s{index}-{number}");
                    let seq = send(&mut writer, room, &format!("user{index}"), &id)
                        .await
                        .unwrap_or_else(|error| panic!("send {id}: {error}"));
                    let request = HistoryRequest { room: room.into(), after_seq: seq - 1, limit: 1 };
                    let page = bounded(reader.history(request)).await.expect("history on the next node").into_inner();
                    let read = page.messages.first().map(|message| (message.seq, message.client_msg_id.as_str()));
                    assert_eq!(read, Some((seq, id.as_str())), "acknowledged #{seq} is read at once on the next node");
                    acknowledged.push((seq, id));
                }
                acknowledged
            })
        })
        .collect();
    let mut acknowledged = Vec::new();
    for sender in senders {
        let sent = bounded(sender).await.expect("a sender");
        // Each sender's messages are numbered in the order it sent them (G3).
        assert!(sent.windows(2).all(|pair| pair[0].0 < pair[1].0), "one sender's order is kept: {sent:?}");
        acknowledged.extend(sent);
    }

    // Every node's subscriber saw the same sequence: all of it, in one order.
    let total = acknowledged.len();
    let mut delivered = Vec::new();
    for (node, stream) in nodes.iter().zip(&mut streams) {
        let mut seen = Vec::new();
        while seen.len() < total {
            match bounded(stream.message()).await.expect("an event").and_then(|event| event.event) {
                Some(room_event::Event::Message(message)) => seen.push((message.seq, message.client_msg_id)),
                Some(room_event::Event::Presence(_) | room_event::Event::Typing(_)) => {}
                other => panic!("{}: expected a message, got {other:?}", node.name),
            }
        }
        delivered.push(seen);
    }
    for (node, seen) in nodes.iter().zip(&delivered).skip(1) {
        assert_eq!(seen, &delivered[0], "node {} delivers the order node a delivers", node.name);
    }
    acknowledged.sort();
    assert_eq!(delivered[0], acknowledged, "what was delivered is what was acknowledged, by number");
    for node in &nodes {
        check_history(&crate::history(&mut node.client().await, room).await, &acknowledged);
    }
}
