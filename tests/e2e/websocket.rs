//! The WebSocket transport: a real server on 127.0.0.1:0, real WebSocket clients, binary
//! (protobuf) and JSON frames, refusals with close codes, and shutdown.

use std::net::SocketAddr;

use confab::grpc::proto::confab_v1 as v1;
use confab::ws::server::{WsConfig, serve};
use confab_actors::{Engine, EngineConfig};
use confab_engine::{Draft, RoomName, UserName};
use futures::{SinkExt, StreamExt};
use prost::Message as _;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

use super::{PATIENCE, bounded};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A WebSocket server running inside the test.
struct WsServer {
    address: SocketAddr,
    engine: Engine,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl WsServer {
    async fn start() -> Self {
        Self::start_with(WsConfig::default()).await
    }

    async fn start_with(config: WsConfig) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let address = listener.local_addr().expect("address");
        let engine = Engine::start(EngineConfig::default()).expect("engine");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, engine.clone(), config, async {
            let _ = stopped.await;
        }));
        Self { address, engine, stop: Some(stop), task }
    }

    async fn connect(&self, query: &str) -> Socket {
        let url = format!("ws://{}/ws?{query}", self.address);
        bounded(connect_async(url)).await.expect("upgraded").0
    }

    /// The HTTP status (and body) a refused upgrade gets.
    async fn refused(&self, query: &str) -> (u16, String) {
        let url = format!("ws://{}/ws?{query}", self.address);
        match bounded(connect_async(url)).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                let body = response.body().as_ref().map(|b| String::from_utf8_lossy(b).into_owned());
                (response.status().as_u16(), body.unwrap_or_default())
            }
            Err(other) => panic!("refused with {other}, not an HTTP status"),
            Ok(_) => panic!("upgraded, but should have been refused"),
        }
    }

    /// A plain HTTP GET: status line and body.
    async fn get(&self, path: &str) -> (String, String) {
        let mut stream = TcpStream::connect(self.address).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: confab\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("request");
        let mut response = String::new();
        bounded(stream.read_to_string(&mut response)).await.expect("response");
        let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
        (head.lines().next().unwrap_or_default().to_owned(), body.to_owned())
    }

    async fn stop(mut self) -> std::io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        bounded(&mut self.task).await.expect("server task")
    }
}

async fn send_json(socket: &mut Socket, frame: Value) {
    bounded(socket.send(Message::Text(frame.to_string().into()))).await.expect("sent");
}

/// The next JSON frame (pings and pongs skipped).
async fn next_json(socket: &mut Socket) -> Value {
    loop {
        match bounded(socket.next()).await {
            Some(Ok(Message::Text(text))) => return serde_json::from_str(text.as_str()).expect("JSON"),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a JSON frame, got {other:?}"),
        }
    }
}

/// The next JSON frame that is not presence or typing.
async fn next_chat_json(socket: &mut Socket) -> Value {
    loop {
        let frame = next_json(socket).await;
        if frame["type"] != "presence" && frame["type"] != "typing" {
            return frame;
        }
    }
}

async fn send_binary(socket: &mut Socket, frame: v1::client_frame::Frame) {
    let bytes = v1::ClientFrame { frame: Some(frame) }.encode_to_vec();
    bounded(socket.send(Message::Binary(bytes.into()))).await.expect("sent");
}

/// The next protobuf frame that is not presence or typing.
async fn next_chat_binary(socket: &mut Socket) -> v1::server_frame::Frame {
    use v1::room_event::Event;
    loop {
        let frame = match bounded(socket.next()).await {
            Some(Ok(Message::Binary(bytes))) => v1::ServerFrame::decode(bytes).expect("a ServerFrame"),
            other => panic!("expected a binary frame, got {other:?}"),
        };
        let frame = frame.frame.expect("content");
        if let v1::server_frame::Frame::Event(v1::RoomEvent { event: Some(Event::Presence(_) | Event::Typing(_)) }) =
            frame
        {
            continue;
        }
        return frame;
    }
}

