//! Age retention: a pass purges each room's messages older than the age, but never its last.

use std::time::{Duration, SystemTime};

use confab_actors::cluster::{JetStreamLog, Position};

use crate::log::{append, connect, entry, options};
use crate::nats::{ClusterOptions, NatsCluster};

/// The age of the test: short, so the test waits about this long once.
const AGE: Duration = Duration::from_secs(1);

/// The room seqs stored for `room`, in order.
async fn stored_seqs(log: &JetStreamLog, room: &str) -> Vec<u64> {
    let stored = log.read_after(room, Position::NONE, 100).await.unwrap_or_else(|error| panic!("read {room}: {error}"));
    stored.iter().map(|entry| entry.seq).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_purges_old_messages_keeps_each_rooms_last_and_a_second_pass_changes_nothing() {
    let cluster = NatsCluster::start(ClusterOptions::default());
    // One shard: both rooms share a stream, so a purge must touch only its own room's subject.
    let log = connect(&cluster.urls(), options("retention").shards(1)).await;
    let (busy, quiet) = ("busy room", "quiet room");
    let old =
        append(&log, busy, Position::NONE, &[entry(1), entry(2), entry(3)]).await.expect("busy room's old messages");
    append(&log, quiet, Position::NONE, &[entry(1)]).await.expect("quiet room's first");
    let quiet_last = {
        let first = log.last_position(quiet).await.expect("quiet room's last").expect("a message").0;
        append(&log, quiet, first, &[entry(2)]).await.expect("quiet room's second").last
    };
    // Every message so far was stored before this (the servers share this machine's clock).
    let old_stored_by = SystemTime::now();
    // Waiting, not asserting: the old messages must be older than the age.
    while SystemTime::now() < old_stored_by + AGE + Duration::from_millis(50) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let newer = append(&log, busy, old.last, &[entry(4)]).await.expect("busy room's newer message");
    let cutoff = SystemTime::now() - AGE;

    let report = log.purge_before(cutoff).await;
    assert!(report.failures.is_empty(), "{report:?}");
    assert_eq!((report.rooms_checked, report.rooms_purged, report.messages_purged), (2, 2, 4), "{report:?}");
    assert_eq!(stored_seqs(&log, busy).await, [4], "the old messages went, the newer one stayed");
    assert_eq!(stored_seqs(&log, quiet).await, [2], "a room whose messages are all old keeps its last");
    assert_eq!(log.last_position(busy).await.expect("busy last"), Some((newer.last, 4)));
    assert_eq!(log.last_position(quiet).await.expect("quiet last"), Some((quiet_last, 2)));

    let again = log.purge_before(cutoff).await;
    assert!(again.failures.is_empty(), "{again:?}");
    assert_eq!((again.rooms_purged, again.messages_purged), (0, 0), "a second pass changes nothing: {again:?}");
    assert_eq!(stored_seqs(&log, busy).await, [4]);
    assert_eq!(stored_seqs(&log, quiet).await, [2]);

    // The kept last message still anchors the conditional append.
    let next = append(&log, quiet, quiet_last, &[entry(3)]).await.expect("append after the purge");
    assert!(next.last > quiet_last);
    assert_eq!(stored_seqs(&log, quiet).await, [2, 3]);
}
