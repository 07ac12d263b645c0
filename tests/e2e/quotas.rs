//! What one user (or, on an open server, one connection) may take of what everyone shares:
//! one send-rate bucket over every session, stream and upload, throttled typing, joins and
//! leaves, and per-user quotas.

use std::sync::Arc;
use std::time::Duration;

use confab::api::auth::Tokens;
use confab::api::quota::QuotaLimits;
use confab::api::rate::{RateLimits, SendLimiter};
use confab::grpc::proto::chat;
use confab::grpc::proto::confab_v1::{
    self as v1, HistoryRequest, SendRequest, SubscribeRequest, UploadChunk, chat_client::ChatClient, client_frame,
    room_event, server_frame,
};
use confab::grpc::server::ServerOptions;
use confab_client::{ClientChannel, ClientSecurity, connect};
use confab_engine::{Limits, SendRate};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::codec::Streaming;

use super::{TestServer, bounded, with_metadata};

const ANN: &str = "ann-quota-token-000001";

fn frame(frame: client_frame::Frame) -> v1::ClientFrame {
    v1::ClientFrame { frame: Some(frame) }
}

fn join(room: &str) -> v1::ClientFrame {
    frame(client_frame::Frame::Join(v1::Join { room: room.into(), after_seq: None }))
}

fn leave(room: &str) -> v1::ClientFrame {
    frame(client_frame::Frame::Leave(v1::Leave { room: room.into() }))
}

fn post(room: &str, id: &str) -> v1::ClientFrame {
    frame(client_frame::Frame::Post(v1::Post { room: room.into(), client_msg_id: id.into(), body: id.into() }))
}

fn typing(room: &str) -> v1::ClientFrame {
    frame(client_frame::Frame::Typing(v1::TypingNotice { room: room.into() }))
}

fn send(room: &str, body: &str) -> SendRequest {
    SendRequest { room: room.into(), user: "ann".into(), client_msg_id: String::new(), body: body.into() }
}

/// The most a token bucket of `rate` can have given in `elapsed`, plus one for rounding.
fn bucket_bound(rate: SendRate, elapsed: Duration) -> usize {
    let refilled = (elapsed.as_secs_f64() * f64::from(rate.per_second)).ceil() as usize;
    rate.burst as usize + refilled + 1
}

/// A client of `server`, with `token` if given.
async fn client(server: &TestServer, token: Option<&str>) -> ChatClient<ClientChannel> {
    let security = token.map_or_else(ClientSecurity::default, |token| ClientSecurity::default().with_token(token));
    ChatClient::new(connect(&format!("http://{}", server.address), &security).await.expect("connect"))
}

/// Options whose only rates are `rates`.
fn rated(rates: RateLimits) -> ServerOptions {
    ServerOptions { limiter: Some(SendLimiter::with_rates(rates)), ..ServerOptions::default() }
}

/// A session on `client` with its frame sender (the session ends when it is dropped).
async fn open_session(
    client: &mut ChatClient<ClientChannel>,
    user: &str,
) -> (mpsc::Sender<v1::ClientFrame>, Streaming<v1::ServerFrame>) {
    let (frames, outgoing) = mpsc::channel(64);
    let request = with_metadata(ReceiverStream::new(outgoing), "user", user);
    let session = bounded(client.session(request)).await.expect("open").into_inner();
    (frames, session)
}

/// What a session answered to its own frames.
#[derive(Debug, Default)]
struct Replies {
    acks: usize,
    /// Refusals, each with its message.
    refused: Vec<String>,
}

/// Reads `session` until it answered `count` frames with an ack or an error (joins, typing
/// and leaves that pass get no reply; count only what does).
async fn replies(session: &mut Streaming<v1::ServerFrame>, count: usize) -> Replies {
    let mut replies = Replies::default();
    while replies.acks + replies.refused.len() < count {
        let frame = bounded(session.message()).await.expect("session goes on").expect("a frame").frame;
        match frame.expect("content") {
            server_frame::Frame::Ack(_) => replies.acks += 1,
            server_frame::Frame::Error(error) => {
                assert_eq!(error.code, Code::ResourceExhausted as i32, "{error:?}");
                replies.refused.push(error.message);
            }
            server_frame::Frame::Event(_) | server_frame::Frame::Left(_) => {}
        }
    }
    replies
}