/// The close frame that ends `socket` (code and reason).
async fn close_of(socket: &mut Socket) -> (u16, String) {
    loop {
        match bounded(socket.next()).await {
            Some(Ok(Message::Close(Some(frame)))) => return (u16::from(frame.code), frame.reason.as_str().to_owned()),
            Some(Ok(Message::Close(None))) | None => panic!("closed without a close frame"),
            Some(Ok(_)) => continue,
            Some(Err(error)) => panic!("connection failed instead of closing: {error}"),
        }
    }
}

fn message_event(frame: v1::server_frame::Frame) -> v1::ChatMessage {
    match frame {
        v1::server_frame::Frame::Event(v1::RoomEvent { event: Some(v1::room_event::Event::Message(m)) }) => m,
        other => panic!("expected a message, got {other:?}"),
    }
}

#[tokio::test]
async fn binary_frames_carry_a_session_between_two_clients_in_order() {
    use v1::client_frame::Frame;
    let server = WsServer::start().await;
    let mut ann = server.connect("user=ann").await;
    let mut bob = server.connect("user=bob&format=binary").await;
    for socket in [&mut ann, &mut bob] {
        send_binary(socket, Frame::Join(v1::Join { room: "lobby".into(), after_seq: None })).await;
        assert!(matches!(
            next_chat_binary(socket).await,
            v1::server_frame::Frame::Event(v1::RoomEvent { event: Some(v1::room_event::Event::Subscribed(_)) })
        ));
    }
    for i in 1..=5 {
        let post = v1::Post { room: "lobby".into(), client_msg_id: format!("a{i}"), body: format!("hello {i}") };
        send_binary(&mut ann, Frame::Post(post)).await;
    }
    // Bob sees ann's five messages in the order she sent them (G1, G3), numbered 1..5.
    for seq in 1..=5 {
        let message = message_event(next_chat_binary(&mut bob).await);
        assert_eq!((message.seq, message.user.as_str(), message.body.clone()), (seq, "ann", format!("hello {seq}")));
    }
    // Ann gets each message and its ack; the acks carry her ids and the same numbers.
    let mut acks = Vec::new();
    while acks.len() < 5 {
        if let v1::server_frame::Frame::Ack(ack) = next_chat_binary(&mut ann).await {
            acks.push((ack.client_msg_id, ack.seq));
        }
    }
    assert_eq!(acks, (1..=5).map(|i| (format!("a{i}"), i)).collect::<Vec<_>>());
    server.stop().await.expect("stopped");
}

