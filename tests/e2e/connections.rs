//! Connections on both ports (issue 14, "What failed" 1 and 2): out of descriptors the server
//! backs off and logs little, connections are capped per port and per peer, a connection that
//! never speaks (or half-sends a request) is closed, and a frozen client is found by keepalive
//! pings and leaves its rooms.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use confab::grpc::proto::confab_v1::{self as v1, SendRequest, chat_client::ChatClient, client_frame};
use confab::grpc::server::ServerOptions;
use confab::net::ConnectionLimits;
use confab::ws::liveness::LivenessConfig;
use confab::ws::server::WsConfig;
use confab_actors::Engine;
use confab_engine::{Limits, RoomName};
use futures::StreamExt;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use super::websocket::{WsServer, next_chat_json, send_json};
use super::{PATIENCE, TestServer, bounded, with_metadata};

/// How long a closed connection may take to show as closed, and an open one must stay open.
const CLOSE_PATIENCE: Duration = Duration::from_secs(5);

/// The HTTP/2 client connection preface.
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Short deadlines, so the tests see them pass.
fn quick_limits() -> ConnectionLimits {
    ConnectionLimits { handshake_timeout: Duration::from_millis(300), ..ConnectionLimits::default() }
}

/// Whether the server closes `stream` (EOF or an error) within [`CLOSE_PATIENCE`], reading and
/// discarding whatever it sends first.
pub(super) async fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buffer = [0u8; 4096];
    let reading = async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    };
    tokio::time::timeout(CLOSE_PATIENCE, reading).await.is_ok()
}

/// Whether the server answers `request` on a new connection from `local_ip` (it answers with
/// bytes), rather than closing it. Returns the connection, to hold it open.
async fn answered(server: SocketAddr, local_ip: [u8; 4], request: &[u8]) -> (bool, TcpStream) {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::from((local_ip, 0))).expect("bind a loopback address");
    let mut stream = bounded(socket.connect(server)).await.expect("connect");
    let _ = stream.write_all(request).await;
    let mut buffer = [0u8; 1024];
    let answer = tokio::time::timeout(CLOSE_PATIENCE, stream.read(&mut buffer)).await;
    (matches!(answer, Ok(Ok(read)) if read > 0), stream)
}

