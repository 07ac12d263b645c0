//! `confab-client` across a server crash: `confab serve --data-dir` as a child process, clients
//! mid-conversation, `kill -9`, a restart on the same port and directory, and the clients (not
//! restarted) ride it out: every acknowledged message is stored exactly once, no client is
//! shown a message twice or skips one, and what was sent during the outage arrives once after
//! it. Then the same for `confab chat` as a process.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use confab::grpc::proto::confab_v1::{HistoryRequest, SendRequest};
use confab_client::{Client, ClientOptions, Event, Events, Reconnect};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;

use super::bounded;
use super::crash::{Server, client, spawn_server, start_server};

const ROOM: &str = "ride";

/// Reconnect soon and often: the test waits for the restart, not for the backoff.
fn quick() -> Reconnect {
    Reconnect::default().with_delays(Duration::from_millis(20), Duration::from_millis(200))
}

fn data_dir(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("confab-client-{}-{name}", std::process::id()))
}

/// `kill -9`, reaped.
async fn kill_9(server: &mut Server) {
    server.child.start_kill().expect("kill -9");
    server.child.wait().await.expect("reaped");
}

/// `confab serve` again on the same address and directory.
async fn restart(address: &str, dir: &Path) -> Server {
    let mut command = Command::new(env!("CARGO_BIN_EXE_confab"));
    command.args(["serve", "--listen", address, "--data-dir"]).arg(dir);
    spawn_server(command).await
}

/// What one client was shown.
#[derive(Debug, Default)]
struct Seen {
    /// Messages of the room in the order shown: (seq, client_msg_id).
    messages: Vec<(u64, String)>,
    /// Acknowledged sends: client_msg_id -> seq.
    acked: BTreeMap<String, u64>,
    /// Resends the server had stored already (acknowledgements lost with the connection).
    duplicates: usize,
    disconnected: usize,
    reconnected: usize,
    /// Lag, inexact resumes and refusals: none are expected here.
    trouble: Vec<String>,
}

impl Seen {
    fn note(&mut self, event: Event) {
        match event {
            Event::Message(m) => self.messages.push((m.seq, m.client_msg_id)),
            Event::Sent { client_msg_id, seq, duplicate, .. } => {
                self.duplicates += usize::from(duplicate);
                assert!(self.acked.insert(client_msg_id, seq).is_none(), "one acknowledgement per send");
            }
            Event::Disconnected { .. } => self.disconnected += 1,
            Event::Reconnected { .. } => self.reconnected += 1,
            Event::Resumed { recovered: true, .. } | Event::Joined { .. } | Event::Presence { .. } => {}
            other => self.trouble.push(format!("{other:?}")),
        }
    }
}

