//! `grpc-timeout` deadlines: the server answers DEADLINE_EXCEEDED (not tonic's CANCELLED) and
//! commits nothing half-way: an upload past its deadline stores none of its messages.
//!
//! tonic's own client enforces a request's timeout locally and reports CANCELLED ("Timeout
//! expired") before any answer from the server can arrive, so the server's answer is checked
//! with a bare HTTP/2 client that leaves the deadline to the server.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use confab::grpc::server::ServerOptions;
use confab_actors::EngineConfig;
use confab_actors::store::{HistoryStore, MemoryStore, Retention, RoomAppend, StoreError, StoredRoom, StoredSummary};
use confab_engine::RoomName;

use confab::grpc::proto::chat::{self, chat_service_client::ChatServiceClient};
use confab::grpc::proto::confab_v1::{HistoryRequest, SendRequest, UploadChunk, chat_client::ChatClient};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::codegen::http;

use super::{TestServer, bounded, with_metadata};

/// A gRPC transport that sends `grpc-timeout` but does not act on it: hyper's bare HTTP/2.
#[derive(Clone)]
struct BareHttp2(hyper::client::conn::http2::SendRequest<tonic::body::Body>);

type BareResponse = Result<http::Response<hyper::body::Incoming>, hyper::Error>;

impl tower::Service<http::Request<tonic::body::Body>> for BareHttp2 {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = Pin<Box<dyn Future<Output = BareResponse> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), hyper::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(self.0.send_request(request))
    }
}

async fn bare(address: SocketAddr) -> BareHttp2 {
    let tcp = tokio::net::TcpStream::connect(address).await.expect("connect");
    let io = hyper_util::rt::TokioIo::new(tcp);
    let (sender, connection) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await.expect("handshake");
    tokio::spawn(connection);
    BareHttp2(sender)
}

fn origin(address: SocketAddr) -> http::Uri {
    format!("http://{address}").parse().expect("uri")
}

fn send(room: &str, id: &str, body: &str) -> SendRequest {
    SendRequest { room: room.into(), user: "ann".into(), client_msg_id: id.into(), body: body.into() }
}

async fn bodies(server: &TestServer, room: &str) -> Vec<String> {
    let history = server.confab().await.history(HistoryRequest { room: room.into(), after_seq: 0, limit: 0 }).await;
    history.expect("history").into_inner().messages.into_iter().map(|m| m.body).collect()
}

/// A history store whose commits wait until the test opens its gate: a Send is acknowledged
/// only once durable, so while the gate is shut every Send outlives any deadline.
#[derive(Debug)]
struct GatedStore {
    inner: MemoryStore,
    open: Mutex<bool>,
    opened: Condvar,
}

impl GatedStore {
    fn new() -> Arc<Self> {
        let retention = Retention { len_max: 1_000, age_max_ms: None };
        Arc::new(Self { inner: MemoryStore::new(retention), open: Mutex::new(false), opened: Condvar::new() })
    }

    fn open(&self) {
        *self.open.lock().expect("gate") = true;
        self.opened.notify_all();
    }
}

impl HistoryStore for GatedStore {
    fn load_room(&self, room: &RoomName) -> Result<Option<StoredRoom>, StoreError> {
        self.inner.load_room(room)
    }

    fn room_summaries(&self, after: Option<&RoomName>, limit: usize) -> Result<Vec<StoredSummary>, StoreError> {
        self.inner.room_summaries(after, limit)
    }

    fn append(&self, appends: &[RoomAppend], now_ms: u64) -> Result<(), StoreError> {
        // The writer thread blocks here, as it would on a very slow disk.
        let mut open = self.open.lock().expect("gate");
        while !*open {
            open = self.opened.wait(open).expect("gate");
        }
        drop(open);
        self.inner.append(appends, now_ms)
    }
}

/// A Send still waiting for the disk when its deadline passes gets DEADLINE_EXCEEDED. The room
/// had sequenced it, so once the disk catches up it is stored, whole and once: a retry with the
/// same client_msg_id gets the original number back (G4), never a second copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unary_call_past_its_deadline_is_deadline_exceeded_and_stored_at_most_once() {
    let store = GatedStore::new();
    let config = EngineConfig::default().with_storage(store.clone());
    let server = TestServer::start_with_engine(config, ServerOptions::default()).await;
    let mut bare_client = ChatClient::with_origin(bare(server.address).await, origin(server.address));
    let mut hurried = tonic::Request::new(send("deadline", "retry-me", "once"));
    hurried.set_timeout(Duration::from_millis(200));
    let late = bounded(bare_client.send(hurried)).await.expect_err("deadline passed");
    assert_eq!(late.code(), Code::DeadlineExceeded, "not CANCELLED: {late:?}");
    assert!(late.message().contains("grpc-timeout"), "{}", late.message());

    store.open();
    let mut retry = tonic::Request::new(send("deadline", "retry-me", "once"));
    retry.set_timeout(Duration::from_secs(30));
    let sent = bounded(bare_client.send(retry)).await.expect("a generous deadline is met").into_inner();
    assert_eq!((sent.seq, sent.duplicate), (1, true), "the retry finds the original");
    assert_eq!(bodies(&server, "deadline").await, ["once"], "stored once");
}