/// The bypass: 20 Sessions with one token, over several connections, posting as fast
/// as they can. Together they get no more than the user's one bucket allows; each refused post
/// is an error frame naming the send rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_sessions_with_one_token_share_the_users_send_rate() {
    const SESSIONS: usize = 20;
    const POSTS: usize = 15;
    let rate = SendRate { per_second: 10, burst: 10 };
    let tokens = Arc::new(Tokens::parse(&format!("{ANN} ann\n")).expect("tokens"));
    let options = ServerOptions { tokens: Some(tokens), send_rate: rate, ..ServerOptions::default() };
    let server = TestServer::start_with_options(Limits::default(), options).await;
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(client(&server, Some(ANN)).await);
    }
    // Before the first token is taken: the window the bucket is measured over can only be
    // shorter than this.
    let started = Instant::now();
    let mut sessions = Vec::new();
    for index in 0..SESSIONS {
        let connection = index % clients.len();
        let (frames, session) = open_session(&mut clients[connection], "ann").await;
        frames.send(join("shared")).await.expect("queue");
        sessions.push((frames, session));
    }
    for (index, (frames, _)) in sessions.iter().enumerate() {
        for post_index in 0..POSTS {
            frames.send(post("shared", &format!("s{index}-{post_index}"))).await.expect("queue");
        }
    }
    let mut accepted = 0;
    let mut refused = 0;
    for (_, session) in &mut sessions {
        let answered = replies(session, POSTS).await;
        accepted += answered.acks;
        refused += answered.refused.len();
        for message in &answered.refused {
            assert!(message.contains("send rate") && message.contains("--sends-per-second-max"), "{message}");
        }
    }
    let bound = bucket_bound(rate, started.elapsed());
    assert!(accepted <= bound, "{accepted} posts accepted, the user's bucket allows at most {bound}");
    assert!(accepted >= rate.burst as usize, "at least the burst is accepted: {accepted}");
    assert_eq!(accepted + refused, SESSIONS * POSTS);
}

/// Every uploaded message takes a token from the sender's bucket: an upload over the rate is
/// paced (it takes at least as long as the rate says), and leaves the bucket empty for the
/// sender's next unary send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_take_tokens_from_the_senders_bucket() {
    let rate = SendRate { per_second: 1, burst: 3 };
    let server = TestServer::start_with_options(Limits::default(), rated(RateLimits::sending(rate))).await;
    let mut client = server.confab().await;
    let chunks = (0..4).map(|index| UploadChunk { room: "up".into(), user: "ann".into(), body: format!("u{index}") });
    let started = Instant::now();
    let receipt = bounded(client.upload(tokio_stream::iter(chunks.collect::<Vec<_>>()))).await.expect("upload");
    assert_eq!(receipt.into_inner().count, 4, "paced, not refused: all or nothing still holds");
    // A burst of 3 at 1/s: the fourth message waited for a token. Only a lower bound is safe.
    assert!(started.elapsed() >= Duration::from_millis(900), "paced: {:?}", started.elapsed());
    let refused = client.send(send("up", "after the upload")).await.expect_err("the upload used the bucket");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(refused.message().contains("--sends-per-second-max"), "{}", refused.message());
    let mut other = server.confab().await;
    other.send(send("up", "another connection")).await.expect("its own bucket on an open server");
}

