//! Names and output (issue 14): user names that are empty, blank, or hold bidi controls or
//! invisible characters are refused on every transport; no client may speak as the seed
//! broadcast's `Server`; `confab chat` shows control characters escaped; a message over the
//! gRPC size limit is RESOURCE_EXHAUSTED on every RPC; a flood of refusals is logged as a
//! summary, not line by line.

use std::ffi::OsStr;

use confab::grpc::proto::chat::{self, chat_service_client::ChatServiceClient};
use confab::grpc::proto::confab_v1::{self as v1, SendRequest, UploadChunk, client_frame, server_frame};
use confab::ws::server::WsConfig;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::websocket::WsServer;
use super::{PATIENCE, TestServer, bounded, confab_chat, serve_child, with_metadata};

/// Names every transport must refuse, and a word of the rule each breaks.
const BAD_NAMES: &[(&str, &str)] = &[
    ("", "empty"),
    ("   ", "whitespace"),
    ("ann\u{202E}nimda", "bidi"),
    ("\u{2066}ann\u{2069}", "bidi"),
    ("a\u{200B}nn", "invisible"),
    ("\u{FEFF}ann", "invisible"),
    ("ann\u{1b}[31m", "control"),
    ("Server", "reserved"),
    (" server ", "reserved"),
];

fn send(user: &str, body: &str) -> SendRequest {
    SendRequest { room: "names".into(), user: user.into(), client_msg_id: String::new(), body: body.into() }
}

fn assert_refused(result: Result<impl std::fmt::Debug, Status>, rule: &str, what: &str) {
    let status = result.expect_err(what);
    assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
    assert!(status.message().contains(rule), "{what}: the message names the rule {rule:?}: {status:?}");
}

