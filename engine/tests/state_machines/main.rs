//! Tests of the engine's state machines, driven directly (no actors, no clock).
//! One binary with a module per area, to keep link time down.

mod durability;
mod properties;
mod room;
mod session;
mod upload;

use std::sync::Arc;

use confab_engine::{ClientMsgId, Draft, RoomName, Time, UserName};

fn room_name(name: &str) -> RoomName {
    RoomName::new(name).expect("valid room name")
}

fn user(name: &str) -> UserName {
    UserName::new(name).expect("valid user name")
}

fn draft(user_name: &str, id: &str, body: &str) -> Draft {
    Draft { user: user(user_name), client_msg_id: ClientMsgId::new(id).expect("valid id"), body: Arc::from(body) }
}

fn at(millis: u64) -> Time {
    Time::from_millis(millis)
}
