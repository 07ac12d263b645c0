use std::collections::BTreeMap;

use confab_engine::{Lag, Limits, RoomError, RoomEvent, ServerFrame};
use futures::StreamExt;

use super::{draft, engine_with, messages, next, room, subscribed, user};
use confab_actors::{EngineError, Stalled, StreamEnd, StreamItem};

#[tokio::test(flavor = "current_thread")]
async fn concurrent_senders_and_subscribers_see_one_order_without_loss() {
    let engine = engine_with(Limits::default());
    let lobby = room("lobby");
    const SENDERS: usize = 20;
    const PER_SENDER: usize = 50;
    const TOTAL: usize = SENDERS * PER_SENDER;
    let mut readers = Vec::new();
    for _ in 0..10 {
        let mut events = engine.subscribe(&lobby, None, None).await.expect("subscribed");
        assert_eq!(subscribed(&mut events).await, (true, 1));
        readers.push(tokio::spawn(async move { messages(&mut events, TOTAL).await }));
    }
    let mut senders = Vec::new();
    for sender in 0..SENDERS {
        let engine = engine.clone();
        let lobby = lobby.clone();
        senders.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..PER_SENDER {
                let sent = engine.send(&lobby, draft(&format!("u{sender}"), "", &i.to_string())).await.expect("sent");
                seqs.push(sent.seq);
            }
            seqs
        }));
    }
    for sender in senders {
        let seqs = sender.await.expect("sender");
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "G3: a sender's messages keep their order");
    }
    let first = readers.remove(0).await.expect("reader");
    assert_eq!(first.iter().map(|m| m.0).collect::<Vec<_>>(), (1..=TOTAL as u64).collect::<Vec<_>>());
    for reader in readers {
        assert_eq!(reader.await.expect("reader"), first, "G1: every subscriber sees the same order");
    }
    let mut last_body_by_user: BTreeMap<String, i64> = BTreeMap::new();
    for (_, who, body) in &first {
        let n: i64 = body.parse().expect("number");
        let previous = last_body_by_user.insert(who.clone(), n).unwrap_or(-1);
        assert_eq!(n, previous + 1, "G3: each sender's messages appear in send order");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn rooms_are_independent_sequences() {
    let engine = engine_with(Limits::default());
    let mut tasks = Vec::new();
    for r in 0..5 {
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move {
            let name = room(&format!("room{r}"));
            let mut events = engine.subscribe(&name, None, None).await.expect("subscribed");
            subscribed(&mut events).await;
            for i in 0..30 {
                assert_eq!(engine.send(&name, draft("u", "", &i.to_string())).await.expect("sent").seq, i + 1);
            }
            messages(&mut events, 30).await.iter().map(|m| m.0).collect::<Vec<_>>()
        }));
    }
    for task in tasks {
        assert_eq!(task.await.expect("room task"), (1..=30).collect::<Vec<u64>>());
    }
    let rooms = engine.rooms().await.expect("rooms");
    assert_eq!(
        rooms.iter().map(|r| r.name.to_string()).collect::<Vec<_>>(),
        ["room0", "room1", "room2", "room3", "room4"]
    );
    assert!(rooms.iter().all(|r| r.last_seq == 30));
}