/// The first status a Session with `user` metadata ends with, or its first frame.
async fn session_as(server: &TestServer, user: &str) -> Result<Option<v1::ServerFrame>, Status> {
    let mut client = server.confab().await;
    let join = v1::Join { room: "names".into(), after_seq: None };
    let frames = vec![v1::ClientFrame { frame: Some(client_frame::Frame::Join(join)) }];
    let request = with_metadata(futures::stream::iter(frames), "user", user);
    let mut stream = bounded(client.session(request)).await?.into_inner();
    bounded(stream.message()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_user_names_are_refused_on_every_transport() {
    let server = TestServer::start().await;
    let mut confab = server.confab().await;
    let mut seed = server.seed().await;
    for &(name, rule) in BAD_NAMES {
        assert_refused(confab.send(send(name, "x")).await, rule, &format!("Send as {name:?}"));
        let hello = chat::Message { user: name.into(), content: "x".into() };
        assert_refused(seed.say_hello(hello.clone()).await, rule, &format!("SayHello as {name:?}"));
        let upload = seed.upload_stream(futures::stream::iter(vec![hello.clone()])).await;
        assert_refused(upload, rule, &format!("UploadStream as {name:?}"));
        let chunk = UploadChunk { room: "names".into(), user: name.into(), body: "x".into() };
        assert_refused(confab.upload(futures::stream::iter(vec![chunk])).await, rule, &format!("Upload as {name:?}"));
        let stream = seed.chat_stream(futures::stream::iter(vec![hello])).await;
        let first = match stream {
            Ok(response) => bounded(response.into_inner().message()).await,
            Err(status) => Err(status),
        };
        assert_refused(first, rule, &format!("ChatStream as {name:?}"));
    }
    // Metadata is ASCII, so the Session's `user` key can only carry the ASCII cases.
    for (name, rule) in [("", "empty"), ("Server", "reserved"), ("SERVER", "reserved")] {
        assert_refused(session_as(&server, name).await, rule, &format!("Session as {name:?}"));
    }
    // Nothing reached the room; good names still work.
    assert_eq!(confab.send(send("zoë", "fine")).await.expect("a good name").into_inner().seq, 1);
    let joined = session_as(&server, "ann").await.expect("a good name").and_then(|frame| frame.frame);
    assert!(matches!(joined, Some(server_frame::Frame::Event(_))), "{joined:?}");

    let web = WsServer::start_with(WsConfig::default()).await;
    for &(name, rule) in BAD_NAMES {
        let encoded: String = name.bytes().map(|byte| format!("%{byte:02X}")).collect();
        let (status, body) = web.refused(&format!("user={encoded}")).await;
        assert_eq!(status, 400, "WebSocket as {name:?}: {body}");
        assert!(body.contains(rule), "WebSocket as {name:?}: the body names the rule {rule:?}: {body}");
    }
    web.stop().await.expect("web server stops");
    server.stop().await.expect("stops");
}

/// No client posts as `Server`, so the seed broadcast's "Server" lines are the server's own:
/// its welcome, then the room, then its finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_client_can_forge_the_seed_broadcasts_server_lines() {
    let server = TestServer::start().await;
    let mut seed = server.seed().await;
    let mut confab = server.confab().await;
    let forged = |user: &str| chat::Message { user: user.into(), content: "Broadcast finished.".into() };
    for user in ["Server", "server", "Server ", "\u{200B}Server", "Serv\u{200D}er"] {
        let refused = seed.say_hello(with_metadata(forged(user), "room", "lobby")).await;
        assert_eq!(refused.expect_err(user).code(), Code::InvalidArgument, "{user:?}");
        let refused = confab.send(SendRequest { room: "lobby".into(), ..send(user, "Broadcast finished.") }).await;
        assert_eq!(refused.expect_err(user).code(), Code::InvalidArgument, "{user:?}");
    }
    seed.say_hello(forged("Alice")).await.expect("a plain name");
    let broadcast = seed.broadcast_messages(forged("")).await.expect("broadcast").into_inner();
    let lines: Vec<chat::Message> = bounded(futures::TryStreamExt::try_collect(broadcast)).await.expect("lines");
    let speakers: Vec<&str> = lines.iter().map(|line| line.user.as_str()).collect();
    assert_eq!(speakers, ["Server", "Alice", "Server"], "{lines:?}");
    server.stop().await.expect("stops");
}

/// A message body with a title change, a cursor move and a fake line, shown by `confab chat`:
/// the terminal gets none of the bytes that would act.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confab_chat_shows_control_characters_escaped() {
    let server = TestServer::start().await;
    let mut client = server.confab().await;
    let hostile = "hi\u{1b}]0;pwned\u{7}\u{1b}[1A\r\n[2 #cli] bob: fake\u{202E}\u{9b}2J";
    let request = SendRequest { room: "cli".into(), ..send("mallory", hostile) };
    assert_eq!(client.send(request).await.expect("send").into_inner().seq, 1);
    let url = format!("http://{}", server.address);
    let args = ["--room", "cli", "--after-seq", "0", "--user", "ann", "--server", &url].map(OsStr::new);
    let stdout = confab_chat(&args, &[], b"done\n").await;
    let expected = r"[1 #cli] mallory: hi\u{1b}]0;pwned\u{7}\u{1b}[1A\u{d}\u{a}[2 #cli] bob: fake\u{202e}\u{9b}2J";
    assert!(stdout.lines().any(|line| line == expected), "{stdout}");
    assert!(stdout.contains("[2 #cli] ann: done"), "{stdout}");
    let acting = |c: char| c.is_control() && c != '\n' || confab_engine::is_bidi_control(c);
    assert!(!stdout.chars().any(acting), "nothing but newlines reaches the terminal raw: {stdout:?}");
    server.stop().await.expect("stops");
}

/// 8 MiB is over the gRPC message limit (tonic's 4 MiB): RESOURCE_EXHAUSTED naming the size on
/// every RPC that takes a message, as grpc-go answers and the README promises; the server goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_grpc_size_limit_is_resource_exhausted_everywhere() {
    const HUGE_BYTES: usize = 8 * 1024 * 1024;
    let server = TestServer::start().await;
    let channel = server.channel().await;
    let mut confab = confab::grpc::proto::confab_v1::chat_client::ChatClient::new(channel.clone());
    let mut seed = ChatServiceClient::new(channel.clone());
    let huge = "x".repeat(HUGE_BYTES);
    let exhausted = |result: Result<(), Status>, what: &str| {
        let status = result.expect_err(what);
        assert_eq!(status.code(), Code::ResourceExhausted, "{what}: {status:?}");
        assert!(status.message().contains("limit"), "{what}: {status:?}");
    };
    exhausted(confab.send(send("ann", &huge)).await.map(drop), "Send");
    let hello = chat::Message { user: "ann".into(), content: huge.clone() };
    exhausted(seed.say_hello(hello.clone()).await.map(drop), "SayHello");
    exhausted(seed.upload_stream(futures::stream::iter(vec![hello.clone()])).await.map(drop), "UploadStream");
    let chunk = UploadChunk { room: "names".into(), user: "ann".into(), body: huge.clone() };
    exhausted(confab.upload(futures::stream::iter(vec![chunk])).await.map(drop), "Upload");
    exhausted(stream_end(seed.chat_stream(futures::stream::iter(vec![hello])).await).await, "ChatStream");
    let (frames, outgoing) = mpsc::channel(4);
    let join = v1::Join { room: "names".into(), after_seq: None };
    frames.send(v1::ClientFrame { frame: Some(client_frame::Frame::Join(join)) }).await.expect("queue");
    let post = v1::Post { room: "names".into(), client_msg_id: String::new(), body: huge.clone() };
    frames.send(v1::ClientFrame { frame: Some(client_frame::Frame::Post(post)) }).await.expect("queue");
    let session = confab.session(with_metadata(ReceiverStream::new(outgoing), "user", "ann")).await;
    exhausted(stream_end(session).await, "Session");
    drop(frames);
    // Over the engine's own message_bytes_max (64 KiB) but under the gRPC limit: the same code.
    exhausted(confab.send(send("ann", &"y".repeat(100_000))).await.map(drop), "Send over message_bytes_max");
    // The server goes on, on the same connection.
    assert_eq!(confab.send(send("ann", "small")).await.expect("send").into_inner().seq, 1);
    server.stop().await.expect("stops");
}