/// Typing notices, joins and leaves have buckets of their own: a flood of them is refused with
/// error frames naming their limit, other members see no more than the bucket allows, and the
/// sender's posts are not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_joins_and_leaves_are_throttled() {
    const TYPING_FLOOD: usize = 50;
    const MEMBERSHIP_FLOOD: usize = 20;
    let typing_rate = SendRate { per_second: 2, burst: 3 };
    let membership_rate = SendRate { per_second: 2, burst: 4 };
    let rates = RateLimits { typing: typing_rate, membership: membership_rate, ..RateLimits::default() };
    let server = TestServer::start_with_options(Limits::default(), rated(rates)).await;
    let mut watcher_client = server.confab().await;
    let request = SubscribeRequest { room: "quiet".into(), after_seq: None, user: String::new() };
    let mut watcher = bounded(watcher_client.subscribe(request)).await.expect("subscribe").into_inner();
    bounded(watcher.message()).await.expect("ok").expect("subscribed");

    let mut client = client(&server, None).await;
    let started = Instant::now();
    let (frames, mut session) = open_session(&mut client, "ann").await;
    frames.send(join("quiet")).await.expect("queue");
    for _ in 0..TYPING_FLOOD {
        frames.send(typing("quiet")).await.expect("queue");
    }
    frames.send(post("quiet", "marker")).await.expect("queue");
    // Accepted notices get no reply; refused ones an error frame each; the marker an ack.
    let mut refused_typing = 0;
    let mut acked = false;
    while !acked {
        let frame = bounded(session.message()).await.expect("session goes on").expect("a frame").frame;
        match frame.expect("content") {
            server_frame::Frame::Ack(_) => acked = true,
            server_frame::Frame::Error(error) => {
                assert_eq!(error.code, Code::ResourceExhausted as i32, "{error:?}");
                assert!(error.message.contains("typing rate"), "{}", error.message);
                assert!(error.message.contains("--typing-per-second-max"), "{}", error.message);
                refused_typing += 1;
            }
            _ => {}
        }
    }
    let bound = bucket_bound(typing_rate, started.elapsed());
    // The watcher sees the accepted notices, then the marker (one room, one order).
    let mut delivered_typing = 0;
    loop {
        match bounded(watcher.message()).await.expect("ok").expect("event").event {
            Some(room_event::Event::Typing(_)) => delivered_typing += 1,
            Some(room_event::Event::Message(message)) if message.body == "marker" => break,
            _ => {}
        }
    }
    assert!(delivered_typing <= bound, "{delivered_typing} typing notices delivered, the bucket allows {bound}");
    assert_eq!(delivered_typing + refused_typing, TYPING_FLOOD);

    // Joins and leaves: one was taken by the first join; alternate leave and join.
    let started = Instant::now();
    for index in 0..MEMBERSHIP_FLOOD {
        let membership = if index % 2 == 0 { leave("elsewhere") } else { join("elsewhere") };
        frames.send(membership).await.expect("queue");
    }
    frames.send(post("quiet", "second marker")).await.expect("queue");
    let mut refused_membership = Vec::new();
    loop {
        let frame = bounded(session.message()).await.expect("session goes on").expect("a frame").frame;
        match frame.expect("content") {
            server_frame::Frame::Ack(_) => break,
            server_frame::Frame::Error(error) if error.message.contains("--joins-per-second-max") => {
                assert_eq!(error.code, Code::ResourceExhausted as i32, "{error:?}");
                refused_membership.push(error.message);
            }
            // A leave of a room not joined: refused by the session, not by the rate.
            _ => {}
        }
    }
    let bound = bucket_bound(membership_rate, started.elapsed());
    assert!(
        MEMBERSHIP_FLOOD - refused_membership.len() <= bound,
        "{} joins and leaves passed, the bucket allows {bound}",
        MEMBERSHIP_FLOOD - refused_membership.len()
    );
    assert!(refused_membership[0].contains("join and leave rate"), "{}", refused_membership[0]);
    drop(frames);
}

/// Options with the default rates and `quotas`.
fn with_quotas(quotas: QuotaLimits) -> ServerOptions {
    ServerOptions { limiter: Some(SendLimiter::default().with_quotas(quotas)), ..ServerOptions::default() }
}

fn subscribe_to(room: &str) -> SubscribeRequest {
    SubscribeRequest { room: room.into(), after_seq: None, user: String::new() }
}

