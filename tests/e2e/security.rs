//! Authentication (`--tokens`) and TLS (`--tls-cert/--tls-key`): every RPC of both services
//! needs a valid token, the sender is the token's user, TLS clients connect with the CA, a
//! plaintext client fails cleanly, and bad files stop the server naming the flag.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use confab::bench::{BenchOptions, Scenario, run};

use confab::api::auth::Tokens;
use confab::grpc::proto::chat::{self, chat_service_client::ChatServiceClient};
use confab::grpc::proto::confab_v1::{
    self as v1, HistoryRequest, ListRoomsRequest, SendRequest, SubscribeRequest, UploadChunk, chat_client::ChatClient,
    client_frame, room_event, server_frame,
};
use confab::grpc::server::ServerOptions;
use confab::grpc::tls::server_config;
use confab_client::{ClientChannel, ClientSecurity, connect};
use confab_engine::{Limits, SendRate};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use super::{TestServer, bounded, confab_chat, with_metadata};

const ANN: &str = "ann-secret-token-0001";
const BOB: &str = "bob-secret-token-0002";

pub(super) fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("security-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn tokens() -> Arc<Tokens> {
    Arc::new(Tokens::parse(&format!("# test users\n{ANN} ann\n{BOB} bob\n")).expect("tokens"))
}

async fn start_authenticated() -> TestServer {
    TestServer::start_with_options(Limits::default(), ServerOptions { tokens: Some(tokens()), ..Default::default() })
        .await
}

async fn channel_as(server: &TestServer, token: Option<&str>) -> ClientChannel {
    let security = token.map_or_else(ClientSecurity::default, |token| ClientSecurity::default().with_token(token));
    connect(&format!("http://{}", server.address), &security).await.expect("connect")
}

fn send(room: &str, user: &str, body: &str) -> SendRequest {
    SendRequest { room: room.into(), user: user.into(), client_msg_id: String::new(), body: body.into() }
}

fn post(room: &str, body: &str) -> v1::ClientFrame {
    let post = v1::Post { room: room.into(), client_msg_id: String::new(), body: body.into() };
    v1::ClientFrame { frame: Some(client_frame::Frame::Post(post)) }
}

fn join(room: &str) -> v1::ClientFrame {
    v1::ClientFrame { frame: Some(client_frame::Frame::Join(v1::Join { room: room.into(), after_seq: None })) }
}

fn assert_unauthenticated<T: std::fmt::Debug>(result: Result<T, tonic::Status>, rpc: &str) {
    let status = result.expect_err(rpc);
    assert_eq!(status.code(), Code::Unauthenticated, "{rpc}: {status:?}");
    assert!(!status.message().is_empty(), "{rpc}: a message says why");
}

/// Each of the ten RPCs, without a token and with an unknown one: UNAUTHENTICATED, and nothing
/// reaches the room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_of_both_services_needs_a_valid_token() {
    let server = start_authenticated().await;
    for token in [None, Some("not-a-known-token-at-all")] {
        let mut confab = ChatClient::new(channel_as(&server, token).await);
        let mut seed = ChatServiceClient::new(channel_as(&server, token).await);
        assert_unauthenticated(confab.send(send("r", "", "x")).await, "Send");
        assert_unauthenticated(
            confab.history(HistoryRequest { room: "r".into(), after_seq: 0, limit: 0 }).await,
            "History",
        );
        assert_unauthenticated(confab.list_rooms(ListRoomsRequest::default()).await, "ListRooms");
        let subscribe = SubscribeRequest { room: "r".into(), after_seq: None, user: String::new() };
        assert_unauthenticated(confab.subscribe(subscribe).await, "Subscribe");
        let chunks = vec![UploadChunk { room: "r".into(), user: String::new(), body: "x".into() }];
        assert_unauthenticated(confab.upload(tokio_stream::iter(chunks)).await, "Upload");
        assert_unauthenticated(confab.session(tokio_stream::iter(vec![join("r")])).await, "Session");
        let message = || chat::Message { user: String::new(), content: "x".into() };
        assert_unauthenticated(seed.say_hello(message()).await, "SayHello");
        assert_unauthenticated(seed.broadcast_messages(message()).await, "BroadcastMessages");
        assert_unauthenticated(seed.upload_stream(tokio_stream::iter(vec![message()])).await, "UploadStream");
        assert_unauthenticated(seed.chat_stream(tokio_stream::iter(vec![message()])).await, "ChatStream");
    }
    let missing =
        ChatClient::new(channel_as(&server, None).await).send(send("r", "", "x")).await.expect_err("no token");
    assert!(missing.message().contains("Bearer"), "says what is needed: {}", missing.message());
    // A header that is not `Bearer <token>` is refused too.
    let mut raw = ChatClient::new(channel_as(&server, None).await);
    let basic = raw.send(with_metadata(send("r", "", "x"), "authorization", "Basic YW5uOnB3")).await;
    assert_unauthenticated(basic, "Basic auth");
    // Nothing of the refused calls reached a room.
    let mut ann = ChatClient::new(channel_as(&server, Some(ANN)).await);
    let rooms = ann.list_rooms(ListRoomsRequest::default()).await.expect("ann may list").into_inner().rooms;
    assert!(rooms.is_empty(), "refused calls created nothing: {rooms:?}");
}

