//! Presence and typing across engines over the in-memory bus: the shared scenarios
//! (`tests/shared/presence.rs`, also run over real NATS), and a partition that heals.

use std::sync::Arc;

use confab_actors::{Engine, EngineConfig, MemoryBus, PresenceConfig, RoomEvents};
use confab_engine::RoomEvent;

#[path = "../shared/presence.rs"]
mod scenarios;

use super::{room, user};

fn node(bus: &MemoryBus, name: &str, incarnation: u64) -> Engine {
    let presence = PresenceConfig::new(Arc::new(bus.clone()), name, incarnation);
    Engine::start(EngineConfig::default().with_presence(presence)).expect("inside a tokio runtime")
}

#[tokio::test(flavor = "current_thread")]
async fn presence_and_typing_cross_nodes() {
    let bus = MemoryBus::new();
    let (a, b) = (node(&bus, "a", 1), node(&bus, "b", 1));
    scenarios::presence_and_typing_cross_nodes(a, &b, &room("lobby")).await;
    let counters = b.presence_counters().expect("presence is on");
    assert_eq!(counters.undecodable, 0);
    assert_eq!(counters.publish_dropped, 0);
}

/// Ann's presence in the lobby, joining or leaving.
fn ann(present: bool) -> Option<RoomEvent> {
    Some(RoomEvent::Presence { room: room("lobby"), user: user("ann"), present })
}

/// Two nodes a and b on `bus`; ann is in the lobby on a, and a watcher on b has seen her join.
async fn ann_on_a_seen_from_b(bus: &MemoryBus) -> (Engine, Engine, RoomEvents, RoomEvents) {
    let (a, b) = (node(bus, "a", 1), node(bus, "b", 1));
    let mut watcher = b.subscribe(&room("lobby"), None, None).await.expect("subscribe");
    let ann_on_a = a.subscribe(&room("lobby"), Some(user("ann")), None).await.expect("subscribe");
    assert_eq!(scenarios::next_presence(&mut watcher, scenarios::CROSSING_WAIT).await, ann(true));
    (a, b, watcher, ann_on_a)
}

#[tokio::test(flavor = "current_thread")]
async fn a_partition_makes_users_leave_and_healing_brings_them_back() {
    let bus = MemoryBus::new();
    let (a, _b, mut watcher, _ann) = ann_on_a_seen_from_b(&bus).await;
    bus.set_losing(true);
    assert_eq!(scenarios::next_presence(&mut watcher, scenarios::GONE_WAIT).await, ann(false));
    bus.set_losing(false);
    // Each node hears the other as new and sends it a full snapshot.
    assert_eq!(scenarios::next_presence(&mut watcher, scenarios::CROSSING_WAIT).await, ann(true));
    // A restarted a (a new incarnation, nobody there) replaces the old run's ann at once.
    drop(a);
    let _restarted = node(&bus, "a", 2);
    assert_eq!(scenarios::next_presence(&mut watcher, scenarios::CROSSING_WAIT).await, ann(false));
}

#[tokio::test(flavor = "current_thread")]
async fn a_node_that_shuts_down_says_its_users_left_at_once() {
    let bus = MemoryBus::new();
    let (a, _b, mut watcher, _ann) = ann_on_a_seen_from_b(&bus).await;
    a.shutdown().await.expect("shut down");
    // Within a beat: well before the gone time.
    let wait = std::time::Duration::from_millis(confab_engine::presence::BEAT_MS);
    assert_eq!(scenarios::next_presence(&mut watcher, wait).await, ann(false));
}
