//! Every limit the engine enforces, as a named constant with its reason, gathered in [`Limits`]
//! so that a server can override them from flags while tests and the simulator use the defaults.

/// Largest message body, in bytes (UTF-8). Bigger bodies are refused with
/// [`RoomError::MessageTooBig`](crate::RoomError::MessageTooBig): a chat line, not a file transfer.
pub const MESSAGE_BYTES_MAX: usize = 64 * 1024;

/// Longest room name, in bytes. Room names are also limited to `[A-Za-z0-9._-]` so that they are
/// safe in logs, metrics labels and URLs.
pub const ROOM_NAME_BYTES_MAX: usize = 64;

/// Longest user name, in bytes.
pub const USER_NAME_BYTES_MAX: usize = 64;

/// Longest client message id, in bytes (room for a UUID or a ULID with a prefix).
pub const CLIENT_MSG_ID_BYTES_MAX: usize = 64;

/// Messages a room retains for `History` and resume. Older ones are dropped, oldest first.
pub const HISTORY_LEN_MAX: usize = 10_000;

/// Largest `History` page, in messages.
pub const HISTORY_PAGE_MAX: usize = 1_000;

/// Largest `History` page, in bytes of messages (as [`message_bytes`] counts them): a page
/// stops early at this budget (with at least one message), and the client continues after the
/// last message it got, as after any page. Far below the 4 MiB a default gRPC client accepts
/// in one message, which 1,000 messages of 64 KiB would exceed 16 times over.
pub const HISTORY_PAGE_BYTES_MAX: usize = 1024 * 1024;

/// Bytes of messages (as [`message_bytes`] counts them) a room retains for `History` and
/// resume, besides [`HISTORY_LEN_MAX`]: beyond either, the oldest are dropped first, though the
/// newest message is always kept. Bounds a room's memory at this rather than at
/// `HISTORY_LEN_MAX` x [`MESSAGE_BYTES_MAX`] (625 MiB).
pub const HISTORY_BYTES_MAX: usize = 32 * 1024 * 1024;

/// What one message counts for in the byte budgets beside its strings: its numbers, and the
/// framing a transport adds around it.
pub const MESSAGE_OVERHEAD_BYTES: usize = 64;

/// The bytes one message counts for in the history budgets: its body, its user and its client
/// message id, and [`MESSAGE_OVERHEAD_BYTES`].
pub fn message_bytes(message: &crate::ChatMessage) -> usize {
    let id = message.client_msg_id.as_ref().map_or(0, |id| id.as_str().len());
    message.body.len() + message.user.as_str().len() + id + MESSAGE_OVERHEAD_BYTES
}

/// Client message ids a room remembers for dedupe (G4). A retry older than the newest
/// `DEDUPE_WINDOW_LEN` identified sends of that room is appended again.
pub const DEDUPE_WINDOW_LEN: usize = 4_096;

/// Subscribers of one room (streams and sessions together).
pub const ROOM_SUBSCRIBERS_MAX: usize = 100_000;

/// Rooms one session may be joined to at once.
pub const SESSION_ROOMS_MAX: usize = 64;

/// Messages in one upload (G6 commits them as one run, so this bounds one commit).
pub const UPLOAD_MESSAGES_MAX: usize = 10_000;

/// Bytes of bodies in one upload.
pub const UPLOAD_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Events each room's ring keeps: how far a subscriber may fall behind before it lags (G2).
/// One ring per room, shared by every subscriber.
pub const SUBSCRIBER_QUEUE_LEN_MAX: usize = 1_024;

/// Frames that may wait for a session's client before the session stops reading its input.
pub const SESSION_OUTBOUND_LEN_MAX: usize = 1_024;

/// Rooms that may exist at once in one engine.
pub const ROOMS_MAX: usize = 100_000;

/// A room with no subscriber and no activity for this long is retired (its in-memory history
/// is dropped and a later use creates it again with a new epoch).
pub const ROOM_IDLE_MS: u64 = 60 * 60 * 1000;

/// A room that never got a message (`last_seq` 0: a subscription, a join or a typing notice
/// created it) and has no subscriber left is retired after this long instead of
/// [`ROOM_IDLE_MS`]: it has no history to keep, and a client opening streams to many new rooms
/// must not hold their slots in [`ROOMS_MAX`] for an hour. The registry sweeps at least this
/// often, so such a room goes within twice this time (at once when the room table is full).
pub const EMPTY_ROOM_IDLE_MS: u64 = 60 * 1000;