/// A child `confab serve --in-memory` limited to 256 descriptors, as a systemd unit may be;
/// 400 idle connections exhaust them. The server must neither spin nor flood its log (it wrote
/// 4 GB in 5 s before), and must serve again once the idle connections go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_the_server_backs_off_logs_little_and_recovers() {
    const IDLE_MAX: usize = 400;
    const QUEUED: usize = 32;
    const DESCRIPTORS_MAX: usize = 256;
    const LOG_BYTES_MAX: usize = 1 << 20;
    let mut child = Command::new("sh")
        .args(["-c", &format!("ulimit -n {DESCRIPTORS_MAX} && exec \"$0\" \"$@\"")])
        .arg(env!("CARGO_BIN_EXE_confab"))
        .args(["serve", "--in-memory", "--listen", "127.0.0.1:0", "--ws-listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start confab serve");
    let log_bytes = Arc::new(AtomicUsize::new(0));
    let mut stderr = child.stderr.take().expect("stderr");
    let counted = Arc::clone(&log_bytes);
    let log_reader = tokio::spawn(async move {
        let mut buffer = vec![0u8; 64 * 1024];
        while let Ok(read @ 1..) = stderr.read(&mut buffer).await {
            counted.fetch_add(read, Ordering::Relaxed);
        }
    });
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let (mut grpc, mut web) = (None, None);
    while grpc.is_none() || web.is_none() {
        let line = bounded(lines.next_line()).await.expect("read").expect("a start-up line");
        let address =
            |prefix: &str| line.strip_prefix(prefix).and_then(|rest| rest.split(['/', ' ']).next()).map(str::to_owned);
        grpc = grpc.or_else(|| address("confab listening on "));
        web = web.or_else(|| address("confab web chat on http://"));
    }
    let (grpc, web) = (grpc.expect("gRPC address"), web.expect("web address"));

    // Idle connections until the server is out of descriptors, then a few more that wait in
    // its accept queues: those make every accept fail.
    let pid = child.id().expect("running");
    let descriptors = || std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count);
    let mut idle = Vec::new();
    let connecting = async {
        let mut queued = 0;
        for address in [&grpc, &web].into_iter().cycle().take(IDLE_MAX) {
            let connected = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(address.as_str())).await;
            if let Ok(Ok(stream)) = connected {
                idle.push(stream);
            }
            if descriptors() >= DESCRIPTORS_MAX {
                queued += 1;
                if queued > QUEUED {
                    return;
                }
            }
        }
    };
    let _ = tokio::time::timeout(PATIENCE, connecting).await;
    assert!(
        descriptors() >= DESCRIPTORS_MAX - 2,
        "the server ran out of descriptors ({} idle connections)",
        idle.len()
    );
    let before = log_bytes.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let logged = log_bytes.load(Ordering::Relaxed) - before;
    assert!(
        logged < LOG_BYTES_MAX,
        "{logged} bytes of log in 3 s out of descriptors ({} idle connections)",
        idle.len()
    );

    drop(idle);
    let channel = Channel::from_shared(format!("http://{grpc}")).expect("uri");
    let mut client = ChatClient::new(bounded(channel.connect()).await.expect("connect after the idle ones left"));
    let request =
        SendRequest { room: "back".into(), user: "ann".into(), client_msg_id: String::new(), body: "hi".into() };
    assert_eq!(bounded(client.send(request)).await.expect("a unary call").into_inner().seq, 1);
    let mut page = bounded(TcpStream::connect(web.as_str())).await.expect("connect to the web port");
    page.write_all(format!("GET / HTTP/1.1\r\nHost: {web}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("GET");
    let mut response = String::new();
    let _ = bounded(page.read_to_string(&mut response)).await;
    assert!(response.starts_with("HTTP/1.1 200"), "the page: {}", response.lines().next().unwrap_or(""));

    child.kill().await.expect("stop the server");
    let _ = bounded(log_reader).await;
    let logged = log_bytes.load(Ordering::Relaxed);
    assert!(logged < LOG_BYTES_MAX, "{logged} bytes of log in all");
}

/// `--connections-per-peer-max` and `--connections-max` on the gRPC port: a connection over
/// either is closed at once, and a slot frees when a connection goes. Peers are loopback
/// addresses 127.0.0.1–3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_connections_are_capped_per_peer_and_per_port() {
    let connections =
        ConnectionLimits { connections_max: 3, connections_per_peer_max: 2, ..ConnectionLimits::default() };
    let server =
        TestServer::start_with_options(Limits::default(), ServerOptions { connections, ..ServerOptions::default() })
            .await;
    let (first, _held_first) = answered(server.address, [127, 0, 0, 1], HTTP2_PREFACE).await;
    let (second, _held_second) = answered(server.address, [127, 0, 0, 1], HTTP2_PREFACE).await;
    assert!(first && second, "two from one peer are served");
    let (third, _) = answered(server.address, [127, 0, 0, 1], HTTP2_PREFACE).await;
    assert!(!third, "a third from the same peer is closed (--connections-per-peer-max 2)");
    let (other, held_other) = answered(server.address, [127, 0, 0, 2], HTTP2_PREFACE).await;
    assert!(other, "another peer is served");
    let (fourth, _) = answered(server.address, [127, 0, 0, 3], HTTP2_PREFACE).await;
    assert!(!fourth, "a fourth on the port is closed (--connections-max 3)");
    drop(held_other);
    let served_again = bounded(async {
        loop {
            if answered(server.address, [127, 0, 0, 3], HTTP2_PREFACE).await.0 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(served_again, "a freed slot is taken again");
    // Raw sockets in the middle of an HTTP/2 handshake would hold a graceful shutdown open.
    drop((_held_first, _held_second));
    server.stop().await.expect("stopped");
}

/// The same caps on the web port, before any HTTP is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_connections_are_capped_per_peer_and_per_port() {
    let connections =
        ConnectionLimits { connections_max: 2, connections_per_peer_max: 1, ..ConnectionLimits::default() };
    let server = WsServer::start_with(WsConfig { connections, ..WsConfig::default() }).await;
    // Keep-alive requests: an answered connection stays open and holds its slot.
    let request = format!("GET /app.js HTTP/1.1\r\nHost: {}\r\n\r\n", server.address);
    let (first, _held_first) = answered(server.address, [127, 0, 0, 1], request.as_bytes()).await;
    assert!(first, "the first from a peer is served");
    let (second, _) = answered(server.address, [127, 0, 0, 1], request.as_bytes()).await;
    assert!(!second, "a second from the same peer is closed (--connections-per-peer-max 1)");
    let (other, _held_other) = answered(server.address, [127, 0, 0, 2], request.as_bytes()).await;
    assert!(other, "another peer is served");
    let (third, _) = answered(server.address, [127, 0, 0, 3], request.as_bytes()).await;
    assert!(!third, "a third on the port is closed (--connections-max 2)");
    drop((_held_first, _held_other));
    server.stop().await.expect("stopped");
}

/// A TCP connection that never speaks, or sends half the HTTP/2 preface, is closed at
/// `--handshake-timeout` (it was held forever before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_connection_that_never_sends_its_preface_is_closed() {
    let options = ServerOptions { connections: quick_limits(), ..ServerOptions::default() };
    let server = TestServer::start_with_options(Limits::default(), options).await;
    let mut silent = TcpStream::connect(server.address).await.expect("connect");
    let mut half = TcpStream::connect(server.address).await.expect("connect");
    half.write_all(&HTTP2_PREFACE[..10]).await.expect("half a preface");
    assert!(closed_by_server(&mut silent).await, "a silent connection is closed");
    assert!(closed_by_server(&mut half).await, "a half preface is closed");
    // A real client is not disturbed.
    let mut client = server.confab().await;
    let request = SendRequest { room: "r".into(), user: "ann".into(), client_msg_id: String::new(), body: "hi".into() };
    assert_eq!(bounded(client.send(request)).await.expect("send").into_inner().seq, 1);
    server.stop().await.expect("stopped");
}

/// An HTTP/2 connection that carries no call is closed at `--grpc-connection-idle` though it
/// sent its preface (5,000 such connections were held forever before, ~31 KiB each), while a
/// connection with a call in progress stays open past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_connection_with_no_call_is_closed_after_the_idle_time() {
    let idle = Duration::from_millis(1_500);
    let options = ServerOptions { connection_idle: idle, ..ServerOptions::default() };
    let server = TestServer::start_with_options(Limits::default(), options).await;
    // The preface and an empty SETTINGS frame (length 0, type 4, flags 0, stream 0).
    let mut quiet = TcpStream::connect(server.address).await.expect("connect");
    let started = tokio::time::Instant::now();
    quiet.write_all(HTTP2_PREFACE).await.expect("preface");
    quiet.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.expect("settings");
    assert!(closed_by_server(&mut quiet).await, "an HTTP/2 connection with no call is closed");
    assert!(started.elapsed() >= idle - Duration::from_millis(100), "closed only after the idle time");

    // A subscription open for twice the idle time keeps its connection: events still arrive.
    let mut client = server.confab().await;
    let request = v1::SubscribeRequest { room: "r".into(), after_seq: None, user: String::new() };
    let mut events = bounded(client.subscribe(request)).await.expect("subscribe").into_inner();
    bounded(events.message()).await.expect("subscribed").expect("an event");
    tokio::time::sleep(idle * 2).await;
    let mut sender = server.confab().await;
    let send = SendRequest { room: "r".into(), user: "ann".into(), client_msg_id: String::new(), body: "hi".into() };
    bounded(sender.send(send)).await.expect("send");
    let event = bounded(events.message()).await.expect("the stream is still open").expect("an event");
    assert!(matches!(event.event, Some(v1::room_event::Event::Message(_))), "{event:?}");
    server.stop().await.expect("stopped");
}

