//! Every limit answered with a clear status (or an `Error` frame inside a Session), while the
//! same connection and other clients carry on.

use std::sync::Arc;
use std::time::Duration;

use confab::api::auth::Tokens;
use confab::grpc::proto::chat::{self, chat_service_client::ChatServiceClient};
use confab::grpc::proto::confab_v1::{
    self as v1, HistoryRequest, SendRequest, SubscribeRequest, UploadChunk, client_frame, room_event, server_frame,
};
use confab::grpc::server::ServerOptions;
use confab_client::{ClientSecurity, connect};
use confab_engine::{Limits, SendRate};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::codec::Streaming;

use super::{TestServer, bounded, with_metadata};

fn send(room: &str, body: &str) -> SendRequest {
    SendRequest { room: room.into(), user: "ann".into(), client_msg_id: String::new(), body: body.into() }
}

fn frame(frame: client_frame::Frame) -> v1::ClientFrame {
    v1::ClientFrame { frame: Some(frame) }
}

fn join(room: &str) -> v1::ClientFrame {
    frame(client_frame::Frame::Join(v1::Join { room: room.into(), after_seq: None }))
}

fn post(room: &str, id: &str, body: &str) -> v1::ClientFrame {
    frame(client_frame::Frame::Post(v1::Post { room: room.into(), client_msg_id: id.into(), body: body.into() }))
}

/// The next frame of a session that is not a room event (a session's ack and the echo of its
/// own message come in either order: the echo is read from the room's ring, the ack from the
/// session).
async fn next_reply(session: &mut Streaming<v1::ServerFrame>) -> server_frame::Frame {
    loop {
        let frame = bounded(session.message()).await.expect("session goes on").expect("a frame").frame;
        match frame.expect("content") {
            server_frame::Frame::Event(_) => {}
            other => return other,
        }
    }
}

fn expect_ack(frame: server_frame::Frame, id: &str) -> u64 {
    match frame {
        server_frame::Frame::Ack(ack) if ack.client_msg_id == id => ack.seq,
        other => panic!("expected the ack of {id}, got {other:?}"),
    }
}

fn expect_error(frame: server_frame::Frame, code: Code, mentions: &str) {
    match frame {
        server_frame::Frame::Error(error) => {
            assert_eq!(error.code, code as i32, "{error:?}");
            assert!(error.message.contains(mentions), "names the limit ({mentions}): {}", error.message);
        }
        other => panic!("expected an error frame, got {other:?}"),
    }
}

