use confab_actors::{Engine, EngineConfig, StartError};
use confab_engine::{ClientFrame, RoomEvent, ServerFrame};

use super::{draft, next, room, user};

#[test]
fn the_handle_works_from_smol_against_a_background_engine() {
    let engine = Engine::start_background(EngineConfig::default()).expect("started");
    smol::block_on(async {
        let lobby = room("lobby");
        let mut events = engine.subscribe(&lobby, None, None).await.expect("subscribed");
        assert!(matches!(next(&mut events).await, Some(RoomEvent::Subscribed { .. })));
        for i in 0..10 {
            engine.send(&lobby, draft("smol", "", &i.to_string())).await.expect("sent");
        }
        for seq in 1..=10 {
            assert_eq!(next(&mut events).await.and_then(|e| e.seq()), Some(seq));
        }
        let mut upload = engine.upload(&lobby);
        upload.push(draft("smol", "", "u")).await.expect("chunk");
        assert_eq!(upload.commit().await.expect("receipt").seqs, Some((11, 11)));
        let (sender, mut frames) = engine.open_session(user("smol"));
        sender.send(ClientFrame::Join { room: "lobby".into(), after_seq: Some(10) }).await.expect("frame");
        assert!(matches!(
            next(&mut frames).await,
            Some(ServerFrame::Event(RoomEvent::Subscribed { recovered: true, .. }))
        ));
        assert!(matches!(next(&mut frames).await, Some(ServerFrame::Event(RoomEvent::Message(m))) if m.seq == 11));
    });
}

#[test]
fn the_handle_works_from_async_std_against_a_background_engine() {
    let engine = Engine::start_background(EngineConfig::default()).expect("started");
    async_std::task::block_on(async {
        let lobby = room("lobby");
        let mut events = engine.subscribe(&lobby, Some(user("reader")), None).await.expect("subscribed");
        assert!(matches!(next(&mut events).await, Some(RoomEvent::Subscribed { recovered: true, first_seq: 1, .. })));
        // Sends from tasks of async-std's own executor, each awaited there.
        let senders: Vec<_> = (0..4)
            .map(|task| {
                let engine = engine.clone();
                let lobby = lobby.clone();
                async_std::task::spawn(async move {
                    for i in 0..5 {
                        let id = format!("t{task}-{i}");
                        engine.send(&lobby, draft("std", &id, &id)).await.expect("sent");
                    }
                })
            })
            .collect();
        for sender in senders {
            sender.await;
        }
        // Every message arrives once, numbered 1..=20 in order (G1).
        let mut seqs = Vec::new();
        while seqs.len() < 20 {
            match next(&mut events).await {
                Some(RoomEvent::Message(message)) => seqs.push(message.seq),
                Some(_) => {}
                None => panic!("the subscription ended early"),
            }
        }
        assert_eq!(seqs, (1..=20).collect::<Vec<_>>());
        // A retry is recognised (G4), history answers, and a session works too.
        let retry = engine.send(&lobby, draft("std", "t0-0", "t0-0")).await.expect("retried");
        assert!(retry.duplicate);
        assert_eq!(engine.history(&lobby, 0, 100).await.expect("history").messages.len(), 20);
        let (sender, mut frames) = engine.open_session(user("std"));
        sender.send(ClientFrame::Join { room: "lobby".into(), after_seq: Some(19) }).await.expect("frame");
        assert!(matches!(
            next(&mut frames).await,
            Some(ServerFrame::Event(RoomEvent::Subscribed { recovered: true, .. }))
        ));
        assert!(matches!(next(&mut frames).await, Some(ServerFrame::Event(RoomEvent::Message(m))) if m.seq == 20));
    });
}

#[test]
fn start_outside_tokio_says_what_to_do() {
    assert!(matches!(Engine::start(EngineConfig::default()), Err(StartError::NoRuntime)));
}