/// The sender is always the token's user: an empty name becomes it, the same name passes, and
/// another name is PERMISSION_DENIED on every path that carries one. Nothing refused is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sender_is_the_tokens_user_never_a_name_the_client_fills_in() {
    let server = start_authenticated().await;
    let mut ann = ChatClient::new(channel_as(&server, Some(ANN)).await);
    let mut ann_seed = ChatServiceClient::new(channel_as(&server, Some(ANN)).await);

    // confab.v1 Send.
    ann.send(send("id", "", "empty name")).await.expect("empty becomes ann");
    ann.send(send("id", "ann", "own name")).await.expect("own name");
    let forged = ann.send(send("id", "bob", "forged")).await.expect_err("someone else");
    assert_eq!(forged.code(), Code::PermissionDenied);
    assert!(forged.message().contains("bob") && forged.message().contains("ann"), "{}", forged.message());

    // Subscribe's presence name.
    let as_bob = SubscribeRequest { room: "id".into(), after_seq: None, user: "bob".into() };
    assert_eq!(ann.subscribe(as_bob).await.expect_err("presence as bob").code(), Code::PermissionDenied);

    // Upload: one forged chunk aborts the whole upload.
    let chunks = vec![
        UploadChunk { room: "id".into(), user: String::new(), body: "up 1".into() },
        UploadChunk { room: "id".into(), user: "bob".into(), body: "up forged".into() },
    ];
    assert_eq!(ann.upload(tokio_stream::iter(chunks)).await.expect_err("forged chunk").code(), Code::PermissionDenied);
    let chunks = vec![UploadChunk { room: "id".into(), user: String::new(), body: "up 2".into() }];
    assert_eq!(ann.upload(tokio_stream::iter(chunks)).await.expect("upload").into_inner().last_user, "ann");

    // Session: the `user` metadata may only name ann.
    let request = with_metadata(tokio_stream::iter(vec![join("id")]), "user", "bob");
    assert_eq!(ann.session(request).await.expect_err("session as bob").code(), Code::PermissionDenied);
    let (frames, outgoing) = mpsc::channel(4);
    frames.send(join("id")).await.expect("queue");
    frames.send(post("id", "from the session")).await.expect("queue");
    drop(frames);
    let mut session = ann.session(ReceiverStream::new(outgoing)).await.expect("session").into_inner();
    let mut session_users = Vec::new();
    while let Some(frame) = bounded(session.message()).await.expect("session ends OK") {
        if let Some(server_frame::Frame::Event(v1::RoomEvent { event: Some(room_event::Event::Message(m)) })) =
            frame.frame
        {
            session_users.push(m.user);
        }
    }
    assert_eq!(session_users, vec!["ann"]);

    // The seed's service: SayHello, UploadStream and ChatStream.
    let hello = |user: &str| with_metadata(chat::Message { user: user.into(), content: "hi".into() }, "room", "id");
    let forged = ann_seed.say_hello(hello("mallory")).await.expect_err("forged");
    assert_eq!(forged.code(), Code::PermissionDenied);
    let reply = ann_seed.say_hello(hello("")).await.expect("hello").into_inner();
    assert_eq!(reply.content, "Hello, ann! Thanks for your message.");
    let forged = vec![chat::Message { user: "bob".into(), content: "seed forged".into() }];
    let request = with_metadata(tokio_stream::iter(forged), "room", "id");
    assert_eq!(ann_seed.upload_stream(request).await.expect_err("forged").code(), Code::PermissionDenied);
    let (messages, outgoing) = mpsc::channel(4);
    messages.send(chat::Message { user: String::new(), content: "stream 1".into() }).await.expect("queue");
    let request = with_metadata(ReceiverStream::new(outgoing), "room", "id");
    let mut stream = ann_seed.chat_stream(request).await.expect("chat stream").into_inner();
    let first = bounded(stream.message()).await.expect("ok").expect("own message back");
    assert_eq!((first.user.as_str(), first.content.as_str()), ("ann", "stream 1"));
    messages.send(chat::Message { user: "bob".into(), content: "stream forged".into() }).await.expect("queue");
    let ended = bounded(stream.message()).await.expect_err("forged message ends the stream");
    assert_eq!(ended.code(), Code::PermissionDenied);

    // What the room holds: only ann's accepted messages, each by ann.
    let page = ann.history(HistoryRequest { room: "id".into(), after_seq: 0, limit: 0 }).await.expect("history");
    let stored: Vec<(String, String)> = page.into_inner().messages.into_iter().map(|m| (m.user, m.body)).collect();
    let expected = ["empty name", "own name", "up 2", "from the session", "hi", "stream 1"];
    assert_eq!(stored, expected.iter().map(|body| ("ann".to_owned(), (*body).to_owned())).collect::<Vec<_>>());

    // Bob's token is bob.
    let mut bob = ChatClient::new(channel_as(&server, Some(BOB)).await);
    let sent = bob.send(send("id", "", "bob here")).await.expect("bob sends").into_inner();
    let page = bob.history(HistoryRequest { room: "id".into(), after_seq: sent.seq - 1, limit: 1 }).await;
    assert_eq!(page.expect("history").into_inner().messages[0].user, "bob");
}

