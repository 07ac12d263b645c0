//! Names, sequence numbers, time, and the events a room publishes.

use std::fmt;
use std::sync::Arc;

use crate::error::NameError;
use crate::limits::{CLIENT_MSG_ID_BYTES_MAX, ROOM_NAME_BYTES_MAX, USER_NAME_BYTES_MAX};

/// A room's sequence number: 1, 2, 3, … within the room's epoch (G1). 0 means "before the first".
pub type Seq = u64;

/// A point in engine time, in milliseconds since an origin the caller chooses. The engine never
/// reads a clock: the actor layer passes tokio's (possibly virtual) time, tests pass literals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(u64);

impl Time {
    /// The time `millis` milliseconds after the origin.
    pub const fn from_millis(millis: u64) -> Self {
        Self(millis)
    }

    /// Milliseconds since the origin.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// Milliseconds from `earlier` to `self`, zero if `earlier` is later.
    pub const fn millis_since(self, earlier: Time) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    /// The time `millis` milliseconds after `self` (saturating).
    pub const fn plus_millis(self, millis: u64) -> Time {
        Time(self.0.saturating_add(millis))
    }
}

/// A validated room name: 1 to [`ROOM_NAME_BYTES_MAX`] bytes of `[A-Za-z0-9._-]`.
/// Cheap to clone (shared).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RoomName(Arc<str>);