/// With TLS, the deadline covers the handshake and the preface after it: a client that never
/// starts TLS, and one that finishes TLS and then says nothing, are both closed (tonic's own TLS
/// bounded only the handshake).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_tls_connection_that_never_sends_its_preface_is_closed() {
    use tokio_rustls::rustls::pki_types::ServerName;
    let pki = super::security::Pki::new(&super::security::scratch("preface-tls"));
    let tls = confab::grpc::tls::server_config(&pki.cert, &pki.key).expect("TLS config");
    let options = ServerOptions { connections: quick_limits(), tls: Some(tls), ..ServerOptions::default() };
    let server = TestServer::start_with_options(Limits::default(), options).await;
    let mut silent = TcpStream::connect(server.address).await.expect("connect");
    assert!(closed_by_server(&mut silent).await, "a connection that never starts TLS is closed");
    let tcp = TcpStream::connect(server.address).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("a name");
    let mut quiet = bounded(pki.connector(b"h2").connect(name, tcp)).await.expect("TLS handshake");
    let closed = tokio::time::timeout(CLOSE_PATIENCE, async {
        let mut buffer = [0u8; 4096];
        while let Ok(1..) = quiet.read(&mut buffer).await {}
    });
    assert!(closed.await.is_ok(), "a TLS connection without a preface is closed");
    server.stop().await.expect("stopped");
}

