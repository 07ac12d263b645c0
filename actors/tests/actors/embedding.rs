use confab_actors::{Engine, EngineConfig, EngineError};
use confab_engine::{ClientFrame, RoomEvent, ServerFrame};
use futures::StreamExt;

use super::{draft, room, user};

#[test]
fn the_handle_works_from_smol_against_a_background_engine() {
    let engine = Engine::start_background(EngineConfig::default()).expect("started");
    smol::block_on(async {
        let lobby = room("lobby");
        let mut events = engine.subscribe(&lobby, None, None).await.expect("subscribed");
        assert!(matches!(events.next().await, Some(RoomEvent::Subscribed { .. })));
        for i in 0..10 {
            engine.send(&lobby, draft("smol", "", &i.to_string())).await.expect("sent");
        }
        for seq in 1..=10 {
            assert_eq!(events.next().await.and_then(|e| e.seq()), Some(seq));
        }
        let mut upload = engine.upload(&lobby);
        upload.push(draft("smol", "", "u")).await.expect("chunk");
        assert_eq!(upload.commit().await.expect("receipt").seqs, Some((11, 11)));
        let (sender, mut frames) = engine.open_session(user("smol"));
        sender.send(ClientFrame::Join { room: "lobby".into(), after_seq: Some(10) }).await.expect("frame");
        assert!(matches!(frames.next().await, Some(ServerFrame::Event(RoomEvent::Subscribed { recovered: true, .. }))));
        assert!(matches!(frames.next().await, Some(ServerFrame::Event(RoomEvent::Message(m))) if m.seq == 11));
    });
}

#[test]
fn start_outside_tokio_says_what_to_do() {
    assert_eq!(Engine::start(EngineConfig::default()).err(), Some(EngineError::NoRuntime));
}
