//! Operations: health and reflection on the service port, Prometheus metrics (exact numbers
//! after a known workload, and the `--metrics-listen` endpoint of the binary).

use std::collections::BTreeSet;
use std::net::SocketAddr;

use confab::grpc::proto::confab_v1::{
    self as v1, HistoryRequest, SendRequest, SubscribeRequest, chat_client::ChatClient, client_frame, server_frame,
};
use confab::grpc::server::serve_observed;
use confab::metrics::{Metrics, RpcMetrics};
use confab_actors::{Engine, EngineConfig};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient, server_reflection_request,
    server_reflection_response,
};
use tonic_reflection::pb::v1alpha;

use super::{TestServer, bounded, with_metadata};

fn health_request(service: &str) -> HealthCheckRequest {
    HealthCheckRequest { service: service.into() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_serving_for_the_server_and_both_services_then_not_serving_at_shutdown() {
    let server = TestServer::start().await;
    let mut health = HealthClient::new(server.channel().await);
    for service in ["", "confab.v1.Chat", "chat.ChatService"] {
        let status = health.check(health_request(service)).await.expect("check").into_inner().status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?} is SERVING");
    }
    let unknown = health.check(health_request("no.such.Service")).await.expect_err("unknown service");
    assert_eq!(unknown.code(), Code::NotFound);

    let mut watch = health.watch(health_request("")).await.expect("watch").into_inner();
    let first = bounded(watch.message()).await.expect("ok").expect("a status");
    assert_eq!(first.status, ServingStatus::Serving as i32);
    let stopping = tokio::spawn(server.stop());
    let next = bounded(watch.message()).await.expect("ok").expect("a status at shutdown");
    assert_eq!(next.status, ServingStatus::NotServing as i32, "watchers learn of the shutdown first");
    let ended = bounded(watch.message()).await.expect_err("then the watch ends with a status");
    assert_eq!(ended.code(), Code::Unavailable);
    bounded(stopping).await.expect("task").expect("an open watch does not hold the shutdown open");
}

/// The service names a v1 reflection client lists.
async fn reflected_services(channel: Channel) -> BTreeSet<String> {
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let mut responses =
        client.server_reflection_info(tokio_stream::iter([request])).await.expect("reflection").into_inner();
    let response = bounded(responses.message()).await.expect("ok").expect("a response");
    match response.message_response {
        Some(server_reflection_response::MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|service| service.name).collect()
        }
        other => panic!("expected a service list, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_and_describes_the_services() {
    let server = TestServer::start().await;
    let services = reflected_services(server.channel().await).await;
    for expected in
        ["confab.v1.Chat", "chat.ChatService", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"]
    {
        assert!(services.contains(expected), "{expected} is listed in {services:?}");
    }

    // A tool then asks for the file that defines a service, to learn its methods.
    let mut client = ServerReflectionClient::new(server.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(server_reflection_request::MessageRequest::FileContainingSymbol("confab.v1.Chat".into())),
    };
    let mut responses =
        client.server_reflection_info(tokio_stream::iter([request])).await.expect("reflection").into_inner();
    let response = bounded(responses.message()).await.expect("ok").expect("a response");
    match response.message_response {
        Some(server_reflection_response::MessageResponse::FileDescriptorResponse(files)) => {
            use prost::Message as _;
            let file = prost_types::FileDescriptorProto::decode(files.file_descriptor_proto[0].as_slice())
                .expect("a file descriptor");
            assert_eq!(file.name(), "confab/v1/chat.proto");
            let methods: Vec<&str> = file.service[0].method.iter().map(|m| m.name()).collect();
            assert!(methods.contains(&"Session") && methods.contains(&"Send"), "methods: {methods:?}");
        }
        other => panic!("expected a file descriptor, got {other:?}"),
    }

    // Older tools ask v1alpha first.
    let mut alpha = v1alpha::server_reflection_client::ServerReflectionClient::new(server.channel().await);
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1alpha::server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let mut responses =
        alpha.server_reflection_info(tokio_stream::iter([request])).await.expect("v1alpha").into_inner();
    let response = bounded(responses.message()).await.expect("ok").expect("a response");
    assert!(
        matches!(
            response.message_response,
            Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(ref list))
                if list.service.iter().any(|s| s.name == "confab.v1.Chat")
        ),
        "v1alpha lists confab.v1.Chat: {response:?}"
    );
    server.stop().await.expect("stops");
}

/// The value of one series (`name{labels}` exactly as exported) in OpenMetrics text.
fn series(text: &str, key: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(key)?.strip_prefix(' ')?.split(' ').next()?.parse().ok())
}

fn expect_series(text: &str, key: &str, expected: f64) {
    assert_eq!(series(text, key), Some(expected), "{key} in:\n{text}");
}

fn send_request(room: &str, id: &str) -> SendRequest {
    SendRequest { room: room.into(), user: "ann".into(), client_msg_id: id.into(), body: format!("body {id}") }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_the_engine_and_the_rpcs_did() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let address = listener.local_addr().expect("address");
    let engine = Engine::start(EngineConfig::default()).expect("engine");
    let rpc_metrics = RpcMetrics::default();
    let metrics = Metrics::new(engine.clone(), &rpc_metrics);
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(serve_observed(listener, engine, rpc_metrics, async {
        let _ = stopped.await;
    }));
    let channel = Channel::from_shared(format!("http://{address}")).expect("uri").connect().await.expect("connect");
    let mut client = ChatClient::new(channel);

    // Two subscribers of room r.
    let mut streams = Vec::new();
    for _ in 0..2 {
        let request = SubscribeRequest { room: "r".into(), after_seq: None, user: String::new() };
        let mut stream = client.subscribe(request).await.expect("subscribe").into_inner();
        bounded(stream.message()).await.expect("ok").expect("subscribed");
        streams.push(stream);
    }
    // A session whose one frame is refused (it posts to a room it has not joined).
    let (frames, outgoing) = mpsc::channel(4);
    let post = v1::Post { room: "elsewhere".into(), client_msg_id: String::new(), body: "x".into() };
    frames.send(v1::ClientFrame { frame: Some(client_frame::Frame::Post(post)) }).await.expect("queue");
    let request = with_metadata(ReceiverStream::new(outgoing), "user", "bob");
    let mut session = client.session(request).await.expect("session").into_inner();
    let refused = bounded(session.message()).await.expect("ok").expect("a frame").frame;
    assert!(matches!(refused, Some(server_frame::Frame::Error(_))), "refused: {refused:?}");

    // Three messages, one retry of the first (not appended again), one refusal.
    for id in ["m1", "m2", "m3", "m1"] {
        client.send(send_request("r", id)).await.expect("send");
    }
    let refusal = client.send(send_request("", "bad")).await.expect_err("an empty room name");
    assert_eq!(refusal.code(), Code::InvalidArgument);
    for stream in &mut streams {
        for _ in 0..3 {
            bounded(stream.message()).await.expect("ok").expect("a message");
        }
    }
    // The room handles requests in order: once History answers, it has counted the deliveries.
    client.history(HistoryRequest { room: "r".into(), after_seq: 0, limit: 0 }).await.expect("history");

    let text = metrics.encode().expect("encode");
    expect_series(&text, "confab_rooms", 1.0);
    expect_series(&text, "confab_rooms_created_total", 1.0);
    expect_series(&text, "confab_messages_appended_total", 3.0);
    expect_series(&text, "confab_deliveries_total", 6.0);
    expect_series(&text, "confab_deliveries_dropped_total", 0.0);
    expect_series(&text, "confab_lag_events_total", 0.0);
    expect_series(&text, "confab_sessions", 1.0);
    expect_series(&text, "confab_sessions_opened_total", 1.0);
    expect_series(&text, "confab_session_frames_refused_total", 1.0);
    expect_series(&text, r#"confab_rpc_started_total{rpc="confab.v1.Chat/Subscribe"}"#, 2.0);
    expect_series(&text, r#"confab_rpc_open{rpc="confab.v1.Chat/Subscribe"}"#, 2.0);
    expect_series(&text, r#"confab_rpc_open{rpc="confab.v1.Chat/Session"}"#, 1.0);
    expect_series(&text, r#"confab_rpc_open{rpc="confab.v1.Chat/Send"}"#, 0.0);
    expect_series(&text, r#"confab_rpc_finished_total{rpc="confab.v1.Chat/Send",code="OK"}"#, 4.0);
    expect_series(&text, r#"confab_rpc_finished_total{rpc="confab.v1.Chat/Send",code="INVALID_ARGUMENT"}"#, 1.0);
    expect_series(&text, r#"confab_rpc_handling_seconds_count{rpc="confab.v1.Chat/Send"}"#, 5.0);
    assert!(text.ends_with("# EOF\n"), "OpenMetrics text ends with # EOF");

    // A client that goes away closes its stream; the refusal of an unknown room is counted by code.
    streams.pop();
    let missing = client.history(HistoryRequest { room: "nowhere".into(), after_seq: 0, limit: 0 }).await;
    assert_eq!(missing.expect_err("unknown room").code(), Code::NotFound);
    bounded(async {
        while series(&metrics.encode().expect("encode"), r#"confab_rpc_open{rpc="confab.v1.Chat/Subscribe"}"#)
            != Some(1.0)
        {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    let text = metrics.encode().expect("encode");
    expect_series(&text, r#"confab_rpc_finished_total{rpc="confab.v1.Chat/Subscribe",code="CANCELLED"}"#, 1.0);
    expect_series(&text, r#"confab_rpc_finished_total{rpc="confab.v1.Chat/History",code="NOT_FOUND"}"#, 1.0);

    drop((streams, session, frames));
    let _ = stop.send(());
    bounded(server).await.expect("task").expect("server stopped cleanly");
}

/// A started `confab serve` child and the addresses it printed.
struct Child {
    process: tokio::process::Child,
    grpc: String,
    metrics: SocketAddr,
}

async fn start_with_metrics() -> Child {
    let mut process = tokio::process::Command::new(env!("CARGO_BIN_EXE_confab"))
        .args(["serve", "--in-memory", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start confab serve");
    let mut lines = BufReader::new(process.stdout.take().expect("stdout")).lines();
    let first = bounded(lines.next_line()).await.expect("read").expect("the listening line");
    let grpc = first.strip_prefix("confab listening on ").and_then(|rest| rest.split_whitespace().next());
    let grpc = grpc.unwrap_or_else(|| panic!("unexpected start-up line: {first}")).to_owned();
    // The metrics line follows the listening line; other start-up lines (the web page's URL)
    // may come in between.
    let mut metrics = None;
    for _ in 0..5 {
        let line = bounded(lines.next_line()).await.expect("read").expect("the metrics line");
        metrics = line
            .strip_prefix("metrics on http://")
            .and_then(|rest| rest.strip_suffix("/metrics"))
            .and_then(|address| address.parse().ok());
        if metrics.is_some() {
            break;
        }
    }
    let metrics = metrics.expect("a `metrics on http://ADDR/metrics` line among the first lines");
    Child { process, grpc, metrics }
}

/// One HTTP/1.1 GET; returns the whole response (head and body).
async fn http_get(address: SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(address).await.expect("connect to metrics");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    bounded(stream.read_to_string(&mut response)).await.expect("read");
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_flag_serves_prometheus_text_over_http() {
    let mut child = start_with_metrics().await;
    let channel =
        Channel::from_shared(format!("http://{}", child.grpc)).expect("uri").connect().await.expect("connect");
    let mut client = ChatClient::new(channel);
    for id in ["a", "b"] {
        client.send(send_request("lobby", id)).await.expect("send");
    }
    let response = http_get(child.metrics, "/metrics").await;
    let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.to_ascii_lowercase().contains("content-type: application/openmetrics-text"), "{head}");
    expect_series(body, "confab_messages_appended_total", 2.0);
    expect_series(body, r#"confab_rpc_finished_total{rpc="confab.v1.Chat/Send",code="OK"}"#, 2.0);
    let missing = http_get(child.metrics, "/other").await;
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
    child.process.start_kill().expect("stop");
    child.process.wait().await.expect("reaped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_reflection_stream_ends_with_unavailable_at_shutdown() {
    let server = TestServer::start().await;
    let mut client = ServerReflectionClient::new(server.channel().await);
    // The client keeps its request stream open, as a tool does between lookups.
    let (requests, outgoing) = mpsc::channel(1);
    let list = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    requests.send(list).await.expect("queue");
    let mut responses =
        client.server_reflection_info(ReceiverStream::new(outgoing)).await.expect("reflection").into_inner();
    bounded(responses.message()).await.expect("ok").expect("a response");
    let stopping = tokio::spawn(server.stop());
    let ended = bounded(responses.message()).await.expect_err("ends with a status");
    assert_eq!(ended.code(), Code::Unavailable);
    assert!(ended.message().contains("shutting down"), "{ended:?}");
    bounded(stopping).await.expect("task").expect("an open reflection stream does not hold the shutdown open");
    drop(requests);
}
