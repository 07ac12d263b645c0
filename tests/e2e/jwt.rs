//! Authorization (`--jwt-hmac-secret-file`, `--jwt-public-key-file`, room patterns): JWTs made
//! at test time are verified (signature, `exp`), their `rooms` and `read_rooms` claims (and a
//! tokens file's `rooms=` / `read_rooms=` lines) are enforced by both services and the web port
//! with PERMISSION_DENIED naming the room, and streams end with UNAUTHENTICATED when their
//! token expires.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use confab::api::auth::{Authenticator, Tokens};
use confab::api::jwt::{JwtPolicy, JwtVerifier};
use confab::grpc::proto::chat::{self, chat_service_client::ChatServiceClient};
use confab::grpc::proto::confab_v1::{
    self as v1, HistoryRequest, ListRoomsRequest, SendRequest, SubscribeRequest, UploadChunk, chat_client::ChatClient,
    client_frame, server_frame,
};
use confab::grpc::server::ServerOptions;
use confab::ws::access::{WS_PROTOCOL, token_protocol};
use confab::ws::server::WsConfig;
use confab_client::{ClientSecurity, connect};
use confab_engine::{Limits, RoomName};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status};

use super::security::{refused_start, scratch};
use super::websocket::{WsServer, next_chat_json, send_json};
use super::{TestServer, bounded, with_metadata};

/// The HS256 secret of these tests (32 bytes, the least the server takes).
const SECRET: &[u8] = b"confab-test-secret-of-32-bytes!!";

/// How far ahead the expiring tokens' `exp` is: long enough to open a stream with it.
const EXPIRING_IN: Duration = Duration::from_secs(2);

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs()
}

/// Tokens are checked with no leeway, so an expiring token ends its streams at its `exp`.
fn policy() -> JwtPolicy {
    JwtPolicy { leeway: Duration::ZERO, ..JwtPolicy::default() }
}

fn hs256(claims: Value) -> String {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET)).expect("signed")
}

/// A token for `sub` valid for an hour, with `extra` claims.
fn token_for(sub: &str, extra: Value) -> String {
    let mut claims = json!({"sub": sub, "exp": now() + 3_600});
    if let (Some(claims), Value::Object(extra)) = (claims.as_object_mut(), extra) {
        claims.extend(extra);
    }
    hs256(claims)
}

fn hmac_verifier() -> Arc<JwtVerifier> {
    Arc::new(JwtVerifier::hmac_secret(SECRET, &policy()).expect("a long enough secret"))
}

async fn start_with(options: ServerOptions) -> TestServer {
    TestServer::start_with_options(Limits::default(), options).await
}

async fn start_jwt() -> TestServer {
    start_with(ServerOptions { jwt: Some(hmac_verifier()), ..ServerOptions::default() }).await
}

async fn confab_as(server: &TestServer, token: &str) -> ChatClient<confab_client::ClientChannel> {
    ChatClient::new(channel_as(server, token).await)
}

async fn seed_as(server: &TestServer, token: &str) -> ChatServiceClient<confab_client::ClientChannel> {
    ChatServiceClient::new(channel_as(server, token).await)
}

async fn channel_as(server: &TestServer, token: &str) -> confab_client::ClientChannel {
    let security = ClientSecurity::default().with_token(token.to_owned());
    connect(&format!("http://{}", server.address), &security).await.expect("connect")
}

fn send(room: &str, body: &str) -> SendRequest {
    SendRequest { room: room.into(), user: String::new(), client_msg_id: String::new(), body: body.into() }
}

fn subscribe(room: &str) -> SubscribeRequest {
    SubscribeRequest { room: room.into(), after_seq: None, user: String::new() }
}

fn history(room: &str) -> HistoryRequest {
    HistoryRequest { room: room.into(), after_seq: 0, limit: 0 }
}

fn frame(frame: client_frame::Frame) -> v1::ClientFrame {
    v1::ClientFrame { frame: Some(frame) }
}

fn join(room: &str) -> v1::ClientFrame {
    frame(client_frame::Frame::Join(v1::Join { room: room.into(), after_seq: None }))
}