/// On the web port a silent connection, a half-sent request and an idle keep-alive connection
/// are closed at `--ws-header-read-timeout` (4,000 half-sent requests were held before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_http_request_on_the_web_port_is_closed() {
    let config = WsConfig { header_read_timeout: Duration::from_millis(300), ..WsConfig::default() };
    let server = WsServer::start_with(config).await;
    let mut silent = TcpStream::connect(server.address).await.expect("connect");
    let mut half = TcpStream::connect(server.address).await.expect("connect");
    half.write_all(format!("GET / HTTP/1.1\r\nHost: {}\r\n", server.address).as_bytes()).await.expect("half");
    assert!(closed_by_server(&mut silent).await, "a silent connection is closed");
    assert!(closed_by_server(&mut half).await, "a half-sent request is closed");
    // A keep-alive connection that asks nothing more after a response is held no longer.
    let request = format!("GET /app.js HTTP/1.1\r\nHost: {}\r\n\r\n", server.address);
    let (served, mut kept) = answered(server.address, [127, 0, 0, 1], request.as_bytes()).await;
    assert!(served, "a whole request is answered");
    assert!(closed_by_server(&mut kept).await, "an idle keep-alive connection is closed");
    server.stop().await.expect("stopped");
}

/// Forwards one TCP connection to `upstream` until `freeze` is cancelled; then it forwards
/// nothing more but holds both sockets open, like a frozen (SIGSTOPped) client.
async fn freezing_proxy(upstream: SocketAddr, freeze: CancellationToken) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        let Ok((client, _)) = listener.accept().await else { return };
        let Ok(server) = TcpStream::connect(upstream).await else { return };
        let (client_read, client_write) = client.into_split();
        let (server_read, server_write) = server.into_split();
        let forward = |mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf| {
            let freeze = freeze.clone();
            async move {
                let mut buffer = vec![0u8; 16 * 1024];
                loop {
                    let read = tokio::select! {
                        _ = freeze.cancelled() => break,
                        read = from.read(&mut buffer) => read,
                    };
                    match read {
                        Ok(read @ 1..) if to.write_all(&buffer[..read]).await.is_ok() => continue,
                        _ => return,
                    }
                }
                // Frozen: hold both halves until the test ends, so nothing is closed.
                tokio::time::sleep(PATIENCE * 2).await;
                drop((from, to));
            }
        };
        tokio::join!(forward(client_read, server_write), forward(server_read, client_write));
    });
    address
}