async fn next_message(watcher: &mut Streaming<v1::RoomEvent>) -> v1::ChatMessage {
    loop {
        match bounded(watcher.message()).await.expect("watcher ok").expect("event").event {
            Some(room_event::Event::Message(message)) => return message,
            Some(room_event::Event::Presence(_) | room_event::Event::Typing(_)) => {}
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

/// The engine's limits, each hit on one connection that carries on afterwards, while a watcher
/// on another connection keeps getting messages and the rooms hold nothing refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_engine_limit_is_answered_and_everyone_carries_on() {
    let limits = Limits {
        message_bytes_max: 100,
        session_rooms_max: 2,
        upload_messages_max: 5,
        upload_bytes_max: 200,
        history_page_max: 10,
        ..Limits::default()
    };
    let options = ServerOptions { send_rate: SendRate::UNLIMITED, ..ServerOptions::default() };
    let server = TestServer::start_with_options(limits, options).await;
    let mut watcher_client = server.confab().await;
    let request = SubscribeRequest { room: "calm".into(), after_seq: None, user: String::new() };
    let mut watcher = watcher_client.subscribe(request).await.expect("subscribe").into_inner();
    bounded(watcher.message()).await.expect("ok").expect("subscribed");
    let mut client = server.confab().await;

    // Message bytes.
    let big = client.send(send("calm", &"x".repeat(101))).await.expect_err("too big");
    assert_eq!(big.code(), Code::ResourceExhausted);
    assert!(big.message().contains("101") && big.message().contains("100"), "{}", big.message());
    client.send(send("calm", &"x".repeat(100))).await.expect("exactly the limit is fine");
    assert_eq!(next_message(&mut watcher).await.seq, 1);

    // Room name: length and charset.
    let long = client.send(send(&"r".repeat(65), "x")).await.expect_err("long name");
    assert_eq!(long.code(), Code::InvalidArgument);
    assert!(long.message().contains("room") && long.message().contains("64"), "{}", long.message());
    client.send(send(&"r".repeat(64), "x")).await.expect("64 bytes is fine");
    let charset = client.send(send("caf\u{e9}", "x")).await.expect_err("charset");
    assert_eq!(charset.code(), Code::InvalidArgument);
    assert!(charset.message().contains("A-Z a-z 0-9 . _ -"), "{}", charset.message());

    // Rooms per session: the third join gets an error frame, and the session goes on.
    let (frames, outgoing) = mpsc::channel(8);
    let request = with_metadata(ReceiverStream::new(outgoing), "user", "ann");
    let mut session = client.session(request).await.expect("open").into_inner();
    frames.send(join("calm")).await.expect("queue");
    frames.send(join("second")).await.expect("queue");
    frames.send(join("third")).await.expect("queue");
    expect_error(next_reply(&mut session).await, Code::ResourceExhausted, "2 rooms");
    frames.send(post("calm", "after-limit", "session goes on")).await.expect("queue");
    let seq = expect_ack(next_reply(&mut session).await, "after-limit");
    assert_eq!(next_message(&mut watcher).await.seq, seq);

    // Upload messages and bytes: refused whole, nothing committed.
    let chunk = |body: &str| UploadChunk { room: "calm".into(), user: "ann".into(), body: body.into() };
    let six = (0..6).map(|i| chunk(&format!("m{i}"))).collect::<Vec<_>>();
    let too_many = client.upload(tokio_stream::iter(six)).await.expect_err("six messages");
    assert_eq!(too_many.code(), Code::ResourceExhausted);
    assert!(too_many.message().contains('5'), "{}", too_many.message());
    let heavy = vec![chunk(&"a".repeat(100)), chunk(&"b".repeat(100)), chunk("c")];
    let too_big = client.upload(tokio_stream::iter(heavy)).await.expect_err("201 bytes");
    assert_eq!(too_big.code(), Code::ResourceExhausted);
    assert!(too_big.message().contains("200"), "{}", too_big.message());
    let five = (0..5).map(|i| chunk(&format!("u{i}"))).collect::<Vec<_>>();
    let fine = client.upload(tokio_stream::iter(five)).await.expect("5 is fine");
    assert_eq!(fine.into_inner().count, 5);

    // History page size: a bigger page is cut to the limit (as the proto documents: a page
    // limit, not a refusal), and paging reaches everything.
    for i in 0..15 {
        client.send(send("paged", &format!("p{i}"))).await.expect("send");
    }
    let page = client.history(HistoryRequest { room: "paged".into(), after_seq: 0, limit: 1_000 }).await;
    let page = page.expect("history").into_inner();
    assert_eq!(page.messages.len(), 10, "cut to --history-page-max");
    assert_eq!(page.last_seq, 15, "and says how far the room goes");
    let rest = client.history(HistoryRequest { room: "paged".into(), after_seq: 10, limit: 0 }).await;
    assert_eq!(rest.expect("history").into_inner().messages.len(), 5);

    // The room got exactly what was accepted, in order, and the watcher saw all of it live.
    let history = client.history(HistoryRequest { room: "calm".into(), after_seq: 0, limit: 0 }).await;
    let bodies: Vec<String> = history.expect("history").into_inner().messages.into_iter().map(|m| m.body).collect();
    let mut expected = vec!["x".repeat(100), "session goes on".to_owned()];
    expected.extend((0..5).map(|i| format!("u{i}")));
    assert_eq!(bodies, expected);
    for seq in 3..=7 {
        assert_eq!(next_message(&mut watcher).await.seq, seq);
    }
    drop(frames);
}

/// The send rate: one bucket per connection on an open server (another connection is not
/// affected), shared by its unary sends and its sessions' posts (an error frame, then the
/// session goes on), and a refused sender gets through again once tokens are back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_send_rate_refuses_the_excess_and_the_sender_carries_on() {
    let options = ServerOptions { send_rate: SendRate { per_second: 4, burst: 3 }, ..ServerOptions::default() };
    let server = TestServer::start_with_options(Limits::default(), options).await;
    let mut flooder = server.confab().await;
    let mut other = server.confab().await;
    for i in 0..3 {
        flooder.send(send("rate", &format!("burst {i}"))).await.expect("within the burst");
    }
    let refused = flooder.send(send("rate", "one too many")).await.expect_err("over the rate");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(refused.message().contains("--sends-per-second-max"), "names the flag: {}", refused.message());
    other.send(send("rate", "another connection")).await.expect("its own bucket");
    // The same connection still reads, and sends again once a token is back (4/s: 250 ms).
    flooder.history(HistoryRequest { room: "rate".into(), after_seq: 0, limit: 0 }).await.expect("reads go on");
    tokio::time::sleep(Duration::from_millis(300)).await;
    flooder.send(send("rate", "after a pause")).await.expect("a token came back");

    // A session's posts: the connection's bucket, refilled to its 3 (4/s: 750 ms).
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (frames, outgoing) = mpsc::channel(8);
    frames.send(join("rate")).await.expect("queue");
    for i in 0..4 {
        frames.send(post("rate", &format!("s{i}"), "post")).await.expect("queue");
    }
    let mut session =
        flooder.session(with_metadata(ReceiverStream::new(outgoing), "user", "ann")).await.expect("open").into_inner();
    let mut acks = Vec::new();
    let mut errors = 0;
    while acks.len() + errors < 4 {
        match next_reply(&mut session).await {
            server_frame::Frame::Ack(ack) => acks.push(ack.client_msg_id),
            server_frame::Frame::Error(error) => {
                assert_eq!(error.code, Code::ResourceExhausted as i32);
                assert_eq!(error.room, "rate");
                assert!(error.message.contains("send rate"), "{}", error.message);
                errors += 1;
            }
            server_frame::Frame::Event(_) | server_frame::Frame::Left(_) => {}
        }
    }
    assert_eq!((acks.as_slice(), errors), (&["s0".to_owned(), "s1".into(), "s2".into()][..], 1));
    let shared = flooder.send(send("rate", "unary after the session's posts")).await.expect_err("one bucket");
    assert_eq!(shared.code(), Code::ResourceExhausted);
    tokio::time::sleep(Duration::from_millis(300)).await;
    frames.send(post("rate", "s4", "after a pause")).await.expect("queue");
    loop {
        match next_reply(&mut session).await {
            server_frame::Frame::Ack(ack) => {
                assert_eq!(ack.client_msg_id, "s4", "the session carried on");
                break;
            }
            server_frame::Frame::Event(_) => {}
            other => panic!("expected the ack, got {other:?}"),
        }
    }
    drop(frames);
    let history = other.history(HistoryRequest { room: "rate".into(), after_seq: 0, limit: 0 }).await;
    assert_eq!(
        history.expect("history").into_inner().messages.len(),
        3 + 1 + 1 + 3 + 1,
        "refused sends stored nothing"
    );
}

/// With `--tokens`, the unary bucket is the user's over all their connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authenticated_user_has_one_unary_bucket_over_all_connections() {
    const ANN: &str = "ann-rate-token-000001";
    const BOB: &str = "bob-rate-token-000002";
    let tokens = Arc::new(Tokens::parse(&format!("{ANN} ann\n{BOB} bob\n")).expect("tokens"));
    let options =
        ServerOptions { tokens: Some(tokens), send_rate: SendRate { per_second: 1, burst: 2 }, ..Default::default() };
    let server = TestServer::start_with_options(Limits::default(), options).await;
    let url = format!("http://{}", server.address);
    let as_user = |token: &str| ClientSecurity::default().with_token(token.to_owned());
    let unnamed = |body: &str| SendRequest { user: String::new(), ..send("users", body) };
    let mut ann_one = v1::chat_client::ChatClient::new(connect(&url, &as_user(ANN)).await.expect("connect"));
    let mut ann_two = v1::chat_client::ChatClient::new(connect(&url, &as_user(ANN)).await.expect("connect"));
    let mut bob = ChatServiceClient::new(connect(&url, &as_user(BOB)).await.expect("connect"));
    ann_one.send(unnamed("1")).await.expect("1");
    ann_two.send(unnamed("2")).await.expect("2");
    let refused = ann_two.send(unnamed("3")).await.expect_err("a second connection buys nothing");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    // SayHello is a unary send too, in bob's own bucket.
    let hello = || with_metadata(chat::Message { user: String::new(), content: "hi".into() }, "room", "users");
    bob.say_hello(hello()).await.expect("bob 1");
    bob.say_hello(hello()).await.expect("bob 2");
    assert_eq!(bob.say_hello(hello()).await.expect_err("bob 3").code(), Code::ResourceExhausted);
}