fn post(room: &str, body: &str) -> v1::ClientFrame {
    frame(client_frame::Frame::Post(v1::Post { room: room.into(), client_msg_id: String::new(), body: body.into() }))
}

/// A refusal with `code` whose message names `needle`.
fn assert_refused<T: std::fmt::Debug>(result: Result<T, Status>, code: Code, needle: &str, what: &str) {
    let status = result.expect_err(what);
    assert_eq!(status.code(), code, "{what}: {status:?}");
    assert!(status.message().contains(needle), "{what}: {:?} should name {needle:?}", status.message());
}

/// PERMISSION_DENIED for `user` doing `action` in `room`.
fn assert_denied<T: std::fmt::Debug>(result: Result<T, Status>, user: &str, action: &str, room: &str) {
    let needle = format!("user {user} may not {action} room '{room}'");
    assert_refused(result, Code::PermissionDenied, &needle, &needle);
}

/// The next session frame that is not presence or typing.
async fn next_session_frame(frames: &mut tonic::Streaming<v1::ServerFrame>) -> server_frame::Frame {
    loop {
        let frame = bounded(frames.message()).await.expect("a frame").expect("open").frame.expect("content");
        if let server_frame::Frame::Event(v1::RoomEvent {
            event: Some(v1::room_event::Event::Presence(_) | v1::room_event::Event::Typing(_)),
        }) = frame
        {
            continue;
        }
        return frame;
    }
}

fn is_subscribed(frame: server_frame::Frame) -> bool {
    matches!(frame, server_frame::Frame::Event(v1::RoomEvent { event: Some(v1::room_event::Event::Subscribed(_)) }))
}

fn error_of(frame: server_frame::Frame) -> v1::Error {
    match frame {
        server_frame::Frame::Error(error) => error,
        other => panic!("expected an error frame, got {other:?}"),
    }
}

/// A valid JWT is its `sub`; one without `exp`, an expired one, one signed with another key
/// and one naming no user are UNAUTHENTICATED, each saying why; nothing refused is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_jwt_names_the_sender_and_bad_ones_are_unauthenticated() {
    let server = start_jwt().await;
    let mut ann = confab_as(&server, &token_for("ann", json!({}))).await;
    ann.send(send("lobby", "hello")).await.expect("a valid token sends");
    let page = ann.history(history("lobby")).await.expect("history").into_inner();
    assert_eq!(page.messages.iter().map(|m| m.user.as_str()).collect::<Vec<_>>(), ["ann"], "the sender is sub");
    let impostor = ann.send(SendRequest { user: "bob".into(), ..send("lobby", "x") }).await;
    assert_refused(impostor, Code::PermissionDenied, "bob", "another name than sub");

    let other_key = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "ann", "exp": now() + 3_600}),
        &EncodingKey::from_secret(b"another-secret-also-of-32-bytes!"),
    )
    .expect("signed");
    let cases = [
        (hs256(json!({"sub": "ann"})), "exp"),
        (hs256(json!({"sub": "ann", "exp": now() - 60})), "expired"),
        (other_key, "signature"),
        (hs256(json!({"exp": now() + 3_600})), "sub"),
        ("not.a.jwt".to_owned(), "JWT"),
        ("plain-unknown-token-000".to_owned(), "unknown"),
    ];
    for (token, why) in cases {
        let mut client = confab_as(&server, &token).await;
        assert_refused(client.send(send("lobby", "refused")).await, Code::Unauthenticated, why, why);
        assert_refused(client.subscribe(subscribe("lobby")).await, Code::Unauthenticated, why, why);
    }
    let page = ann.history(history("lobby")).await.expect("history").into_inner();
    assert_eq!(page.messages.len(), 1, "no refused call stored anything");
    server.stop().await.expect("stopped");
}