#[tokio::test]
async fn json_frames_resume_after_seq_exactly_and_dedupe_retries() {
    let server = WsServer::start().await;
    let lobby = RoomName::new("lobby").expect("room");
    for i in 1..=4 {
        let draft =
            Draft { user: UserName::new("grpc").expect("user"), client_msg_id: None, body: format!("m{i}").into() };
        server.engine.send(&lobby, draft).await.expect("sent");
    }
    let mut ann = server.connect("user=ann&format=json").await;
    send_json(&mut ann, json!({"type": "join", "room": "lobby", "after_seq": 2})).await;
    let subscribed = next_chat_json(&mut ann).await;
    assert_eq!(subscribed["type"], "subscribed");
    assert_eq!(subscribed["recovered"], true);
    assert_eq!(subscribed["first_seq"], 3);
    for seq in 3..=4 {
        let message = next_chat_json(&mut ann).await;
        assert_eq!((message["type"].as_str(), message["seq"].as_u64()), (Some("message"), Some(seq)));
        assert_eq!(message["body"], format!("m{seq}"));
    }
    // A post, then the same post again (a retry after a reconnect): one message, one number.
    for _ in 0..2 {
        send_json(&mut ann, json!({"type": "post", "room": "lobby", "client_msg_id": "x1", "body": "once"})).await;
    }
    let mut seen = Vec::new();
    while seen.iter().filter(|f: &&Value| f["type"] == "ack").count() < 2 {
        seen.push(next_chat_json(&mut ann).await);
    }
    let messages: Vec<_> = seen.iter().filter(|f| f["type"] == "message").map(|f| f["seq"].as_u64()).collect();
    assert_eq!(messages, [Some(5)]);
    let duplicates: Vec<_> = seen.iter().filter(|f| f["type"] == "ack").map(|f| f["duplicate"].as_bool()).collect();
    assert_eq!(duplicates, [Some(false), Some(true)]);
    let history = server.engine.history(&lobby, 0, 100).await.expect("history");
    assert_eq!(history.messages.len(), 5, "the retry was not stored twice");
    // A refused frame is an error frame naming the problem; the session goes on.
    send_json(&mut ann, json!({"type": "post", "room": "elsewhere", "body": "?"})).await;
    let error = next_chat_json(&mut ann).await;
    assert_eq!((error["type"].as_str(), error["code"].as_i64()), (Some("error"), Some(9)), "{error}");
    send_json(&mut ann, json!({"type": "ack", "room": "lobby", "seq": 5})).await;
    send_json(&mut ann, json!({"type": "leave", "room": "lobby"})).await;
    assert_eq!(next_chat_json(&mut ann).await["type"], "left");
    server.stop().await.expect("stopped");
}

#[tokio::test]
async fn presence_and_typing_reach_the_other_client_and_the_room_snapshot() {
    let server = WsServer::start().await;
    let mut ann = server.connect("user=ann&format=json").await;
    send_json(&mut ann, json!({"type": "join", "room": "den"})).await;
    assert_eq!(next_chat_json(&mut ann).await["type"], "subscribed");
    let mut bob = server.connect("user=bob&format=json").await;
    send_json(&mut bob, json!({"type": "join", "room": "den"})).await;
    let presence = loop {
        let frame = next_json(&mut ann).await;
        if frame["type"] == "presence" && frame["user"] == "bob" {
            break frame;
        }
    };
    assert_eq!(presence["present"], true);
    send_json(&mut bob, json!({"type": "typing", "room": "den"})).await;
    loop {
        let frame = next_json(&mut ann).await;
        if frame["type"] == "typing" {
            assert_eq!(frame["user"], "bob");
            break;
        }
    }
    let (status, body) = server.get("/rooms/den").await;
    assert!(status.contains(" 200 "), "{status}");
    let info: Value = serde_json::from_str(&body).expect("JSON snapshot");
    assert_eq!(info["present"], json!(["ann", "bob"]));
    let (status, _) = server.get("/rooms/nowhere").await;
    assert!(status.contains(" 404 "), "{status}");
    let (status, body) = server.get("/rooms/bad%20name").await;
    assert!(status.contains(" 400 ") && body.contains("room"), "{status} {body}");
    drop(bob);
    server.stop().await.expect("stopped");
}

#[tokio::test]
async fn the_page_and_its_script_are_served() {
    let server = WsServer::start().await;
    let (status, body) = server.get("/").await;
    assert!(status.contains(" 200 "), "{status}");
    assert!(body.contains("app.js"), "the page loads its script");
    let (status, body) = server.get("/app.js").await;
    assert!(status.contains(" 200 "), "{status}");
    assert!(body.contains("after_seq"), "the script resumes with after_seq");
    server.stop().await.expect("stopped");
}