/// A subscriber that stays lagged this long without taking a single event is closed (evicted):
/// a stalled reader would otherwise hold its queue and its place in the room forever. A reader
/// that takes anything, however slowly, starts the clock again, so only stalled ones go.
pub const SUBSCRIBER_STALL_MS: u64 = 60 * 1000;

/// Sustained sends per second one sender may make, in one bucket per sender: the
/// authenticated user over all their connections, sessions and both services, or, on an open
/// server (where names are free to invent), one client connection. Unary `Send` and
/// `SayHello`, `Session` and WebSocket posts, the seed's `ChatStream` messages and every
/// uploaded message take a token from it. Over the rate, unary sends get RESOURCE_EXHAUSTED and
/// session posts an `Error` frame; `ChatStream` messages and uploads are paced instead (the
/// server stops reading them until a token is back), as an upload is all-or-nothing and may
/// hold more messages than the burst. Far above what a person types; it stops one client from
/// flooding a room. Enforced by the transport with a [`TokenBucket`](crate::rate::TokenBucket);
/// 0 turns it off (load tests).
pub const SENDS_PER_SECOND_MAX: u32 = 100;

/// Sends one sender may make at once after a quiet spell (the token bucket's size).
pub const SEND_BURST_MAX: u32 = 200;

/// Typing notices per second one sender (as for [`SENDS_PER_SECOND_MAX`]) may make, in a
/// bucket of their own: each notice is delivered to every member of the room, so a flood
/// multiplies. A client shows "typing" for seconds after one notice; a few a second is plenty.
/// Over it, an `Error` frame (RESOURCE_EXHAUSTED). 0 turns it off.
pub const TYPING_PER_SECOND_MAX: u32 = 5;

/// Typing notices one sender may make at once after a quiet spell.
pub const TYPING_BURST_MAX: u32 = 10;

/// Joins and leaves together per second one sender (as for [`SENDS_PER_SECOND_MAX`]) may make,
/// in a bucket of their own: each one is a presence event for every member of the room. Over
/// it, an `Error` frame (RESOURCE_EXHAUSTED); a seed `ChatStream`'s join is paced. 0 turns it
/// off.
pub const JOINS_PER_SECOND_MAX: u32 = 20;

/// Joins and leaves one sender may make at once after a quiet spell: twice
/// [`SESSION_ROOMS_MAX`], so a client reconnecting two sessions can join all their rooms at once.
pub const JOIN_BURST_MAX: u32 = 2 * SESSION_ROOMS_MAX as u32;

/// Rooms one sender (the authenticated user, or one connection on an open server) may create
/// per second, in a bucket of its own: a use of a room that is not live (a send, subscribe,
/// join or upload) takes a token. Rooms are shared by everyone ([`ROOMS_MAX`]); without this
/// one client could fill the table with empty rooms. Over it: RESOURCE_EXHAUSTED. 0 turns it
/// off.
pub const ROOMS_CREATED_PER_SECOND_MAX: u32 = 10;

/// Rooms one sender may create at once after a quiet spell.
pub const ROOM_CREATION_BURST_MAX: u32 = 1_000;

/// Distinct rooms one sender (as for [`ROOMS_CREATED_PER_SECOND_MAX`]) may hold joined or
/// subscribed at once, over all its sessions and `Subscribe` streams: each holds the room live
/// (it is not retired while held), so one client must not hold a large share of [`ROOMS_MAX`].
/// Over it: RESOURCE_EXHAUSTED (an `Error` frame in a session).
pub const ROOMS_PER_USER_MAX: usize = 1_000;

/// Sessions (gRPC `Session`, seed `ChatStream`, WebSocket) one sender may have open at once;
/// each holds a session actor and its queues. Over it: RESOURCE_EXHAUSTED.
pub const SESSIONS_PER_USER_MAX: usize = 256;

/// Uploads one sender may have open at once; each may buffer up to [`UPLOAD_BYTES_MAX`] until it
/// commits. Over it: RESOURCE_EXHAUSTED.
pub const UPLOADS_PER_USER_MAX: usize = 8;

