//! Loss of quorum, then recovery: kill -9 of 2 of the 3 nats-servers. Sends answer UNAVAILABLE
//! (naming the cluster log) within a bound, health is NOT_SERVING, and an open subscription
//! stays open. Once the servers are back, health is SERVING again, sends succeed, the
//! subscription carries on without a gap, and every acknowledged message is in history once.
//!
//! What is not asserted, because it is a race: whether a send made while the servers die is
//! acknowledged or answered UNAVAILABLE (either is right), and whether a message answered
//! UNAVAILABLE after an unknown outcome is committed later (it may be, once; never twice).

use std::time::{Duration, Instant};

use confab::grpc::proto::confab_v1::{HistoryRequest, SubscribeRequest, room_event};
use confab_actors::UNKNOWN_OUTCOME_ANSWER_AFTER;
use confab_actors::cluster::{JetStreamLog, LogOptions};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::nats::{ClusterOptions, NatsCluster, SERVERS};
use crate::{HISTORY_LEN, Node, SHARDS, bounded, check_history, send_within};

/// Messages acknowledged before the servers die, and again after they are back.
const ACKNOWLEDGED_EACH_SIDE: usize = 5;

/// The longest one send may wait for its answer while the log has no quorum: the bound on an
/// unknown outcome, plus one of the log's request timeouts (5 s) and a margin.
const SEND_ANSWER_MAX: Duration = Duration::from_secs(UNKNOWN_OUTCOME_ANSWER_AFTER.as_secs() + 10);

/// The longest health may take to change after the servers die or come back: JetStream notices
/// a lost quorum within about 10 s (its Raft leaders step down), and the probe runs each second.
const HEALTH_CHANGE_MAX: Duration = Duration::from_secs(60);

/// The longest sends may keep failing once health is SERVING again (a room's append that was
/// in flight through the outage has to settle first).
const RECOVERY_MAX: Duration = Duration::from_secs(30);

