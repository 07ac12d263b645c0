use confab_engine::{ClientFrame, FrameError, Limits, RoomEvent, ServerFrame, SessionError};
use futures::StreamExt;

use super::{engine_with, next, room, user};
use confab_actors::{SessionEvents, StreamEnd, StreamItem};

fn send(room: &str, id: &str, body: &str) -> ClientFrame {
    ClientFrame::Send { room: room.into(), client_msg_id: id.into(), body: body.into() }
}

fn join(room: &str) -> ClientFrame {
    ClientFrame::Join { room: room.into(), after_seq: None }
}

/// The messages in a session's frames, as (seq, user, body), and why the session ended (its
/// last item; only `None` follows).
async fn collect_messages(events: &mut SessionEvents) -> (Vec<(u64, String, String)>, StreamEnd) {
    let mut got = Vec::new();
    loop {
        match events.next().await.expect("the end comes before `None`") {
            StreamItem::Next(ServerFrame::Event(RoomEvent::Message(m))) => {
                got.push((m.seq, m.user.to_string(), m.body.to_string()))
            }
            StreamItem::Next(_) => {}
            StreamItem::End(end) => {
                assert_eq!(events.next().await, None, "nothing after the end");
                return (got, end);
            }
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn two_sessions_chat_and_each_ends_after_its_own_messages_came_back() {
    let engine = engine_with(Limits::default());
    let (ann, mut ann_events) = engine.open_session(user("ann"));
    let (bob, mut bob_events) = engine.open_session(user("bob"));
    ann.send(join("lobby")).await.expect("frame");
    bob.send(join("lobby")).await.expect("frame");
    // Wait until both joined, so both see every message.
    for events in [&mut ann_events, &mut bob_events] {
        match next(events).await {
            Some(ServerFrame::Event(RoomEvent::Subscribed { recovered: true, .. })) => {}
            other => panic!("expected Subscribed, got {other:?}"),
        }
    }
    for i in 0..5 {
        ann.send(send("lobby", &format!("a{i}"), &format!("ann {i}"))).await.expect("frame");
        bob.send(send("lobby", &format!("b{i}"), &format!("bob {i}"))).await.expect("frame");
    }
    ann.close().await.expect("closed");
    bob.close().await.expect("closed");
    let ((ann_seen, ann_end), (bob_seen, bob_end)) =
        tokio::join!(collect_messages(&mut ann_events), collect_messages(&mut bob_events));
    assert_eq!((ann_end, bob_end), (StreamEnd::Finished, StreamEnd::Finished), "a half-close is a normal end");
    let ann_own: Vec<_> = ann_seen.iter().filter(|m| m.1 == "ann").map(|m| m.2.clone()).collect();
    assert_eq!(ann_own, (0..5).map(|i| format!("ann {i}")).collect::<Vec<_>>(), "own messages come back in order");
    assert_eq!(bob_seen.iter().filter(|m| m.1 == "bob").count(), 5);
    // Each stream is a prefix-consistent view of one order: common seqs carry the same message.
    for message in &bob_seen {
        if let Some(same) = ann_seen.iter().find(|m| m.0 == message.0) {
            assert_eq!(same, message, "G1: one order for all");
        }
    }
    assert!(ann_seen.windows(2).all(|w| w[1].0 == w[0].0 + 1), "G2: contiguous");
    assert_eq!(engine.room(&room("lobby")).await.expect("info").expect("exists").subscribers, 0);
}

#[tokio::test(flavor = "current_thread")]
async fn acks_and_errors_come_back_as_frames_and_the_session_goes_on() {
    let engine = engine_with(Limits::default());
    let (ann, mut events) = engine.open_session(user("ann"));
    ann.send(send("lobby", "x", "not joined yet")).await.expect("frame");
    match next(&mut events).await {
        Some(ServerFrame::Error { error: FrameError::Session(SessionError::NotJoined { .. }), .. }) => {}
        other => panic!("expected a NotJoined error, got {other:?}"),
    }
    ann.send(join("lobby")).await.expect("frame");
    ann.send(send("lobby", "m1", "hello")).await.expect("frame");
    ann.send(send("lobby", "m1", "hello")).await.expect("frame");
    let mut acks = Vec::new();
    while acks.len() < 2 {
        if let Some(ServerFrame::SendAck { seq, duplicate, .. }) = next(&mut events).await {
            acks.push((seq, duplicate));
        }
    }
    assert_eq!(acks, vec![(1, false), (1, true)], "G4 through a session");
    drop(ann);
    // Disconnect without close: the stream ends, not as a finish, and the subscription is gone.
    assert_eq!(collect_messages(&mut events).await.1, StreamEnd::SessionStopped);
    assert_eq!(engine.room(&room("lobby")).await.expect("info").expect("exists").subscribers, 0);
}