/// A server started without `--tokens` says at start-up that it is open; the default address
/// is loopback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_server_says_so_and_listens_on_loopback_by_default() {
    let help = Command::new(env!("CARGO_BIN_EXE_confab")).args(["serve", "--help"]).output();
    let help = String::from_utf8_lossy(&bounded(help).await.expect("help").stdout).into_owned();
    assert!(help.contains("[default: 127.0.0.1:50051]"), "loopback by default: {help}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_confab"))
        .args(["serve", "--listen", "127.0.0.1:0", "--in-memory"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start confab serve");
    let line = first_line(&mut child).await;
    assert!(line.contains("OPEN: serving without authentication"), "says it is open: {line}");
    assert!(line.contains("plaintext"), "says it is not encrypted: {line}");
    child.start_kill().expect("kill");
    child.wait().await.expect("reaped");
}

async fn first_line(child: &mut tokio::process::Child) -> String {
    use tokio::io::AsyncBufReadExt;
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    bounded(lines.next_line()).await.expect("read").expect("a start-up line")
}

/// Runs `confab serve` with `args` and expects it to refuse to start; returns its stderr.
pub(super) async fn refused_start(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_confab"))
        .args(["serve", "--listen", "127.0.0.1:0", "--in-memory"])
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = bounded(output).await.expect("ran");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "{args:?} must not start: {stderr}");
    assert!(!stderr.contains("panicked"), "no panic: {stderr}");
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_or_tls_files_stop_the_server_naming_the_flag() {
    let dir = scratch("bad-files");
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, format!("# users\n{ANN} ann\nshort bob\n")).expect("write");
    let stderr = refused_start(&["--tokens", tokens.to_str().expect("utf-8")]).await;
    assert!(stderr.contains("--tokens") && stderr.contains("line 3"), "names the flag and line: {stderr}");
    let stderr = refused_start(&["--tokens", "/nonexistent/tokens"]).await;
    assert!(stderr.contains("--tokens /nonexistent/tokens"), "{stderr}");

    let pki = Pki::new(&dir);
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").expect("write");
    let (cert, key) = (pki.cert.to_str().expect("utf-8"), pki.key.to_str().expect("utf-8"));
    let stderr = refused_start(&["--tls-cert", "/nonexistent/cert.pem", "--tls-key", key]).await;
    assert!(stderr.contains("--tls-cert /nonexistent/cert.pem: cannot read it"), "{stderr}");
    let stderr = refused_start(&["--tls-cert", garbage.to_str().expect("utf-8"), "--tls-key", key]).await;
    assert!(stderr.contains("--tls-cert") && stderr.contains("no PEM certificate"), "{stderr}");
    let stderr = refused_start(&["--tls-cert", cert, "--tls-key", garbage.to_str().expect("utf-8")]).await;
    assert!(stderr.contains("--tls-key") && stderr.contains("private key"), "{stderr}");
    let stderr = refused_start(&["--tls-cert", cert]).await;
    assert!(stderr.contains("--tls-key"), "one without the other: {stderr}");
    // Both files parse, but the key belongs to another certificate.
    let other = Pki::new(&scratch("other-pki"));
    let error = server_config(&pki.cert, &other.key).expect_err("mismatched key").to_string();
    assert!(error.contains("--tls-cert/--tls-key"), "{error}");
}

