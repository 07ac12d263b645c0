//! `Engine::stats`: the counters behind the server's metrics move exactly as the engine acts.
//! Paused time: the stall sweep cannot fire between the steps below.

use confab_engine::{ClientFrame, Lag, Limits, RoomEvent, ServerFrame};

use super::{draft, engine_with, messages, next, room, subscribed, user};

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn stats_count_messages_deliveries_lag_and_sessions() {
    let engine = engine_with(Limits { subscriber_queue_len_max: 2, ..Limits::default() });
    let lobby = room("lobby");
    assert_eq!(engine.stats(), confab_actors::StatsSnapshot::default(), "nothing happened yet");

    // A subscriber that does not read: the ring keeps 2 events, so it will miss 3 messages.
    let mut slow = engine.subscribe(&lobby, None, None).await.expect("subscribed");
    for i in 1..=5 {
        engine.send(&lobby, draft("ann", &format!("m{i}"), "x")).await.expect("sent");
    }
    let retry = engine.send(&lobby, draft("ann", "m1", "x")).await.expect("sent");
    assert!(retry.duplicate, "a retry is not appended again");
    let stats = engine.stats();
    assert_eq!((stats.rooms, stats.rooms_created), (1, 1));
    assert_eq!(stats.messages_appended, 5);
    assert_eq!((stats.deliveries, stats.deliveries_dropped, stats.lag_markers), (0, 0, 0), "counted when read");

    // It reads: one lag marker for the 3 it missed, then the 2 the ring kept, then the next.
    subscribed(&mut slow).await;
    assert_eq!(
        next(&mut slow).await,
        Some(RoomEvent::Lagged { room: lobby.clone(), lag: Lag { missed_from: 1, missed_to: 3 } })
    );
    messages(&mut slow, 2).await;
    let stats = engine.stats();
    assert_eq!((stats.deliveries, stats.deliveries_dropped, stats.lag_markers), (2, 3, 1));
    engine.send(&lobby, draft("ann", "m6", "x")).await.expect("sent");
    messages(&mut slow, 1).await;
    let stats = engine.stats();
    assert_eq!(stats.messages_appended, 6);
    assert_eq!((stats.deliveries, stats.deliveries_dropped, stats.lag_markers), (3, 3, 1));

    // An upload commits its run as appended messages, in a room of its own.
    let mut upload = engine.upload(&room("uploads"));
    for i in 0..3 {
        upload.push(draft("bob", "", &format!("u{i}"))).await.expect("pushed");
    }
    upload.commit().await.expect("committed");
    let stats = engine.stats();
    assert_eq!((stats.rooms, stats.rooms_created, stats.messages_appended), (2, 2, 9));

    // A session counts while it lives, and so does each frame it refuses.
    let (sender, mut events) = engine.open_session(user("cy"));
    let not_joined = ClientFrame::Send { room: "lobby".into(), client_msg_id: "c1".into(), body: "x".into() };
    sender.send(not_joined).await.expect("frame");
    assert!(matches!(next(&mut events).await, Some(ServerFrame::Error { .. })));
    let stats = engine.stats();
    assert_eq!((stats.sessions, stats.sessions_opened, stats.session_frames_refused), (1, 1, 1));
    drop((sender, events));
    for _ in 0..1_000 {
        if engine.stats().sessions == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    let stats = engine.stats();
    assert_eq!((stats.sessions, stats.sessions_opened), (0, 1), "a session that went away is no longer open");
}
