//! Where a room lives in JetStream: its shard (which stream) and its subject.
//!
//! - **Shard.** FNV-1a (64-bit) of the room name's UTF-8 bytes, modulo the shard count. FNV-1a
//!   is fixed by its specification, so every node, build and platform maps a room to the same
//!   shard; std's `DefaultHasher` is randomly seeded per process and would not. Changing the shard
//!   count moves rooms between streams, so it is part of a deployment's fixed configuration.
//! - **Subject.** `confab.room.<shard>.<hex of the name>`. A room name is any non-empty string,
//!   but in a subject `.` separates tokens, `*` and `>` are wildcards and whitespace ends the
//!   subject: a room called `a.>` would otherwise publish into other rooms' subjects. Lower-case
//!   hex of the UTF-8 bytes is injective, uses only `[0-9a-f]`, needs no dependency and is easy
//!   to read back by eye in `nats` tooling; it doubles the length, which room name limits keep
//!   small.

/// The prefix of every room subject; the shard and the encoded room name follow.
pub const SUBJECT_PREFIX: &str = "confab.room";

/// A room's place in JetStream: the shard stream that holds it and its subject there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomSubject {
    /// Index of the shard stream, `0..shards`.
    pub shard: u32,
    /// The subject every message of the room is published on.
    pub subject: String,
}

/// The shard of `room` among `shards` streams: FNV-1a 64 of the name, modulo `shards`.
///
/// # Panics
/// If `shards` is zero (options refuse that before any room is mapped).
pub fn shard_of(room: &str, shards: u32) -> u32 {
    assert!(shards > 0, "the shard count must be positive");
    const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash =
        room.as_bytes().iter().fold(FNV_OFFSET_BASIS, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(FNV_PRIME));
    u32::try_from(hash % u64::from(shards)).expect("a remainder below a u32 fits a u32")
}

/// The subject filter of shard `shard`'s stream: one token per room.
pub fn shard_filter(shard: u32) -> String {
    format!("{SUBJECT_PREFIX}.{shard}.*")
}

/// Where `room` lives among `shards` shard streams.
pub fn room_subject(room: &str, shards: u32) -> RoomSubject {
    let shard = shard_of(room, shards);
    let mut subject = format!("{SUBJECT_PREFIX}.{shard}.");
    subject.reserve(room.len() * 2);
    for byte in room.as_bytes() {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        subject.push(char::from(HEX[usize::from(byte >> 4)]));
        subject.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    RoomSubject { shard, subject }
}

/// The room name of a room subject (the inverse of [`room_subject`]); `None` for a subject
/// this module did not make.
pub fn room_of_subject(subject: &str) -> Option<String> {
    let encoded = subject.strip_prefix(SUBJECT_PREFIX)?.strip_prefix('.')?.split_once('.')?.1;
    if encoded.len() % 2 != 0 {
        return None;
    }
    let bytes = (0..encoded.len())
        .step_by(2)
        .map(|index| u8::from_str_radix(encoded.get(index..index + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_published_test_vectors() {
        // FNV-1a 64 of "a" is 0xaf63dc4c8601ec8c, of "foobar" 0x85944171f73967e8 (the FNV
        // reference test vectors); modulo 2^32 keeps the low 32 bits.
        assert_eq!(shard_of("a", u32::MAX), (0xaf63_dc4c_8601_ec8c_u64 % u64::from(u32::MAX)) as u32);
        assert_eq!(shard_of("foobar", u32::MAX), (0x8594_4171_f739_67e8_u64 % u64::from(u32::MAX)) as u32);
    }

    #[test]
    fn names_that_are_not_subject_tokens_get_distinct_plain_subjects() {
        let dotted = room_subject("a.>", 4);
        let spaced = room_subject("a *", 4);
        for subject in [&dotted.subject, &spaced.subject] {
            let token = subject.rsplit('.').next().expect("a last token");
            assert!(token.bytes().all(|byte| byte.is_ascii_hexdigit()), "{subject}");
            assert_eq!(subject.matches('.').count(), 3, "{subject}");
        }
        assert_ne!(dotted.subject, spaced.subject);
        assert_eq!(room_of_subject(&dotted.subject).as_deref(), Some("a.>"));
        assert_eq!(room_of_subject(&room_subject("é 🎉", 3).subject).as_deref(), Some("é 🎉"));
        assert_eq!(room_of_subject("confab.room.0.6"), None);
        assert_eq!(room_of_subject("other.room.0.61"), None);
        assert_eq!(room_subject("lobby", 1).subject, "confab.room.0.6c6f626279");
    }
}
