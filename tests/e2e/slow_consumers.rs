//! A subscriber that stops reading: the room marks it lagged, closes it once it has taken
//! nothing for the stall time, and the client learns why as soon as it reads again; a reader
//! on another connection is not held back.

use std::time::Duration;

use confab::grpc::proto::confab_v1::{SendRequest, SubscribeRequest, room_event};
use confab_engine::Limits;
use tonic::Code;

use super::{TestServer, bounded};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_is_closed_with_a_lag_marker_and_a_status_while_a_reader_keeps_up() {
    let limits = Limits { subscriber_queue_len_max: 8, subscriber_stall_ms: 1_000, ..Limits::default() };
    let server = TestServer::start_with(limits).await;
    let room = "busy";
    // Each on its own connection, as separate clients would be: HTTP/2 flow control is per
    // connection, so a client that stops reading stalls only its own connection.
    let mut stalled = server.confab().await;
    let request = SubscribeRequest { room: room.into(), after_seq: None, user: String::new() };
    let mut stalled = stalled.subscribe(request.clone()).await.expect("subscribe").into_inner();
    bounded(stalled.message()).await.expect("ok").expect("subscribed");
    let mut reader = server.confab().await.subscribe(request).await.expect("subscribe").into_inner();
    bounded(reader.message()).await.expect("ok").expect("subscribed");
    let mut publisher = server.confab().await;

    // 32 KiB bodies: 200 of them (6.4 MiB) overflow every buffer between the room and a client
    // that does not read (its queue of 8, the server's HTTP/2 send buffer, the client's 2 MiB
    // stream window).
    const MESSAGES: u64 = 200;
    let body = "x".repeat(32 * 1024);
    for i in 1..=MESSAGES {
        let request =
            SendRequest { room: room.into(), user: "pub".into(), client_msg_id: String::new(), body: body.clone() };
        bounded(publisher.send(request)).await.expect("sent: a stalled subscriber never blocks a sender");
        let event = bounded(reader.message()).await.expect("ok").expect("an event");
        match event.event {
            Some(room_event::Event::Message(message)) => assert_eq!(message.seq, i, "the reader keeps up, in order"),
            other => panic!("the reader must not lag: {other:?}"),
        }
    }
    // The room closes it about a second after it stalled, while its client still reads nothing.
    bounded(async {
        loop {
            let info = server.engine.room(&confab_engine::RoomName::new(room).expect("name")).await;
            if info.expect("engine").expect("room").subscribers == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;

    assert_eq!(server.engine.stats().subscribers_closed_stalled, 1, "counted for the metrics");

    // Reading again: the messages buffered before it stalled, one lag marker from where they
    // stop, then RESOURCE_EXHAUSTED saying what was missed and how to resume.
    let mut seqs = Vec::new();
    let lag = loop {
        match bounded(stalled.message()).await {
            Ok(Some(event)) => match event.event {
                Some(room_event::Event::Message(message)) => seqs.push(message.seq),
                Some(room_event::Event::Lagged(lag)) => break lag,
                other => panic!("unexpected {other:?}"),
            },
            other => panic!("expected a lag marker before the end, got {other:?}"),
        }
    };
    assert!(!seqs.is_empty() && (seqs.len() as u64) < MESSAGES, "some were buffered, not all: {}", seqs.len());
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "in order, no gap");
    assert_eq!(lag.missed_from, seqs.len() as u64 + 1, "G2: the marker starts where delivery stopped");
    // It ends at the room's last message when the room closed the stream (on a busy machine
    // that may be before the publisher finished).
    assert!((lag.missed_from..=MESSAGES).contains(&lag.missed_to), "{lag:?}");
    let status = bounded(stalled.message()).await.expect_err("closed with a status");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().contains(&format!("after_seq {}", seqs.len())),
        "says how to resume: {}",
        status.message()
    );
    server.stop().await.expect("clean stop");
}