/// `--jwt-public-key-file` with an EC P-256 key made at test time: tokens signed (ES256) by
/// its private half work, tokens signed by another key or with the HS256 algorithm do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ec_public_key_verifies_es256_tokens_of_its_private_half() {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("a key");
    let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("another key");
    let dir = scratch("jwt-es256");
    let public = dir.join("public.pem");
    std::fs::write(&public, key.public_key_pem()).expect("write");
    let verifier = JwtVerifier::public_key_file(&public, &policy()).expect("an EC public key");
    assert_eq!(verifier.algorithm(), Algorithm::ES256);
    let server = start_with(ServerOptions { jwt: Some(Arc::new(verifier)), ..ServerOptions::default() }).await;
    let es256 = |pair: &rcgen::KeyPair| {
        let signing = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).expect("a PKCS#8 key");
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), &json!({"sub": "ann", "exp": now() + 3_600}), &signing)
            .expect("signed")
    };
    let mut ann = confab_as(&server, &es256(&key)).await;
    assert!(ann.send(send("lobby", "signed by the key")).await.expect("valid").into_inner().seq > 0);
    let mut forged = confab_as(&server, &es256(&other)).await;
    assert_refused(forged.send(send("lobby", "x")).await, Code::Unauthenticated, "signature", "another key");
    let mut hs = confab_as(&server, &token_for("ann", json!({}))).await;
    assert_refused(hs.send(send("lobby", "x")).await, Code::Unauthenticated, "ES256", "the wrong algorithm");
    server.stop().await.expect("stopped");
}

/// `--jwt-public-key-file` with an RSA key (a test fixture): RS256 tokens of its private half
/// work, and the public key cannot be used to forge an HS256 token (algorithm confusion).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rsa_public_key_verifies_rs256_tokens_and_refuses_algorithm_confusion() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let public = fixtures.join("jwt-rs256-public.pem");
    let verifier = JwtVerifier::public_key_file(&public, &policy()).expect("an RSA public key");
    assert_eq!(verifier.algorithm(), Algorithm::RS256);
    let server = start_with(ServerOptions { jwt: Some(Arc::new(verifier)), ..ServerOptions::default() }).await;
    let private = std::fs::read(fixtures.join("jwt-rs256-private.pem")).expect("the fixture");
    let signing = EncodingKey::from_rsa_pem(&private).expect("a PKCS#8 RSA key");
    let claims = json!({"sub": "ann", "exp": now() + 3_600});
    let token = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &signing).expect("signed");
    let mut ann = confab_as(&server, &token).await;
    assert!(ann.send(send("lobby", "signed by the key")).await.expect("valid").into_inner().seq > 0);
    // An HS256 token whose "secret" is the public key's text: refused for its algorithm.
    let public_text = std::fs::read(&public).expect("the fixture");
    let confused =
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(&public_text))
            .expect("signed");
    let mut forged = confab_as(&server, &confused).await;
    assert_refused(forged.send(send("lobby", "x")).await, Code::Unauthenticated, "RS256", "algorithm confusion");
    server.stop().await.expect("stopped");
}

