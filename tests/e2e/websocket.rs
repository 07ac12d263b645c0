//! The WebSocket transport: a real server on 127.0.0.1:0, real WebSocket clients, binary
//! (protobuf) and JSON frames, refusals with close codes, and shutdown.

use std::net::SocketAddr;

use confab::grpc::proto::confab_v1 as v1;
use confab::ws::access::{WS_PROTOCOL, token_protocol};
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
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

use super::{PATIENCE, bounded};

pub(super) type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A WebSocket server running inside the test.
pub(super) struct WsServer {
    pub(super) address: SocketAddr,
    pub(super) engine: Engine,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl WsServer {
    async fn start() -> Self {
        Self::start_with(WsConfig::default()).await
    }

    pub(super) async fn start_with(config: WsConfig) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let address = listener.local_addr().expect("address");
        let engine = Engine::start(EngineConfig::default()).expect("engine");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, engine.clone(), config, async {
            let _ = stopped.await;
        }));
        Self { address, engine, stop: Some(stop), task }
    }

    pub(super) async fn connect(&self, query: &str) -> Socket {
        self.connect_with(query, &[]).await
    }

    /// An upgrade request for `/ws?{query}` with extra headers.
    fn upgrade_request(&self, query: &str, headers: &[(&'static str, &str)]) -> Request {
        let mut request = format!("ws://{}/ws?{query}", self.address).into_client_request().expect("a request");
        for (name, value) in headers {
            request.headers_mut().insert(*name, value.parse().expect("a header value"));
        }
        request
    }

    pub(super) async fn connect_with(&self, query: &str, headers: &[(&'static str, &str)]) -> Socket {
        bounded(connect_async(self.upgrade_request(query, headers))).await.expect("upgraded").0
    }

    /// The HTTP status (and body) a refused upgrade gets.
    pub(super) async fn refused(&self, query: &str) -> (u16, String) {
        self.refused_with(query, &[]).await
    }

    async fn refused_with(&self, query: &str, headers: &[(&'static str, &str)]) -> (u16, String) {
        match bounded(connect_async(self.upgrade_request(query, headers))).await {
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
        self.get_with(path, &format!("Host: {}\r\n", self.address)).await
    }

    /// A plain HTTP GET with `headers` (each line ending in CRLF; the Host header too): the
    /// status line and the body.
    pub(super) async fn get_with(&self, path: &str, headers: &str) -> (String, String) {
        let (head, body) = self.get_head_with(path, headers).await;
        (head.lines().next().unwrap_or_default().to_owned(), body)
    }

    /// A plain HTTP GET: the whole response head (status line and headers) and the body.
    async fn get_head_with(&self, path: &str, headers: &str) -> (String, String) {
        let mut stream = TcpStream::connect(self.address).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\n{headers}Connection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("request");
        let mut response = String::new();
        bounded(stream.read_to_string(&mut response)).await.expect("response");
        let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
        (head.to_owned(), body.to_owned())
    }

    pub(super) async fn stop(mut self) -> std::io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        bounded(&mut self.task).await.expect("server task")
    }
}

pub(super) async fn send_json<S>(socket: &mut WebSocketStream<S>, frame: Value)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
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
pub(super) async fn next_chat_json(socket: &mut Socket) -> Value {
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
pub(super) async fn close_of(socket: &mut Socket) -> (u16, String) {
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
    assert!(body.contains("./confab.js"), "the page's script imports the client module");
    // The client module, for the page and any other page: a browser runs a module only when
    // it comes with a JavaScript media type.
    let host = format!("Host: {}\r\n", server.address);
    let (head, body) = server.get_head_with("/confab.js", &host).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    let content_type =
        head.lines().find_map(|line| line.to_ascii_lowercase().strip_prefix("content-type:").map(str::to_owned));
    assert_eq!(content_type.as_deref().map(str::trim), Some("text/javascript; charset=utf-8"), "{head}");
    assert!(body.contains("export class ConfabClient"), "an ES module exporting the client");
    assert!(body.contains("after_seq"), "the client resumes with after_seq");
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
    use confab::api::auth::{Authenticator, Tokens};
    let tokens = Tokens::parse("ann-token-0123456789 ann\n").expect("tokens");
    let config = WsConfig {
        auth: Authenticator::new(Some(std::sync::Arc::new(tokens))),
        send_rate: confab_engine::SendRate { per_second: 1, burst: 1 },
        ..WsConfig::default()
    };
    let server = WsServer::start_with(config).await;
    let ann_protocols = format!("{WS_PROTOCOL}, {}", token_protocol("ann-token-0123456789"));
    let wrong_protocols = format!("{WS_PROTOCOL}, {}", token_protocol("wrong-token-0123456789"));
    let (status, body) = server.refused("user=ann&format=json").await;
    assert_eq!(status, 401, "no token: {body}");
    let (status, _) =
        server.refused_with("user=ann&format=json", &[("sec-websocket-protocol", &wrong_protocols)]).await;
    assert_eq!(status, 401, "an unknown token");
    let (status, body) =
        server.refused_with("user=bob&format=json", &[("sec-websocket-protocol", &ann_protocols)]).await;
    assert_eq!(status, 403, "a token's holder cannot speak as someone else: {body}");
    let (status, body) = server.refused("format=json&token=ann-token-0123456789").await;
    assert_eq!(status, 400, "a token in the URL is refused, not used: {body}");
    let (status_line, _) = server.get("/rooms/lobby").await;
    assert!(status_line.contains("401"), "the room snapshot needs the token too: {status_line}");
    let host = format!("Host: {}\r\n", server.address);
    let (status_line, _) =
        server.get_with("/rooms/lobby", &format!("{host}Authorization: Bearer ann-token-0123456789\r\n")).await;
    assert!(status_line.contains("404"), "with the token in a header, the room is just missing: {status_line}");

    // No user given: the token's user. One post fits the rate, the next is an error frame.
    let mut ann = server.connect_with("format=json", &[("sec-websocket-protocol", &ann_protocols)]).await;
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

/// A browser page from another origin cannot open a session (it could read every room and post
/// as anyone); the page's own origin can, a client without an Origin (not a browser) can, and
/// `--ws-allowed-origins` widens the rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_origin_websockets_are_refused_unless_allowed() {
    let config = WsConfig { allowed_origins: vec!["https://app.example.org".into()], ..WsConfig::default() };
    let server = WsServer::start_with(config).await;
    let (status, body) = server.refused_with("format=json", &[("origin", "https://evil.example")]).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("--ws-allowed-origins"), "the refusal names the flag: {body}");
    let (status, _) = server.refused_with("format=json", &[("origin", "null")]).await;
    assert_eq!(status, 403, "a sandboxed page's null origin");
    let same_origin = format!("http://{}", server.address);
    let mut page = server.connect_with("format=json", &[("origin", &same_origin)]).await;
    send_json(&mut page, json!({"type": "join", "room": "lobby"})).await;
    assert_eq!(next_chat_json(&mut page).await["type"], "subscribed");
    let mut allowed = server.connect_with("format=json", &[("origin", "https://app.example.org")]).await;
    send_json(&mut allowed, json!({"type": "join", "room": "lobby"})).await;
    assert_eq!(next_chat_json(&mut allowed).await["type"], "subscribed");
    let mut tool = server.connect("format=json").await;
    send_json(&mut tool, json!({"type": "join", "room": "lobby"})).await;
    assert_eq!(next_chat_json(&mut tool).await["type"], "subscribed");
    server.stop().await.expect("stopped");
}

/// DNS rebinding: a page of evil.example whose name now resolves to 127.0.0.1 reaches the port
/// under its own Host. Only the bound address, localhost, and `--ws-allowed-hosts` are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_naming_another_host_are_refused() {
    let config = WsConfig { allowed_hosts: vec!["chat.example.org".into()], ..WsConfig::default() };
    let server = WsServer::start_with(config).await;
    let port = server.address.port();
    for path in ["/", "/app.js", "/confab.js", "/rooms/lobby", "/ws"] {
        let (status, body) = server.get_with(path, &format!("Host: evil.example:{port}\r\n")).await;
        assert!(status.contains("403"), "{path}: {status}");
        assert!(body.contains("--ws-allowed-hosts"), "{path}: the refusal names the flag: {body}");
    }
    let (status, _) = server.get_with("/", "").await;
    assert!(status.contains("403"), "no Host at all: {status}");
    for host in [server.address.to_string(), format!("localhost:{port}"), "chat.example.org".to_owned()] {
        let (status, _) = server.get_with("/", &format!("Host: {host}\r\n")).await;
        assert!(status.contains("200"), "{host}: {status}");
    }
    let (status, _) = server.refused_with("format=json", &[("host", "evil.example")]).await;
    assert_eq!(status, 403, "the upgrade too");
    server.stop().await.expect("stopped");
}

/// With a certificate the web port speaks TLS: a client that trusts the CA gets the page and a
/// `wss://` session; plaintext HTTP gets no page, a client that never starts TLS is closed at
/// `--handshake-timeout`, and the server goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_port_serves_tls_when_given_a_certificate() {
    use tokio_rustls::rustls::pki_types::ServerName;
    let pki = super::security::Pki::new(&super::security::scratch("web-tls"));
    let tls = confab::grpc::tls::web_config(&pki.cert, &pki.key).expect("web TLS config");
    let connections = confab::net::ConnectionLimits {
        handshake_timeout: std::time::Duration::from_millis(300),
        ..confab::net::ConnectionLimits::default()
    };
    let server = WsServer::start_with(WsConfig { tls: Some(tls), connections, ..WsConfig::default() }).await;
    let mut silent = TcpStream::connect(server.address).await.expect("connect");
    assert!(super::connections::closed_by_server(&mut silent).await, "a client that never starts TLS is closed");

    let connector = pki.connector(b"http/1.1");
    let name = ServerName::try_from("localhost").expect("a name");

    let tcp = TcpStream::connect(server.address).await.expect("connect");
    let mut tls_stream = bounded(connector.connect(name.clone(), tcp)).await.expect("TLS handshake");
    let request = format!("GET / HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", server.address);
    tls_stream.write_all(request.as_bytes()).await.expect("request");
    let mut response = Vec::new();
    let _ = bounded(tls_stream.read_to_end(&mut response)).await;
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "the page over TLS: {}", response.lines().next().unwrap_or(""));

    let tcp = TcpStream::connect(server.address).await.expect("connect");
    let tls_stream = bounded(connector.connect(name, tcp)).await.expect("TLS handshake");
    let url = format!("wss://localhost:{}/ws?format=json", server.address.port());
    let (mut socket, _) = bounded(tokio_tungstenite::client_async(url, tls_stream)).await.expect("wss upgrade");
    send_json(&mut socket, json!({"type": "join", "room": "lobby"})).await;
    let subscribed = loop {
        match bounded(socket.next()).await {
            Some(Ok(Message::Text(text))) => break serde_json::from_str::<Value>(text.as_str()).expect("JSON"),
            Some(Ok(_)) => continue,
            other => panic!("expected a frame, got {other:?}"),
        }
    };
    assert_eq!(subscribed["type"], "subscribed");

    let (status, _) = bounded(async {
        let mut plain = TcpStream::connect(server.address).await.expect("connect");
        let _ = plain.write_all(format!("GET / HTTP/1.1\r\nHost: {}\r\n\r\n", server.address).as_bytes()).await;
        let mut response = Vec::new();
        let _ = plain.read_to_end(&mut response).await;
        (String::from_utf8_lossy(&response).into_owned(), ())
    })
    .await;
    assert!(!status.contains("200 OK"), "plain HTTP gets no page from a TLS port: {status}");
    drop(socket);
    server.stop().await.expect("stopped");
}
