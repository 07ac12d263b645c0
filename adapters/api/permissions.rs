//! Room permissions: which rooms a bearer may read and post to, as lists of patterns.
//!
//! A token (a JWT's `rooms` and `read_rooms` claims, or a tokens-file line's `rooms=` and
//! `read_rooms=` fields, see [`super::auth`]) may carry two lists:
//!
//! - `rooms`: rooms the bearer may read **and** post to;
//! - `read_rooms`: rooms the bearer may only read.
//!
//! Without either list every room is allowed (tokens issued before permissions existed keep
//! working). With one or both, a room matched by neither is refused: reading needs a match in
//! either list, posting a match in `rooms`. An empty list allows nothing.
//!
//! A pattern is a room name in which `*` stands for any run of characters, empty included:
//! `team-*` matches `team-` and `team-red`, `*` matches every room, `a*b*c` matches `abc` and
//! `a-b-c`. Besides `*`, a pattern holds only the characters of a room name
//! (`[A-Za-z0-9._-]`), so a typo such as `news/*` is refused when the token is read instead of
//! silently matching nothing. Matching is linear in the room name and the pattern (no
//! backtracking), and both the number of patterns and their length are bounded
//! ([`ROOM_PATTERNS_MAX`], [`ROOM_PATTERN_BYTES_MAX`]), so a hostile token cannot make the
//! check expensive.

use std::fmt;

/// Most patterns in one list (`rooms` or `read_rooms`) of one token: every call checks them.
pub const ROOM_PATTERNS_MAX: usize = 64;

/// Longest pattern, in bytes: a room name is at most 64 bytes, so this leaves room for a `*`
/// between every two characters of a long name.
pub const ROOM_PATTERN_BYTES_MAX: usize = 128;

/// A pattern list that cannot be used. The token carrying it is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// More than [`ROOM_PATTERNS_MAX`] patterns.
    #[error("{count} room patterns; at most {ROOM_PATTERNS_MAX} are allowed")]
    TooMany {
        /// How many there were.
        count: usize,
    },
    /// An empty pattern (it could match no room name).
    #[error("an empty room pattern; use `*` for every room")]
    Empty,
    /// A pattern over [`ROOM_PATTERN_BYTES_MAX`] bytes.
    #[error("a room pattern of {bytes} bytes; at most {ROOM_PATTERN_BYTES_MAX} are allowed")]
    TooLong {
        /// Its length.
        bytes: usize,
    },
    /// A character that no room name holds.
    #[error("room pattern {pattern:?} holds {bad:?}; patterns are room names ([A-Za-z0-9._-]) with `*`")]
    Charset {
        /// The pattern (at most [`ROOM_PATTERN_BYTES_MAX`] bytes, so safe to echo).
        pattern: String,
        /// The first character that is not allowed.
        bad: char,
    },
}

/// A validated list of room patterns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoomPatterns {
    patterns: Vec<Box<str>>,
}

impl RoomPatterns {
    /// Validates `patterns` (see the module docs).
    pub fn new<'a>(patterns: impl IntoIterator<Item = &'a str>) -> Result<Self, PatternError> {
        let mut checked = Vec::new();
        for pattern in patterns {
            if checked.len() == ROOM_PATTERNS_MAX {
                return Err(PatternError::TooMany { count: ROOM_PATTERNS_MAX + 1 });
            }
            checked.push(check_pattern(pattern)?.into());
        }
        Ok(Self { patterns: checked })
    }

    /// A comma-separated list, as the tokens file writes it (`a*,b`); the empty text is the
    /// empty list.
    pub fn parse_list(text: &str) -> Result<Self, PatternError> {
        if text.is_empty() { Ok(Self::default()) } else { Self::new(text.split(',')) }
    }

    /// Whether any pattern matches `room`.
    pub fn matches(&self, room: &str) -> bool {
        self.patterns.iter().any(|pattern| pattern_matches(pattern, room))
    }

    /// How many patterns the list holds.
    pub fn len(&self) -> usize {
        self.patterns.len()
    }

    /// Whether the list is empty (it then allows nothing).
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }
}

