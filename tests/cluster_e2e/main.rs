//! `confab serve --nats` end to end: 2–3 `confab serve` child processes over a real 3-server
//! NATS JetStream cluster on loopback, driven by gRPC clients (confab.v1).
//!
//! Built and run only by `scripts/cluster.sh` (`test = false` in Cargo.toml: it needs the pinned
//! nats-server, which that script installs). Every wait is bounded, so a broken cluster mode fails
//! a test instead of hanging it. Each test starts its own servers and nodes; every process is
//! killed when its test ends (`kill_on_drop`, and the harness's own `Child` handles).
//!
//! - `order`: clients of three nodes post into one room at once; every node delivers one order,
//!   and a message acknowledged on one node is in the next node's History at once (G7).
//! - `node_crash`: kill -9 of a node mid-conversation; its clients resend what was unacknowledged
//!   to another node with the same ids: nothing lost, nothing doubled.
//! - `leader_crash`: kill -9 of the room's stream leader (a nats-server): sends stall, then
//!   succeed again within a bound; every acknowledged message is kept.
//! - `quorum`: kill -9 of 2 of the 3 nats-servers: sends answer UNAVAILABLE within a bound,
//!   health is NOT_SERVING, a subscription stays open; after a restart health is SERVING
//!   again, sends succeed, and the subscription goes on without a gap.

// The harness is the actors crate's (one copy); not every helper of it is used here.
#[allow(dead_code)]
#[path = "../../actors/tests/cluster/nats.rs"]
mod nats;

mod leader_crash;
mod node_crash;
mod order;
mod presence;
mod quorum;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use confab::grpc::proto::confab_v1::{ChatMessage, HistoryRequest, SendRequest, chat_client::ChatClient};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};
use tonic::transport::Channel;

use crate::nats::NatsCluster;

/// Every wait of these tests is bounded by this (a node's start-up includes creating the R3
/// streams, a meta-leader round).
const PATIENCE: Duration = Duration::from_secs(30);

/// How long one Send may take before the client counts it unacknowledged and resends it.
const SEND_WAIT: Duration = Duration::from_secs(5);

/// Shard streams of the test nodes: fewer than the default, so start-up is quick.
const SHARDS: u32 = 2;

/// Messages each room keeps (`--history-len-max`): more than any test sends.
const HISTORY_LEN: u32 = 1_000;

/// A `confab serve --nats` child process (SIGKILLed when dropped).
struct Node {
    name: String,
    child: Child,
    address: String,
    /// Its stderr (logs), printed when a test fails.
    log: PathBuf,
}

impl Node {
    /// Starts node `name` over `cluster` and waits (bounded) for its start-up line.
    async fn start(cluster: &NatsCluster, name: &str) -> Node {
        let log = std::env::temp_dir().join(format!("confab-cluster-e2e-{}-{name}.log", std::process::id()));
        let stderr = std::fs::File::create(&log).expect("create a node log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_confab"))
            .args(["serve", "--listen", "127.0.0.1:0", "--ws-listen", "off", "--sends-per-second-max", "0"])
            .args(["--nats", &cluster.urls(), "--node-id", name])
            .args(["--nats-shards", &SHARDS.to_string(), "--history-len-max", &HISTORY_LEN.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .expect("start confab serve");
        let stdout = child.stdout.take().expect("stdout");
        let line = bounded(BufReader::new(stdout).lines().next_line()).await.expect("read the start-up line");
        let Some(line) = line else {
            panic!("{name} exited before serving: {}", std::fs::read_to_string(&log).unwrap_or_default())
        };
        let address = line
            .strip_prefix("confab listening on ")
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("unexpected start-up line of {name}: {line}"))
            .to_owned();
        assert!(line.contains(&format!("cluster node {name}")), "{name} is in cluster mode: {line}");
        Node { name: name.to_owned(), child, address, log }
    }

    /// SIGKILLs the node and reaps it.
    async fn kill(&mut self) {
        self.child.start_kill().expect("kill -9 a node");
        bounded(self.child.wait()).await.expect("reap a killed node");
    }

    async fn client(&self) -> ChatClient<Channel> {
        client(&self.address).await
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("node {} logs kept in {}", self.name, self.log.display());
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

async fn client(address: &str) -> ChatClient<Channel> {
    let channel = Channel::from_shared(format!("http://{address}")).expect("uri");
    ChatClient::new(bounded(channel.connect()).await.expect("connect"))
}

/// One Send, bounded by [`SEND_WAIT`]; the seq, or why it is unacknowledged.
async fn send(client: &mut ChatClient<Channel>, room: &str, user: &str, id: &str) -> Result<u64, String> {
    send_within(client, room, user, id, SEND_WAIT).await
}

/// One Send, bounded by `wait`; the seq, or why it is unacknowledged (`Code: message` for a
/// status the server answered).
async fn send_within(
    client: &mut ChatClient<Channel>,
    room: &str,
    user: &str,
    id: &str,
    wait: Duration,
) -> Result<u64, String> {
    let request =
        SendRequest { room: room.into(), user: user.into(), client_msg_id: id.into(), body: format!("body of {id}") };
    match tokio::time::timeout(wait, client.send(request)).await {
        Ok(Ok(reply)) => Ok(reply.into_inner().seq),
        Ok(Err(status)) => Err(format!("{:?}: {}", status.code(), status.message())),
        Err(_) => Err(format!("no answer within {wait:?}")),
    }
}

/// Every message of `room`, paging History.
async fn history(client: &mut ChatClient<Channel>, room: &str) -> Vec<ChatMessage> {
    let mut messages: Vec<ChatMessage> = Vec::new();
    loop {
        let after_seq = messages.last().map_or(0, |message| message.seq);
        let request = HistoryRequest { room: room.into(), after_seq, limit: 0 };
        let page = bounded(client.history(request)).await.expect("history").into_inner();
        if page.messages.is_empty() {
            return messages;
        }
        messages.extend(page.messages);
    }
}

/// Checks a room's whole history against what the clients saw acknowledged: numbered 1, 2, 3…
/// without a gap, every client message id once (nothing doubled), and every acknowledged
/// `(seq, id)` there at its number (nothing lost).
fn check_history(messages: &[ChatMessage], acknowledged: &[(u64, String)]) {
    let seqs: Vec<u64> = messages.iter().map(|message| message.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "the room is numbered without a gap");
    let ids: BTreeSet<&str> = messages.iter().map(|message| message.client_msg_id.as_str()).collect();
    assert_eq!(ids.len(), messages.len(), "no client message id is stored twice");
    let by_seq: BTreeMap<u64, &str> =
        messages.iter().map(|message| (message.seq, message.client_msg_id.as_str())).collect();
    for (seq, id) in acknowledged {
        assert_eq!(by_seq.get(seq), Some(&id.as_str()), "acknowledged #{seq} ({id}) is in the history");
    }
}

/// Awaits `future` for at most [`PATIENCE`].
async fn bounded<F: std::future::Future>(future: F) -> F::Output {
    tokio::time::timeout(PATIENCE, future).await.expect("finished within the test's patience")
}
