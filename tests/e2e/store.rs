//! The history store under damage and faults (issue 14): damaged records are never served,
//! a damaged room answers DATA_LOSS while others serve, `confab store check` names the damage,
//! a truncated or emptied store is refused at start-up without a panic, a clean SIGTERM leaves
//! a store that needs no repair, and a failing store shows in health and recovers.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use confab::grpc::proto::confab_v1::{HistoryRequest, SendRequest, chat_client::ChatClient};
use confab::grpc::server::ServerOptions;
use confab_actors::EngineConfig;
use confab_actors::store::RedbStore;
use tokio::process::Command;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use super::crash::{Server, client, spawn_server, start_server};
use super::shutdown::terminate;
use super::{TestServer, bounded};

#[path = "../../actors/tests/actors/faulty_store.rs"]
#[allow(dead_code, reason = "shared with the actor tests, which use every fault; these use one")]
mod faulty_store;

/// redb's page size: zeroing one page is the damage a bad sector or a torn write leaves.
const PAGE_BYTES: usize = 4096;

/// A fresh data directory under the temp dir, removed when dropped.
struct DataDir(PathBuf);

impl DataDir {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("confab-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        Self(path)
    }

    fn file(&self) -> PathBuf {
        self.0.join(RedbStore::FILE_NAME)
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn send(client: &mut ChatClient<Channel>, room: &str, body: &str) -> u64 {
    let request =
        SendRequest { room: room.into(), user: "ann".into(), client_msg_id: String::new(), body: body.into() };
    client.send(request).await.unwrap_or_else(|status| panic!("send to {room}: {status:?}")).into_inner().seq
}

async fn history(client: &mut ChatClient<Channel>, room: &str) -> Result<Vec<(u64, String)>, tonic::Status> {
    let page = client.history(HistoryRequest { room: room.into(), after_seq: 0, limit: 0 }).await?.into_inner();
    Ok(page.messages.into_iter().map(|m| (m.seq, m.body)).collect())
}

/// SIGTERM, and a clean exit within the test's patience.
async fn stop(mut server: Server) {
    terminate(&server.child);
    let status = bounded(server.child.wait()).await.expect("reaped");
    assert!(status.success(), "exit 0 after SIGTERM: {status:?}");
}

/// Every offset where `needle` occurs in `haystack` (redb copies pages on write, so an older
/// copy of a record may sit in a page not yet reused).
fn occurrences(haystack: &[u8], needle: &[u8]) -> Vec<usize> {
    haystack.windows(needle.len()).enumerate().filter(|(_, w)| *w == needle).map(|(at, _)| at).collect()
}

/// Runs `confab ARGS…` to completion (bounded): (success, stdout, stderr).
async fn confab(args: &[&str], directory: &Path) -> (bool, String, String) {
    let output = bounded(Command::new(env!("CARGO_BIN_EXE_confab")).args(args).arg(directory).output())
        .await
        .expect("ran confab");
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status.success(), text(&output.stdout), text(&output.stderr))
}

/// `confab serve` on a directory it must refuse: the exit, and what it said.
async fn refused_start(directory: &Path) -> String {
    let (success, _, stderr) =
        confab(&["serve", "--listen", "127.0.0.1:0", "--ws-listen", "off", "--data-dir"], directory).await;
    assert!(!success, "refused to start: {stderr}");
    assert!(
        stderr.contains("--data-dir") && stderr.contains(RedbStore::FILE_NAME),
        "names the flag and file: {stderr}"
    );
    assert!(!stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"), "no panic: {stderr}");
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_a_stored_body_answers_data_loss_and_other_rooms_serve() {
    const BODY: &str = "the original words of message two, 7f3a";
    let dir = DataDir::new("flip");
    let server = start_server(&dir.0).await;
    let mut chat = client(&server.address).await;
    assert_eq!(send(&mut chat, "healthy", "fine words").await, 1);
    for body in ["one", BODY, "three"] {
        send(&mut chat, "damaged", body).await;
    }
    stop(server).await;

    let mut bytes = std::fs::read(dir.file()).expect("read the store");
    let found = occurrences(&bytes, BODY.as_bytes());
    assert!(!found.is_empty(), "the body is stored as is");
    // 'o' (0x6f) becomes 'n' (0x6e): still UTF-8, so only a checksum can tell.
    let flip_at = BODY.find("original").expect("in the body") + 1;
    for at in &found {
        bytes[at + flip_at] ^= 0x01;
    }
    let altered = String::from_utf8(bytes[found[0]..found[0] + BODY.len()].to_vec()).expect("utf-8");
    assert_ne!(altered, BODY);
    std::fs::write(dir.file(), &bytes).expect("write the damage");

    let server = start_server(&dir.0).await;
    let mut chat = client(&server.address).await;
    let refused = history(&mut chat, "damaged").await.expect_err("damaged history is refused");
    assert_eq!(refused.code(), Code::DataLoss, "{refused:?}");
    assert!(refused.message().contains("room damaged") && refused.message().contains("message 2"), "{refused:?}");
    assert!(!refused.message().contains(&altered), "never the altered text: {refused:?}");
    let request =
        SendRequest { room: "damaged".into(), user: "ann".into(), client_msg_id: String::new(), body: "x".into() };
    assert_eq!(chat.send(request).await.expect_err("fenced").code(), Code::DataLoss, "a send cannot renumber it");
    assert_eq!(history(&mut chat, "healthy").await.expect("another room serves"), vec![(1, "fine words".into())]);
    assert_eq!(send(&mut chat, "healthy", "more").await, 2);
    stop(server).await;

    let (clean, stdout, stderr) = confab(&["store", "check"], &dir.0).await;
    assert!(!clean, "check fails on damage: {stdout} {stderr}");
    assert!(stdout.contains("confab.redb: room damaged: message 2:"), "names file, room and seq: {stdout}");
    assert!(!stdout.contains("room healthy"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zeroed_page_fences_its_room_only_and_store_check_names_it() {
    const MESSAGES: usize = 40;
    let dir = DataDir::new("zeroed");
    let server = start_server(&dir.0).await;
    let mut chat = client(&server.address).await;
    // Bodies near a quarter page, so each room's messages span pages of their own.
    let body = |room: &str, i: usize| format!("{room}-{i:03}-{}", "x".repeat(900));
    for room in ["aaa", "zzz"] {
        for i in 1..=MESSAGES {
            send(&mut chat, room, &body(room, i)).await;
        }
    }
    stop(server).await;

    let mut bytes = std::fs::read(dir.file()).expect("read the store");
    let found = occurrences(&bytes, body("aaa", MESSAGES / 2).as_bytes());
    assert!(!found.is_empty(), "stored as is");
    for at in found {
        let page = at / PAGE_BYTES * PAGE_BYTES;
        bytes[page..page + PAGE_BYTES].fill(0);
    }
    std::fs::write(dir.file(), &bytes).expect("write the damage");

    let server = start_server(&dir.0).await;
    let mut chat = client(&server.address).await;
    let refused = history(&mut chat, "aaa").await.expect_err("the zeroed room is refused");
    assert_eq!(refused.code(), Code::DataLoss, "{refused:?}");
    assert!(refused.message().contains("room aaa"), "{refused:?}");
    let again = history(&mut chat, "aaa").await.expect_err("and again, the registry still runs");
    assert_eq!(again.code(), Code::DataLoss, "{again:?}");
    let other = history(&mut chat, "zzz").await.expect("another room serves");
    assert_eq!(other.len(), MESSAGES);
    assert_eq!(send(&mut chat, "zzz", "more").await, MESSAGES as u64 + 1);
    let mut health = HealthClient::new(
        Channel::from_shared(format!("http://{}", server.address)).expect("uri").connect().await.expect("connect"),
    );
    let status = health.check(HealthCheckRequest { service: String::new() }).await.expect("health").into_inner();
    assert_eq!(status.status, ServingStatus::Serving as i32, "the engine is alive");
    stop(server).await;

    let (clean, stdout, stderr) = confab(&["store", "check"], &dir.0).await;
    assert!(!clean, "check fails on damage: {stdout} {stderr}");
    assert!(stdout.contains("room aaa:"), "names the room: {stdout}");
    assert!(!stdout.contains("room zzz"), "{stdout}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_or_emptied_store_is_refused_at_start_up_without_a_panic() {
    let dir = DataDir::new("truncated");
    let server = start_server(&dir.0).await;
    let mut chat = client(&server.address).await;
    for i in 0..20 {
        send(&mut chat, "lobby", &format!("message {i} {}", "y".repeat(500))).await;
    }
    stop(server).await;

    let file = std::fs::OpenOptions::new().write(true).open(dir.file()).expect("open");
    let length = file.metadata().expect("metadata").len();
    file.set_len(length / 2).expect("truncate");
    refused_start(&dir.0).await;

    file.set_len(0).expect("empty it");
    let stderr = refused_start(&dir.0).await;
    assert!(stderr.contains(RedbStore::MARKER_NAME), "says why an empty file is refused: {stderr}");
    assert_eq!(std::fs::metadata(dir.file()).expect("metadata").len(), 0, "left untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_sigterm_leaves_a_store_that_needs_no_repair() {
    let dir = DataDir::new("sigterm");
    for round in 1..=3u64 {
        let server = start_server(&dir.0).await;
        let mut chat = client(&server.address).await;
        for i in 0..10 {
            send(&mut chat, "lobby", &format!("round {round} message {i}")).await;
        }
        stop(server).await;
        // A read-only open refuses a file that needs repair, so this also proves it closed.
        let report = RedbStore::check(&dir.0).unwrap_or_else(|error| panic!("round {round}: {error}"));
        assert!(report.is_clean(), "round {round}: {report:?}");
        assert_eq!(report.messages, round * 10, "round {round}");
    }
    let (clean, stdout, stderr) = confab(&["store", "check"], &dir.0).await;
    assert!(clean && stdout.contains("30 messages"), "{stdout} {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_store_turns_health_not_serving_and_writes_resume_when_it_commits() {
    let store = Arc::new(faulty_store::FaultyStore::new(None));
    let config = EngineConfig::default().with_storage(store.clone());
    let server = TestServer::start_with_engine(config, ServerOptions::default()).await;
    let mut chat = server.confab().await;
    let mut health = HealthClient::new(server.channel().await);
    let status = |response: tonic_health::pb::HealthCheckResponse| response.status;
    let serving = ServingStatus::Serving as i32;
    assert_eq!(send(&mut chat, "lobby", "one").await, 1);
    assert_eq!(status(health.check(HealthCheckRequest::default()).await.expect("health").into_inner()), serving);

    store.fail(true);
    let request =
        SendRequest { room: "lobby".into(), user: "ann".into(), client_msg_id: String::new(), body: "lost".into() };
    assert_eq!(chat.send(request).await.expect_err("the disk is full").code(), Code::Unavailable);
    for name in ["", "confab.v1.Chat"] {
        let answer = health.check(HealthCheckRequest { service: name.into() }).await.expect("health").into_inner();
        assert_eq!(answer.status, ServingStatus::NotServing as i32, "{name:?} while commits fail");
    }

    store.fail(false);
    bounded(async {
        while status(health.check(HealthCheckRequest::default()).await.expect("health").into_inner()) != serving {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(send(&mut chat, "lobby", "two").await, 2, "writes resume, numbering after the last durable");
    assert_eq!(history(&mut chat, "lobby").await.expect("history"), vec![(1, "one".into()), (2, "two".into())]);
    server.stop().await.expect("stops");
}

/// Sets the soft limit on the size of files process `pid` may write (RLIMIT_FSIZE): a write
/// past it fails with EFBIG, which is what a full disk looks like to redb, with no mount
/// and no root. `None` lifts it.
fn limit_file_size(pid: u32, bytes: Option<u64>) {
    let limit = bytes.map_or("unlimited:".to_owned(), |bytes| format!("{bytes}:"));
    let status = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--fsize={limit}")])
        .status()
        .expect("run prlimit (util-linux)");
    assert!(status.success(), "prlimit --fsize={limit}");
}

/// `confab serve` with SIGXFSZ ignored (the shell's `trap ''` survives `exec`), so that a
/// write over the file size limit fails instead of killing the server.
async fn start_server_ignoring_file_size_signal(data_dir: &Path) -> Server {
    let mut command = Command::new("sh");
    command
        .args(["-c", "trap '' XFSZ; exec \"$0\" serve --listen 127.0.0.1:0 --ws-listen off --data-dir \"$1\""])
        .arg(env!("CARGO_BIN_EXE_confab"))
        .arg(data_dir);
    spawn_server(command).await
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_turns_health_not_serving_and_writes_resume_when_space_returns() {
    /// Sends before the disk counts as never filling (the store grows in steps of far less).
    const SENDS_MAX: usize = 2_000;
    let dir = DataDir::new("full");
    let mut server = start_server_ignoring_file_size_signal(&dir.0).await;
    let pid = server.child.id().expect("running");
    let mut chat = client(&server.address).await;
    let mut health = HealthClient::new(
        Channel::from_shared(format!("http://{}", server.address)).expect("uri").connect().await.expect("connect"),
    );
    let body = |i: usize| format!("{i:05} {}", "z".repeat(20_000));
    let mut acked = vec![(send(&mut chat, "lobby", &body(0)).await, body(0))];

    limit_file_size(pid, Some(std::fs::metadata(dir.file()).expect("metadata").len()));
    let mut refused = None;
    for i in 1..SENDS_MAX {
        let request =
            SendRequest { room: "lobby".into(), user: "ann".into(), client_msg_id: String::new(), body: body(i) };
        match chat.send(request).await {
            Ok(reply) => acked.push((reply.into_inner().seq, body(i))),
            Err(status) => {
                refused = Some(status);
                break;
            }
        }
    }
    let refused = refused.expect("the store filled up");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    let answer = health.check(HealthCheckRequest::default()).await.expect("health").into_inner();
    assert_eq!(answer.status, ServingStatus::NotServing as i32, "a full disk is NOT_SERVING");

    limit_file_size(pid, None);
    let resumed = bounded(async {
        loop {
            let request = SendRequest {
                room: "lobby".into(),
                user: "ann".into(),
                client_msg_id: String::new(),
                body: "back".into(),
            };
            match chat.send(request).await {
                Ok(reply) => return reply.into_inner().seq,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    })
    .await;
    assert_eq!(resumed, acked.len() as u64 + 1, "numbered on from the last durable message");
    acked.push((resumed, "back".into()));
    let answer = health.check(HealthCheckRequest::default()).await.expect("health").into_inner();
    assert_eq!(answer.status, ServingStatus::Serving as i32, "SERVING once commits succeed");
    terminate(&server.child);
    assert!(bounded(server.child.wait()).await.expect("reaped").success());

    // After a restart the store holds exactly the acknowledged messages, contiguous.
    let server = start_server(&dir.0).await;
    let mut chat = client(&server.address).await;
    let mut stored = Vec::new();
    loop {
        let after_seq = stored.last().map_or(0, |(seq, _): &(u64, String)| *seq);
        // Pages of 50 stay under a client's 4 MiB message limit.
        let request = HistoryRequest { room: "lobby".into(), after_seq, limit: 50 };
        let page = chat.history(request).await.expect("history").into_inner();
        if page.messages.is_empty() {
            break;
        }
        stored.extend(page.messages.into_iter().map(|m| (m.seq, m.body)));
    }
    assert!(stored == acked, "stored {} messages, acknowledged {}", stored.len(), acked.len());
    stop(server).await;
}
