//! Engines as nodes of a real JetStream cluster ([`ClusterLog`]): the scenarios the in-memory
//! log runs too (`tests/shared/replicated.rs`), so the model cannot drift from the server.

use std::sync::Arc;
use std::time::Duration;

use confab_actors::cluster::{ClusterLog, LogOptions};
use confab_actors::{Engine, EngineConfig, Replicated};
use confab_engine::RoomName;

use crate::nats::{ClusterOptions, NatsCluster};

#[path = "../shared/replicated.rs"]
mod scenarios;

/// The longest one scenario may take against the cluster.
const SCENARIO_WAIT_MAX: Duration = Duration::from_secs(60);

async fn node(cluster: &NatsCluster, prefix: &str, node: u64) -> Engine {
    let options = LogOptions::default()
        .shards(2)
        .replicas(3)
        .history_len_max(1_000)
        .request_timeout(Duration::from_secs(2))
        .stream_prefix(prefix);
    let log = ClusterLog::connect(&cluster.urls(), options).await.unwrap_or_else(|error| panic!("connect: {error}"));
    let replicated = Replicated::new(Arc::new(log), node);
    Engine::start(EngineConfig::default().with_replicated(replicated)).expect("in a runtime")
}

fn room(name: &str) -> RoomName {
    RoomName::new(name).expect("room")
}

async fn within<T>(body: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(SCENARIO_WAIT_MAX, body).await.expect("the nodes answered in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engines_over_jetstream_keep_the_guarantees() {
    let cluster = NatsCluster::start(ClusterOptions::default());
    cluster.wait_for_meta_leader();
    let nodes =
        [node(&cluster, "engines", 1).await, node(&cluster, "engines", 2).await, node(&cluster, "engines", 3).await];
    within(scenarios::nodes_sending_at_once_deliver_one_order_everywhere(&nodes, &room("race"), 10)).await;
    within(scenarios::a_retry_on_another_node_is_kept_once_and_read_there_at_once(
        &nodes[0],
        &nodes[1],
        &room("retry"),
    ))
    .await;
    within(scenarios::a_node_new_to_the_room_continues_it_from_the_log(&nodes[1], &nodes[2], &room("late"))).await;
}
