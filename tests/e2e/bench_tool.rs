//! `confab bench` against an in-test server: every scenario completes operations without errors.

use std::time::Duration;

use confab::api::rate::{RateLimits, SendLimiter};
use confab::bench::{BenchOptions, Scenario, run};
use confab::grpc::server::ServerOptions;
use confab_engine::Limits;

use super::{TestServer, bounded};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_measures_real_operations() {
    let server = TestServer::start_with_options(Limits::default(), unlimited()).await;
    for (name, scenario) in Scenario::ALL {
        let options = BenchOptions {
            server: format!("http://{}", server.address),
            scenario,
            connections: 2,
            concurrency: 4,
            duration: Duration::from_millis(400),
            warmup: Duration::from_millis(100),
            body_bytes: 32,
            upload_batch: 10,
            rate: 200,
            rooms: 2,
            server_pid: Some(std::process::id()),
            stalled: 0,
            disconnect_mean: None,
            security: Default::default(),
        };
        let report = bounded(run(&options)).await.unwrap_or_else(|error| panic!("{name}: {error}"));
        assert!(report.operations > 0, "{name}: measured nothing: {}", report.human());
        assert_eq!(report.errors, 0, "{name}: {}", report.human());
        assert_eq!(report.latency_us.len(), report.operations, "{name}: one latency per operation");
        assert!(report.server.is_some(), "{name}: reads /proc for --server-pid");
        assert!(report.json().contains(&format!("\"scenario\":\"{name}\"")));
        assert_eq!(report.order_violations, 0, "{name}: {}", report.human());
    }
}

/// A load tool measures the server, not its rate limits (as `--sends-per-second-max 0
/// --typing-per-second-max 0 --joins-per-second-max 0`): one connection's sessions share one
/// bucket, so the scenarios' rates would otherwise be refused.
fn unlimited() -> ServerOptions {
    ServerOptions { limiter: Some(SendLimiter::with_rates(RateLimits::UNLIMITED)), ..ServerOptions::default() }
}

fn options(server: &TestServer, scenario: Scenario) -> BenchOptions {
    BenchOptions {
        server: format!("http://{}", server.address),
        scenario,
        connections: 1,
        concurrency: 4,
        duration: Duration::from_millis(1_500),
        warmup: Duration::from_millis(100),
        body_bytes: 32,
        upload_batch: 10,
        rate: 400,
        rooms: 1,
        server_pid: None,
        stalled: 0,
        disconnect_mean: None,
        security: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mix_clients_that_disconnect_resume_in_order() {
    let server = TestServer::start_with_options(Limits::default(), unlimited()).await;
    let options = BenchOptions { disconnect_mean: Some(Duration::from_millis(150)), ..options(&server, Scenario::Mix) };
    let report = bounded(run(&options)).await.expect("runs");
    assert!(report.reconnects >= 4, "every client came back at least once: {}", report.human());
    assert!(report.operations > 0, "{}", report.human());
    assert_eq!((report.errors, report.order_violations), (0, 0), "{}", report.human());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_reports_how_the_server_closed_stalled_subscribers() {
    let limits = confab_engine::Limits {
        subscriber_queue_len_max: 4,
        subscriber_stall_ms: 300,
        ..confab_engine::Limits::default()
    };
    let server = TestServer::start_with(limits).await;
    // 16 KiB bodies fill the stalled streams' buffers (2 MiB client window, 400 KiB server
    // send buffer) within the run.
    let options = BenchOptions { stalled: 3, body_bytes: 16 * 1024, rate: 2_000, ..options(&server, Scenario::Fanout) };
    let report = bounded(run(&options)).await.expect("runs");
    let stalled = report.stalled.expect("a stalled tally");
    assert_eq!((stalled.streams, stalled.closed, stalled.open), (3, 3, 0), "{}", report.human());
    assert_eq!(report.order_violations, 0, "{}", report.human());
    assert!(report.human().contains("stalled subscribers: 3"));
}

/// `--server a,b` spreads the connections over both servers (a cluster's nodes), and
/// `--rooms` spreads unary-send's callers over rooms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_send_spreads_over_several_servers_and_rooms() {
    let first = TestServer::start_with_options(Limits::default(), unlimited()).await;
    let second = TestServer::start_with_options(Limits::default(), unlimited()).await;
    let options = BenchOptions {
        server: format!("http://{}, http://{}", first.address, second.address),
        connections: 2,
        rooms: 2,
        duration: Duration::from_millis(400),
        ..options(&first, Scenario::UnarySend)
    };
    let report = bounded(run(&options)).await.expect("bench runs");
    assert_eq!(report.errors, 0, "{}", report.human());
    // Workers 0 and 2 are on the first server's connection, 1 and 3 on the second's; worker w
    // sends to room w mod 2.
    for (server, room) in [(&first, "bench-unary-0"), (&second, "bench-unary-1")] {
        let room = confab_engine::RoomName::new(room).expect("room name");
        let page = bounded(server.engine.history(&room, 0, 10)).await.expect("history");
        assert!(!page.messages.is_empty(), "{room} on {} got no message", server.address);
    }
    let options = BenchOptions { connections: 1, ..options };
    let refused = bounded(run(&options)).await.expect_err("one connection cannot reach two servers");
    assert!(refused.to_string().contains("2 servers"), "{refused}");
}