/// Reads `events` into `seen` until `done` holds.
async fn read_until(events: &mut Events, seen: &mut Seen, done: impl Fn(&Seen) -> bool) {
    while !done(seen) {
        let event = bounded(events.next()).await.expect("the session goes on");
        seen.note(event);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_rides_out_a_server_kill_9_and_restart() {
    let dir = data_dir("lib");
    let _ = std::fs::remove_dir_all(&dir);
    let mut server = start_server(&dir).await;
    let url = format!("http://{}", server.address);
    let connect = |user: &str| Client::connect(ClientOptions::new(url.clone()).with_user(user).with_reconnect(quick()));
    let (ann, mut ann_events) = bounded(connect("ann")).await.expect("ann connects");
    let (bob, mut bob_events) = bounded(connect("bob")).await.expect("bob connects");
    let (mut ann_seen, mut bob_seen) = (Seen::default(), Seen::default());
    ann.join(ROOM, None).await.expect("join");
    bob.join(ROOM, None).await.expect("join");

    // Before: 10 sends, acknowledged and seen by both.
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(ann.send(ROOM, format!("before {i}")).await.expect("send"));
    }
    read_until(&mut ann_events, &mut ann_seen, |seen| seen.acked.len() == 10 && seen.messages.len() == 10).await;
    read_until(&mut bob_events, &mut bob_seen, |seen| seen.messages.len() == 10).await;

    // Mid-conversation: 10 more sends in flight, and the server dies under them.
    for i in 0..10 {
        ids.push(ann.send(ROOM, format!("racing {i}")).await.expect("send"));
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    kill_9(&mut server).await;
    // During the outage: 5 sends, which wait for the connection.
    for i in 0..5 {
        ids.push(ann.send(ROOM, format!("during {i}")).await.expect("send taken during the outage"));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut server = restart(&server.address, &dir).await;

    // After: everything acknowledged and seen once by both, with no lag and no inexact resume.
    read_until(&mut ann_events, &mut ann_seen, |seen| {
        seen.acked.len() == ids.len() && seen.messages.len() == ids.len()
    })
    .await;
    read_until(&mut bob_events, &mut bob_seen, |seen| seen.messages.len() == ids.len()).await;
    ann.close().await.expect("close");
    bob.close().await.expect("close");
    for (events, seen) in [(&mut ann_events, &mut ann_seen), (&mut bob_events, &mut bob_seen)] {
        loop {
            match bounded(events.next()).await.expect("ends with Closed") {
                Event::Closed(result) => break result.expect("closed normally"),
                event => seen.note(event),
            }
        }
        assert!(bounded(events.next()).await.is_none(), "nothing after Closed");
    }

    let mut history = client(&server.address).await;
    let page = history
        .history(HistoryRequest { room: ROOM.into(), after_seq: 0, limit: 0 })
        .await
        .expect("history")
        .into_inner();
    let stored: Vec<(u64, String)> = page.messages.into_iter().map(|m| (m.seq, m.client_msg_id)).collect();
    let expected_seqs: Vec<u64> = (1..=ids.len() as u64).collect();
    assert_eq!(stored.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(), expected_seqs, "contiguous from 1");
    let mut stored_ids: Vec<&String> = stored.iter().map(|(_, id)| id).collect();
    stored_ids.sort();
    let mut sent_ids: Vec<&String> = ids.iter().collect();
    sent_ids.sort();
    assert_eq!(stored_ids, sent_ids, "every send stored exactly once");
    for (id, seq) in &ann_seen.acked {
        assert!(stored.contains(&(*seq, id.clone())), "acknowledged {id} as #{seq} is stored as #{seq}");
    }
    let acked_before_kill = ann_seen.acked.len();
    eprintln!("ann: {} resends were stored already; {acked_before_kill} sends acknowledged", ann_seen.duplicates);
    for (name, seen) in [("ann", &ann_seen), ("bob", &bob_seen)] {
        assert_eq!(seen.messages, stored, "{name} was shown every message once, in order, no gap");
        assert!(seen.trouble.is_empty(), "{name}: {:?}", seen.trouble);
        assert_eq!((seen.disconnected, seen.reconnected), (1, 1), "{name} noticed the outage once");
    }
    kill_9(&mut server).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Lines of a child's stdout, as they come.
fn lines_of(stdout: tokio::process::ChildStdout) -> mpsc::UnboundedReceiver<String> {
    let (sender, receiver) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if sender.send(line).is_err() {
                return;
            }
        }
    });
    receiver
}

/// Collects lines into `shown` until one equals `wanted`.
async fn wait_for_line(lines: &mut mpsc::UnboundedReceiver<String>, shown: &mut Vec<String>, wanted: &str) {
    while !shown.iter().any(|line| line == wanted) {
        let line = bounded(lines.recv()).await.unwrap_or_else(|| panic!("chat ended before {wanted:?}: {shown:?}"));
        shown.push(line);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confab_chat_rides_out_a_server_kill_9_and_restart() {
    let dir = data_dir("chat");
    let _ = std::fs::remove_dir_all(&dir);
    let mut server = start_server(&dir).await;
    let url = format!("http://{}", server.address);
    let mut chat = Command::new(env!("CARGO_BIN_EXE_confab"))
        .args(["chat", "--room", ROOM, "--user", "cli", "--server", &url])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start confab chat");
    let mut stdin = chat.stdin.take().expect("stdin");
    let mut lines = lines_of(chat.stdout.take().expect("stdout"));
    let mut shown = Vec::new();

    stdin.write_all(b"before\n").await.expect("type");
    wait_for_line(&mut lines, &mut shown, "[1 #ride] cli: before").await;
    // Another user writes while the chat is connected, and again during the outage's end.
    let mut other = client(&server.address).await;
    let send = |body: &str| SendRequest {
        room: ROOM.into(),
        user: "dee".into(),
        client_msg_id: format!("dee-{body}"),
        body: body.into(),
    };
    other.send(send("hi")).await.expect("send");
    wait_for_line(&mut lines, &mut shown, "[2 #ride] dee: hi").await;

    kill_9(&mut server).await;
    stdin.write_all(b"during\n").await.expect("type during the outage");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let server = restart(&server.address, &dir).await;
    let mut other = client(&server.address).await;
    other.send(send("back")).await.expect("send after the restart");
    stdin.write_all(b"after\n").await.expect("type");
    drop(stdin);
    let output = bounded(chat.wait_with_output()).await.expect("chat ends after stdin closes");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{stderr}");
    while let Some(line) = lines.recv().await {
        shown.push(line);
    }
    let messages: Vec<&String> = shown.iter().filter(|line| line.starts_with('[')).collect();
    let bodies: Vec<&str> = messages.iter().filter_map(|line| line.split_once("] ").map(|(_, rest)| rest)).collect();
    let mut sorted = bodies.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), bodies.len(), "no line shown twice: {shown:?}");
    for wanted in ["cli: before", "dee: hi", "cli: during", "dee: back", "cli: after"] {
        assert!(bodies.contains(&wanted), "{wanted} shown: {shown:?}");
    }
    let seqs: Vec<u64> = messages
        .iter()
        .filter_map(|line| {
            line.strip_prefix('[').and_then(|rest| rest.split_once(' ')).and_then(|(n, _)| n.parse().ok())
        })
        .collect();
    assert_eq!(seqs, (1..=5).collect::<Vec<u64>>(), "in order, no gap: {shown:?}");
    assert!(shown.iter().any(|line| line.starts_with("* resumed #ride exactly")), "{shown:?}");
    assert!(stderr.contains("* connection lost") && stderr.contains("* reconnected"), "{stderr}");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