/// A test CA and a server certificate for 127.0.0.1 it signed, made at test time.
pub(super) struct Pki {
    pub(super) ca: PathBuf,
    pub(super) cert: PathBuf,
    pub(super) key: PathBuf,
}

impl Pki {
    pub(super) fn new(dir: &Path) -> Pki {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "confab test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("ca key")).expect("ca");
        let key = KeyPair::generate().expect("server key");
        let params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).expect("params");
        let cert = params.signed_by(&key, &ca).expect("signed");
        let pki = Pki { ca: dir.join("ca.pem"), cert: dir.join("cert.pem"), key: dir.join("key.pem") };
        std::fs::write(&pki.ca, ca.pem()).expect("write ca");
        std::fs::write(&pki.cert, cert.pem()).expect("write cert");
        std::fs::write(&pki.key, key.serialize_pem()).expect("write key");
        pki
    }

    /// A TLS client that trusts this CA and offers the ALPN protocol `alpn`.
    pub(super) fn connector(&self, alpn: &[u8]) -> tokio_rustls::TlsConnector {
        use rustls_pki_types::pem::PemObject as _;
        use tokio_rustls::rustls;
        let mut roots = rustls::RootCertStore::empty();
        let ca = std::fs::read(&self.ca).expect("ca");
        for certificate in rustls_pki_types::CertificateDer::pem_slice_iter(&ca) {
            roots.add(certificate.expect("a certificate")).expect("a root");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = vec![alpn.to_vec()];
        tokio_rustls::TlsConnector::from(Arc::new(client))
    }
}