#[tokio::test(flavor = "current_thread")]
async fn a_slow_subscriber_gets_lagged_and_does_not_slow_a_fast_one() {
    let engine = engine_with(Limits { subscriber_queue_len_max: 8, ..Limits::default() });
    let lobby = room("lobby");
    let mut slow = engine.subscribe(&lobby, None, None).await.expect("subscribed");
    let mut fast = engine.subscribe(&lobby, None, None).await.expect("subscribed");
    subscribed(&mut fast).await;
    let (progress, mut progressed) = tokio::sync::mpsc::unbounded_channel();
    let fast_reader = tokio::spawn(async move {
        let mut seqs = Vec::new();
        while let Some(event) = next(&mut fast).await {
            match event {
                RoomEvent::Message(message) => {
                    seqs.push(message.seq);
                    let _ = progress.send(message.seq);
                    if seqs.len() == 101 {
                        return seqs;
                    }
                }
                other => panic!("the fast subscriber must not lag: {other:?}"),
            }
        }
        seqs
    });
    for i in 1..=100u64 {
        engine.send(&lobby, draft("pub", "", "x")).await.expect("sent, never blocked by the slow one");
        assert_eq!(progressed.recv().await, Some(i), "the fast subscriber keeps up");
    }
    // The slow one never read: the room's ring (8 events) holds 93..=100 now, so it is told
    // exactly what it missed before them, then reads them and carries on live.
    assert_eq!(subscribed(&mut slow).await, (true, 1));
    assert_eq!(
        next(&mut slow).await,
        Some(RoomEvent::Lagged { room: lobby.clone(), lag: Lag { missed_from: 1, missed_to: 92 } })
    );
    let retained = super::messages(&mut slow, 8).await;
    assert_eq!(retained.iter().map(|m| m.0).collect::<Vec<_>>(), (93..=100).collect::<Vec<_>>());
    engine.send(&lobby, draft("pub", "", "after")).await.expect("sent");
    assert_eq!(next(&mut slow).await.and_then(|e| e.seq()), Some(101), "G2: carries on right after");
    assert_eq!(fast_reader.await.expect("fast"), (1..=101).collect::<Vec<_>>());
    // What it missed is still in history.
    let page = engine.history(&lobby, 8, 5).await.expect("history");
    assert_eq!(page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![9, 10, 11, 12, 13]);
}

#[tokio::test(flavor = "current_thread")]
async fn a_retried_send_is_appended_once() {
    let engine = engine_with(Limits::default());
    let lobby = room("lobby");
    let first = engine.send(&lobby, draft("ann", "msg-1", "hello")).await.expect("sent");
    let retry = engine.send(&lobby, draft("ann", "msg-1", "hello")).await.expect("sent");
    assert_eq!((retry.seq, retry.duplicate), (first.seq, true));
    let page = engine.history(&lobby, 0, 0).await.expect("history");
    assert_eq!(page.messages.len(), 1, "G4: exactly once in the log");
}

#[tokio::test(flavor = "current_thread")]
async fn resume_and_read_your_writes() {
    let engine = engine_with(Limits::default());
    let lobby = room("lobby");
    for i in 1..=10 {
        let sent = engine.send(&lobby, draft("ann", "", &i.to_string())).await.expect("sent");
        let page = engine.history(&lobby, sent.seq - 1, 1).await.expect("history");
        assert_eq!(page.messages[0].seq, sent.seq, "G7: history includes what send returned");
    }
    let mut resumed = engine.subscribe(&lobby, None, Some(7)).await.expect("subscribed");
    assert_eq!(subscribed(&mut resumed).await, (true, 8));
    assert_eq!(messages(&mut resumed, 3).await.iter().map(|m| m.0).collect::<Vec<_>>(), vec![8, 9, 10]);
    let mut live = engine.subscribe(&lobby, None, None).await.expect("subscribed");
    assert_eq!(subscribed(&mut live).await, (true, 11));
}

#[tokio::test(flavor = "current_thread")]
async fn bad_requests_are_refusals_and_the_room_keeps_working() {
    let engine = engine_with(Limits { message_bytes_max: 10, ..Limits::default() });
    let lobby = room("lobby");
    let error = engine.send(&lobby, draft("ann", "", "this is far too long")).await.expect_err("too big");
    assert!(matches!(error, EngineError::Room(RoomError::MessageTooBig { bytes: 20, bytes_max: 10 })));
    assert_eq!(engine.send(&lobby, draft("ann", "", "ok")).await.expect("still works").seq, 1);
    let missing = engine.history(&room("nowhere"), 0, 10).await.expect_err("no such room");
    assert_eq!(missing, EngineError::Room(RoomError::NotFound));
}