/// The exhaustion: one client with no token opening Subscribe streams to distinct rooms
/// gets no more than its quota of rooms, so it cannot take every room slot: another client
/// still sends to new rooms. A session's join counts against the same quota, and a closed
/// stream gives its room back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_cannot_hold_every_room() {
    const ROOMS_PER_USER_MAX: usize = 4;
    let limits = Limits { rooms_max: 14, ..Limits::default() };
    let quotas = QuotaLimits { rooms_per_user_max: ROOMS_PER_USER_MAX, ..QuotaLimits::default() };
    let server = TestServer::start_with_options(limits, with_quotas(quotas)).await;
    let mut hog = client(&server, None).await;
    let mut held = Vec::new();
    let mut refused = 0;
    for index in 0..10 {
        match bounded(hog.subscribe(subscribe_to(&format!("hog-{index}")))).await {
            Ok(response) => {
                let mut stream = response.into_inner();
                bounded(stream.message()).await.expect("ok").expect("subscribed");
                held.push(stream);
            }
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(status.message().contains("--rooms-per-user-max"), "names the limit: {}", status.message());
                refused += 1;
            }
        }
    }
    assert_eq!((held.len(), refused), (ROOMS_PER_USER_MAX, 10 - ROOMS_PER_USER_MAX));
    // A second stream to a room it holds costs nothing more.
    let mut again = bounded(hog.subscribe(subscribe_to("hog-0"))).await.expect("a held room again").into_inner();
    bounded(again.message()).await.expect("ok").expect("subscribed");

    // A session's join is one more room: an error frame, and the session goes on.
    let (frames, mut session) = open_session(&mut hog, "hog").await;
    frames.send(join("hog-0")).await.expect("queue");
    frames.send(join("hog-extra")).await.expect("queue");
    let answered = replies(&mut session, 1).await;
    assert_eq!(answered.refused.len(), 1);
    assert!(answered.refused[0].contains("--rooms-per-user-max"), "{}", answered.refused[0]);
    drop((frames, session));

    // Another client creates rooms the hog could have taken: 4 held + 8 new + 1 below <= 14.
    let mut other = server.confab().await;
    for index in 0..8 {
        bounded(other.send(send(&format!("other-{index}"), "still works"))).await.expect("a new room");
    }

    // A closed stream gives its room back (once the server saw the stream go).
    drop(held.pop());
    let mut reopened = None;
    for _ in 0..200 {
        match bounded(hog.subscribe(subscribe_to("hog-new"))).await {
            Ok(response) => {
                reopened = Some(response.into_inner());
                break;
            }
            Err(status) => assert_eq!(status.code(), Code::ResourceExhausted),
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let mut reopened = reopened.expect("the slot came back");
    bounded(reopened.message()).await.expect("ok").expect("subscribed");
}

/// Sessions and uploads per user: the one over the quota is refused naming the limit, and an
/// ended one gives its slot back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_and_uploads_per_user_are_bounded() {
    let tokens = Arc::new(Tokens::parse(&format!("{ANN} ann\n")).expect("tokens"));
    let quotas = QuotaLimits { sessions_per_user_max: 2, uploads_per_user_max: 1, ..QuotaLimits::default() };
    let options = ServerOptions { tokens: Some(tokens), ..with_quotas(quotas) };
    let server = TestServer::start_with_options(Limits::default(), options).await;
    let mut one = client(&server, Some(ANN)).await;
    let mut two = client(&server, Some(ANN)).await;
    let first = open_session(&mut one, "ann").await;
    let _second = open_session(&mut two, "ann").await;
    let (_frames, outgoing) = mpsc::channel::<v1::ClientFrame>(1);
    let third = bounded(one.session(with_metadata(ReceiverStream::new(outgoing), "user", "ann"))).await;
    let refused = third.expect_err("a third session of the same user, on any connection");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(refused.message().contains("--sessions-per-user-max"), "{}", refused.message());
    drop(first);
    let mut reopened = false;
    for _ in 0..200 {
        let (_frames, outgoing) = mpsc::channel::<v1::ClientFrame>(1);
        match bounded(one.session(with_metadata(ReceiverStream::new(outgoing), "user", "ann"))).await {
            Ok(_) => {
                reopened = true;
                break;
            }
            Err(status) => assert_eq!(status.code(), Code::ResourceExhausted),
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(reopened, "an ended session gives its slot back");

    // One upload open at a time: a second one is refused while the first waits for chunks.
    let chunk = |body: &str| UploadChunk { room: "up".into(), user: String::new(), body: body.into() };
    let second = || tokio_stream::iter(vec![chunk("second")]);
    let (refusal, chunks, pending) = refused_beside_open_upload(&one, chunk("first"), &mut two, second).await;
    assert!(refusal.message().contains("--uploads-per-user-max"), "{}", refusal.message());
    drop(chunks);
    bounded(pending).await.expect("task").expect("the first upload commits");
    bounded(two.upload(tokio_stream::iter(vec![chunk("third")]))).await.expect("the slot is back");
}

/// Rooms created per user: past the burst, a use of a new room is refused naming the limit,
/// while rooms that exist stay usable and another connection creates its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_created_per_user_are_rate_limited() {
    let creation = SendRate { per_second: 1, burst: 3 };
    let server =
        TestServer::start_with_options(Limits::default(), rated(RateLimits { creation, ..RateLimits::default() }))
            .await;
    let mut creator = server.confab().await;
    for index in 0..3 {
        creator.send(send(&format!("new-{index}"), "create")).await.expect("within the burst");
    }
    let refused = creator.send(send("new-3", "one too many")).await.expect_err("a fourth new room");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(refused.message().contains("--rooms-created-per-second-max"), "{}", refused.message());
    let refused = creator.subscribe(subscribe_to("new-4")).await.expect_err("subscribing creates too");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    creator.send(send("new-0", "an existing room")).await.expect("using a room is not creating one");
    server.confab().await.send(send("new-5", "elsewhere")).await.expect("another connection's own bucket");
}

/// Rooms that subscriptions created and that never got a message are retired after the short
/// empty-room idle time, so a full room table takes new rooms again long before the normal
/// idle time; a room with history stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_that_never_got_a_message_retire_quickly() {
    let limits = Limits { rooms_max: 4, room_idle_ms: 3_600_000, empty_room_idle_ms: 200, ..Limits::default() };
    let server = TestServer::start_with_options(limits, ServerOptions::default()).await;
    let mut client = server.confab().await;
    client.send(send("kept", "history")).await.expect("a room with history");
    for index in 0..3 {
        let mut stream =
            bounded(client.subscribe(subscribe_to(&format!("empty-{index}")))).await.expect("subscribe").into_inner();
        bounded(stream.message()).await.expect("ok").expect("subscribed");
    }
    let full = client.send(send("new-0", "no room")).await.expect_err("the room table is full");
    assert_eq!(full.code(), Code::ResourceExhausted, "{full:?}");
    // The streams above are gone; past the empty-room idle time, their rooms give way. A lower
    // bound on waiting is safe; the retries only cover the server seeing the streams end.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut created = false;
    for _ in 0..100 {
        if client.send(send("new-0", "a new room")).await.is_ok() {
            created = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(created, "empty rooms retired and made way");
    let kept = server.engine.room(&confab_engine::RoomName::new("kept").expect("name")).await.expect("info");
    assert_eq!(kept.expect("the room with history stays").last_seq, 1);
}

/// The 64 MB page: with the default limits, a room of big messages answers a default
/// `History` call with a page a default client (4 MiB) can receive, and paging on from its last
/// message reaches everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_default_history_page_fits_a_default_client() {
    const MESSAGES: u64 = 80;
    let server = TestServer::start().await;
    let mut client = server.confab().await;
    let body = "b".repeat(60 * 1024);
    for _ in 0..MESSAGES {
        client.send(send("big", &body)).await.expect("send");
    }
    let mut after_seq = 0;
    let mut pages = 0;
    while after_seq < MESSAGES {
        let request = HistoryRequest { room: "big".into(), after_seq, limit: 0 };
        let page = bounded(client.history(request)).await.expect("a page a default client receives").into_inner();
        assert!(!page.messages.is_empty(), "every page moves on");
        assert!(page.messages.len() < MESSAGES as usize, "cut by bytes, not by the 1,000-message limit");
        assert_eq!(page.messages[0].seq, after_seq + 1, "contiguous");
        after_seq = page.messages.last().expect("non-empty").seq;
        pages += 1;
    }
    assert!(pages >= 4, "4.8 MB of messages in pages of at most 1 MiB: {pages}");
}

/// A room retains at most `--history-bytes-max` of messages, dropping the oldest first as it
/// does past `--history-len-max`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_retains_at_most_its_byte_budget() {
    // Each message counts 1,000 + 3 ("ann") + 64 = 1,067 bytes: 3,000 keeps two.
    let server = TestServer::start_with(Limits { history_bytes_max: 3_000, ..Limits::default() }).await;
    let mut client = server.confab().await;
    for _ in 0..10 {
        client.send(send("budget", &"m".repeat(1_000))).await.expect("send");
    }
    let page = client.history(HistoryRequest { room: "budget".into(), after_seq: 0, limit: 0 }).await;
    let page = page.expect("history").into_inner();
    assert_eq!(page.first_retained_seq, 9, "the oldest went");
    assert_eq!(page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), [9, 10]);
}

