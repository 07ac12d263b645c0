//! Presence and typing across engines over real core NATS ([`NatsPresenceBus`]), as
//! `confab serve --nats` wires them: the scenarios the in-memory bus runs too
//! (`tests/shared/presence.rs`).

use std::sync::Arc;
use std::time::Duration;

use confab_actors::cluster::{ClusterLog, LogOptions, NatsPresenceBus, presence_subject};
use confab_actors::{Engine, EngineConfig, PresenceConfig, Replicated};
use confab_engine::RoomName;

use crate::nats::{ClusterOptions, NatsCluster};

#[path = "../shared/presence.rs"]
mod scenarios;

/// The longest the scenario may take against the cluster.
const SCENARIO_WAIT_MAX: Duration = Duration::from_secs(60);

async fn node(cluster: &NatsCluster, prefix: &str, name: &str, run: u64) -> Engine {
    let options = LogOptions::default()
        .shards(1)
        .replicas(3)
        .history_len_max(1_000)
        .request_timeout(Duration::from_secs(2))
        .stream_prefix(prefix);
    let subject = presence_subject(&options.stream_prefix);
    let log = ClusterLog::connect(&cluster.urls(), options).await.unwrap_or_else(|error| panic!("connect: {error}"));
    let bus = NatsPresenceBus::new(log.jetstream().client().clone(), subject);
    let presence = PresenceConfig::new(Arc::new(bus), name, run);
    let replicated = Replicated::new(Arc::new(log), run);
    Engine::start(EngineConfig::default().with_replicated(replicated).with_presence(presence)).expect("in a runtime")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_typing_cross_nodes_over_nats() {
    let cluster = NatsCluster::start(ClusterOptions::default());
    cluster.wait_for_meta_leader();
    let (a, b) = (node(&cluster, "presence", "a", 1).await, node(&cluster, "presence", "b", 2).await);
    let room = RoomName::new("lobby").expect("room");
    tokio::time::timeout(SCENARIO_WAIT_MAX, scenarios::presence_and_typing_cross_nodes(a, &b, &room))
        .await
        .expect("the scenario ended in time");
    let counters = b.presence_counters().expect("presence is on");
    assert_eq!(counters.undecodable, 0);
    assert!(counters.received > 0);
}