/// A `rooms` claim: the bearer reads and posts in matching rooms only. Every RPC of both
/// services that names another room is PERMISSION_DENIED naming it; a Session's join or post
/// there is an error frame and the session goes on; ListRooms lists only readable rooms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rooms_claim_limits_every_rpc_to_matching_rooms() {
    let server = start_jwt().await;
    let token = token_for("ann", json!({"rooms": ["team-*"]}));
    let mut ann = confab_as(&server, &token).await;
    let mut ann_seed = seed_as(&server, &token).await;
    let mut everyone = confab_as(&server, &token_for("root", json!({}))).await;
    everyone.send(send("lobby", "created by another user")).await.expect("unrestricted");

    ann.send(send("team-red", "inside")).await.expect("a matching room");
    ann.history(history("team-red")).await.expect("read a matching room");
    assert_denied(ann.send(send("lobby", "x")).await, "ann", "post to", "lobby");
    assert_denied(ann.history(history("lobby")).await, "ann", "read", "lobby");
    assert_denied(ann.subscribe(subscribe("lobby")).await, "ann", "read", "lobby");
    let chunks = vec![UploadChunk { room: "lobby".into(), user: String::new(), body: "x".into() }];
    assert_denied(ann.upload(tokio_stream::iter(chunks)).await, "ann", "post to", "lobby");
    let message = || chat::Message { user: String::new(), content: "x".into() };
    let in_lobby = |message: chat::Message| with_metadata(message, "room", "lobby");
    assert_denied(ann_seed.say_hello(in_lobby(message())).await, "ann", "post to", "lobby");
    assert_denied(ann_seed.broadcast_messages(in_lobby(message())).await, "ann", "read", "lobby");
    let upload = with_metadata(tokio_stream::iter(vec![message()]), "room", "lobby");
    assert_denied(ann_seed.upload_stream(upload).await, "ann", "post to", "lobby");
    let chat = with_metadata(tokio_stream::iter(vec![message()]), "room", "lobby");
    assert_denied(ann_seed.chat_stream(chat).await, "ann", "post to", "lobby");
    ann_seed.say_hello(with_metadata(message(), "room", "team-red")).await.expect("the seed in a matching room");

    let rooms = ann.list_rooms(ListRoomsRequest::default()).await.expect("list").into_inner().rooms;
    assert_eq!(rooms.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["team-red"], "only readable rooms");

    // A Session: refused frames are error frames naming the room, and the session goes on.
    let (frames, inbound) = mpsc::channel(8);
    let mut session = ann.session(ReceiverStream::new(inbound)).await.expect("a session").into_inner();
    frames.send(join("lobby")).await.expect("queued");
    let refused = error_of(next_session_frame(&mut session).await);
    assert_eq!((refused.code, refused.room.as_str()), (Code::PermissionDenied as i32, "lobby"), "{refused:?}");
    assert!(refused.message.contains("user ann may not read room 'lobby'"), "{refused:?}");
    frames.send(post("lobby", "x")).await.expect("queued");
    let refused = error_of(next_session_frame(&mut session).await);
    assert!(refused.message.contains("user ann may not post to room 'lobby'"), "{refused:?}");
    frames.send(join("team-red")).await.expect("queued");
    assert!(is_subscribed(next_session_frame(&mut session).await), "joined");
    let lobby = server.engine.history(&RoomName::new("lobby").expect("room"), 0, 10).await.expect("history");
    assert_eq!(lobby.messages.len(), 1, "nothing of ann's reached the lobby");
    drop(frames);
    server.stop().await.expect("stopped");
}

/// A `read_rooms` claim: Subscribe, History and a session's Join work there, but Send and a
/// session's post are PERMISSION_DENIED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_rooms_allow_reading_but_not_posting() {
    let server = start_jwt().await;
    let mut editor = confab_as(&server, &token_for("editor", json!({}))).await;
    editor.send(send("news-eu", "headline")).await.expect("unrestricted");
    let mut reader = confab_as(&server, &token_for("reader", json!({"read_rooms": ["news-*"]}))).await;
    let page = reader.history(history("news-eu")).await.expect("read").into_inner();
    assert_eq!(page.messages.len(), 1);
    let mut events =
        reader.subscribe(SubscribeRequest { after_seq: Some(0), ..subscribe("news-eu") }).await.expect("subscribe");
    let subscribed = bounded(events.get_mut().message()).await.expect("an event").expect("open");
    assert!(matches!(subscribed.event, Some(v1::room_event::Event::Subscribed(_))), "{subscribed:?}");
    let first = bounded(events.get_mut().message()).await.expect("an event").expect("open");
    assert!(format!("{first:?}").contains("headline"), "{first:?}");
    assert_denied(reader.send(send("news-eu", "x")).await, "reader", "post to", "news-eu");
    let (frames, inbound) = mpsc::channel(8);
    let mut session = reader.session(ReceiverStream::new(inbound)).await.expect("a session").into_inner();
    frames.send(join("news-eu")).await.expect("queued");
    assert!(is_subscribed(next_session_frame(&mut session).await), "joined");
    frames.send(post("news-eu", "x")).await.expect("queued");
    loop {
        match next_session_frame(&mut session).await {
            server_frame::Frame::Error(error) => {
                assert!(error.message.contains("user reader may not post to room 'news-eu'"), "{error:?}");
                break;
            }
            // The history replayed by the join.
            server_frame::Frame::Event(_) => continue,
            other => panic!("expected the refusal, got {other:?}"),
        }
    }
    drop(frames);
    server.stop().await.expect("stopped");
}