/// BroadcastMessages replays a room page by page (here 2 messages a page, or fewer by bytes):
/// everything, in order, between the seed's markers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_messages_replays_every_page_in_order() {
    let limits = Limits { history_page_max: 2, history_page_bytes_max: 150, ..Limits::default() };
    let server = TestServer::start_with(limits).await;
    let mut client = server.confab().await;
    for index in 0..7 {
        client.send(send("replay", &format!("m{index}"))).await.expect("send");
    }
    let mut seed = server.seed().await;
    let request = with_metadata(chat::Message { user: "ann".into(), content: String::new() }, "room", "replay");
    let mut stream = bounded(seed.broadcast_messages(request)).await.expect("broadcast").into_inner();
    let mut contents = Vec::new();
    while let Some(message) = bounded(stream.message()).await.expect("ok") {
        contents.push(message.content);
    }
    let mut expected = vec!["Welcome to the broadcast!".to_owned()];
    expected.extend((0..7).map(|index| format!("m{index}")));
    expected.push("Broadcast finished.".into());
    assert_eq!(contents, expected);
}

/// A `BroadcastMessages` replay holds one of its sender's session slots while it runs (it keeps
/// up to a page of history until its client reads it): a client that opens replays and reads
/// nothing is refused past `--sessions-per-user-max` (4 calls on a big room once held 2.3 GiB),
/// and a replay that ends gives its slot back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_broadcast_replays_are_bounded_by_the_session_quota() {
    let quotas = QuotaLimits { sessions_per_user_max: 2, ..QuotaLimits::default() };
    let server = TestServer::start_with_options(Limits::default(), with_quotas(quotas)).await;
    let mut client = server.confab().await;
    // 6 MB: more than a tonic client's HTTP/2 window per stream (2 MiB) and per connection
    // (5 MiB), so an unread replay stays open.
    for index in 0..100 {
        client.send(send("big", &format!("{index:04}{}", "x".repeat(60_000)))).await.expect("send");
    }
    let seed = server.seed().await;
    let request = || with_metadata(chat::Message { user: "ann".into(), content: String::new() }, "room", "big");
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut replay = bounded(seed.clone().broadcast_messages(request())).await.expect("a replay").into_inner();
        bounded(replay.message()).await.expect("ok").expect("the welcome");
        open.push(replay);
    }
    let refused = bounded(seed.clone().broadcast_messages(request())).await.expect_err("a third unread replay");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("--sessions-per-user-max"), "{}", refused.message());
    drop(open.pop());
    let mut retried = None;
    for _ in 0..100 {
        match bounded(seed.clone().broadcast_messages(request())).await {
            Ok(replay) => {
                retried = Some(replay);
                break;
            }
            Err(status) if status.code() == Code::ResourceExhausted => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(status) => panic!("unexpected {status:?}"),
        }
    }
    assert!(retried.is_some(), "a cancelled replay gives its slot back");
}

