//! `confab bench` against an in-test server: every scenario completes operations without errors.

use std::time::Duration;

use confab::bench::{BenchOptions, Scenario, run};
use confab::grpc::server::ServerOptions;
use confab_engine::{Limits, SendRate};

use super::{TestServer, bounded};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_measures_real_operations() {
    // A load tool measures the server, not its send-rate limit (as `--sends-per-second-max 0`).
    let options = ServerOptions { send_rate: SendRate::UNLIMITED, ..ServerOptions::default() };
    let server = TestServer::start_with_options(Limits::default(), options).await;
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
            security: Default::default(),
        };
        let report = bounded(run(&options)).await.unwrap_or_else(|error| panic!("{name}: {error}"));
        assert!(report.operations > 0, "{name}: measured nothing: {}", report.human());
        assert_eq!(report.errors, 0, "{name}: {}", report.human());
        assert_eq!(report.latency_us.len(), report.operations, "{name}: one latency per operation");
        assert!(report.server.is_some(), "{name}: reads /proc for --server-pid");
        assert!(report.json().contains(&format!("\"scenario\":\"{name}\"")));
    }
}