/// Streams opened with a token that expires end with UNAUTHENTICATED at its `exp` (no leeway
/// here): Subscribe, a Session and the seed's ChatStream, though all of them are idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_streams_end_unauthenticated_when_their_token_expires() {
    let server = start_jwt().await;
    let token = hs256(json!({"sub": "ann", "exp": now() + EXPIRING_IN.as_secs()}));
    let mut ann = confab_as(&server, &token).await;
    let mut subscription = ann.subscribe(subscribe("lobby")).await.expect("open").into_inner();
    let (_frames, inbound) = mpsc::channel::<v1::ClientFrame>(1);
    let mut session = ann.session(ReceiverStream::new(inbound)).await.expect("open").into_inner();
    let (seed_frames, seed_inbound) = mpsc::channel(1);
    seed_frames.send(chat::Message { user: String::new(), content: "hi".into() }).await.expect("queued");
    let mut chat = seed_as(&server, &token).await.chat_stream(ReceiverStream::new(seed_inbound)).await.expect("open");
    ends_expired(&mut subscription, "Subscribe").await;
    ends_expired(&mut session, "Session").await;
    ends_expired(chat.get_mut(), "ChatStream").await;
    // And a new call with the token is refused.
    assert_refused(ann.send(send("lobby", "late")).await, Code::Unauthenticated, "expired", "after exp");
    drop(seed_frames);
    server.stop().await.expect("stopped");
}

/// Reads `stream` (its subscription marker, its own echoes) until it ends, which must be with
/// UNAUTHENTICATED for the expiry.
async fn ends_expired<T: std::fmt::Debug>(stream: &mut tonic::Streaming<T>, what: &str) {
    let ended = loop {
        match bounded(stream.message()).await {
            Ok(Some(_)) => continue,
            other => break other,
        }
    };
    let status = ended.expect_err(what);
    assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
    assert!(status.message().contains("expired"), "{what}: {status:?}");
}

/// The tokens file's `rooms=` and `read_rooms=` lines, and the same server taking JWTs too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_file_room_patterns_are_enforced_beside_jwts() {
    let tokens =
        Tokens::parse("ann-token-0123456789 ann\n    rooms=team-*\n    read_rooms=news\nbob-token-0123456789 bob\n")
            .expect("tokens");
    let options = ServerOptions { tokens: Some(Arc::new(tokens)), jwt: Some(hmac_verifier()), ..Default::default() };
    let server = start_with(options).await;
    let mut ann = confab_as(&server, "ann-token-0123456789").await;
    let mut bob = confab_as(&server, "bob-token-0123456789").await;
    let mut carol = confab_as(&server, &token_for("carol", json!({"rooms": ["lobby"]}))).await;
    bob.send(send("news", "unrestricted")).await.expect("a line without patterns allows every room");
    carol.send(send("lobby", "a JWT beside the file")).await.expect("the JWT's own rooms");
    ann.send(send("team-a", "x")).await.expect("rooms=");
    ann.history(history("news")).await.expect("read_rooms=");
    assert_denied(ann.send(send("news", "x")).await, "ann", "post to", "news");
    assert_denied(ann.subscribe(subscribe("lobby")).await, "ann", "read", "lobby");
    assert_denied(carol.send(send("news", "x")).await, "carol", "post to", "news");
    server.stop().await.expect("stopped");
}

