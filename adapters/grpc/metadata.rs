//! Names a gRPC call carries in its metadata rather than its messages: the room of the seed's
//! `ChatService` calls, and the user of a `confab.v1` `Session`.

use confab_engine::{RoomName, UserName};
use tonic::metadata::MetadataMap;

use crate::api::auth::Caller;
use crate::api::error::ApiError;

/// The room the seed's ChatService uses when the `room` metadata key is absent.
pub const DEFAULT_ROOM: &str = "lobby";

/// An ASCII metadata value, `None` when the key is absent.
fn metadata<'a>(metadata: &'a MetadataMap, key: &'static str) -> Result<Option<&'a str>, ApiError> {
    metadata
        .get(key)
        .map(|value| value.to_str().map_err(|_| ApiError::Malformed(format!("metadata {key:?} is not ASCII text"))))
        .transpose()
}

/// The room named by the `room` metadata key (the seed's ChatService), default `lobby`.
pub fn room(map: &MetadataMap) -> Result<RoomName, ApiError> {
    RoomName::new(metadata(map, "room")?.unwrap_or(DEFAULT_ROOM)).map_err(ApiError::name("metadata room"))
}

/// The user of a confab.v1 Session, from its `user` metadata key ([`Caller::session_user`]).
pub fn user(caller: &Caller, map: &MetadataMap) -> Result<UserName, ApiError> {
    caller.session_user(metadata(map, "user")?, "metadata user")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::auth::DEFAULT_USER;

    #[test]
    fn a_sessions_user_follows_the_identity_rule() {
        let ann = Caller::User(UserName::new("ann").expect("name"));
        let mut metadata = MetadataMap::new();
        assert_eq!(user(&ann, &metadata).expect("absent is me").as_str(), "ann");
        assert_eq!(user(&Caller::Anyone, &metadata).expect("open").as_str(), DEFAULT_USER);
        metadata.insert("user", "bob".parse().expect("ascii"));
        assert!(user(&ann, &metadata).is_err());
        assert_eq!(user(&Caller::Anyone, &metadata).expect("open").as_str(), "bob");
    }
}
