//! Graceful shutdown of the real binary on a durable store: SIGTERM while senders run and
//! streams are open. The streams must end with UNAVAILABLE and a message, the process must exit
//! 0 within `--shutdown-grace`, and after a restart on the same `--data-dir` every acknowledged
//! message must be in History with its number. The JSON logs must record the shutdown.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use confab::grpc::proto::confab_v1::{
    self as v1, HistoryRequest, SendRequest, SubscribeRequest, chat_client::ChatClient, client_frame, room_event,
    server_frame,
};
use tokio::io::AsyncReadExt;
use tokio::process::Child;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::Channel;

use super::{PATIENCE, bounded, serve_child, with_metadata};

/// The grace the server gets; the test allows this plus [`EXIT_SLACK`] for the process to end.
const GRACE: Duration = Duration::from_secs(5);
/// Time for the process to start exiting and be reaped on a loaded 2-core machine.
const EXIT_SLACK: Duration = Duration::from_secs(5);
const ROOMS: [&str; 2] = ["north", "south"];
const SENDERS: usize = 4;

async fn start(data_dir: &Path) -> (Child, String) {
    let grace = format!("{}s", GRACE.as_secs());
    let args = ["--listen", "127.0.0.1:0", "--log-format", "json", "--shutdown-grace", &grace, "--data-dir"];
    serve_child(args.iter().map(std::ffi::OsStr::new).chain([data_dir.as_os_str()])).await
}

async fn connect(address: &str) -> ChatClient<Channel> {
    let channel = Channel::from_shared(format!("http://{address}")).expect("uri").connect().await.expect("connect");
    ChatClient::new(channel)
}

/// Sends until the server stops answering; records (room, seq, client_msg_id) of every ack.
async fn sender(address: String, id: usize, acked: Arc<Mutex<Vec<(String, u64, String)>>>) {
    let mut client = connect(&address).await;
    for i in 0.. {
        let room = ROOMS[i % ROOMS.len()];
        let msg_id = format!("s{id}-{i}");
        let request = SendRequest {
            room: room.into(),
            user: format!("sender{id}"),
            client_msg_id: msg_id.clone(),
            body: "x".into(),
        };
        match client.send(request).await {
            Ok(reply) => acked.lock().expect("acks").push((room.into(), reply.into_inner().seq, msg_id)),
            Err(_) => return,
        }
    }
}

/// Sends SIGTERM (no extra crate: the `kill` command).
pub(super) fn terminate(child: &Child) {
    let pid = child.id().expect("still running");
    let status = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("run kill");
    assert!(status.success(), "kill -TERM {pid}");
}

