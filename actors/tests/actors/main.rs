//! Tests of the actor layer through the public `Engine` handle, on tokio current-thread
//! runtimes (virtual time where time matters), plus one from smol. One binary, a module per area.

mod embedding;
mod faulty_store;
mod ordering;
mod presence;
mod replicated;
mod sessions;
mod stats;
mod storage;
mod uploads;

use std::sync::Arc;

use confab_actors::{Engine, EngineConfig, RoomEvents, StreamItem};
use confab_engine::{ClientMsgId, Draft, Limits, RoomEvent, RoomName, Seq, UserName};
use futures::{Stream, StreamExt};

fn room(name: &str) -> RoomName {
    RoomName::new(name).expect("valid room")
}

fn user(name: &str) -> UserName {
    UserName::new(name).expect("valid user")
}

fn draft(who: &str, id: &str, body: &str) -> Draft {
    Draft { user: user(who), client_msg_id: ClientMsgId::new(id).expect("id"), body: Arc::from(body) }
}

fn engine_with(limits: Limits) -> Engine {
    Engine::start(EngineConfig::default().with_limits(limits)).expect("inside a tokio runtime")
}

/// The next event or frame a stream carries; `None` at its end, whatever the reason (tests of
/// how streams end read their items themselves).
async fn next<T>(stream: &mut (impl Stream<Item = StreamItem<T>> + Unpin)) -> Option<T> {
    match stream.next().await? {
        StreamItem::Next(carried) => Some(carried),
        StreamItem::End(_) => None,
    }
}

/// Reads the `Subscribed` event and returns (recovered, first_seq).
async fn subscribed(events: &mut RoomEvents) -> (bool, Seq) {
    match next(events).await {
        Some(RoomEvent::Subscribed { recovered, first_seq, .. }) => (recovered, first_seq),
        other => panic!("expected Subscribed first, got {other:?}"),
    }
}

/// Reads `count` messages, failing on anything else but presence and typing.
async fn messages(events: &mut RoomEvents, count: usize) -> Vec<(Seq, String, String)> {
    let mut got = Vec::with_capacity(count);
    while got.len() < count {
        match next(events).await {
            Some(RoomEvent::Message(message)) => {
                got.push((message.seq, message.user.to_string(), message.body.to_string()))
            }
            Some(RoomEvent::Presence { .. } | RoomEvent::Typing { .. }) => {}
            other => panic!("expected a message, got {other:?}"),
        }
    }
    got
}
