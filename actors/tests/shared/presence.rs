//! Presence and typing across nodes: the same scenarios over the in-memory bus
//! (`tests/actors/presence.rs`) and over real NATS (`tests/cluster/presence.rs`).

use std::time::Duration;

use confab_actors::{Engine, RoomEvents, StreamItem};
use confab_engine::presence::{BEAT_MS, GONE_AFTER_BEATS};
use confab_engine::{RoomEvent, RoomName, UserName};
use futures::StreamExt;

/// The longest a change may take to cross nodes: a couple of beats of slack (an announcement
/// goes out at once; a node that just started is learnt from the snapshot it provokes).
pub(crate) const CROSSING_WAIT: Duration = Duration::from_millis(3 * BEAT_MS);

/// The longest a silent node's users may take to leave: the gone time and two beats of slack.
pub(crate) const GONE_WAIT: Duration = Duration::from_millis((GONE_AFTER_BEATS + 2) * BEAT_MS);

fn user(name: &str) -> UserName {
    UserName::new(name).expect("a user name")
}

fn presence(room: &RoomName, name: &str, present: bool) -> Option<RoomEvent> {
    Some(RoomEvent::Presence { room: room.clone(), user: user(name), present })
}

/// The next presence or typing event within `wait` (messages and the subscription's first
/// event are skipped); `None` if none came or the stream ended.
pub(crate) async fn next_presence(events: &mut RoomEvents, wait: Duration) -> Option<RoomEvent> {
    let next = async {
        loop {
            match events.next().await {
                Some(StreamItem::Next(event @ (RoomEvent::Presence { .. } | RoomEvent::Typing { .. }))) => {
                    return Some(event);
                }
                Some(StreamItem::Next(_)) => continue,
                _ => return None,
            }
        }
    };
    tokio::time::timeout(wait, next).await.ok().flatten()
}

/// Ann joins on `a`; a watcher on `b` sees her join and type. She joins on `b` too and leaves
/// `a`: no leave is shown (she is still on `b`), the next event is bob's join on `a`. She
/// leaves `b`: one leave. Then `a` goes silent (dropped): bob leaves after the gone time.
pub(crate) async fn presence_and_typing_cross_nodes(a: Engine, b: &Engine, room: &RoomName) {
    let mut watcher = b.subscribe(room, None, None).await.expect("the watcher subscribes");
    let ann_on_a = a.subscribe(room, Some(user("ann")), None).await.expect("ann subscribes on a");
    assert_eq!(next_presence(&mut watcher, CROSSING_WAIT).await, presence(room, "ann", true));
    let info = b.room(room).await.expect("the room").expect("live");
    assert_eq!(info.present, vec![user("ann")], "b's users list has a's user");
    a.typing(room, user("ann")).await.expect("typing");
    assert_eq!(
        next_presence(&mut watcher, CROSSING_WAIT).await,
        Some(RoomEvent::Typing { room: room.clone(), user: user("ann") })
    );
    let ann_on_b = b.subscribe(room, Some(user("ann")), None).await.expect("ann subscribes on b");
    drop(ann_on_a);
    let _bob_on_a = a.subscribe(room, Some(user("bob")), None).await.expect("bob subscribes on a");
    assert_eq!(
        next_presence(&mut watcher, CROSSING_WAIT).await,
        presence(room, "bob", true),
        "ann on two nodes: no join or leave when one of them goes"
    );
    drop(ann_on_b);
    assert_eq!(next_presence(&mut watcher, CROSSING_WAIT).await, presence(room, "ann", false));
    // Node a goes away without a word (its rooms and bob's stream live on, its presence task
    // does not): its users leave once it has been silent long enough.
    drop(a);
    assert_eq!(next_presence(&mut watcher, GONE_WAIT).await, presence(room, "bob", false));
    let info = b.room(room).await.expect("the room").expect("live");
    assert!(info.present.is_empty(), "{:?}", info.present);
}
