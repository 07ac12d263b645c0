//! Several engines as nodes of one in-memory replicated log ([`MemoryLog`]): the shared
//! scenarios (`tests/shared/replicated.rs`, also run against real JetStream), and what only
//! the in-memory log can stage: a feed that lags behind the log.

use std::sync::Arc;

use confab_actors::room_log::MemoryLog;
use confab_actors::{Engine, EngineConfig, Replicated};

#[path = "../shared/replicated.rs"]
mod scenarios;

use super::room;

fn node(log: &Arc<MemoryLog>, node: u64) -> Engine {
    let replicated = Replicated::new(Arc::clone(log) as _, node);
    Engine::start(EngineConfig { replicated: Some(replicated), ..EngineConfig::default() })
        .expect("inside a tokio runtime")
}

/// Runs a test's body with a deadline: a node that never answers fails the test instead of
/// hanging it.
async fn within<T>(body: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(std::time::Duration::from_secs(20), body).await.expect("the nodes answered in time")
}

#[tokio::test(flavor = "current_thread")]
async fn nodes_sending_at_once_deliver_one_order_everywhere() {
    let log = Arc::new(MemoryLog::new());
    let nodes = [node(&log, 1), node(&log, 2), node(&log, 3)];
    within(scenarios::nodes_sending_at_once_deliver_one_order_everywhere(&nodes, &room("lobby"), 20)).await;
    assert_eq!(log.entries(&room("lobby")).len(), 60, "every message in the log once");
}

#[tokio::test(flavor = "current_thread")]
async fn a_retry_on_another_node_is_kept_once_and_read_there_at_once() {
    let log = Arc::new(MemoryLog::new());
    let (first, second) = (node(&log, 1), node(&log, 2));
    within(scenarios::a_retry_on_another_node_is_kept_once_and_read_there_at_once(&first, &second, &room("lobby")))
        .await;
    assert_eq!(log.entries(&room("lobby")).len(), 2);
}

#[tokio::test(flavor = "current_thread")]
async fn reads_catch_up_with_the_log_while_the_feed_lags() {
    let log = Arc::new(MemoryLog::new());
    let (first, second) = (node(&log, 1), node(&log, 2));
    // The nodes hear of each other's appends late: only the log itself is up to date.
    log.pause_feed(true);
    within(scenarios::a_retry_on_another_node_is_kept_once_and_read_there_at_once(&first, &second, &room("lobby")))
        .await;
    log.pause_feed(false);
}

#[tokio::test(flavor = "current_thread")]
async fn a_node_new_to_the_room_continues_it_from_the_log() {
    let log = Arc::new(MemoryLog::new());
    let (first, late) = (node(&log, 1), node(&log, 2));
    within(scenarios::a_node_new_to_the_room_continues_it_from_the_log(&first, &late, &room("lobby"))).await;
}