/// The pause between polls of health, and between resends.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_quorum_sends_answer_unavailable_and_health_is_not_serving_then_both_recover() {
    let mut cluster = NatsCluster::start(ClusterOptions::default());
    let nodes = [Node::start(&cluster, "a").await, Node::start(&cluster, "b").await];
    let room = "quorum";
    // The same stream configuration as the nodes', so connecting checks and changes nothing.
    let options = LogOptions::default().shards(SHARDS).replicas(3).history_len_max(i64::from(HISTORY_LEN));
    let log = bounded(JetStreamLog::connect(&cluster.urls(), options)).await.expect("connect to the log");
    let shard = log.room_subject(room).shard;
    let (mut writer, mut reader) = (nodes[0].client().await, nodes[1].client().await);

    // A subscriber on the other node from the room's start; it must outlive the outage.
    let request = SubscribeRequest { room: room.into(), after_seq: Some(0), user: String::new() };
    let mut stream = bounded(reader.subscribe(request)).await.expect("subscribe").into_inner();
    match bounded(stream.message()).await.expect("a first event").and_then(|event| event.event) {
        Some(room_event::Event::Subscribed(_)) => {}
        other => panic!("expected Subscribed, got {other:?}"),
    }
    let mut acknowledged = Vec::new();
    for number in 0..ACKNOWLEDGED_EACH_SIDE {
        let id = format!("before-{number}");
        let seq = send_within(&mut writer, room, "ann", &id, SEND_ANSWER_MAX).await.expect("a send before the outage");
        acknowledged.push((seq, id));
    }
    for node in &nodes {
        assert_eq!(health(node).await, ServingStatus::Serving, "{} is SERVING before the outage", node.name);
    }

    // The room's stream leader and one other server. Not the two others: a leader left alone
    // with an append in flight sometimes leaves the room stuck after its quorum is back (about
    // 1 run in 7, nats-server 2.14.6; the README's known issue under "Cluster").
    let leader = bounded(log.shard_leader(shard)).await.expect("read the stream leader").expect("a stream leader");
    let leader = cluster.index_of(&leader);
    let doomed = [leader, (leader + 1) % SERVERS];
    for index in doomed {
        cluster.kill(index);
    }
    eprintln!("killed 2 of the 3 nats-servers, the leader of shard {shard} among them");

    // Every send is answered within the bound: acknowledged (only one made as the servers
    // died can be), else UNAVAILABLE naming the cluster log. Two UNAVAILABLE answers in a row:
    // the first may be the in-flight append's, the second a send made during the outage.
    let mut unavailable = 0;
    let mut number = 0;
    while unavailable < 2 {
        assert!(number < 20, "sends were still acknowledged without a quorum");
        let id = format!("during-{number}");
        let started = Instant::now();
        match send_within(&mut writer, room, "ann", &id, SEND_ANSWER_MAX).await {
            Ok(seq) => acknowledged.push((seq, id)),
            Err(error) => {
                assert!(error.starts_with("Unavailable:"), "{id} answered UNAVAILABLE, not {error}");
                assert!(error.contains("cluster log"), "UNAVAILABLE names the cause: {error}");
                eprintln!("{id} answered in {:?}: {error}", started.elapsed());
                unavailable += 1;
            }
        }
        number += 1;
    }
    for node in &nodes {
        wait_for_health(node, ServingStatus::NotServing).await;
    }
    // Reads: a full page of what the node has is exact and served from its cache; a page that
    // reaches the end of what it has could miss newer messages, so it is refused.
    let limit = u32::try_from(ACKNOWLEDGED_EACH_SIDE).expect("small");
    let request = HistoryRequest { room: room.into(), after_seq: 0, limit };
    let page = bounded(reader.history(request)).await.expect("a full page from the cache").into_inner();
    let served: Vec<(u64, String)> =
        page.messages.into_iter().map(|message| (message.seq, message.client_msg_id)).collect();
    assert_eq!(served, acknowledged[..ACKNOWLEDGED_EACH_SIDE], "the messages acknowledged before the outage");
    let request = HistoryRequest { room: room.into(), after_seq: 1, limit: 0 };
    let refused = bounded(reader.history(request)).await.expect_err("an open-ended page needs the log");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("log is unavailable"), "names why: {refused:?}");

    for index in doomed {
        cluster.restart(index);
    }
    eprintln!("restarted the 2 nats-servers");
    for node in &nodes {
        wait_for_health(node, ServingStatus::Serving).await;
    }

    // Sends succeed again, on both nodes; an unacknowledged one is resent with its id.
    for number in 0..ACKNOWLEDGED_EACH_SIDE {
        let id = format!("after-{number}");
        let client = if number % 2 == 0 { &mut writer } else { &mut reader };
        let started = Instant::now();
        let seq = loop {
            match send_within(client, room, "ann", &id, SEND_ANSWER_MAX).await {
                Ok(seq) => break seq,
                Err(error) if started.elapsed() < RECOVERY_MAX => {
                    eprintln!("{id} unacknowledged after the recovery ({error}); resending");
                    tokio::time::sleep(POLL_INTERVAL).await;
                }
                Err(error) => panic!("{id} still unacknowledged {RECOVERY_MAX:?} after the recovery: {error}"),
            }
        };
        acknowledged.push((seq, id));
    }

    // The subscription stayed open and carries every message, in order, without a gap: those
    // from before the outage, any that committed through it, and the new ones.
    let history = crate::history(&mut reader, room).await;
    check_history(&history, &acknowledged);
    let last = acknowledged.iter().map(|(seq, _)| *seq).max().expect("acknowledged messages");
    let mut delivered = Vec::new();
    while delivered.len() < usize::try_from(last).expect("a small seq") {
        match bounded(stream.message()).await.expect("the subscription is open").and_then(|event| event.event) {
            Some(room_event::Event::Message(message)) => delivered.push((message.seq, message.client_msg_id)),
            Some(room_event::Event::Presence(_) | room_event::Event::Typing(_)) => {}
            other => panic!("expected a message on the subscription, got {other:?}"),
        }
    }
    let expected: Vec<(u64, String)> =
        history.iter().take(delivered.len()).map(|message| (message.seq, message.client_msg_id.clone())).collect();
    assert_eq!(delivered, expected, "the subscription delivers the history, without a gap");
    check_history(&crate::history(&mut writer, room).await, &acknowledged);
}

/// What node's health says for the whole server.
async fn health(node: &Node) -> ServingStatus {
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", node.address)).expect("uri");
    let mut client = HealthClient::new(bounded(channel.connect()).await.expect("connect"));
    let request = HealthCheckRequest { service: String::new() };
    let status = bounded(client.check(request)).await.expect("a health check").into_inner().status;
    ServingStatus::try_from(status).expect("a known status")
}

/// Polls node's health until it is `status`, for at most [`HEALTH_CHANGE_MAX`].
async fn wait_for_health(node: &Node, status: ServingStatus) {
    let started = Instant::now();
    while health(node).await != status {
        assert!(started.elapsed() < HEALTH_CHANGE_MAX, "{} is not {status:?} after {HEALTH_CHANGE_MAX:?}", node.name);
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    eprintln!("{} is {status:?} after {:?}", node.name, started.elapsed());
}