/// The seed's ChatStream cannot carry a refusal, so it is paced: every message arrives, no
/// faster than the rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_stream_over_the_rate_is_paced_not_cut() {
    let options = ServerOptions { send_rate: SendRate { per_second: 5, burst: 1 }, ..ServerOptions::default() };
    let server = TestServer::start_with_options(Limits::default(), options).await;
    let mut seed = server.seed().await;
    let messages = (0..4).map(|i| chat::Message { user: "ann".into(), content: format!("m{i}") }).collect::<Vec<_>>();
    let started = tokio::time::Instant::now();
    let request = with_metadata(tokio_stream::iter(messages), "room", "paced");
    let mut stream = seed.chat_stream(request).await.expect("chat stream").into_inner();
    let mut received = Vec::new();
    while let Some(message) = bounded(stream.message()).await.expect("ends OK, not cut") {
        received.push(message.content);
    }
    assert_eq!(received, ["m0", "m1", "m2", "m3"]);
    // A burst of 1 at 5/s: tokens at 0, 200, 400 and 600 ms. Only a lower bound is safe here.
    assert!(started.elapsed() >= Duration::from_millis(550), "paced: {:?}", started.elapsed());
}

/// Streams per connection: HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS. A client past it waits for a
/// stream to end (tonic queues the call); other connections are not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_past_the_per_connection_limit_wait_for_one_to_end() {
    let options = ServerOptions { streams_per_connection_max: 4, ..ServerOptions::default() };
    let server = TestServer::start_with_options(Limits::default(), options).await;
    let mut client = server.confab().await;
    let subscribe = || SubscribeRequest { room: "streams".into(), after_seq: None, user: String::new() };
    let mut open = Vec::new();
    for _ in 0..4 {
        let mut stream = bounded(client.subscribe(subscribe())).await.expect("within the limit").into_inner();
        bounded(stream.message()).await.expect("ok").expect("subscribed");
        open.push(stream);
    }
    let mut fifth_client = client.clone();
    let mut fifth = tokio::spawn(async move { fifth_client.subscribe(subscribe()).await });
    // Waiting, not refused: still pending after a while (a lower bound, safe under load).
    assert!(tokio::time::timeout(Duration::from_millis(300), &mut fifth).await.is_err(), "the fifth call waits");
    let mut elsewhere = server.confab().await;
    let mut other = bounded(elsewhere.subscribe(subscribe())).await.expect("another connection").into_inner();
    bounded(other.message()).await.expect("ok").expect("subscribed");
    elsewhere.send(send("streams", "to all")).await.expect("send");
    for stream in &mut open {
        let event = bounded(stream.message()).await.expect("ok").expect("event");
        assert!(matches!(event.event, Some(room_event::Event::Message(_))), "the open streams carry on");
    }
    open.pop();
    let mut fifth = bounded(fifth).await.expect("task").expect("opens once a stream ended").into_inner();
    let first = bounded(fifth.message()).await.expect("ok").expect("event");
    assert!(matches!(first.event, Some(room_event::Event::Subscribed(_))));
}
