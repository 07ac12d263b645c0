//! Several engines as nodes of one in-memory replicated log ([`MemoryLog`]): the shared
//! scenarios (`tests/shared/replicated.rs`, also run against real JetStream), and what only
//! the in-memory log can stage: a feed that lags behind the log, and a log that loses its
//! quorum.

use std::sync::Arc;

use confab_actors::room_log::{AppendOutcome, LoadedRoom, MemoryLog, RoomLog};
use confab_actors::{
    Engine, EngineConfig, EngineError, EngineHealth, HEALTH_PROBE_INTERVAL, Replicated, UNKNOWN_OUTCOME_ANSWER_AFTER,
};
use confab_engine::{Append, LogEntry, Position, RoomError, RoomName};
use futures::FutureExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;

#[path = "../shared/replicated.rs"]
mod scenarios;

use super::room;

fn node(log: &Arc<MemoryLog>, node: u64) -> Engine {
    let replicated = Replicated::new(Arc::clone(log) as _, node);
    Engine::start(EngineConfig::default().with_replicated(replicated)).expect("inside a tokio runtime")
}

/// Runs a test's body with a deadline: a node that never answers fails the test instead of
/// hanging it.
async fn within<T>(body: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(std::time::Duration::from_secs(20), body).await.expect("the nodes answered in time")
}

#[tokio::test(flavor = "current_thread")]
async fn nodes_sending_at_once_deliver_one_order_everywhere() {
    let log = Arc::new(MemoryLog::new());
    let nodes = [node(&log, 1), node(&log, 2), node(&log, 3)];
    within(scenarios::nodes_sending_at_once_deliver_one_order_everywhere(&nodes, &room("lobby"), 20)).await;
    assert_eq!(log.entries(&room("lobby")).len(), 60, "every message in the log once");
}

#[tokio::test(flavor = "current_thread")]
async fn a_retry_on_another_node_is_kept_once_and_read_there_at_once() {
    let log = Arc::new(MemoryLog::new());
    let (first, second) = (node(&log, 1), node(&log, 2));
    within(scenarios::a_retry_on_another_node_is_kept_once_and_read_there_at_once(&first, &second, &room("lobby")))
        .await;
    assert_eq!(log.entries(&room("lobby")).len(), 2);
}

#[tokio::test(flavor = "current_thread")]
async fn reads_catch_up_with_the_log_while_the_feed_lags() {
    let log = Arc::new(MemoryLog::new());
    let (first, second) = (node(&log, 1), node(&log, 2));
    // The nodes hear of each other's appends late: only the log itself is up to date.
    log.pause_feed(true);
    within(scenarios::a_retry_on_another_node_is_kept_once_and_read_there_at_once(&first, &second, &room("lobby")))
        .await;
    log.pause_feed(false);
}