/// All open uploads together hold at most `--upload-bytes-in-flight-max` of bodies: a chunk
/// past it is refused (that upload commits nothing), and a finished upload gives its bytes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_in_flight_share_one_byte_budget() {
    let quotas = QuotaLimits { upload_bytes_in_flight_max: 1_000, ..QuotaLimits::default() };
    let server = TestServer::start_with_options(Limits::default(), with_quotas(quotas)).await;
    let chunk =
        |room: &str, bytes: usize| UploadChunk { room: room.into(), user: "ann".into(), body: "u".repeat(bytes) };
    let holder = server.confab().await;
    let mut other = server.confab().await;
    let second = || tokio_stream::iter(vec![chunk("other", 300)]);
    let (refusal, chunks, pending) = refused_beside_open_upload(&holder, chunk("held", 800), &mut other, second).await;
    assert!(refusal.message().contains("--upload-bytes-in-flight-max"), "{}", refusal.message());
    drop(chunks);
    assert_eq!(bounded(pending).await.expect("task").expect("the first commits").into_inner().count, 1);
    bounded(other.upload(tokio_stream::iter(vec![chunk("other", 300)]))).await.expect("the bytes came back");
}

/// One sender's open uploads share its own byte quota, below the server's budget: a second
/// upload of the same connection past it is refused, while another connection uploads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_senders_open_uploads_share_its_byte_quota() {
    let quotas = QuotaLimits { upload_bytes_per_user_max: 1_000, ..QuotaLimits::default() };
    let server = TestServer::start_with_options(Limits::default(), with_quotas(quotas)).await;
    let chunk =
        |room: &str, bytes: usize| UploadChunk { room: room.into(), user: "ann".into(), body: "u".repeat(bytes) };
    let holder = server.confab().await;
    let mut same_connection = holder.clone();
    let second = || tokio_stream::iter(vec![chunk("other", 300)]);
    let (refusal, chunks, pending) =
        refused_beside_open_upload(&holder, chunk("held", 800), &mut same_connection, second).await;
    assert!(refusal.message().contains("--upload-bytes-per-user-max"), "{}", refusal.message());
    let mut other = server.confab().await;
    bounded(other.upload(second())).await.expect("another sender has its own quota");
    drop(chunks);
    assert_eq!(bounded(pending).await.expect("task").expect("the first commits").into_inner().count, 1);
    bounded(same_connection.upload(second())).await.expect("the bytes came back");
}

