//! Crash test: `confab serve` as a child process on a data directory, concurrent senders that
//! record every acknowledged (room, seq, client_msg_id), `kill -9` at a seeded random moment,
//! a restart on the same directory, then checks: every acknowledged message is there with its
//! number, nothing is doubled (even after retrying the unacknowledged sends with their ids),
//! numbers are contiguous, and a subscriber resumes without a gap.
//!
//! `cargo test --test e2e crash` runs 3 seeds; `CONFAB_CRASH_ROUNDS=50` runs more (a longer
//! soak of the same check; each round takes about a second).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use confab::grpc::proto::confab_v1::{
    HistoryRequest, SendRequest, SubscribeRequest, chat_client::ChatClient, room_event,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::transport::Channel;

use super::{PATIENCE, bounded};

const ROOMS: [&str; 3] = ["alpha", "beta", "gamma"];
const SENDERS: usize = 6;
const ROUNDS_DEFAULT: u64 = 3;

/// A tiny seeded generator (xorshift64*): the crash moment and the senders' choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

pub(super) struct Server {
    pub(super) child: Child,
    pub(super) address: String,
}

/// Starts `confab serve` on `data_dir` and reads its address from the start-up line.
pub(super) async fn start_server(data_dir: &Path) -> Server {
    let mut command = Command::new(env!("CARGO_BIN_EXE_confab"));
    command.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"]).arg(data_dir);
    spawn_server(command).await
}