/// The web port: a session's join or post outside the token's rooms is an error frame naming
/// the room, the room snapshot is 403, and the socket closes when the token expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_port_enforces_room_permissions_and_expiry() {
    let config = WsConfig { auth: Authenticator::new(None).with_jwt(Some(hmac_verifier())), ..WsConfig::default() };
    let server = WsServer::start_with(config).await;
    let token = hs256(json!({"sub": "ann", "exp": now() + EXPIRING_IN.as_secs(), "rooms": ["team-*"]}));
    let protocols = format!("{WS_PROTOCOL}, {}", token_protocol(&token));
    let mut ann = server.connect_with("format=json", &[("sec-websocket-protocol", &protocols)]).await;
    send_json(&mut ann, json!({"type": "join", "room": "lobby"})).await;
    let refused = next_chat_json(&mut ann).await;
    assert_eq!((refused["type"].as_str(), refused["code"].as_i64()), (Some("error"), Some(7)), "{refused}");
    assert!(refused["message"].as_str().is_some_and(|m| m.contains("user ann may not read room 'lobby'")), "{refused}");
    send_json(&mut ann, json!({"type": "post", "room": "lobby", "body": "x"})).await;
    let refused = next_chat_json(&mut ann).await;
    assert!(refused["message"].as_str().is_some_and(|m| m.contains("may not post to room 'lobby'")), "{refused}");
    send_json(&mut ann, json!({"type": "join", "room": "team-a"})).await;
    assert_eq!(next_chat_json(&mut ann).await["type"], "subscribed");
    let host = format!("Host: {}\r\n", server.address);
    let (status_line, body) =
        server.get_with("/rooms/lobby", &format!("{host}Authorization: Bearer {token}\r\n")).await;
    assert!(status_line.contains("403") && body.contains("lobby"), "{status_line}: {body}");
    // The token expires: the socket is closed with the reason.
    let (code, reason) = super::websocket::close_of(&mut ann).await;
    assert!(reason.contains("expired"), "closed for the expiry ({code}): {reason}");
    server.stop().await.expect("stopped");
}

/// A JWT key that cannot work stops `confab serve`, naming the flag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_jwt_key_files_stop_the_server_naming_the_flag() {
    let dir = scratch("jwt-bad-keys");
    let short = dir.join("short-secret");
    std::fs::write(&short, "too short\n").expect("write");
    let stderr = refused_start(&["--jwt-hmac-secret-file", short.to_str().expect("utf-8")]).await;
    assert!(stderr.contains("--jwt-hmac-secret-file") && stderr.contains("at least 32"), "{stderr}");
    let good = dir.join("good-secret");
    std::fs::write(&good, SECRET).expect("write");
    let good = good.to_str().expect("utf-8");
    let stderr = refused_start(&["--jwt-hmac-secret-file", good, "--jwt-leeway", "2h"]).await;
    assert!(stderr.contains("--jwt-leeway"), "{stderr}");
    let stderr = refused_start(&["--jwt-hmac-secret-file", good, "--jwt-public-key-file", good]).await;
    assert!(stderr.contains("cannot be used with"), "one key per server: {stderr}");
    let stderr = refused_start(&["--jwt-hmac-secret-file", "/nonexistent/secret"]).await;
    assert!(stderr.contains("--jwt-hmac-secret-file /nonexistent/secret: cannot read it"), "{stderr}");
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "not a key").expect("write");
    let stderr = refused_start(&["--jwt-public-key-file", garbage.to_str().expect("utf-8")]).await;
    assert!(stderr.contains("--jwt-public-key-file") && stderr.contains("PEM public key"), "{stderr}");
}

/// ListRooms pages hold only readable rooms, and `next_after` names only readable rooms too:
/// paging one room at a time with a restricted token learns nothing of the other rooms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_rooms_pages_reveal_no_room_the_token_may_not_read() {
    let server = start_jwt().await;
    let mut admin = confab_as(&server, &token_for("admin", json!({}))).await;
    for room in ["a-hidden", "team-1", "b-hidden", "team-2", "c-hidden", "team-3", "d-hidden"] {
        admin.send(send(room, "hi")).await.expect("send");
    }
    let mut ann = confab_as(&server, &token_for("ann", json!({"rooms": ["team-*"]}))).await;
    let (mut seen, mut cursors, mut after) = (Vec::new(), Vec::new(), String::new());
    loop {
        let page = ann.list_rooms(ListRoomsRequest { limit: 1, after: after.clone() }).await.expect("a page");
        let page = page.into_inner();
        seen.extend(page.rooms.into_iter().map(|room| room.name));
        if page.next_after.is_empty() {
            break;
        }
        cursors.push(page.next_after.clone());
        after = page.next_after;
    }
    assert_eq!(seen, ["team-1", "team-2", "team-3"]);
    assert!(cursors.iter().all(|cursor| cursor.starts_with("team-")), "cursors name readable rooms only: {cursors:?}");
    server.stop().await.expect("stopped");
}