/// A gRPC client that freezes with a Session open (a SIGSTOPped process, a dead network path)
/// answers no keepalive ping: the server closes the connection and the session's presence
/// ends (it stayed "present" forever before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_grpc_client_is_dropped_and_leaves_the_room() {
    let options = ServerOptions {
        http2_keepalive_interval: Duration::from_millis(200),
        http2_keepalive_timeout: Duration::from_millis(300),
        ..ServerOptions::default()
    };
    let server = TestServer::start_with_options(Limits::default(), options).await;
    let freeze = CancellationToken::new();
    let proxy = freezing_proxy(server.address, freeze.clone()).await;
    let channel =
        bounded(Channel::from_shared(format!("http://{proxy}")).expect("uri").connect()).await.expect("connect");
    let mut client = ChatClient::new(channel);
    let (frames, outbound) = mpsc::channel(4);
    let join = v1::Join { room: "den".into(), after_seq: None };
    frames.send(v1::ClientFrame { frame: Some(client_frame::Frame::Join(join)) }).await.expect("queue join");
    let request = with_metadata(ReceiverStream::new(outbound), "user", "frozen");
    let mut inbound = bounded(client.session(request)).await.expect("session").into_inner();
    let _subscribed = bounded(inbound.next()).await.expect("a frame").expect("subscribed");
    let room = RoomName::new("den").expect("room");
    assert!(present(&server.engine, &room, "frozen").await, "present while connected");

    freeze.cancel();
    leaves(&server.engine, &room, "frozen").await;
    drop((frames, inbound));
    server.stop().await.expect("stopped");
}

/// Whether `user` is present in `room`.
async fn present(engine: &Engine, room: &RoomName, user: &str) -> bool {
    let info = engine.room(room).await.expect("room info").expect("the room exists");
    info.present.iter().any(|name| name.as_str() == user)
}

/// Waits (bounded) until `user` is no longer present in `room`.
async fn leaves(engine: &Engine, room: &RoomName, user: &str) {
    bounded(async {
        while present(engine, room, user).await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

/// A WebSocket client that stops reading (so answers no ping) is dropped after the pong
/// timeout, and leaves the room (WebSockets were never pinged before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_that_answers_no_ping_is_dropped_and_leaves_the_room() {
    let liveness = LivenessConfig {
        ping_interval: Duration::from_millis(200),
        pong_timeout: Duration::from_millis(300),
        ..LivenessConfig::default()
    };
    let server = WsServer::start_with(WsConfig { liveness, ..WsConfig::default() }).await;
    let mut frozen = server.connect("user=frozen&format=json").await;
    send_json(&mut frozen, json!({"type": "join", "room": "den"})).await;
    assert_eq!(next_chat_json(&mut frozen).await["type"], "subscribed");
    let room = RoomName::new("den").expect("room");
    assert!(present(&server.engine, &room, "frozen").await, "present while answering");
    // From here on the client reads nothing, so its WebSocket answers no ping.
    leaves(&server.engine, &room, "frozen").await;
    drop(frozen);
    server.stop().await.expect("stopped");
}

/// A client that answers pings but sends nothing of its own is closed at `--ws-idle-timeout`
/// with a normal closure that says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_websocket_is_closed_though_it_answers_pings() {
    let liveness = LivenessConfig {
        ping_interval: Duration::from_millis(100),
        pong_timeout: Duration::from_millis(500),
        idle_timeout: Duration::from_millis(1_500),
    };
    let server = WsServer::start_with(WsConfig { liveness, ..WsConfig::default() }).await;
    let mut idle = server.connect("user=idle&format=json").await;
    let started = tokio::time::Instant::now();
    let mut pings = 0;
    let close = loop {
        // Reading answers the pings (tungstenite replies to each).
        match bounded(idle.next()).await {
            Some(Ok(Message::Ping(_))) => pings += 1,
            Some(Ok(Message::Close(frame))) => break frame,
            other => panic!("expected pings then a close, got {other:?}"),
        }
    };
    let close = close.expect("a close frame");
    assert!(pings >= 3, "pinged while idle ({pings} pings)");
    assert!(started.elapsed() >= Duration::from_millis(1_400), "not closed before the idle timeout");
    assert_eq!(u16::from(close.code), 1000);
    assert!(close.reason.as_str().contains("--ws-idle-timeout"), "{}", close.reason.as_str());
    server.stop().await.expect("stopped");
}