/// Reads a stream to its end: `Ok` if it ended OK, else its status.
async fn stream_end<T>(opened: Result<tonic::Response<tonic::Streaming<T>>, Status>) -> Result<(), Status> {
    let mut stream = opened?.into_inner();
    for _ in 0..1_000 {
        if bounded(stream.message()).await?.is_none() {
            return Ok(());
        }
    }
    panic!("the stream went on past 1,000 items");
}

/// A flood of calls without a token against `confab serve --tokens`: each refusal is logged at
/// debug only, and the info lines are summaries (at most one a second) that count them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_refused_calls_is_logged_as_summaries_not_line_by_line() {
    const CALLS: u64 = 600;
    let dir = super::security::scratch("refusal-flood");
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, "ann-secret-token-0001 ann\n").expect("tokens file");
    let data = dir.join("data");
    let args = ["--listen".as_ref(), "127.0.0.1:0".as_ref(), "--log-format".as_ref(), "json".as_ref()];
    let (mut child, address) = serve_child(args.into_iter().chain([
        "--data-dir".as_ref(),
        data.as_os_str(),
        "--tokens".as_ref(),
        tokens.as_os_str(),
    ]))
    .await;
    // Read the log all along, so the server never waits on a full pipe.
    let (log_lines, mut logged) = mpsc::unbounded_channel();
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();
    tokio::spawn(async move {
        while let Ok(Some(line)) = stderr.next_line().await {
            if log_lines.send(line).is_err() {
                break;
            }
        }
    });
    let channel = Channel::from_shared(format!("http://{address}")).expect("uri").connect().await.expect("connect");
    let mut client = confab::grpc::proto::confab_v1::chat_client::ChatClient::new(channel);
    let started = std::time::Instant::now();
    for _ in 0..CALLS {
        let refused = bounded(client.send(send("ann", "x"))).await.expect_err("no token");
        assert_eq!(refused.code(), Code::Unauthenticated);
    }
    let flood_seconds = started.elapsed().as_secs();

    // Read the log until the summaries have counted every call (bounded by PATIENCE).
    let (mut summaries, mut counted, mut other_refusal_lines) = (Vec::new(), 0, 0);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while counted < CALLS {
        let line = tokio::time::timeout_at(deadline, logged.recv())
            .await
            .unwrap_or_else(|_| panic!("summaries counted {counted} of {CALLS} refusals: {summaries:?}"))
            .expect("the server is still running");
        let entry: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("JSON log line: {line}"));
        let message = entry["fields"]["message"].as_str().unwrap_or_default().to_owned();
        if let Some(refused) = entry["fields"]["refused"].as_u64() {
            assert_eq!(entry["level"], "INFO", "{line}");
            assert!(message.contains("UNAUTHENTICATED×"), "the summary counts by code: {line}");
            assert_eq!(entry["fields"]["code"], "UNAUTHENTICATED", "with an example: {line}");
            counted += refused;
            summaries.push(message);
        } else if message.contains("refused") && entry["level"] == "INFO" {
            other_refusal_lines += 1;
            assert!(other_refusal_lines < CALLS, "every refusal has a line of its own at info");
        }
    }
    assert_eq!(counted, CALLS, "{summaries:?}");
    assert_eq!(other_refusal_lines, 0, "no refusal has a line of its own at info");
    // One line a second, plus the first at once and the last at the end.
    assert!(summaries.len() as u64 <= flood_seconds + 3, "{} summaries in {flood_seconds}s", summaries.len());
    child.kill().await.expect("stop the server");
}
