//! kill -9 of the room's stream leader: sends stall while JetStream elects a new one, then
//! succeed again; every acknowledged message is kept.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use confab_actors::cluster::{JetStreamLog, LogOptions};

use crate::nats::{ClusterOptions, NatsCluster};
use crate::{HISTORY_LEN, Node, SHARDS, bounded, check_history, send};

/// Messages acknowledged (both senders together) before the leader is killed, and again after.
const ACKNOWLEDGED_EACH_SIDE: usize = 20;

/// The longest sends may stall after the leader dies (an election takes a few seconds; the
/// issue measured 7–9 s of stalled writes).
const RECOVERY_MAX: Duration = Duration::from_secs(30);

/// The pause before a client resends an unacknowledged message.
const RESEND_DELAY: Duration = Duration::from_millis(100);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_resume_after_the_stream_leader_is_killed_and_nothing_acknowledged_is_lost() {
    let mut cluster = NatsCluster::start(ClusterOptions::default());
    let nodes = [Node::start(&cluster, "a").await, Node::start(&cluster, "b").await];
    let room = "failover";
    // The same stream configuration as the nodes', so connecting checks and changes nothing.
    let options = LogOptions::default().shards(SHARDS).replicas(3).history_len_max(i64::from(HISTORY_LEN));
    let log = bounded(JetStreamLog::connect(&cluster.urls(), options)).await.expect("connect to the log");
    let shard = log.room_subject(room).shard;

    // One client per node; each resends an unacknowledged message with its id until it is
    // acknowledged, and records when each acknowledgement came.
    let acknowledged = Arc::new(Mutex::new(Vec::<(u64, String, Instant)>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(index, node)| {
            let (address, acknowledged, stop) = (node.address.clone(), Arc::clone(&acknowledged), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut client = crate::client(&address).await;
                let user = format!("user{index}");
                let mut number = 0;
                while !stop.load(Ordering::Relaxed) {
                    let id = format!("s{index}-{number}");
                    let started = Instant::now();
                    let seq = loop {
                        match send(&mut client, room, &user, &id).await {
                            Ok(seq) => break seq,
                            Err(error) if started.elapsed() < RECOVERY_MAX => {
                                eprintln!("sender {index}: {id} unacknowledged ({error}); resending");
                                tokio::time::sleep(RESEND_DELAY).await;
                            }
                            Err(error) => panic!("{id} still unacknowledged after {RECOVERY_MAX:?}: {error}"),
                        }
                    };
                    acknowledged.lock().expect("ledger").push((seq, id, Instant::now()));
                    number += 1;
                }
            })
        })
        .collect();
    let acknowledged_count = || acknowledged.lock().expect("ledger").len();

    bounded(async {
        while acknowledged_count() < ACKNOWLEDGED_EACH_SIDE {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let leader = bounded(log.shard_leader(shard)).await.expect("read the stream leader").expect("a stream leader");
    let before = acknowledged_count();
    let killed_at = Instant::now();
    cluster.kill(cluster.index_of(&leader));
    eprintln!("killed {leader}, the leader of shard {shard}, after {before} acknowledged sends");

    tokio::time::timeout(RECOVERY_MAX, async {
        while acknowledged_count() < before + ACKNOWLEDGED_EACH_SIDE {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("sends did not resume within {RECOVERY_MAX:?} of killing the leader"));
    stop.store(true, Ordering::Relaxed);
    for sender in senders {
        bounded(sender).await.expect("a sender");
    }

    let acknowledged = std::mem::take(&mut *acknowledged.lock().expect("ledger"));
    let stall = acknowledged
        .windows(2)
        .map(|pair| pair[1].2.saturating_duration_since(pair[0].2.max(killed_at)))
        .max()
        .unwrap_or_default();
    eprintln!("the longest pause between acknowledgements after the kill: {stall:?}");
    let acknowledged: Vec<(u64, String)> = acknowledged.into_iter().map(|(seq, id, _)| (seq, id)).collect();
    for node in &nodes {
        check_history(&crate::history(&mut node.client().await, room).await, &acknowledged);
    }
}