#[tokio::test(flavor = "current_thread")]
async fn dropped_subscriptions_leave_no_subscriber_behind() {
    let engine = engine_with(Limits::default());
    let lobby = room("lobby");
    let mut streams = Vec::new();
    for _ in 0..1_000 {
        streams.push(engine.subscribe(&lobby, None, None).await.expect("subscribed"));
    }
    assert_eq!(engine.room(&lobby).await.expect("info").expect("exists").subscribers, 1_000);
    drop(streams);
    assert_eq!(engine.room(&lobby).await.expect("info").expect("exists").subscribers, 0);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_idle_room_retires_and_comes_back_with_a_new_epoch() {
    let engine = engine_with(Limits { room_idle_ms: 1_000, ..Limits::default() });
    let lobby = room("lobby");
    engine.send(&lobby, draft("ann", "", "old")).await.expect("sent");
    let epoch = engine.room(&lobby).await.expect("info").expect("exists").epoch;
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    assert_eq!(engine.retire_idle_rooms().await.expect("swept"), 1);
    assert!(engine.room(&lobby).await.expect("info").is_none());
    let mut again = engine.subscribe(&lobby, None, Some(1)).await.expect("subscribed");
    assert_eq!(subscribed(&mut again).await, (false, 1), "G5: history was lost, and the subscriber is told");
    let info = engine.room(&lobby).await.expect("info").expect("exists");
    assert_ne!(info.epoch, epoch);
    assert_eq!(info.last_seq, 0);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_loaded_room_forgets_messages_past_the_age_limit_as_it_is_read() {
    let engine = engine_with(Limits { history_age_max_ms: Some(60_000), ..Limits::default() });
    let lobby = room("lobby");
    engine.send(&lobby, draft("ann", "", "old")).await.expect("sent");
    tokio::time::sleep(std::time::Duration::from_secs(30)).await;
    engine.send(&lobby, draft("ann", "", "newer")).await.expect("sent");
    engine.send(&lobby, draft("ann", "", "newest")).await.expect("sent");
    tokio::time::sleep(std::time::Duration::from_secs(45)).await;
    let page = engine.history(&lobby, 0, 0).await.expect("history");
    let seqs: Vec<u64> = page.messages.iter().map(|message| message.seq).collect();
    assert_eq!(seqs, [2, 3], "#1 is 75 s old, past the 60 s limit");
    assert_eq!(engine.room(&lobby).await.expect("info").expect("exists").first_retained_seq, 2);
    let mut resumed = engine.subscribe(&lobby, None, Some(0)).await.expect("subscribed");
    assert_eq!(subscribed(&mut resumed).await, (false, 2), "a resume from before it is told #1 is gone");
    tokio::time::sleep(std::time::Duration::from_secs(3_600)).await;
    let page = engine.history(&lobby, 0, 0).await.expect("history");
    assert_eq!(page.messages.iter().map(|message| message.seq).collect::<Vec<_>>(), [3], "the last one stays");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_stalled_stream_and_a_stalled_session_are_closed_with_what_they_missed() {
    let limits = Limits {
        subscriber_queue_len_max: 4,
        session_outbound_len_max: 4,
        subscriber_stall_ms: 5_000,
        ..Limits::default()
    };
    let engine = engine_with(limits);
    let lobby = room("lobby");
    let mut stalled = engine.subscribe(&lobby, None, None).await.expect("subscribed");
    let (session, mut session_frames) = engine.open_session(super::user("sam"));
    let join = confab_engine::ClientFrame::Join { room: "lobby".into(), after_seq: None };
    session.send(join).await.expect("joined");
    let mut reader = engine.subscribe(&lobby, None, None).await.expect("subscribed");
    subscribed(&mut reader).await;
    // Neither the stream nor the session is read while 50 messages go by, one a second.
    for i in 1..=50u64 {
        engine.send(&lobby, draft("pub", "", &i.to_string())).await.expect("sent");
        let got = messages(&mut reader, 1).await;
        assert_eq!(got[0].0, i, "a reader that keeps up is not disturbed");
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
    // The stream: it read nothing, so its one event after `Subscribed` is the lag marker for
    // everything up to the room's last message when it was closed; then the end, with the
    // reason.
    assert_eq!(subscribed(&mut stalled).await, (true, 1));
    let lag = match next(&mut stalled).await {
        Some(RoomEvent::Lagged { lag, .. }) => lag,
        other => panic!("expected the final lag marker, got {other:?}"),
    };
    assert_eq!(lag.missed_from, 1, "G2: the marker starts where delivery stopped");
    // The ring (4 events: the session's presence, then messages) lost message 1 when message
    // 5 came (at 4 s); the next sweep (every 1.25 s) starts the stall clock, and the first
    // sweep 5 s later closes it: one message a second, so the room was then at about 10.
    assert!((9..=12).contains(&lag.missed_to), "{lag:?}");
    // Its last item says why it ended: the room closed it for stalling, with what it missed.
    let reason = StreamEnd::Stalled(Stalled { room: lobby.clone(), lag });
    assert_eq!(stalled.next().await, Some(StreamItem::End(reason)));
    assert_eq!(stalled.next().await, None);
    // The session: its frames end with the final lag marker, then the reason.
    let mut frames = Vec::new();
    let reason = loop {
        match session_frames.next().await.expect("the end comes before `None`") {
            StreamItem::Next(frame) => frames.push(frame),
            StreamItem::End(reason) => break reason,
        }
        assert!(frames.len() < 100, "a closed session's frames end");
    };
    let Some(ServerFrame::Event(RoomEvent::Lagged { lag, .. })) = frames.last() else {
        panic!("the final lag marker comes just before the end: {frames:?}")
    };
    assert_eq!(reason, StreamEnd::Stalled(Stalled { room: lobby.clone(), lag: *lag }));
    assert_eq!(session_frames.next().await, None);
    // Its end stops the session actor (at once, though the actor's task goes at its next turn).
    tokio::task::yield_now().await;
    assert!(session.send(confab_engine::ClientFrame::Typing { room: "lobby".into() }).await.is_err());
    // The room counts only the reader now.
    assert_eq!(engine.room(&lobby).await.expect("info").expect("exists").subscribers, 1);
}

#[tokio::test(flavor = "current_thread")]
async fn a_shutdown_ends_every_subscription_after_what_was_published() {
    let engine = engine_with(Limits::default());
    let lobby = room("lobby");
    let mut events = engine.subscribe(&lobby, None, None).await.expect("subscribed");
    subscribed(&mut events).await;
    engine.send(&lobby, draft("ann", "1", "before")).await.expect("sent");
    engine.shutdown().await.expect("shutdown");
    let ending = async {
        assert_eq!(messages(&mut events, 1).await[0].0, 1, "what was published first");
        assert_eq!(events.next().await, Some(StreamItem::End(StreamEnd::RoomStopped)));
        assert_eq!(events.next().await, None);
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), ending).await.expect("the subscription ended");
}

#[tokio::test(flavor = "current_thread")]
async fn a_shutdown_is_final_every_later_call_is_refused_as_stopped() {
    let engine = engine_with(Limits::default());
    let lobby = room("lobby");
    engine.send(&lobby, draft("ann", "1", "before")).await.expect("sent");
    engine.shutdown().await.expect("shutdown");
    assert_eq!(engine.send(&lobby, draft("ann", "2", "after")).await, Err(EngineError::Stopped));
    assert_eq!(engine.history(&lobby, 0, 0).await.err(), Some(EngineError::Stopped), "no room starts over");
    assert_eq!(engine.subscribe(&lobby, None, None).await.err(), Some(EngineError::Stopped));
    assert_eq!(engine.room(&lobby).await.err(), Some(EngineError::Stopped));
    assert_eq!(engine.shutdown().await, Err(EngineError::Stopped), "a second shutdown too");
    let (session, mut frames) = engine.open_session(user("ann"));
    let join = || confab_engine::ClientFrame::Join { room: "lobby".into(), after_seq: None };
    // The first frame may still be taken before the session's stop lands; nothing answers it.
    let _ = session.send(join()).await;
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), frames.next()).await.expect("ends");
    assert_eq!(ended, Some(StreamItem::End(StreamEnd::SessionStopped)), "a session opened later is closed at once");
    assert_eq!(session.send(join()).await, Err(EngineError::SessionClosed));
}
