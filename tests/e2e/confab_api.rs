use confab::grpc::proto::confab_v1::{
    self as v1, ClientFrame, HistoryRequest, ListRoomsRequest, SendRequest, SubscribeRequest, UploadChunk,
    client_frame, room_event, server_frame,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{TestServer, bounded, with_metadata};

fn send(room: &str, user: &str, id: &str, body: &str) -> SendRequest {
    SendRequest { room: room.into(), user: user.into(), client_msg_id: id.into(), body: body.into() }
}

fn event(event: v1::RoomEvent) -> room_event::Event {
    event.event.expect("an event")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_send_history_and_list_rooms() {
    let server = TestServer::start().await;
    let mut client = server.confab().await;
    for i in 1..=5u64 {
        let reply = client.send(send("general", "ann", &format!("m{i}"), &format!("hello {i}"))).await.expect("send");
        assert_eq!(reply.get_ref().seq, i);
    }
    let retry = client.send(send("general", "ann", "m3", "hello 3")).await.expect("retry").into_inner();
    assert_eq!((retry.seq, retry.duplicate), (3, true), "G4 over gRPC");
    let page = client
        .history(HistoryRequest { room: "general".into(), after_seq: 2, limit: 2 })
        .await
        .expect("history")
        .into_inner();
    assert_eq!(page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![3, 4]);
    assert_eq!((page.messages[0].body.as_str(), page.last_seq, page.first_retained_seq), ("hello 3", 5, 1));
    client.send(send("another", "bob", "", "hi")).await.expect("send");
    let rooms = client.list_rooms(ListRoomsRequest::default()).await.expect("rooms").into_inner().rooms;
    let summary: Vec<_> = rooms.iter().map(|r| (r.name.as_str(), r.last_seq)).collect();
    assert_eq!(summary, vec![("another", 1), ("general", 5)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_rooms_pages_in_name_order() {
    let server = TestServer::start().await;
    let mut client = server.confab().await;
    for name in ["e", "a", "d", "b", "c"] {
        client.send(send(name, "ann", "", "hi")).await.expect("send");
    }
    let mut pages = Vec::new();
    let mut after = String::new();
    loop {
        let request = ListRoomsRequest { limit: 2, after: after.clone() };
        let page = client.list_rooms(request).await.expect("a page").into_inner();
        pages.push(page.rooms.iter().map(|r| r.name.clone()).collect::<Vec<_>>());
        if page.next_after.is_empty() {
            break;
        }
        after = page.next_after;
    }
    assert_eq!(pages, vec![vec!["a", "b"], vec!["c", "d"], vec!["e"]]);
    let bad = client.list_rooms(ListRoomsRequest { limit: 0, after: "no spaces allowed? \u{0}".into() }).await;
    assert_eq!(bad.expect_err("an invalid room name").code(), tonic::Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_live_and_resume_with_after_seq() {
    let server = TestServer::start().await;
    let mut client = server.confab().await;
    for i in 1..=3 {
        client.send(send("r", "ann", "", &format!("early {i}"))).await.expect("send");
    }
    let request = SubscribeRequest { room: "r".into(), after_seq: Some(1), user: String::new() };
    let mut resumed = client.subscribe(request).await.expect("subscribe").into_inner();
    match event(bounded(resumed.message()).await.expect("ok").expect("first")) {
        room_event::Event::Subscribed(s) => assert_eq!((s.recovered, s.first_seq), (true, 2)),
        other => panic!("expected subscribed, got {other:?}"),
    }
    client.send(send("r", "bob", "", "live")).await.expect("send");
    let mut seqs = Vec::new();
    while seqs.len() < 3 {
        if let room_event::Event::Message(m) = event(bounded(resumed.message()).await.expect("ok").expect("event")) {
            seqs.push((m.seq, m.body));
        }
    }
    assert_eq!(seqs, vec![(2, "early 2".into()), (3, "early 3".into()), (4, "live".into())], "G5 over gRPC");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_commits_one_run_and_returns_a_receipt() {
    let server = TestServer::start().await;
    let mut client = server.confab().await;
    client.send(send("up", "ann", "", "before")).await.expect("send");
    let chunks: Vec<UploadChunk> = (0..50)
        .map(|i| UploadChunk {
            room: if i == 0 { "up".into() } else { String::new() },
            user: "loader".into(),
            body: format!("line {i}"),
        })
        .collect();
    let receipt = client.upload(tokio_stream::iter(chunks)).await.expect("upload").into_inner();
    assert_eq!((receipt.room.as_str(), receipt.count, receipt.first_seq, receipt.last_seq), ("up", 50, 2, 51));
    assert_eq!(receipt.last_user, "loader");
    let mut checksum = confab_engine::Checksum::new();
    (0..50).for_each(|i| checksum.update("loader", &format!("line {i}")));
    assert_eq!(receipt.checksum, checksum.value());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_joins_sends_acks_and_ends_after_half_close() {
    let server = TestServer::start().await;
    let mut client = server.confab().await;
    let (frames, outgoing) = mpsc::channel(16);
    let join = client_frame::Frame::Join(v1::Join { room: "s".into(), after_seq: None });
    frames.send(ClientFrame { frame: Some(join) }).await.expect("queue");
    for i in 0..3 {
        let post = v1::Post { room: "s".into(), client_msg_id: format!("c{i}"), body: format!("body {i}") };
        frames.send(ClientFrame { frame: Some(client_frame::Frame::Post(post)) }).await.expect("queue");
    }
    let not_joined = v1::Post { room: "elsewhere".into(), client_msg_id: String::new(), body: "x".into() };
    frames.send(ClientFrame { frame: Some(client_frame::Frame::Post(not_joined)) }).await.expect("queue");
    drop(frames);
    let request = with_metadata(ReceiverStream::new(outgoing), "user", "ann");
    let mut incoming = client.session(request).await.expect("session").into_inner();
    let (mut messages, mut acks, mut errors) = (Vec::new(), Vec::new(), Vec::new());
    while let Some(frame) = bounded(incoming.message()).await.expect("frames end OK") {
        match frame.frame.expect("frame") {
            server_frame::Frame::Event(e) => {
                if let room_event::Event::Message(m) = event(e) {
                    messages.push((m.seq, m.user, m.body));
                }
            }
            server_frame::Frame::Ack(ack) => acks.push((ack.client_msg_id, ack.seq)),
            server_frame::Frame::Error(error) => errors.push((error.code, error.room)),
            server_frame::Frame::Left(_) => {}
        }
    }
    assert_eq!(acks, vec![("c0".into(), 1), ("c1".into(), 2), ("c2".into(), 3)]);
    let expected: Vec<_> = (0..3).map(|i| (i + 1, "ann".to_string(), format!("body {i}"))).collect();
    assert_eq!(messages, expected, "the session's own messages come back before it ends");
    assert_eq!(errors, vec![(tonic::Code::FailedPrecondition as i32, "elsewhere".to_string())]);
}