impl RoomName {
    /// Validates `name`.
    pub fn new(name: &str) -> Result<Self, NameError> {
        if name.is_empty() {
            return Err(NameError::RoomEmpty);
        }
        if name.len() > ROOM_NAME_BYTES_MAX {
            return Err(NameError::RoomTooLong { bytes: name.len(), bytes_max: ROOM_NAME_BYTES_MAX });
        }
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if let Some(bad) = name.chars().find(|&c| !allowed(c)) {
            return Err(NameError::RoomCharset { bad });
        }
        Ok(Self(name.into()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// A user name: 1 to [`USER_NAME_BYTES_MAX`] bytes that show as what they are, so that one user
/// cannot pass for another or for the server. Refused: an empty or whitespace-only name; control
/// characters (C0, DEL, C1); bidi controls, which reorder the text around them; invisible
/// characters (zero-width spaces and joiners, the BOM, other format characters, fillers and
/// variation selectors); line and paragraph separators; and the names the server speaks as
/// ([`RESERVED_USER_NAMES`], compared trimmed and case-insensitively). Cheap to clone (shared).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UserName(Arc<str>);

/// Names the server itself speaks as (the seed service's broadcast is sent by `Server`), so no
/// client may take them and forge what the server says.
pub const RESERVED_USER_NAMES: &[&str] = &["Server"];

/// Bidi controls (Unicode `Bidi_Control`): they reorder the text that follows them.
const BIDI_CONTROLS: &[(char, char)] =
    &[('\u{061C}', '\u{061C}'), ('\u{200E}', '\u{200F}'), ('\u{202A}', '\u{202E}'), ('\u{2066}', '\u{2069}')];

/// Characters that draw nothing: Unicode's format characters (`Cf`) and default-ignorable code
/// points (zero-width space and joiners, word joiner, BOM, soft hyphen, fillers, variation
/// selectors, tags), plus the line and paragraph separators, which break the line.
const INVISIBLE: &[(char, char)] = &[
    ('\u{00AD}', '\u{00AD}'),
    ('\u{034F}', '\u{034F}'),
    ('\u{0600}', '\u{0605}'),
    ('\u{06DD}', '\u{06DD}'),
    ('\u{070F}', '\u{070F}'),
    ('\u{0890}', '\u{0891}'),
    ('\u{08E2}', '\u{08E2}'),
    ('\u{115F}', '\u{1160}'),
    ('\u{17B4}', '\u{17B5}'),
    ('\u{180B}', '\u{180F}'),
    ('\u{200B}', '\u{200D}'),
    ('\u{2028}', '\u{2029}'),
    ('\u{2060}', '\u{2065}'),
    ('\u{206A}', '\u{206F}'),
    ('\u{3164}', '\u{3164}'),
    ('\u{FE00}', '\u{FE0F}'),
    ('\u{FEFF}', '\u{FEFF}'),
    ('\u{FFA0}', '\u{FFA0}'),
    ('\u{FFF0}', '\u{FFFB}'),
    ('\u{110BD}', '\u{110BD}'),
    ('\u{110CD}', '\u{110CD}'),
    ('\u{13430}', '\u{1343F}'),
    ('\u{1BCA0}', '\u{1BCA3}'),
    ('\u{1D173}', '\u{1D17A}'),
    ('\u{E0000}', '\u{E0FFF}'),
];

fn in_ranges(ranges: &[(char, char)], c: char) -> bool {
    ranges.iter().any(|&(first, last)| (first..=last).contains(&c))
}

/// Whether `c` is a bidi control (see [`UserName`]).
pub fn is_bidi_control(c: char) -> bool {
    in_ranges(BIDI_CONTROLS, c)
}

/// Whether `c` draws nothing although it is not whitespace (see [`UserName`]).
pub fn is_invisible(c: char) -> bool {
    in_ranges(INVISIBLE, c)
}

impl UserName {
    /// Validates `name` (the rules are on [`UserName`]).
    pub fn new(name: &str) -> Result<Self, NameError> {
        let user = Self::recorded(name)?;
        if name.is_empty() {
            return Err(NameError::UserEmpty);
        }
        if name.chars().all(char::is_whitespace) {
            return Err(NameError::UserBlank);
        }
        if let Some(bad) = name.chars().find(|&c| is_bidi_control(c)) {
            return Err(NameError::UserBidi { bad });
        }
        if let Some(bad) = name.chars().find(|&c| is_invisible(c)) {
            return Err(NameError::UserInvisible { bad });
        }
        let trimmed = name.trim();
        if let Some(reserved) = RESERVED_USER_NAMES.iter().find(|reserved| reserved.eq_ignore_ascii_case(trimmed)) {
            return Err(NameError::UserReserved { reserved });
        }
        Ok(user)
    }

    /// A name as it was recorded, checked only by the rules every earlier version applied (the
    /// length and no control characters): the store reads history with it, so messages written
    /// before the stricter rules of [`UserName::new`] stay readable. Never for a client's input.
    pub fn recorded(name: &str) -> Result<Self, NameError> {
        if name.len() > USER_NAME_BYTES_MAX {
            return Err(NameError::UserTooLong { bytes: name.len(), bytes_max: USER_NAME_BYTES_MAX });
        }
        if let Some(bad) = name.chars().find(|&c| c.is_control()) {
            return Err(NameError::UserControl { bad });
        }
        Ok(Self(name.into()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for UserName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "@{}", self.0)
    }
}

/// A client-chosen id that makes a send idempotent (G4): up to [`CLIENT_MSG_ID_BYTES_MAX`] bytes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientMsgId(Arc<str>);

impl ClientMsgId {
    /// Validates `id`; the empty string means "no id" and gives `None`.
    pub fn new(id: &str) -> Result<Option<Self>, NameError> {
        if id.is_empty() {
            return Ok(None);
        }
        if id.len() > CLIENT_MSG_ID_BYTES_MAX {
            return Err(NameError::ClientMsgIdTooLong { bytes: id.len(), bytes_max: CLIENT_MSG_ID_BYTES_MAX });
        }
        Ok(Some(Self(id.into())))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A message as a client submits it, before the room sequences it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Draft {
    /// Who speaks. The transport decides where this comes from (a token, a frame field).
    pub user: UserName,
    /// Makes retries idempotent (G4); `None` disables dedupe for this send.
    pub client_msg_id: Option<ClientMsgId>,
    /// The text.
    pub body: Arc<str>,
}

/// A message the room accepted: immutable and shared by the history and every delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatMessage {
    /// The room it belongs to.
    pub room: RoomName,
    /// Its place in the room (G1).
    pub seq: Seq,
    /// Who sent it.
    pub user: UserName,
    /// The sender's idempotency id, if any (echoed so a client can match its own messages).
    pub client_msg_id: Option<ClientMsgId>,
    /// The text.
    pub body: Arc<str>,
    /// When the room accepted it, in engine time (used for latency measurement).
    pub accepted_at: Time,
}

/// The span a lagging subscriber missed (G2): every sequence number from `missed_from` to
/// `missed_to`, inclusive, was skipped for it and can be fetched with `History` while retained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lag {
    /// First sequence number not delivered.
    pub missed_from: Seq,
    /// Last sequence number not delivered.
    pub missed_to: Seq,
}

/// What a subscriber of a room receives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RoomEvent {
    /// First event of every subscription: where it starts (G5).
    Subscribed {
        /// The room.
        room: RoomName,
        /// The room's epoch; it changes when the room's history was lost.
        epoch: u64,
        /// `true` if the subscription continues exactly after the requested `after_seq`.
        recovered: bool,
        /// The first sequence number this subscription will carry.
        first_seq: Seq,
    },
    /// A sequenced message (G1).
    Message(Arc<ChatMessage>),
    /// The subscriber fell behind and skipped a span (G2); the next message follows the span.
    Lagged {
        /// The room.
        room: RoomName,
        /// The skipped span.
        lag: Lag,
    },
    /// Someone joined or left (ephemeral: never sequenced, dropped for a full queue).
    Presence {
        /// The room.
        room: RoomName,
        /// Who.
        user: UserName,
        /// `true` on join, `false` on leave.
        present: bool,
    },
    /// Someone is typing (ephemeral: never sequenced, dropped for a full queue).
    Typing {
        /// The room.
        room: RoomName,
        /// Who.
        user: UserName,
    },
}

impl RoomEvent {
    /// The room this event is about.
    pub fn room(&self) -> &RoomName {
        match self {
            RoomEvent::Subscribed { room, .. }
            | RoomEvent::Lagged { room, .. }
            | RoomEvent::Presence { room, .. }
            | RoomEvent::Typing { room, .. } => room,
            RoomEvent::Message(message) => &message.room,
        }
    }

    /// The sequence number, for a message.
    pub fn seq(&self) -> Option<Seq> {
        match self {
            RoomEvent::Message(message) => Some(message.seq),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(name: &str) -> NameError {
        UserName::new(name).expect_err(name)
    }

    #[test]
    fn plain_names_from_any_script_are_accepted() {
        for name in ["ann", "Ann Lee", "zoë", "José-María", "李雷", "محمد", "ann_2", "Servers", "server-bot", "🙂"]
        {
            assert_eq!(UserName::new(name).map(|user| user.to_string()), Ok(name.to_owned()));
        }
    }

    #[test]
    fn empty_and_blank_names_are_refused() {
        assert_eq!(refusal(""), NameError::UserEmpty);
        for blank in [" ", "   ", "\t ", "\u{00A0}", "\u{3000}"] {
            assert!(matches!(refusal(blank), NameError::UserBlank | NameError::UserControl { .. }), "{blank:?}");
        }
        assert_eq!(refusal("  "), NameError::UserBlank);
    }

    #[test]
    fn control_characters_are_refused() {
        for (name, bad) in
            [("a\nb", '\n'), ("\u{1b}]0;pwned\u{7}", '\u{1b}'), ("a\u{7f}", '\u{7f}'), ("a\u{9b}", '\u{9b}')]
        {
            assert_eq!(refusal(name), NameError::UserControl { bad }, "{name:?}");
        }
    }

    #[test]
    fn bidi_controls_are_refused() {
        for bad in [
            '\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}', '\u{202E}', '\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}',
            '\u{200E}', '\u{200F}', '\u{061C}',
        ] {
            let name = format!("ann{bad}nimda");
            assert_eq!(refusal(&name), NameError::UserBidi { bad }, "{name:?}");
        }
        assert!(refusal("a\u{202E}b").to_string().contains("bidi"), "the message names the rule");
    }

    #[test]
    fn invisible_characters_are_refused() {
        let invisible = [
            '\u{200B}',
            '\u{200C}',
            '\u{200D}',
            '\u{2060}',
            '\u{FEFF}',
            '\u{00AD}',
            '\u{180E}',
            '\u{2028}',
            '\u{3164}',
            '\u{FE0F}',
            '\u{E0041}',
        ];
        for bad in invisible {
            let name = format!("an{bad}n");
            assert_eq!(refusal(&name), NameError::UserInvisible { bad }, "{name:?}");
        }
        assert_eq!(refusal("\u{200B}"), NameError::UserInvisible { bad: '\u{200B}' }, "zero-width only is not blank");
    }

    #[test]
    fn the_servers_own_name_is_refused_in_any_case_and_spacing() {
        for name in ["Server", "server", "SERVER", " Server ", "sErVeR\u{00A0}"] {
            assert_eq!(refusal(name), NameError::UserReserved { reserved: "Server" }, "{name:?}");
        }
    }

    #[test]
    fn names_over_the_limit_are_refused() {
        assert!(UserName::new(&"a".repeat(USER_NAME_BYTES_MAX)).is_ok());
        assert!(matches!(refusal(&"a".repeat(USER_NAME_BYTES_MAX + 1)), NameError::UserTooLong { .. }));
    }

    #[test]
    fn recorded_names_keep_the_earlier_rules() {
        for name in ["", " ", "Server", "a\u{202E}b"] {
            assert_eq!(UserName::recorded(name).map(|user| user.to_string()), Ok(name.to_owned()));
        }
        assert!(UserName::recorded("a\nb").is_err());
    }
}