#[tokio::test]
async fn bad_frames_close_the_connection_with_a_code_and_a_reason() {
    let server = WsServer::start_with(WsConfig { frame_bytes_max: 1_024, ..WsConfig::default() }).await;
    let mut socket = server.connect("user=ann&format=json").await;
    send_json(&mut socket, json!({"type": "shout", "room": "lobby"})).await;
    let (code, reason) = close_of(&mut socket).await;
    assert_eq!(code, u16::from(CloseCode::Invalid), "{reason}");
    assert!(reason.contains("JSON client frame"), "{reason}");

    let mut socket = server.connect("user=ann").await;
    bounded(socket.send(Message::Text("{}".into()))).await.expect("sent");
    let (code, reason) = close_of(&mut socket).await;
    assert_eq!(code, u16::from(CloseCode::Invalid), "{reason}");
    assert!(reason.contains("format=json"), "{reason}");

    let mut socket = server.connect("user=ann").await;
    bounded(socket.send(Message::Binary(vec![0xff, 0xff, 0xff].into()))).await.expect("sent");
    let (code, reason) = close_of(&mut socket).await;
    assert_eq!(code, u16::from(CloseCode::Invalid), "{reason}");

    let mut socket = server.connect("user=ann&format=json").await;
    let body = "x".repeat(2_000);
    send_json(&mut socket, json!({"type": "post", "room": "lobby", "body": body})).await;
    let (code, reason) = close_of(&mut socket).await;
    assert_eq!(code, u16::from(CloseCode::Size), "{reason}");
    assert!(reason.contains("--ws-frame-bytes-max"), "{reason}");

    // Refused before the upgrade: a bad user name or format, with the parameter named.
    let (status, body) = server.refused(&format!("user={}", "u".repeat(100))).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("user"), "{body}");
    let (status, body) = server.refused("user=ann&format=xml").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("format"), "{body}");
    // The server is still fine for everyone else.
    let mut socket = server.connect("user=bob&format=json").await;
    send_json(&mut socket, json!({"type": "join", "room": "lobby"})).await;
    assert_eq!(next_chat_json(&mut socket).await["type"], "subscribed");
    server.stop().await.expect("stopped");
}

