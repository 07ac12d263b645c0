//! Conditional appends, atomic batches, resends, leader failover and config refusal.

use std::time::{Duration, Instant};

use confab_actors::cluster::{
    AppendError, Appended, Bytes, ClusterError, Entry, JetStreamLog, LogOptions, Position, StoredEntry,
};

use crate::nats::{ClusterOptions, NatsCluster};

/// The longest any test waits for the cluster to accept appends again after a failure.
const RECOVERY_WAIT_MAX: Duration = Duration::from_secs(30);

pub(crate) fn options(prefix: &str) -> LogOptions {
    LogOptions::default()
        .shards(2)
        .replicas(3)
        .history_len_max(1_000)
        .request_timeout(Duration::from_secs(2))
        .stream_prefix(prefix)
}

pub(crate) fn entry(seq: u64) -> Entry {
    Entry { seq, epoch: 7, payload: Bytes::from(format!("message {seq}")) }
}

pub(crate) async fn connect(urls: &str, options: LogOptions) -> JetStreamLog {
    JetStreamLog::connect(urls, options).await.unwrap_or_else(|error| panic!("connect to {urls}: {error}"))
}

/// Appends, resending while the outcome is "nothing stored, try again": `Busy` (another
/// conditional append on the room is in flight) and `Unavailable` (no responders while a stream
/// settles, no connection). Any other outcome is returned, with how many times it was `Busy`.
async fn append_settled(
    log: &JetStreamLog,
    room: &str,
    expected: Position,
    entries: &[Entry],
) -> (Result<Appended, AppendError>, u32) {
    let mut busy = 0;
    for _ in 0..100 {
        match log.append(room, expected, entries).await {
            Err(AppendError::Busy) => busy += 1,
            Err(AppendError::Unavailable { .. }) => {}
            other => return (other, busy),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("append to {room} still busy or unavailable after 100 tries");
}

/// [`append_settled`] without the count.
pub(crate) async fn append(
    log: &JetStreamLog,
    room: &str,
    expected: Position,
    entries: &[Entry],
) -> Result<Appended, AppendError> {
    append_settled(log, room, expected, entries).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_at_the_same_position_one_wins_and_the_other_learns_its_position() {
    let cluster = NatsCluster::start(ClusterOptions::default());
    // Two nodes on two different servers.
    let first = connect(&cluster.url(0), options("race")).await;
    let second = connect(&cluster.url(1), options("race")).await;
    let room = "race room";
    let mut expected = Position::NONE;
    let mut busy_total = 0;
    for round in 1..=20_u64 {
        let sent = [entry(round)];
        let (a, b) = tokio::join!(
            append_settled(&first, room, expected, &sent),
            append_settled(&second, room, expected, &sent),
        );
        busy_total += a.1 + b.1;
        let (winner, loser) = match (a.0, b.0) {
            (Ok(winner), Err(loser)) | (Err(loser), Ok(winner)) => (winner, loser),
            other => panic!("round {round}: expected exactly one winner, got {other:?}"),
        };
        assert_eq!(winner.first, winner.last);
        assert!(winner.last > expected, "round {round}: {winner:?} after {expected}");
        assert_eq!(loser, AppendError::Conflict { actual_last: winner.last }, "round {round}");
        expected = winner.last;
    }
    eprintln!("race: 20 rounds, one winner each; the server answered Busy (10164) {busy_total} times");
    let stored = first.read_after(room, Position::NONE, 100).await.expect("read the room");
    let seqs: Vec<u64> = stored.iter().map(|entry| entry.seq).collect();
    assert_eq!(seqs, (1..=20).collect::<Vec<_>>(), "one entry per round, in order");
    assert_eq!(first.last_position(room).await.expect("last position"), Some((expected, 20)));
    assert_eq!(second.last_position(room).await.expect("last position"), Some((expected, 20)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_batch_stores_nothing_and_a_good_one_is_contiguous_and_in_order() {
    let cluster = NatsCluster::start(ClusterOptions::default());
    // One shard, so another room's appends share the stream's positions.
    let log = connect(&cluster.urls(), options("batch").shards(1).batch_len_max(5)).await;
    let room = "uploads";
    let one = append(&log, room, Position::NONE, &[entry(1)]).await.expect("first append");
    let other = append(&log, "another room", Position::NONE, &[entry(1)]).await.expect("another room's append");
    assert!(other.last > one.last);

    let stale = append(&log, room, Position::NONE, &[entry(2), entry(3), entry(4)]).await;
    assert_eq!(stale, Err(AppendError::Conflict { actual_last: one.last }));
    let stored = log.read_after(room, Position::NONE, 100).await.expect("read");
    assert_eq!(stored.len(), 1, "the stale batch stored nothing: {stored:?}");

    let batch = [entry(2), entry(3), entry(4)];
    let appended = append(&log, room, one.last, &batch).await.expect("a good batch");
    assert_eq!(appended.last.0 - appended.first.0, 2, "contiguous positions: {appended:?}");
    assert!(appended.first > other.last);
    let stored = log.read_after(room, one.last, 100).await.expect("read the batch");
    let positions: Vec<u64> = stored.iter().map(|entry| entry.position.0).collect();
    assert_eq!(positions, (appended.first.0..=appended.last.0).collect::<Vec<_>>());
    for (stored, sent) in stored.iter().zip(&batch) {
        assert_eq!((stored.seq, stored.epoch, &stored.payload), (sent.seq, sent.epoch, &sent.payload));
    }
    assert_eq!(log.last_position(room).await.expect("last"), Some((appended.last, 4)));
    assert_eq!(log.read_after(room, Position::NONE, 2).await.expect("a page").len(), 2, "the limit holds");

    let too_many: Vec<Entry> = (5..=10).map(entry).collect();
    assert_eq!(
        append(&log, room, appended.last, &too_many).await,
        Err(AppendError::TooLarge { len: 6, max: 5 }),
        "refused before sending"
    );
    assert_eq!(append(&log, room, appended.last, &[]).await, Err(AppendError::Empty));
    assert_eq!(log.last_position(room).await.expect("last"), Some((appended.last, 4)));
    assert_eq!(log.last_position("a room never written").await.expect("last"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_delivers_a_shards_entries_in_order_with_their_rooms() {
    use futures::StreamExt;
    let cluster = NatsCluster::start(ClusterOptions::default());
    let log = connect(&cluster.urls(), options("feed").shards(1)).await;
    let early = append(&log, "before the feed", Position::NONE, &[entry(1)]).await.expect("append");
    let feed = log.feed(0, early.last).await.expect("open the feed");
    let dotted = "a.b > *";
    let batch = append(&log, dotted, Position::NONE, &[entry(1), entry(2), entry(3)]).await.expect("batch");
    let single = append(&log, "before the feed", early.last, &[entry(2)]).await.expect("append");
    let items: Vec<_> = tokio::time::timeout(Duration::from_secs(10), feed.take(4).collect::<Vec<_>>())
        .await
        .expect("four items within 10 s");
    let seen: Vec<(String, u64, u64)> = items
        .into_iter()
        .map(|item| item.expect("a feed item"))
        .map(|item| (item.room, item.entry.position.0, item.entry.seq))
        .collect();
    let room = |name: &str| name.to_owned();
    assert_eq!(
        seen,
        vec![
            (room(dotted), batch.first.0, 1),
            (room(dotted), batch.first.0 + 1, 2),
            (room(dotted), batch.last.0, 3),
            (room("before the feed"), single.last.0, 2),
        ],
        "after the start position only, in stream order, rooms decoded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resending_an_identical_append_does_not_store_it_twice() {
    let cluster = NatsCluster::start(ClusterOptions::default());
    let log = connect(&cluster.urls(), options("resend")).await;
    let room = "resent";
    let single = append(&log, room, Position::NONE, &[entry(1)]).await.expect("append");
    // The caller saw no answer (a timeout) and resends the identical append.
    let resent = append(&log, room, Position::NONE, &[entry(1)]).await;
    assert_eq!(
        resent,
        Err(AppendError::Conflict { actual_last: single.last }),
        "the resend is refused at the first's position"
    );

    let batch = [entry(2), entry(3), entry(4)];
    let appended = append(&log, room, single.last, &batch).await.expect("batch");
    let resent = append(&log, room, single.last, &batch).await;
    assert_eq!(resent, Err(AppendError::Conflict { actual_last: appended.last }));

    let stored = log.read_after(room, Position::NONE, 100).await.expect("read");
    let seqs: Vec<u64> = stored.iter().map(|entry| entry.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4], "each append stored once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_append_survives_a_kill_9_of_the_stream_leader() {
    const APPENDS: u64 = 100;
    const KILL_AFTER: u64 = 50;
    let mut cluster = NatsCluster::start(ClusterOptions::default());
    let log = connect(&cluster.urls(), options("failover").shards(1)).await;
    let room = "survivor";
    // Position of every acknowledged seq.
    let mut acknowledged: Vec<Position> = Vec::new();
    let mut killed = None;
    let mut stall_max = Duration::ZERO;
    let mut last_ack = Instant::now();
    let started = Instant::now();
    // Why appends were resent: (busy, unavailable, unknown).
    let mut resends = (0_u32, 0_u32, 0_u32);
    // What the server or client said while the stream had no leader (distinct reasons).
    let mut reasons = std::collections::BTreeSet::new();
    while (acknowledged.len() as u64) < APPENDS {
        assert!(started.elapsed() < RECOVERY_WAIT_MAX * 2, "appends stalled; acknowledged {}", acknowledged.len());
        let seq = acknowledged.len() as u64 + 1;
        if seq == KILL_AFTER + 1 && killed.is_none() {
            let leader = log.shard_leader(0).await.expect("stream info").expect("a stream leader");
            let index = cluster.index_of(&leader);
            cluster.kill(index);
            killed = Some((index, leader));
            last_ack = Instant::now();
        }
        let expected = acknowledged.last().copied().unwrap_or(Position::NONE);
        match log.append(room, expected, &[entry(seq)]).await {
            Ok(appended) => acknowledged.push(appended.last),
            // A single writer: a conflict means an earlier attempt of this very append
            // committed although its answer was lost. The leader says where.
            Err(AppendError::Conflict { actual_last }) => {
                let last = log.last_position(room).await.expect("leader read after a conflict");
                assert_eq!(last, Some((actual_last, seq)), "the conflict is our own earlier attempt");
                acknowledged.push(actual_last);
            }
            Err(error @ (AppendError::Busy | AppendError::Unavailable { .. } | AppendError::Unknown { .. })) => {
                reasons.insert(error.to_string());
                match error {
                    AppendError::Busy => resends.0 += 1,
                    AppendError::Unavailable { .. } => resends.1 += 1,
                    _ => resends.2 += 1,
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(error) => panic!("append {seq}: {error}"),
        }
        stall_max = stall_max.max(last_ack.elapsed());
        last_ack = Instant::now();
    }
    let (killed_index, killed_name) = killed.expect("the leader was killed");
    let new_leader = log.shard_leader(0).await.expect("stream info").expect("a new leader");
    assert_ne!(new_leader, killed_name, "a new leader was elected");
    eprintln!(
        "failover: killed leader {killed_name}, new leader {new_leader}, longest stall {stall_max:?}, \
         resends after busy/unavailable/unknown {resends:?}, {APPENDS} appends in {:?}",
        started.elapsed()
    );
    eprintln!("failover: reasons {reasons:?}");

    let check = |stored: Vec<StoredEntry>| {
        let seqs: Vec<u64> = stored.iter().map(|entry| entry.seq).collect();
        assert_eq!(seqs, (1..=APPENDS).collect::<Vec<_>>(), "every acknowledged seq once, contiguous, in order");
        let positions: Vec<Position> = stored.iter().map(|entry| entry.position).collect();
        assert_eq!(positions, acknowledged, "at the acknowledged positions");
    };
    let fresh = connect(&cluster.urls(), options("failover").shards(1)).await;
    check(fresh.read_after(room, Position::NONE, 1_000).await.expect("read after failover"));

    // The killed server comes back on its storage and the stream is still whole.
    cluster.restart(killed_index);
    check(fresh.read_after(room, Position::NONE, 1_000).await.expect("read after restart"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_refuses_a_stream_whose_history_length_differs() {
    let cluster = NatsCluster::start(ClusterOptions::default());
    let urls = cluster.urls();
    connect(&urls, options("config").history_len_max(100)).await;
    let refused = JetStreamLog::connect(&urls, options("config").history_len_max(200)).await;
    let error = match refused {
        Err(error) => error,
        Ok(_) => panic!("a stream with another history length was accepted"),
    };
    let message = error.to_string();
    match error {
        ClusterError::ConfigMismatch { stream, field, wanted, found } => assert_eq!(
            (stream.as_str(), field, wanted.as_str(), found.as_str()),
            ("config-0", "max_msgs_per_subject", "200", "100")
        ),
        other => panic!("expected a config mismatch, got {other:?}"),
    }
    eprintln!("config refusal: {message}");
    assert!(message.contains("max_msgs_per_subject") && message.contains("config-0"), "{message}");
    let refused = JetStreamLog::connect(&urls, options("config").history_len_max(100).replicas(1)).await;
    assert!(matches!(refused, Err(ClusterError::ConfigMismatch { field: "num_replicas", .. })), "{refused:?}");
    // The same configuration connects again.
    connect(&urls, options("config").history_len_max(100)).await;
}
