//! The engine's error enums. Each is a domain refusal a client can act on; transports map them
//! to their own status codes in one place.

use crate::types::Seq;

/// A name or id that fails validation.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The room name is empty.
    #[error("room name is empty")]
    RoomEmpty,
    /// The room name is longer than allowed.
    #[error("room name is {bytes} bytes, the limit is {bytes_max}")]
    RoomTooLong {
        /// Its length.
        bytes: usize,
        /// The limit.
        bytes_max: usize,
    },
    /// The room name has a character outside `[A-Za-z0-9._-]`.
    #[error("room name has {bad:?}; allowed are A-Z a-z 0-9 . _ -")]
    RoomCharset {
        /// The first offending character.
        bad: char,
    },
    /// The user name is longer than allowed.
    #[error("user name is {bytes} bytes, the limit is {bytes_max}")]
    UserTooLong {
        /// Its length.
        bytes: usize,
        /// The limit.
        bytes_max: usize,
    },
    /// The user name is empty.
    #[error("user name is empty")]
    UserEmpty,
    /// The user name is only whitespace.
    #[error("user name is only whitespace")]
    UserBlank,
    /// The user name contains a control character.
    #[error("user name has the control character {bad:?}")]
    UserControl {
        /// The first offending character.
        bad: char,
    },
    /// The user name contains a bidi control, which would reorder the text around it.
    #[error("user name has the bidi control {bad:?}, which reorders the text around it")]
    UserBidi {
        /// The first offending character.
        bad: char,
    },
    /// The user name contains a character that draws nothing (zero-width, format, filler).
    #[error("user name has the invisible character {bad:?}")]
    UserInvisible {
        /// The first offending character.
        bad: char,
    },
    /// The user name is one the server speaks as.
    #[error("user name {reserved:?} is reserved for the server (in any case, with or without spaces)")]
    UserReserved {
        /// The reserved name it matches.
        reserved: &'static str,
    },
    /// The client message id is longer than allowed.
    #[error("client message id is {bytes} bytes, the limit is {bytes_max}")]
    ClientMsgIdTooLong {
        /// Its length.
        bytes: usize,
        /// The limit.
        bytes_max: usize,
    },
}

/// A room refused a request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RoomError {
    /// The body is larger than `message_bytes_max`.
    #[error("message is {bytes} bytes, the limit is {bytes_max}")]
    MessageTooBig {
        /// Its size.
        bytes: usize,
        /// The limit.
        bytes_max: usize,
    },
    /// The room has `room_subscribers_max` subscribers already.
    #[error("room is full: {subscribers_max} subscribers")]
    RoomFull {
        /// The limit.
        subscribers_max: usize,
    },
    /// A batch is larger than the room could ever retain, so it could not be committed whole.
    #[error("batch of {len} messages exceeds the {len_max} a room retains")]
    BatchTooLong {
        /// The batch length.
        len: usize,
        /// The limit.
        len_max: usize,
    },
    /// The engine holds `rooms_max` rooms and none is idle, so no room can be created.
    #[error("too many rooms: the limit is {rooms_max}")]
    TooManyRooms {
        /// The limit.
        rooms_max: usize,
    },
    /// The room was retired for idleness while this request waited; ask the registry again.
    #[error("room was retired; retry")]
    Retired,
    /// The history store failed, so the message could not be made durable (nothing was
    /// acknowledged or delivered).
    #[error("history could not be made durable: {reason}")]
    Storage {
        /// What the store said.
        reason: String,
    },
    /// The room's stored history is damaged: the room is refused until the store is repaired
    /// (other rooms go on), so damaged messages are never served.
    #[error("stored history is damaged, so this room is closed until the store is repaired: {reason}")]
    DataLoss {
        /// What the store found: the file, the room, and the sequence numbers.
        reason: String,
    },
    /// `History` asked for a room that does not exist.
    #[error("no such room")]
    NotFound,
    /// A read needed the room's replicated log (cluster mode), which cannot be reached or has
    /// no quorum, and the node's cache alone could not answer it exactly. Retry later.
    #[error("the room's log is unavailable, and this read needs it: {reason}")]
    LogUnavailable {
        /// Why the log could not be asked.
        reason: String,
    },
}

/// An upload refused a chunk, or could not commit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UploadError {
    /// The upload has `upload_messages_max` messages already.
    #[error("upload has more than {messages_max} messages")]
    TooManyMessages {
        /// The limit.
        messages_max: usize,
    },
    /// The upload's bodies exceed `upload_bytes_max`.
    #[error("upload has more than {bytes_max} bytes")]
    TooManyBytes {
        /// The limit.
        bytes_max: usize,
    },
    /// The room refused the batch (a message too big, …).
    #[error(transparent)]
    Room(#[from] RoomError),
    /// The upload was aborted and commits nothing (G6).
    #[error("upload aborted")]
    Aborted,
}

/// A session refused a client frame. The session stays open; the client gets an error frame.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// The frame names a room the session has not joined.
    #[error("not joined to room {room}")]
    NotJoined {
        /// The room named.
        room: String,
    },
    /// The session is already joined to that room.
    #[error("already joined to room {room}")]
    AlreadyJoined {
        /// The room named.
        room: String,
    },
    /// The session is joined to `session_rooms_max` rooms already.
    #[error("joined to {rooms_max} rooms already")]
    TooManyRooms {
        /// The limit.
        rooms_max: usize,
    },
    /// An ack names a sequence number the session has not delivered yet.
    #[error("ack of seq {seq} in room {room}, but only {delivered} was delivered")]
    AckAhead {
        /// The room.
        room: String,
        /// What was acked.
        seq: Seq,
        /// What was delivered.
        delivered: Seq,
    },
    /// A name in the frame is invalid.
    #[error(transparent)]
    Name(#[from] NameError),
    /// The frame came after the client closed its side.
    #[error("session is closing")]
    Closing,
}