#[tokio::test(flavor = "current_thread")]
async fn a_node_that_fell_behind_what_the_log_keeps_reloads_the_room() {
    use confab_actors::{StreamEnd, StreamItem};
    use confab_engine::{ClientMsgId, Draft, RoomEvent, UserName};
    use futures::StreamExt;
    let draft = |id: &str| Draft {
        user: UserName::new("ann").expect("user"),
        client_msg_id: ClientMsgId::new(id).expect("id"),
        body: id.into(),
    };
    let log = Arc::new(MemoryLog::new());
    let (writer, lagging) = (node(&log, 1), node(&log, 2));
    let lobby = room("lobby");
    within(async {
        writer.send(&lobby, draft("m1")).await.expect("sent");
        let mut events = lagging.subscribe(&lobby, None, None).await.expect("subscribed");
        // The lagging node hears nothing while #2..=#6 are written, and by the time it does,
        // the log keeps only #5 and #6 (its per-room limit): #2..=#4 are gone for good.
        log.pause_feed(true);
        for id in ["m2", "m3", "m4", "m5", "m6"] {
            writer.send(&lobby, draft(id)).await.expect("sent");
        }
        let fourth = log.entries(&lobby)[3].position;
        log.discard_through(&lobby, fourth);
        log.pause_feed(false);
        let mut seen = Vec::new();
        let end = loop {
            match events.next().await {
                Some(StreamItem::Next(RoomEvent::Message(message))) => seen.push(message.seq),
                Some(StreamItem::Next(_)) => {}
                Some(StreamItem::End(end)) => break Some(end),
                None => break None,
            }
        };
        assert_eq!(seen, Vec::<u64>::new(), "nothing past the gap is delivered as if it continued the room");
        assert_eq!(end, Some(StreamEnd::RoomStopped), "the subscription ends: the room reloads, not loops");
        let page = lagging.history(&lobby, 0, 0).await.expect("the room loads afresh from the log");
        assert_eq!(page.messages.iter().map(|message| message.seq).collect::<Vec<_>>(), [5, 6]);
        assert_eq!(page.first_retained_seq, 5);
        assert_eq!(lagging.send(&lobby, draft("m7")).await.expect("sent").seq, 7, "and goes on from the log");
    })
    .await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_session_whose_room_reloads_hears_it_left_and_resumes_by_joining_again() {
    use confab_actors::StreamItem;
    use confab_engine::{ClientFrame, ClientMsgId, Draft, RoomEvent, ServerFrame, UserName};
    use futures::StreamExt;
    let draft = |id: &str| Draft {
        user: UserName::new("ann").expect("user"),
        client_msg_id: ClientMsgId::new(id).expect("id"),
        body: id.into(),
    };
    let log = Arc::new(MemoryLog::new());
    let (writer, lagging) = (node(&log, 1), node(&log, 2));
    let lobby = room("lobby");
    within(async {
        writer.send(&lobby, draft("m1")).await.expect("sent");
        let (session, mut frames) = lagging.open_session(UserName::new("bob").expect("user"));
        session.send(ClientFrame::Join { room: "lobby".into(), after_seq: None }).await.expect("frame");
        let mut next = async || match frames.next().await {
            Some(StreamItem::Next(frame)) => frame,
            other => panic!("the session goes on, got {other:?}"),
        };
        assert!(matches!(next().await, ServerFrame::Event(RoomEvent::Subscribed { .. })));
        // As above: the node misses #2..=#4 for good, so its room reloads.
        log.pause_feed(true);
        for id in ["m2", "m3", "m4", "m5", "m6"] {
            writer.send(&lobby, draft(id)).await.expect("sent");
        }
        let fourth = log.entries(&lobby)[3].position;
        log.discard_through(&lobby, fourth);
        log.pause_feed(false);
        let stopped = loop {
            match next().await {
                ServerFrame::Event(RoomEvent::Message(message)) => panic!("delivered #{} across the gap", message.seq),
                ServerFrame::Event(_) => {}
                other => break other,
            }
        };
        let left = ServerFrame::Left { room: lobby.clone(), stopped: true };
        assert_eq!(stopped, left, "the client hears the room stopped and is no longer joined");
        session.send(ClientFrame::Join { room: "lobby".into(), after_seq: Some(1) }).await.expect("frame");
        let mut seen = Vec::new();
        while seen.len() < 2 {
            match next().await {
                ServerFrame::Event(RoomEvent::Message(message)) => seen.push(message.seq),
                ServerFrame::Event(RoomEvent::Subscribed { recovered, .. }) => {
                    assert!(!recovered, "#2..=#4 are gone: the resume says it is not exact");
                }
                ServerFrame::Event(_) => {}
                other => panic!("expected the resumed room, got {other:?}"),
            }
        }
        assert_eq!(seen, [5, 6], "joined again, the session reads the reloaded room from the log");
    })
    .await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_node_new_to_the_room_continues_it_from_the_log() {
    let log = Arc::new(MemoryLog::new());
    let (first, late) = (node(&log, 1), node(&log, 2));
    within(scenarios::a_node_new_to_the_room_continues_it_from_the_log(&first, &late, &room("lobby"))).await;
}

#[tokio::test(flavor = "current_thread")]
async fn an_upload_is_held_to_what_one_append_of_the_log_takes() {
    let log = Arc::new(MemoryLog::new().with_append_len_max(3));
    let engine = node(&log, 1);
    let lobby = room("lobby");
    let mut upload = engine.upload(&lobby);
    for number in 0..3 {
        upload.push(super::draft("ann", "", &number.to_string())).await.expect("within the limit");
    }
    let refused = upload.push(super::draft("ann", "", "4")).await;
    assert!(refused.is_err(), "a fourth message is over the log's append limit: {refused:?}");
    let receipt = within(upload.commit()).await.expect("committed");
    assert_eq!(receipt.seqs, Some((1, 3)));
    assert_eq!(log.entries(&lobby).len(), 3, "one append, all or nothing");
}

/// A [`MemoryLog`] with the faults only a wrapper can stage.
///
/// - It can lose its quorum ([`FaultyLog::stall`]): while stalled, every append is answered
///   "outcome unknown" and every leader read fails, each after [`STALLED_ANSWER_AFTER`] (as a
///   JetStream request without quorum times out); nothing commits, and the probe fails.
/// - Its loads can answer a tail that stops short of the room's last sequence number
///   (`short_tail_loads`): an inconsistent answer (a replica behind, a read racing appends) that
///   the registry must refuse rather than trust.
#[derive(Default)]
struct FaultyLog {
    log: MemoryLog,
    stalled: std::sync::atomic::AtomicBool,
    short_tail_loads: bool,
}

/// How long a stalled request takes to be answered (the cluster log's request timeout).
const STALLED_ANSWER_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

impl FaultyLog {
    fn stall(&self, stalled: bool) {
        self.stalled.store(stalled, std::sync::atomic::Ordering::Relaxed);
    }

    fn is_stalled(&self) -> bool {
        self.stalled.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl RoomLog for FaultyLog {
    fn load(&self, room: &RoomName) -> BoxFuture<'static, Result<Option<LoadedRoom>, RoomError>> {
        let short_tail = self.short_tail_loads;
        self.log
            .load(room)
            .map(move |loaded| {
                loaded.map(|loaded| {
                    loaded.map(|mut loaded| {
                        if short_tail {
                            loaded.tail.pop();
                        }
                        loaded
                    })
                })
            })
            .boxed()
    }

    fn append(&self, room: &RoomName, epoch: u64, append: Append) -> BoxFuture<'static, AppendOutcome> {
        if !self.is_stalled() {
            return self.log.append(room, epoch, append);
        }
        async {
            tokio::time::sleep(STALLED_ANSWER_AFTER).await;
            AppendOutcome::Unknown { reason: "no answer (stalled)".to_owned() }
        }
        .boxed()
    }

    fn read_after(
        &self,
        room: &RoomName,
        after: Position,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<LogEntry>, RoomError>> {
        self.log.read_after(room, after, limit)
    }

    fn last_position(&self, room: &RoomName) -> BoxFuture<'static, Result<Position, RoomError>> {
        if !self.is_stalled() {
            return self.log.last_position(room);
        }
        async {
            tokio::time::sleep(STALLED_ANSWER_AFTER).await;
            Err(RoomError::Storage { reason: "cluster log: no answer (stalled)".to_owned() })
        }
        .boxed()
    }

    fn follow(&self) -> Option<BoxStream<'static, LogEntry>> {
        self.log.follow()
    }

    fn probe(&self) -> Option<BoxFuture<'static, Result<(), String>>> {
        let outcome = if self.is_stalled() { Err("no quorum (stalled)".to_owned()) } else { Ok(()) };
        Some(futures::future::ready(outcome).boxed())
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn without_quorum_senders_hear_unavailable_after_the_bound_and_health_says_why_until_it_recovers() {
    let log = Arc::new(FaultyLog::default());
    let replicated = Replicated::new(Arc::clone(&log) as _, 1);
    let engine = Engine::start(EngineConfig::default().with_replicated(replicated)).expect("inside a tokio runtime");
    let lobby = room("lobby");
    let send = |id: &'static str| engine.send(&lobby, super::draft("ann", id, id));
    within(send("a")).await.expect("sent while the log has its quorum");
    assert_eq!(engine.health(), EngineHealth::Serving);

    log.stall(true);
    let started = tokio::time::Instant::now();
    let unknown = within(send("b")).await.expect_err("no answer from the log");
    let waited = started.elapsed();
    assert!(matches!(unknown, EngineError::Room(RoomError::Storage { .. })), "UNAVAILABLE: {unknown:?}");
    assert!(unknown.to_string().contains("no answer (stalled)"), "names the cause: {unknown}");
    assert!(waited >= UNKNOWN_OUTCOME_ANSWER_AFTER, "answered after the bound, not before: {waited:?}");
    assert!(waited < UNKNOWN_OUTCOME_ANSWER_AFTER + STALLED_ANSWER_AFTER, "answered at the bound: {waited:?}");
    assert_eq!(engine.health(), EngineHealth::LogUnavailable("no quorum (stalled)".to_owned()));
    let started = tokio::time::Instant::now();
    let refused = within(send("c")).await.expect_err("refused while the outcome stays unknown");
    assert!(matches!(refused, EngineError::Room(RoomError::Storage { .. })), "UNAVAILABLE: {refused:?}");
    assert!(started.elapsed() < HEALTH_PROBE_INTERVAL, "refused at once");

    log.stall(false);
    within(async {
        while engine.health() != EngineHealth::Serving {
            tokio::time::sleep(HEALTH_PROBE_INTERVAL / 4).await;
        }
    })
    .await;
    let sent = within(async {
        loop {
            match send("d").await {
                Ok(sent) => return sent,
                // The append in flight through the stall has to settle first.
                Err(_) => tokio::time::sleep(STALLED_ANSWER_AFTER / 10).await,
            }
        }
    })
    .await;
    assert_eq!(sent.seq, 3, "b (answered UNAVAILABLE, but sent again until it committed) took 2");
    let page = within(engine.history(&lobby, 0, 10)).await.expect("history");
    let ids: Vec<&str> =
        page.messages.iter().filter_map(|message| message.client_msg_id.as_ref()).map(|id| id.as_str()).collect();
    assert_eq!(ids, ["a", "b", "d"], "the refused c is nowhere, b is there once");
}

#[tokio::test(flavor = "current_thread")]
async fn a_load_whose_tail_stops_short_is_refused_and_the_node_keeps_serving() {
    let log = Arc::new(FaultyLog { short_tail_loads: true, ..FaultyLog::default() });
    let start = |node| {
        let replicated = Replicated::new(Arc::clone(&log) as _, node);
        Engine::start(EngineConfig::default().with_replicated(replicated)).expect("inside a tokio runtime")
    };
    let (writer, late) = (start(1), start(2));
    let lobby = room("lobby");
    within(async {
        for id in ["a", "b"] {
            writer.send(&lobby, super::draft("ann", id, id)).await.expect("sent");
        }
        let refused = late.history(&lobby, 0, 0).await.expect_err("the inconsistent load is refused");
        assert!(matches!(refused, EngineError::Room(RoomError::DataLoss { .. })), "DATA_LOSS: {refused:?}");
        assert_eq!(late.health(), EngineHealth::Serving, "the registry survives it");
        late.send(&room("other"), super::draft("bob", "c", "c")).await.expect("other rooms still work");
    })
    .await;
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn without_quorum_reads_get_what_the_cache_holds_exactly_and_the_rest_is_unavailable() {
    use confab_actors::StreamItem;
    use confab_engine::RoomEvent;
    use futures::StreamExt;
    let log = Arc::new(FaultyLog::default());
    let replicated = Replicated::new(Arc::clone(&log) as _, 1);
    let engine = Engine::start(EngineConfig::default().with_replicated(replicated)).expect("inside a tokio runtime");
    let lobby = room("lobby");
    for id in ["a", "b", "c"] {
        within(engine.send(&lobby, super::draft("ann", id, id))).await.expect("sent while the log has its quorum");
    }
    log.stall(true);
    let seqs = |page: &confab_engine::HistoryPage| page.messages.iter().map(|message| message.seq).collect::<Vec<_>>();
    let full = within(engine.history(&lobby, 0, 2)).await.expect("a full page is exact from the cache");
    assert_eq!(seqs(&full), [1, 2]);
    let open_ended = within(engine.history(&lobby, 1, 10)).await.expect_err("the page reaches the cache's end");
    assert!(matches!(open_ended, EngineError::Room(RoomError::LogUnavailable { .. })), "{open_ended:?}");
    assert!(open_ended.to_string().contains("(stalled)"), "names the cause: {open_ended}");
    let ahead = within(engine.subscribe(&lobby, None, Some(7))).await.err().expect("the client read past the cache");
    assert!(matches!(ahead, EngineError::Room(RoomError::LogUnavailable { .. })), "{ahead:?}");
    let mut events = within(engine.subscribe(&lobby, None, Some(1))).await.expect("a resume within the cache is exact");
    let mut backlog = Vec::new();
    while backlog.len() < 2 {
        match within(events.next()).await {
            Some(StreamItem::Next(RoomEvent::Message(message))) => backlog.push(message.seq),
            Some(StreamItem::Next(RoomEvent::Subscribed { recovered, .. })) => assert!(recovered),
            Some(StreamItem::Next(_)) => {}
            other => panic!("expected the backlog, got {other:?}"),
        }
    }
    assert_eq!(backlog, [2, 3]);
    // Once the probe has seen the outage, reads no longer wait for the leader's answer.
    within(async {
        while engine.health() == EngineHealth::Serving {
            tokio::time::sleep(HEALTH_PROBE_INTERVAL / 4).await;
        }
    })
    .await;
    let started = tokio::time::Instant::now();
    assert_eq!(seqs(&within(engine.history(&lobby, 1, 2)).await.expect("from the cache")), [2, 3]);
    let refused = within(engine.history(&lobby, 2, 10)).await.expect_err("the page reaches the cache's end");
    assert!(refused.to_string().contains("no quorum (stalled)"), "names the probe's cause: {refused}");
    assert!(started.elapsed() < STALLED_ANSWER_AFTER, "answered at once: {:?}", started.elapsed());

    log.stall(false);
    let sent = within(engine.send(&lobby, super::draft("ann", "d", "d"))).await.expect("sent once the log is back");
    match within(events.next()).await {
        Some(StreamItem::Next(RoomEvent::Message(message))) => assert_eq!(message.seq, sent.seq),
        other => panic!("the subscription from the cache goes on live, got {other:?}"),
    }
}