fn check_pattern(pattern: &str) -> Result<&str, PatternError> {
    if pattern.is_empty() {
        return Err(PatternError::Empty);
    }
    if pattern.len() > ROOM_PATTERN_BYTES_MAX {
        return Err(PatternError::TooLong { bytes: pattern.len() });
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '*');
    if let Some(bad) = pattern.chars().find(|&c| !allowed(c)) {
        return Err(PatternError::Charset { pattern: pattern.to_owned(), bad });
    }
    Ok(pattern)
}

/// Whether `pattern` (`*` matches any run of characters, everything else itself) matches the
/// whole of `text`.
///
/// The pieces between stars are found left to right, each at its first place after the one
/// before: taking the leftmost place never loses a match, because whatever a later piece could
/// match after a later place it can also match after an earlier one. So there is no
/// backtracking, and the time is linear in `text` and `pattern` (`str::find` is).
pub fn pattern_matches(pattern: &str, text: &str) -> bool {
    let mut pieces = pattern.split('*');
    // `split` yields at least one piece; with no `*` it is the whole pattern.
    let first = pieces.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else { return false };
    let Some(last) = pieces.next_back() else { return rest.is_empty() };
    for piece in pieces {
        match rest.find(piece) {
            Some(at) => rest = &rest[at + piece.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// What a call wants to do with a room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoomAction {
    /// Read: Subscribe, History, a session's Join, a room snapshot, ListRooms.
    Read,
    /// Post: Send, a session's Send and Typing, uploads, the seed's SayHello and ChatStream.
    Post,
}

impl fmt::Display for RoomAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RoomAction::Read => "read",
            RoomAction::Post => "post to",
        })
    }
}

/// The rooms one bearer may read and post to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoomPermissions {
    /// `rooms`: read and post. `None`: the claim is absent.
    rooms: Option<RoomPatterns>,
    /// `read_rooms`: read only. `None`: the claim is absent.
    read_rooms: Option<RoomPatterns>,
}

impl RoomPermissions {
    /// Every room, for reading and posting (a token without either list, or an open server).
    pub fn all() -> Self {
        Self::default()
    }

    /// The permissions of a token's `rooms` and `read_rooms` lists.
    pub fn new(rooms: Option<RoomPatterns>, read_rooms: Option<RoomPatterns>) -> Self {
        Self { rooms, read_rooms }
    }

    /// Whether every room is allowed (neither list given).
    pub fn is_unrestricted(&self) -> bool {
        self.rooms.is_none() && self.read_rooms.is_none()
    }