/// Reads a stream until it ends; returns its final status (an `Err` status, or `None` if it
/// ended OK).
async fn final_status<T>(stream: &mut tonic::Streaming<T>) -> Option<tonic::Status> {
    loop {
        match stream.message().await {
            Ok(Some(_)) => {}
            Ok(None) => return None,
            Err(status) => return Some(status),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_streams_exits_in_grace_and_loses_no_acknowledged_message() {
    let data_dir = std::env::temp_dir().join(format!("confab-shutdown-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data_dir);
    let (mut server, address) = start(&data_dir).await;
    let mut stderr = server.stderr.take().expect("stderr");
    let logs = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    let mut client = connect(&address).await;

    // Open streams: a subscription to one room and a session joined to the other.
    let request = SubscribeRequest { room: ROOMS[0].into(), after_seq: None, user: String::new() };
    let mut subscription = client.subscribe(request).await.expect("subscribe").into_inner();
    bounded(subscription.message()).await.expect("ok").expect("subscribed");
    let (frames, outgoing) = mpsc::channel(4);
    let join = v1::Join { room: ROOMS[1].into(), after_seq: None };
    frames.send(v1::ClientFrame { frame: Some(client_frame::Frame::Join(join)) }).await.expect("queue");
    let request = with_metadata(ReceiverStream::new(outgoing), "user", "watcher");
    let mut session = client.session(request).await.expect("session").into_inner();
    let joined = bounded(session.message()).await.expect("ok").and_then(|frame| frame.frame);
    assert!(matches!(joined, Some(server_frame::Frame::Event(_))), "joined: {joined:?}");

    // A refusal, which the logs must sum up with its reason.
    let refused =
        SendRequest { room: "bad room!".into(), user: "x".into(), client_msg_id: String::new(), body: "x".into() };
    assert_eq!(client.send(refused).await.expect_err("a bad room name").code(), Code::InvalidArgument);

    // Senders run while the server is told to stop.
    let acked = Arc::new(Mutex::new(Vec::new()));
    let senders: Vec<_> =
        (0..SENDERS).map(|id| tokio::spawn(sender(address.clone(), id, Arc::clone(&acked)))).collect();
    bounded(async {
        while acked.lock().expect("acks").len() < 50 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    terminate(&server);
    let signalled = Instant::now();

    for (name, status) in [
        ("Subscribe", bounded(final_status(&mut subscription)).await),
        ("Session", bounded(final_status(&mut session)).await),
    ] {
        let status = status.unwrap_or_else(|| panic!("{name} ended without a status"));
        assert_eq!(status.code(), Code::Unavailable, "{name}: {status:?}");
        assert!(status.message().contains("shutting down"), "{name} says why: {status:?}");
    }
    let exit = tokio::time::timeout(GRACE + EXIT_SLACK, server.wait()).await.expect("exits within the grace");
    assert!(exit.expect("reaped").success(), "exit status 0");
    let took = signalled.elapsed();
    assert!(took < GRACE + EXIT_SLACK, "exited after {took:?}");
    for sender in senders {
        bounded(sender).await.expect("sender stops once the server is gone");
    }
    drop(frames);

    let logs = bounded(logs).await.expect("log reader");
    let entries: Vec<serde_json::Value> = logs
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("JSON log line: {line}")))
        .collect();
    // Refusals are summed up at info (the first after a quiet second at once), with the first
    // one's fields as the example.
    let refusal = entries
        .iter()
        .find(|entry| entry["fields"]["codes"].as_str().is_some_and(|codes| codes.contains("INVALID_ARGUMENT")))
        .expect("the refusal is logged");
    assert_eq!(refusal["level"], "INFO");
    assert!(refusal["fields"]["message"].as_str().is_some_and(|m| m.starts_with("refused 1 call ")), "{refusal}");
    assert_eq!(refusal["fields"]["rpc"], "confab.v1.Chat/Send");
    assert_eq!(refusal["fields"]["code"], "INVALID_ARGUMENT");
    assert!(refusal["fields"]["reason"].as_str().is_some_and(|reason| reason.contains("room")), "{refusal}");
    assert!(refusal["fields"]["peer"].as_str().is_some_and(|peer| peer.starts_with("127.0.0.1:")), "{refusal}");
    let messages: Vec<&str> = entries.iter().filter_map(|entry| entry["fields"]["message"].as_str()).collect();
    for expected in ["shutting down", "NOT_SERVING", "stopped cleanly"] {
        assert!(messages.iter().any(|m| m.contains(expected)), "a log line says {expected:?}: {messages:?}");
    }

    // Restart on the same directory: every acknowledged message is there, with its number.
    let acked = std::mem::take(&mut *acked.lock().expect("acks"));
    assert!(acked.len() >= 50, "the senders made progress");
    let (mut server, address) = start(&data_dir).await;
    let mut client = connect(&address).await;
    for room in ROOMS {
        let mut stored = BTreeMap::new();
        loop {
            let after_seq = stored.keys().next_back().copied().unwrap_or(0);
            let request = HistoryRequest { room: room.into(), after_seq, limit: 0 };
            let page = bounded(client.history(request)).await.expect("history after restart").into_inner();
            if page.messages.is_empty() {
                break;
            }
            stored.extend(page.messages.into_iter().map(|m| (m.seq, m.client_msg_id)));
        }
        for (_, seq, msg_id) in acked.iter().filter(|(r, _, _)| r == room) {
            assert_eq!(stored.get(seq), Some(msg_id), "acknowledged {room}#{seq} survived the shutdown");
        }
    }
    // The restarted server still serves a subscription from where it left off.
    let request = SubscribeRequest { room: ROOMS[0].into(), after_seq: Some(0), user: String::new() };
    let mut stream = client.subscribe(request).await.expect("subscribe").into_inner();
    let first = bounded(stream.message()).await.expect("ok").and_then(|event| event.event);
    assert!(matches!(first, Some(room_event::Event::Subscribed(ref s)) if s.recovered), "resumed: {first:?}");
    server.start_kill().expect("stop");
    tokio::time::timeout(PATIENCE, server.wait()).await.expect("reaped in time").expect("reaped");
    let _ = std::fs::remove_dir_all(&data_dir);
}