/// An upload of `first` on `holder`, left open, and the refusal of an upload of `second()` on
/// `other` beside it. Which of the two the server sees first is up to it: while the second
/// wins (it commits, or the first is refused), the first is started again.
async fn refused_beside_open_upload<C, S>(
    holder: &ChatClient<C>,
    first: UploadChunk,
    other: &mut ChatClient<C>,
    second: impl Fn() -> S,
) -> (
    tonic::Status,
    mpsc::Sender<UploadChunk>,
    tokio::task::JoinHandle<Result<tonic::Response<v1::UploadReceipt>, tonic::Status>>,
)
where
    C: tonic::client::GrpcService<tonic::body::Body> + Clone + Send + 'static,
    C::Future: Send,
    C::ResponseBody: tonic::transport::Body<Data = bytes::Bytes> + Send + 'static,
    <C::ResponseBody as tonic::transport::Body>::Error: Into<tonic::codegen::StdError> + Send,
    S: futures::Stream<Item = UploadChunk> + Send + 'static,
{
    let open = || {
        let (chunks, outgoing) = mpsc::channel::<UploadChunk>(4);
        chunks.try_send(first.clone()).expect("room for one");
        let mut client = holder.clone();
        (chunks, tokio::spawn(async move { client.upload(ReceiverStream::new(outgoing)).await }))
    };
    let (mut chunks, mut pending) = open();
    for _ in 0..200 {
        if pending.is_finished() {
            (chunks, pending) = open();
        }
        match bounded(other.upload(second())).await {
            Ok(_) => tokio::time::sleep(Duration::from_millis(25)).await,
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                return (status, chunks, pending);
            }
        }
    }
    panic!("an upload beside the open one was never refused");
}