/// Uploads that stall past their deadline, on both services and with both kinds of client:
/// the bare client hears DEADLINE_EXCEEDED from the server, tonic's own client gives up by
/// itself, and none of the uploads' messages is ever committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_past_its_deadline_commits_nothing() {
    let server = TestServer::start().await;
    let chunk = |body: &str| UploadChunk { room: "stalled".into(), user: "ann".into(), body: body.into() };

    // confab.v1 Upload, bare client: three chunks, then the stream stays open.
    let mut bare_client = ChatClient::with_origin(bare(server.address).await, origin(server.address));
    let (chunks, outgoing) = mpsc::channel(8);
    for i in 0..3 {
        chunks.send(chunk(&format!("bare {i}"))).await.expect("queue");
    }
    let mut request = tonic::Request::new(ReceiverStream::new(outgoing));
    request.set_timeout(Duration::from_millis(300));
    let late = bounded(bare_client.upload(request)).await.expect_err("deadline passed");
    assert_eq!(late.code(), Code::DeadlineExceeded, "{late:?}");
    // Closing the stream now is too late.
    drop(chunks);

    // The same with tonic's client, which gives up by itself at the deadline (CANCELLED) and
    // resets the stream, which the server must not read as the end of the upload (`cancel`).
    let mut client = server.confab().await;
    let (chunks, outgoing) = mpsc::channel(8);
    chunks.send(chunk("tonic 0")).await.expect("queue");
    let mut request = tonic::Request::new(ReceiverStream::new(outgoing));
    request.set_timeout(Duration::from_millis(300));
    let late = bounded(client.upload(request)).await.expect_err("deadline passed");
    assert!(matches!(late.code(), Code::Cancelled | Code::DeadlineExceeded), "{late:?}");
    drop(chunks);

    // The seed's UploadStream, bare client.
    let mut bare_seed = ChatServiceClient::with_origin(bare(server.address).await, origin(server.address));
    let (messages, outgoing) = mpsc::channel(8);
    messages.send(chat::Message { user: "ann".into(), content: "seed 0".into() }).await.expect("queue");
    let mut request = with_metadata(ReceiverStream::new(outgoing), "room", "stalled");
    request.set_timeout(Duration::from_millis(300));
    let late = bounded(bare_seed.upload_stream(request)).await.expect_err("deadline passed");
    assert_eq!(late.code(), Code::DeadlineExceeded, "{late:?}");
    drop(messages);

    // Nothing of the three uploads: the next send is the room's first message.
    let sent = client.send(send("stalled", "", "after")).await.expect("room usable").into_inner();
    assert_eq!(sent.seq, 1, "the stalled uploads took no sequence numbers: {:?}", bodies(&server, "stalled").await);
    assert_eq!(bodies(&server, "stalled").await, ["after"]);
}

/// A client that cancels an upload (drops the call, as a tonic client does at its deadline)
/// has not finished it: nothing is committed, on either service. tonic reads such a reset as
/// the end of the stream; without the `cancel` layer every one of these uploads was committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_upload_commits_nothing() {
    let server = TestServer::start().await;
    let mut client = server.confab().await;
    let seed = server.seed().await;
    let mut senders = Vec::new();
    for round in 0..3 {
        let (chunks, outgoing) = mpsc::channel(8);
        chunks
            .send(UploadChunk { room: "cancelled".into(), user: "ann".into(), body: format!("v1 {round}") })
            .await
            .expect("queue");
        let mut confab = client.clone();
        let call = tokio::spawn(async move { confab.upload(ReceiverStream::new(outgoing)).await });
        let (messages, outgoing) = mpsc::channel(8);
        messages.send(chat::Message { user: "ann".into(), content: format!("seed {round}") }).await.expect("queue");
        let mut seed_client = seed.clone();
        let request = with_metadata(ReceiverStream::new(outgoing), "room", "cancelled");
        let seed_call = tokio::spawn(async move { seed_client.upload_stream(request).await });
        // Let both calls reach their handlers, then cancel them; the senders stay open, so the
        // only thing the server sees end is the reset.
        tokio::time::sleep(Duration::from_millis(50)).await;
        call.abort();
        seed_call.abort();
        senders.push((chunks, messages));
    }
    // Time for the resets to arrive; with the bug, the commits were visible well within this.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sent = client.send(send("cancelled", "", "after")).await.expect("room usable").into_inner();
    assert_eq!(bodies(&server, "cancelled").await, ["after"], "cancelled uploads leave no trace (G6)");
    assert_eq!(sent.seq, 1);
    drop(senders);
}