/// TLS with tokens: a client with the CA connects over https and works; plaintext to the TLS
/// port and a client trusting another CA both fail with an error, and the server keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_clients_connect_and_plaintext_fails_cleanly() {
    let dir = scratch("tls");
    let pki = Pki::new(&dir);
    let tls = server_config(&pki.cert, &pki.key).expect("tls config");
    let options = ServerOptions { tokens: Some(tokens()), tls: Some(tls), ..Default::default() };
    let server = TestServer::start_with_options(Limits::default(), options).await;
    let https = format!("https://{}", server.address);
    let trusted = ClientSecurity::default().with_token(ANN).with_tls_ca(pki.ca.clone());

    let mut client = ChatClient::new(bounded(connect(&https, &trusted)).await.expect("TLS connect"));
    assert_eq!(client.send(send("tls", "", "over TLS")).await.expect("send").into_inner().seq, 1);

    // Plaintext HTTP/2 to the TLS port: an error (at connect or at the first call), no hang.
    let plaintext = ClientSecurity::default().with_token(ANN);
    let failed = match bounded(connect(&format!("http://{}", server.address), &plaintext)).await {
        Err(_) => true,
        Ok(channel) => bounded(ChatClient::new(channel).send(send("tls", "", "plain"))).await.is_err(),
    };
    assert!(failed, "plaintext to a TLS port fails");

    // A client that trusts another CA refuses the server's certificate.
    let stranger = Pki::new(&scratch("stranger"));
    let untrusted = ClientSecurity::default().with_token(ANN).with_tls_ca(stranger.ca);
    let failed = match bounded(connect(&https, &untrusted)).await {
        Err(_) => true,
        Ok(channel) => bounded(ChatClient::new(channel).send(send("tls", "", "mitm"))).await.is_err(),
    };
    assert!(failed, "a certificate from an unknown CA is refused");

    // The server kept serving: the first client and a new one both carry on.
    assert_eq!(client.send(send("tls", "", "still here")).await.expect("send").into_inner().seq, 2);
    let mut again = ChatClient::new(bounded(connect(&https, &trusted)).await.expect("reconnect"));
    let page = again.history(HistoryRequest { room: "tls".into(), after_seq: 0, limit: 0 }).await.expect("history");
    let bodies: Vec<String> = page.into_inner().messages.into_iter().map(|m| m.body).collect();
    assert_eq!(bodies, ["over TLS", "still here"], "the refused clients stored nothing");
}

/// `confab chat` with `CONFAB_TOKEN` and `--tls-ca` against a server with both: the line typed
/// comes back under the token's user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confab_chat_connects_with_a_token_over_tls() {
    let dir = scratch("chat-cli");
    let pki = Pki::new(&dir);
    let tls = server_config(&pki.cert, &pki.key).expect("tls config");
    let options = ServerOptions { tokens: Some(tokens()), tls: Some(tls), ..Default::default() };
    let server = TestServer::start_with_options(Limits::default(), options).await;
    let url = format!("https://{}", server.address);
    let args =
        ["--room".as_ref(), "cli".as_ref(), "--server".as_ref(), url.as_ref(), "--tls-ca".as_ref(), pki.ca.as_os_str()];
    let stdout = confab_chat(&args, &[("CONFAB_TOKEN", BOB)], b"hello over tls\n").await;
    assert!(stdout.contains("[1 #cli] bob: hello over tls"), "{stdout}");
}

/// `confab bench` with a token: every scenario works against a server with `--tokens`, which
/// means the tool leaves every user name to the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confab_bench_runs_against_an_authenticated_server() {
    let options = ServerOptions { tokens: Some(tokens()), send_rate: SendRate::UNLIMITED, ..Default::default() };
    let server = TestServer::start_with_options(Limits::default(), options).await;
    for (name, scenario) in Scenario::ALL {
        let options = BenchOptions {
            server: format!("http://{}", server.address),
            scenario,
            connections: 1,
            concurrency: 2,
            duration: Duration::from_millis(300),
            warmup: Duration::from_millis(50),
            body_bytes: 32,
            upload_batch: 5,
            rate: 100,
            rooms: 1,
            server_pid: None,
            stalled: 0,
            disconnect_mean: None,
            security: ClientSecurity::default().with_token(ANN),
        };
        let report = bounded(run(&options)).await.unwrap_or_else(|error| panic!("{name}: {error}"));
        assert!(report.operations > 0, "{name}: measured nothing: {}", report.human());
        assert_eq!(report.errors, 0, "{name}: {}", report.human());
    }
    let options = BenchOptions {
        server: format!("http://{}", server.address),
        scenario: Scenario::UnarySend,
        connections: 1,
        concurrency: 1,
        duration: Duration::from_millis(100),
        warmup: Duration::ZERO,
        body_bytes: 8,
        upload_batch: 1,
        rate: 0,
        rooms: 1,
        server_pid: None,
        stalled: 0,
        disconnect_mean: None,
        security: ClientSecurity::default(),
    };
    let report = bounded(run(&options)).await.expect("runs");
    assert!(report.errors > 0 && report.operations == 0, "without a token every call fails: {}", report.human());
}
