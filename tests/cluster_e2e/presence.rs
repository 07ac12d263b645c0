//! Presence across `confab serve --nats` nodes: a user subscribed on one node shows on another,
//! and leaves there once her node is killed (-9: no goodbye, only silence).

use std::time::Duration;

use confab::grpc::proto::confab_v1::{Presence, SubscribeRequest, room_event};

use crate::bounded;
use crate::nats::{ClusterOptions, NatsCluster};

/// The next presence event of `stream` within `wait` (other events skipped); `None` if none.
async fn next_presence(
    stream: &mut tonic::Streaming<confab::grpc::proto::confab_v1::RoomEvent>,
    wait: Duration,
) -> Option<Presence> {
    let next = async {
        while let Ok(Some(event)) = stream.message().await {
            if let Some(room_event::Event::Presence(presence)) = event.event {
                return Some(presence);
            }
        }
        None
    };
    tokio::time::timeout(wait, next).await.ok().flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_on_one_node_shows_on_another_and_leaves_when_her_node_dies() {
    let cluster = NatsCluster::start(ClusterOptions::default());
    let (mut a, b) = (crate::Node::start(&cluster, "a").await, crate::Node::start(&cluster, "b").await);
    let room = "presence";
    let watch = SubscribeRequest { room: room.into(), after_seq: None, user: String::new() };
    let mut watcher = bounded(b.client().await.subscribe(watch)).await.expect("subscribe on b").into_inner();
    let join = SubscribeRequest { room: room.into(), after_seq: None, user: "ann".into() };
    let _ann = bounded(a.client().await.subscribe(join)).await.expect("subscribe on a").into_inner();
    let joined = next_presence(&mut watcher, Duration::from_secs(5)).await;
    assert_eq!(joined, Some(Presence { room: room.into(), user: "ann".into(), present: true }));
    a.kill().await;
    // Gone after 3 silent beats of 1 s; slack for a loaded machine.
    let left = next_presence(&mut watcher, Duration::from_secs(10)).await;
    assert_eq!(left, Some(Presence { room: room.into(), user: "ann".into(), present: false }));
}
