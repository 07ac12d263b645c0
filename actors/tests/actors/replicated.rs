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

#[tokio::test(flavor = "current_thread")]
async fn an_upload_is_held_to_what_one_append_of_the_log_takes() {
    let log = Arc::new(MemoryLog::new().with_append_len_max(3));
    let engine = node(&log, 1);
    let lobby = room("lobby");
    let mut upload = engine.upload(&lobby);
    for number in 0..3 {
        upload.push(super::draft("ann", "", &number.to_string())).await.expect("within the limit");
    }
    let refused = upload.push(super::draft("ann", "", "4")).await;
    assert!(refused.is_err(), "a fourth message is over the log's append limit: {refused:?}");
    let receipt = within(upload.commit()).await.expect("committed");
    assert_eq!(receipt.seqs, Some((1, 3)));
    assert_eq!(log.entries(&lobby).len(), 3, "one append, all or nothing");
}