    /// Whether the bearer may do `action` in `room`.
    pub fn allows(&self, room: &str, action: RoomAction) -> bool {
        if self.is_unrestricted() {
            return true;
        }
        let in_rooms = self.rooms.as_ref().is_some_and(|rooms| rooms.matches(room));
        match action {
            RoomAction::Post => in_rooms,
            RoomAction::Read => in_rooms || self.read_rooms.as_ref().is_some_and(|read| read.matches(room)),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The obvious exponential definition, to check the fast one against.
    fn reference(pattern: &[u8], text: &[u8]) -> bool {
        match pattern.split_first() {
            None => text.is_empty(),
            Some((b'*', rest)) => (0..=text.len()).any(|skip| reference(rest, &text[skip..])),
            Some((c, rest)) => text.first() == Some(c) && reference(rest, &text[1..]),
        }
    }

    #[test]
    fn stars_match_any_run_and_the_rest_matches_itself() {
        let cases = [
            ("*", "", true),
            ("*", "anything", true),
            ("team-*", "team-", true),
            ("team-*", "team-red", true),
            ("team-*", "team", false),
            ("*-ops", "eu-ops", true),
            ("*-ops", "eu-ops2", false),
            ("a*b*c", "abc", true),
            ("a*b*c", "a-b-c", true),
            ("a*b*c", "acb", false),
            ("a*a", "a", false),
            ("a*a", "aa", true),
            ("**", "x", true),
            ("lobby", "lobby", true),
            ("lobby", "lobby2", false),
            ("*ab*ab", "abab", true),
            ("*ab*ab", "aab", false),
        ];
        for (pattern, text, expected) in cases {
            assert_eq!(pattern_matches(pattern, text), expected, "{pattern:?} against {text:?}");
            assert_eq!(reference(pattern.as_bytes(), text.as_bytes()), expected, "reference: {pattern:?} {text:?}");
        }
    }

    #[test]
    fn every_small_pattern_agrees_with_the_reference() {
        // Every pattern and text of up to 4 characters over {a, b, *} / {a, b}.
        fn all(alphabet: &[u8], len_max: usize) -> Vec<Vec<u8>> {
            let mut out = vec![Vec::new()];
            let mut frontier = vec![Vec::new()];
            for _ in 0..len_max {
                frontier = frontier
                    .iter()
                    .flat_map(|prefix: &Vec<u8>| {
                        alphabet.iter().map(move |&c| {
                            let mut next = prefix.clone();
                            next.push(c);
                            next
                        })
                    })
                    .collect();
                out.extend(frontier.iter().cloned());
            }
            out
        }
        let (patterns, texts) = (all(b"ab*", 4), all(b"ab", 4));
        for pattern in &patterns {
            for text in &texts {
                let (p, t) = (std::str::from_utf8(pattern).expect("ascii"), std::str::from_utf8(text).expect("ascii"));
                assert_eq!(pattern_matches(p, t), reference(pattern, text), "{p:?} against {t:?}");
            }
        }
    }

    proptest! {
        #[test]
        fn matching_agrees_with_the_reference(pattern in "[ab*.]{0,10}", text in "[ab.]{0,12}") {
            prop_assert_eq!(pattern_matches(&pattern, &text), reference(pattern.as_bytes(), text.as_bytes()));
        }
    }

    #[test]
    fn the_worst_case_for_backtracking_is_quick() {
        // A backtracking matcher takes exponential time on this; this one is linear.
        let pattern = format!("{}b", "a*".repeat(ROOM_PATTERN_BYTES_MAX / 2 - 1));
        let patterns = RoomPatterns::new([pattern.as_str()]).expect("within the limits");
        assert!(!patterns.matches(&"a".repeat(64)));
    }

    #[test]
    fn lists_are_validated_and_bounded() {
        assert_eq!(RoomPatterns::parse_list("").expect("empty").len(), 0);
        assert_eq!(RoomPatterns::parse_list("a*,b").expect("two").len(), 2);
        assert_eq!(RoomPatterns::parse_list("a,,b"), Err(PatternError::Empty));
        assert!(matches!(RoomPatterns::parse_list("news/*"), Err(PatternError::Charset { bad: '/', .. })));
        let long = "a".repeat(ROOM_PATTERN_BYTES_MAX + 1);
        assert_eq!(RoomPatterns::new([long.as_str()]), Err(PatternError::TooLong { bytes: long.len() }));
        let many = vec!["a"; ROOM_PATTERNS_MAX + 1];
        assert!(matches!(RoomPatterns::new(many), Err(PatternError::TooMany { .. })));
        assert!(RoomPatterns::new(vec!["a"; ROOM_PATTERNS_MAX]).is_ok());
    }

    #[test]
    fn rooms_allow_both_read_rooms_only_reading_and_no_list_everything() {
        let list = |text| Some(RoomPatterns::parse_list(text).expect("valid"));
        let all = RoomPermissions::all();
        assert!(all.allows("x", RoomAction::Post) && all.allows("x", RoomAction::Read));
        let both = RoomPermissions::new(list("team-*"), list("news*"));
        assert!(both.allows("team-a", RoomAction::Post));
        assert!(both.allows("team-a", RoomAction::Read));
        assert!(both.allows("news", RoomAction::Read));
        assert!(!both.allows("news", RoomAction::Post));
        assert!(!both.allows("lobby", RoomAction::Read));
        let read_only = RoomPermissions::new(None, list("*"));
        assert!(read_only.allows("lobby", RoomAction::Read) && !read_only.allows("lobby", RoomAction::Post));
        let nothing = RoomPermissions::new(list(""), None);
        assert!(!nothing.allows("lobby", RoomAction::Read) && !nothing.is_unrestricted());
    }
}