/// Runs `command` (which starts `confab serve`) and reads the address from its start-up line.
pub(super) async fn spawn_server(mut command: Command) -> Server {
    let mut child =
        command.stdout(Stdio::piped()).stderr(Stdio::null()).kill_on_drop(true).spawn().expect("start confab serve");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = bounded(lines.next_line()).await.expect("read").expect("a start-up line");
    let address = line
        .strip_prefix("confab listening on ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("unexpected start-up line: {line}"))
        .to_owned();
    Server { child, address }
}

pub(super) async fn client(address: &str) -> ChatClient<Channel> {
    let channel = Channel::from_shared(format!("http://{address}")).expect("uri").connect().await.expect("connect");
    ChatClient::new(channel)
}

/// What the senders saw: acknowledged sends, and sends in flight when the server died.
#[derive(Default)]
struct Ledger {
    acked: Vec<(String, u64, String)>,
    unacked: Vec<(String, String, String)>,
}

async fn sender(address: String, id: usize, seed: u64, ledger: Arc<Mutex<Ledger>>) {
    let mut client = client(&address).await;
    let mut rng = Rng(seed ^ (id as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    for i in 0.. {
        let room = ROOMS[(rng.next() % ROOMS.len() as u64) as usize];
        let msg_id = format!("s{id}-{i}");
        let user = format!("sender{id}");
        let body = format!("message {i} of {id}");
        let request = SendRequest { room: room.into(), user: user.clone(), client_msg_id: msg_id.clone(), body };
        match client.send(request).await {
            Ok(reply) => ledger.lock().expect("ledger").acked.push((room.into(), reply.into_inner().seq, msg_id)),
            Err(_) => {
                ledger.lock().expect("ledger").unacked.push((room.into(), user, msg_id));
                return;
            }
        }
    }
}

/// Every message of a room, by paging History.
async fn all_messages(client: &mut ChatClient<Channel>, room: &str) -> Vec<(u64, String)> {
    let mut messages = Vec::new();
    loop {
        let after_seq = messages.last().map_or(0, |(seq, _)| *seq);
        let page = client
            .history(HistoryRequest { room: room.into(), after_seq, limit: 0 })
            .await
            .expect("history after restart")
            .into_inner();
        if page.messages.is_empty() {
            return messages;
        }
        messages.extend(page.messages.into_iter().map(|m| (m.seq, m.client_msg_id)));
    }
}

async fn crash_round(seed: u64, data_dir: &Path) {
    let _ = std::fs::remove_dir_all(data_dir);
    let mut server = start_server(data_dir).await;
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let senders: Vec<_> =
        (0..SENDERS).map(|id| tokio::spawn(sender(server.address.clone(), id, seed, Arc::clone(&ledger)))).collect();
    let mut rng = Rng(seed);
    tokio::time::sleep(Duration::from_millis(150 + rng.next() % 600)).await;
    server.child.start_kill().expect("kill -9");
    server.child.wait().await.expect("reaped");
    for sender in senders {
        bounded(sender).await.expect("sender task");
    }
    let ledger = std::mem::take(&mut *ledger.lock().expect("ledger"));
    assert!(!ledger.acked.is_empty(), "seed {seed}: the senders made progress before the crash");

    let mut server = start_server(data_dir).await;
    let mut client = client(&server.address).await;
    // Retry what was in flight, as the same user with the same ids (the dedupe key): each is
    // appended at most once overall.
    for (room, user, msg_id) in &ledger.unacked {
        let request =
            SendRequest { room: room.clone(), user: user.clone(), client_msg_id: msg_id.clone(), body: "retry".into() };
        client.send(request).await.expect("retry after restart");
    }
    for room in ROOMS {
        let messages = all_messages(&mut client, room).await;
        let seqs: Vec<u64> = messages.iter().map(|(seq, _)| *seq).collect();
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "seed {seed}: {room} is contiguous from 1");
        let ids: BTreeSet<&String> = messages.iter().map(|(_, id)| id).collect();
        assert_eq!(ids.len(), messages.len(), "seed {seed}: no message of {room} is stored twice");
        let by_seq: BTreeMap<u64, &String> = messages.iter().map(|(seq, id)| (*seq, id)).collect();
        for (acked_room, seq, msg_id) in ledger.acked.iter().filter(|(r, _, _)| r == room) {
            assert_eq!(
                by_seq.get(seq),
                Some(&msg_id),
                "seed {seed}: acknowledged {acked_room}#{seq} survived the crash"
            );
        }
        // A subscriber that had read up to the middle resumes exactly after it.
        let middle = seqs.len() as u64 / 2;
        let request = SubscribeRequest { room: room.into(), after_seq: Some(middle), user: String::new() };
        let mut stream = client.subscribe(request).await.expect("subscribe").into_inner();
        match bounded(stream.message()).await.expect("ok").and_then(|e| e.event) {
            Some(room_event::Event::Subscribed(s)) => {
                assert!(s.recovered && s.first_seq == middle + 1, "seed {seed}: G5")
            }
            other => panic!("seed {seed}: expected subscribed, got {other:?}"),
        }
        for expected in middle + 1..=seqs.len() as u64 {
            match bounded(stream.message()).await.expect("ok").and_then(|e| e.event) {
                Some(room_event::Event::Message(m)) => assert_eq!(m.seq, expected, "seed {seed}: resume without a gap"),
                other => panic!("seed {seed}: expected message {expected}, got {other:?}"),
            }
        }
    }
    server.child.start_kill().expect("stop");
    server.child.wait().await.expect("reaped");
}

fn data_dir(seed: u64) -> PathBuf {
    std::env::temp_dir().join(format!("confab-crash-{}-{seed}", std::process::id()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_kill_9() {
    let rounds = std::env::var("CONFAB_CRASH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(ROUNDS_DEFAULT);
    let base = std::env::var("CONFAB_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_u64);
    for round in 0..rounds {
        let seed = base.wrapping_add(round);
        let dir = data_dir(seed);
        tokio::time::timeout(PATIENCE * 3, crash_round(seed, &dir))
            .await
            .unwrap_or_else(|_| panic!("seed {seed} timed out"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_data_directory_is_refused_at_start_up_naming_the_file() {
    let dir = data_dir(u64::MAX);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("confab.redb"), vec![0x42; 4096]).expect("garbage");
    let output = Command::new(env!("CARGO_BIN_EXE_confab"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .output();
    let output = bounded(output).await.expect("ran");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "refused to start");
    assert!(stderr.contains("confab.redb") && stderr.contains("--data-dir"), "names the file and flag: {stderr}");
    assert!(!stderr.contains("panicked"), "no panic: {stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