#[tokio::test]
async fn connections_over_the_limit_are_refused_and_a_closed_one_frees_its_slot() {
    let server = WsServer::start_with(WsConfig { connections_max: 2, ..WsConfig::default() }).await;
    let first = server.connect("user=a").await;
    let _second = server.connect("user=b").await;
    let (status, body) = server.refused("user=c").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("--ws-connections-max 2"), "{body}");
    drop(first);
    // The slot frees once the server notices the closed socket; retry a bounded number of times.
    let mut upgraded = false;
    for _ in 0..200 {
        let url = format!("ws://{}/ws?user=c", server.address);
        if bounded(connect_async(url)).await.is_ok() {
            upgraded = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(upgraded, "a closed connection gives its slot back");
    server.stop().await.expect("stopped");
}

#[tokio::test]
async fn shutdown_closes_open_sockets_with_going_away() {
    let server = WsServer::start().await;
    let mut socket = server.connect("user=ann&format=json").await;
    send_json(&mut socket, json!({"type": "join", "room": "lobby"})).await;
    assert_eq!(next_chat_json(&mut socket).await["type"], "subscribed");
    let closing = tokio::spawn(async move { close_of(&mut socket).await });
    tokio::time::timeout(PATIENCE, server.stop()).await.expect("stops in time").expect("stopped");
    let (code, reason) = closing.await.expect("close read");
    assert_eq!(code, u16::from(CloseCode::Away), "{reason}");
    assert!(reason.contains("shutting down"), "{reason}");
}

#[tokio::test]
async fn confab_serve_prints_the_page_url_and_closes_sockets_on_sigterm() {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_confab"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--ws-listen",
            "127.0.0.1:0",
            "--in-memory",
            "--shutdown-grace",
            "5s",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start confab serve");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let mut url = None;
    for _ in 0..2 {
        let line = bounded(lines.next_line()).await.expect("read").expect("a start-up line");
        if let Some(rest) = line.strip_prefix("confab web chat on http://") {
            url = rest.split('/').next().map(str::to_owned);
        }
    }
    let address = url.expect("the web chat line names the page's URL");
    let mut socket =
        bounded(connect_async(format!("ws://{address}/ws?user=ann&format=json"))).await.expect("upgraded").0;
    send_json(&mut socket, json!({"type": "join", "room": "lobby"})).await;
    assert_eq!(next_chat_json(&mut socket).await["type"], "subscribed");
    let pid = child.id().expect("running").to_string();
    let killed = std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill -TERM");
    assert!(killed.success());
    let (code, reason) = close_of(&mut socket).await;
    assert_eq!(code, u16::from(CloseCode::Away), "{reason}");
    let status = bounded(child.wait()).await.expect("exit status");
    assert!(status.success(), "confab serve exits cleanly on SIGTERM: {status}");
}

#[tokio::test]
async fn shutdown_does_not_wait_for_a_client_that_stopped_reading() {
    let server = WsServer::start().await;
    let mut stalled = server.connect("user=stalled&format=json").await;
    send_json(&mut stalled, json!({"type": "join", "room": "flood"})).await;
    assert_eq!(next_chat_json(&mut stalled).await["type"], "subscribed");
    // The client reads nothing from here on; enough big messages fill the socket's buffers so
    // the server's writes to it block.
    let flood = RoomName::new("flood").expect("room");
    let body: String = "x".repeat(60_000);
    for _ in 0..400 {
        let draft =
            Draft { user: UserName::new("loud").expect("user"), client_msg_id: None, body: body.as_str().into() };
        server.engine.send(&flood, draft).await.expect("sent");
    }
    tokio::time::timeout(PATIENCE, server.stop()).await.expect("stops in time").expect("stopped");
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tokens_a_socket_needs_one_and_speaks_as_its_user_under_the_send_rate() {
    use confab::grpc::auth::{Authenticator, Tokens};
    let tokens = Tokens::parse("ann-token-0123456789 ann\n").expect("tokens");
    let config = WsConfig {
        auth: Authenticator::new(Some(std::sync::Arc::new(tokens))),
        send_rate: confab_engine::SendRate { per_second: 1, burst: 1 },
        ..WsConfig::default()
    };
    let server = WsServer::start_with(config).await;
    let (status, body) = server.refused("user=ann&format=json").await;
    assert_eq!(status, 401, "no token: {body}");
    let (status, _) = server.refused("user=ann&format=json&token=wrong-token-0123456789").await;
    assert_eq!(status, 401, "an unknown token");
    let (status, body) = server.refused("user=bob&format=json&token=ann-token-0123456789").await;
    assert_eq!(status, 403, "a token's holder cannot speak as someone else: {body}");
    let (status_line, _) = server.get("/rooms/lobby").await;
    assert!(status_line.contains("401"), "the room snapshot needs the token too: {status_line}");

    // No user given: the token's user. One post fits the rate, the next is an error frame.
    let mut ann = server.connect("format=json&token=ann-token-0123456789").await;
    send_json(&mut ann, json!({"type": "join", "room": "lobby"})).await;
    assert_eq!(next_chat_json(&mut ann).await["type"], "subscribed");
    for body in ["first", "second"] {
        send_json(&mut ann, json!({"type": "post", "room": "lobby", "body": body})).await;
    }
    let mut seen = Vec::new();
    while !seen.iter().any(|f: &Value| f["type"] == "error") || !seen.iter().any(|f| f["type"] == "message") {
        seen.push(next_chat_json(&mut ann).await);
    }
    let message = seen.iter().find(|f| f["type"] == "message").expect("a message");
    assert_eq!((message["user"].as_str(), message["body"].as_str()), (Some("ann"), Some("first")));
    let error = seen.iter().find(|f| f["type"] == "error").expect("an error frame");
    assert_eq!(error["code"].as_i64(), Some(8), "RESOURCE_EXHAUSTED for the second post: {error}");
    let history = server.engine.history(&RoomName::new("lobby").expect("room"), 0, 10).await.expect("history");
    assert_eq!(history.messages.len(), 1, "the refused post was not stored");
    server.stop().await.expect("stopped");
}