/// With `confab serve`'s one limiter for both ports, a user's unary sends, gRPC sessions and
/// WebSockets draw on one send bucket and one session quota.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_websocket_and_grpc_calls_share_one_bucket_and_quota() {
    use confab::api::auth::Authenticator;
    use confab::ws::access::{WS_PROTOCOL, token_protocol};
    use confab::ws::server::WsConfig;
    use serde_json::json;

    use super::websocket::{WsServer, close_of, next_chat_json, send_json};

    let tokens = Arc::new(Tokens::parse(&format!("{ANN} ann\n")).expect("tokens"));
    let rates = RateLimits { send: SendRate { per_second: 1, burst: 2 }, ..RateLimits::default() };
    let quotas = QuotaLimits { sessions_per_user_max: 2, ..QuotaLimits::default() };
    let limiter = SendLimiter::with_rates(rates).with_quotas(quotas);
    let options =
        ServerOptions { tokens: Some(Arc::clone(&tokens)), limiter: Some(limiter.clone()), ..Default::default() };
    let grpc = TestServer::start_with_options(Limits::default(), options).await;
    let config = WsConfig { auth: Authenticator::new(Some(tokens)), limiter: Some(limiter), ..WsConfig::default() };
    let web = WsServer::start_with(config).await;
    let protocols = format!("{WS_PROTOCOL}, {}", token_protocol(ANN));
    let headers = [("sec-websocket-protocol", protocols.as_str())];

    let mut unary = client(&grpc, Some(ANN)).await;
    let unnamed = |body: &str| SendRequest { user: String::new(), ..send("both", body) };
    unary.send(unnamed("1")).await.expect("1");
    unary.send(unnamed("2")).await.expect("2");
    let mut socket = web.connect_with("format=json", &headers).await;
    send_json(&mut socket, json!({"type": "join", "room": "both"})).await;
    send_json(&mut socket, json!({"type": "post", "room": "both", "body": "3"})).await;
    let error = loop {
        let frame = next_chat_json(&mut socket).await;
        if frame["type"] == "error" {
            break frame;
        }
    };
    assert_eq!(error["code"].as_i64(), Some(Code::ResourceExhausted as i64), "{error}");
    assert!(error["message"].as_str().is_some_and(|m| m.contains("send rate")), "the gRPC sends used it: {error}");

    // The socket is one session; a gRPC session is the second; a second socket is one too many.
    let _session = open_session(&mut unary, "ann").await;
    let mut third = web.connect_with("format=json", &headers).await;
    let (_, reason) = close_of(&mut third).await;
    assert!(reason.contains("--sessions-per-user-max"), "{reason}");
    drop(socket);
    web.stop().await.expect("stopped");
}

/// A seed `ChatStream` cannot carry a refusal and go on, so a join over the room quota ends it
/// with the status, naming the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_stream_over_the_room_quota_ends_with_the_status() {
    let quotas = QuotaLimits { rooms_per_user_max: 1, ..QuotaLimits::default() };
    let server = TestServer::start_with_options(Limits::default(), with_quotas(quotas)).await;
    let mut seed = server.seed().await;
    let hello = |content: &str| chat::Message { user: "ann".into(), content: content.into() };
    let (first_messages, outgoing) = mpsc::channel(4);
    first_messages.send(hello("in a")).await.expect("queue");
    let request = with_metadata(ReceiverStream::new(outgoing), "room", "room-a");
    let mut first = bounded(seed.chat_stream(request)).await.expect("the first room").into_inner();
    let echo = bounded(first.message()).await.expect("ok").expect("its own message back");
    assert_eq!(echo.content, "in a");
    let request = with_metadata(tokio_stream::iter(vec![hello("in b")]), "room", "room-b");
    let mut second = bounded(seed.chat_stream(request)).await.expect("opens").into_inner();
    let ended = loop {
        match bounded(second.message()).await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("ended OK, but the room was over the quota"),
            Err(status) => break status,
        }
    };
    assert_eq!(ended.code(), Code::ResourceExhausted);
    assert!(ended.message().contains("--rooms-per-user-max"), "{}", ended.message());
    drop(first_messages);
}