/// Bytes of message bodies held by all open uploads together, server-wide: an upload keeps its
/// messages in memory until it commits, so without this, 40 unfinished uploads on one
/// connection could hold 640 MiB. A chunk that would go past it gets RESOURCE_EXHAUSTED (the
/// upload is aborted and commits nothing); the bytes come back when an upload commits or ends.
pub const UPLOAD_BYTES_IN_FLIGHT_MAX: usize = 256 * 1024 * 1024;

/// Bytes of message bodies one sender's open uploads may hold together: two full uploads
/// ([`UPLOAD_BYTES_MAX`]), so two users (or two connections of an open server) with unfinished
/// uploads cannot take the whole [`UPLOAD_BYTES_IN_FLIGHT_MAX`] from everyone else. Over it:
/// RESOURCE_EXHAUSTED, and that upload commits nothing.
pub const UPLOAD_BYTES_PER_USER_MAX: usize = 2 * UPLOAD_BYTES_MAX;

/// Concurrent calls (HTTP/2 streams) on one client connection. Enforced by the transport as
/// HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS`: a well-behaved client queues calls beyond it
/// until one ends. Above the 1,250 streams per connection the idle-stream benchmark opens.
pub const STREAMS_PER_CONNECTION_MAX: u32 = 2_048;

/// The limits one engine runs with. `Limits::default()` uses the constants of this module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// See [`MESSAGE_BYTES_MAX`].
    pub message_bytes_max: usize,
    /// See [`HISTORY_LEN_MAX`].
    pub history_len_max: usize,
    /// See [`HISTORY_PAGE_MAX`].
    pub history_page_max: usize,
    /// See [`HISTORY_PAGE_BYTES_MAX`].
    pub history_page_bytes_max: usize,
    /// See [`HISTORY_BYTES_MAX`].
    pub history_bytes_max: usize,
    /// See [`DEDUPE_WINDOW_LEN`].
    pub dedupe_window_len: usize,
    /// See [`ROOM_SUBSCRIBERS_MAX`].
    pub room_subscribers_max: usize,
    /// See [`SESSION_ROOMS_MAX`].
    pub session_rooms_max: usize,
    /// See [`UPLOAD_MESSAGES_MAX`].
    pub upload_messages_max: usize,
    /// See [`UPLOAD_BYTES_MAX`].
    pub upload_bytes_max: usize,
    /// See [`SUBSCRIBER_QUEUE_LEN_MAX`].
    pub subscriber_queue_len_max: usize,
    /// See [`SESSION_OUTBOUND_LEN_MAX`].
    pub session_outbound_len_max: usize,
    /// See [`ROOMS_MAX`].
    pub rooms_max: usize,
    /// See [`ROOM_IDLE_MS`].
    pub room_idle_ms: u64,
    /// See [`EMPTY_ROOM_IDLE_MS`].
    pub empty_room_idle_ms: u64,
    /// See [`SUBSCRIBER_STALL_MS`].
    pub subscriber_stall_ms: u64,
    /// Messages older than this many milliseconds (by their `accepted_at`) are dropped from a
    /// room's retained history, oldest first, though a room always keeps its last message.
    /// `None` (the default): no age limit, only the length and byte budgets. The server's
    /// `--retention-age` sets it, so a loaded room forgets what the store or the cluster log
    /// purges.
    pub history_age_max_ms: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            message_bytes_max: MESSAGE_BYTES_MAX,
            history_len_max: HISTORY_LEN_MAX,
            history_page_max: HISTORY_PAGE_MAX,
            history_page_bytes_max: HISTORY_PAGE_BYTES_MAX,
            history_bytes_max: HISTORY_BYTES_MAX,
            dedupe_window_len: DEDUPE_WINDOW_LEN,
            room_subscribers_max: ROOM_SUBSCRIBERS_MAX,
            session_rooms_max: SESSION_ROOMS_MAX,
            upload_messages_max: UPLOAD_MESSAGES_MAX,
            upload_bytes_max: UPLOAD_BYTES_MAX,
            subscriber_queue_len_max: SUBSCRIBER_QUEUE_LEN_MAX,
            session_outbound_len_max: SESSION_OUTBOUND_LEN_MAX,
            rooms_max: ROOMS_MAX,
            room_idle_ms: ROOM_IDLE_MS,
            empty_room_idle_ms: EMPTY_ROOM_IDLE_MS,
            subscriber_stall_ms: SUBSCRIBER_STALL_MS,
            history_age_max_ms: None,
        }
    }
}
