//! Presence and typing across nodes (cluster mode): a node's [`Roster`] of its peers' users,
//! kept by node heartbeats over an unreliable bus (core NATS: messages may be lost, never
//! reordered from one sender).
//!
//! - **Announcements.** A node announces its local members per room when they change (only the
//!   rooms that changed) and, every [`SNAPSHOT_EVERY_BEATS`] beats, all of them (a full
//!   snapshot). Each announcement says the whole member list of each room it names, so it is
//!   idempotent; a lost one is healed by the next full snapshot (anti-entropy). A node also
//!   sends a full snapshot soon after it hears a peer it did not know (or a new incarnation of
//!   one), so a node that starts learns everyone's members within a beat, not a snapshot period.
//! - **Heartbeats.** Every [`BEAT_MS`] a node sends a [`PresenceBody::Beat`] (or the snapshot).
//!   A peer not heard from for [`GONE_AFTER_BEATS`] beats counts as gone: its users leave.
//! - **Incarnations.** Every run of a node has an incarnation that grows between runs (the
//!   shell passes its start time). A message of a newer incarnation replaces everything known
//!   of the node (a restarted node's users from before the restart leave); one of an older
//!   incarnation is ignored (a message of the previous run still in flight).
//! - **Typing** is passed on as it comes, never kept.
//! - **Bounds**: [`PEERS_MAX`], [`PEER_ENTRIES_MAX`], [`PAYLOAD_BYTES_MAX`] (an announcement
//!   too big for one message goes in parts, at most [`ANNOUNCEMENT_PARTS_MAX`]).
//!
//! The room's visible presence is the union of its local members and what this roster says of
//! the room ([`PresenceEvent::Members`], handed to `Room::handle_remote_members`), so a user on
//! two nodes joins once and leaves once.
//!
//! Call order (quinn-style): feed inputs with `handle_*` (time passed in), then drain
//! [`Roster::poll_transmit`] (publish each on the bus, [`encode`]d) and [`Roster::poll_event`]
//! (tell the room), and arm one timer for [`Roster::poll_timeout`], calling
//! [`Roster::handle_timeout`] when it fires. Deterministic: ordered maps only, no clock.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::types::{RoomName, Time, UserName};

/// How often a node sends a heartbeat, in milliseconds.
pub const BEAT_MS: u64 = 1_000;

/// A peer silent for this many beats counts as gone and its users leave: long enough that one
/// or two lost beats do not make users flap, short enough that a dead node's users leave
/// within a few seconds.
pub const GONE_AFTER_BEATS: u64 = 3;

/// Every this many beats the beat is a full snapshot of the node's members (anti-entropy: a
/// lost announcement is healed within this many beats).
pub const SNAPSHOT_EVERY_BEATS: u64 = 5;

/// Peers a roster keeps; messages of further nodes are ignored (and counted).
pub const PEERS_MAX: usize = 64;

/// (room, user) entries a roster keeps of one peer, and that a node announces of itself;
/// more are dropped (and counted), deterministically the last in name order.
pub const PEER_ENTRIES_MAX: usize = 10_000;

/// Most bytes of one encoded presence message (well under NATS's default 1 MiB payload).
pub const PAYLOAD_BYTES_MAX: usize = 64 * 1024;

/// Most parts of one announcement: [`PEER_ENTRIES_MAX`] entries with the longest names need
/// about 21 parts of [`PAYLOAD_BYTES_MAX`].
pub const ANNOUNCEMENT_PARTS_MAX: u32 = 64;

/// Most bytes of a node's name.
pub const NODE_NAME_BYTES_MAX: usize = 64;

/// The first byte of every encoded message: the encoding's version.
const WIRE_VERSION: u8 = 1;

/// Bytes of a message's fixed header, besides the node's name: version, kind, name length,
/// incarnation.
const HEADER_BYTES: usize = 1 + 1 + 2 + 8;

/// Bytes of an announcement's fixed fields: id, full, part, parts, room count.
const ANNOUNCEMENT_BYTES: usize = 8 + 1 + 4 + 4 + 4;

/// The budget of an announcement's rooms in one part: what is left of the payload after the
/// headers with the longest node name.
const PART_BYTES_MAX: usize = PAYLOAD_BYTES_MAX - HEADER_BYTES - NODE_NAME_BYTES_MAX - ANNOUNCEMENT_BYTES;

/// One message on the presence bus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PresenceMessage {
    /// The sending node's name (`--node-id`): what identifies a peer across its runs.
    pub node: String,
    /// The sending run of the node; grows between runs.
    pub incarnation: u64,
    /// What it says.
    pub body: PresenceBody,
}

/// What a presence message says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PresenceBody {
    /// The node is alive.
    Beat,
    /// (A part of) the node's members in some rooms.
    Members(Announcement),
    /// A user of the node is typing in a room.
    Typing {
        /// The room.
        room: RoomName,
        /// Who.
        user: UserName,
    },
}

/// A node's members in some rooms; applied once all its parts arrived.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announcement {
    /// Counts the node's announcements; the parts of one share it.
    pub id: u64,
    /// A full snapshot: the node has no members in the rooms it does not name.
    pub full: bool,
    /// This part's index, `0..parts`.
    pub part: u32,
    /// How many parts the announcement has.
    pub parts: u32,
    /// Rooms and their whole member lists (a room's list may continue in other parts).
    pub rooms: Vec<(RoomName, Vec<UserName>)>,
}

/// What the roster tells the node's rooms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PresenceEvent {
    /// The users other nodes have in `room` changed; these are all of them now.
    Members {
        /// The room.
        room: RoomName,
        /// Its users on other nodes.
        users: BTreeSet<UserName>,
    },
    /// A user of another node is typing in `room`.
    Typing {
        /// The room.
        room: RoomName,
        /// Who.
        user: UserName,
    },
}

/// Counters of what the roster dropped (bounds reached, parts lost), for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RosterCounters {
    /// Messages ignored because [`PEERS_MAX`] peers are known.
    pub peers_refused: u64,
    /// Entries dropped for [`PEER_ENTRIES_MAX`] (a peer's or this node's own).
    pub entries_dropped: u64,
    /// Announcements given up because a part of them was lost (a later one heals).
    pub announcements_incomplete: u64,
    /// Messages ignored because they came from an older incarnation of their node.
    pub stale_messages: u64,
}

/// Members of a node per room.
type Members = BTreeMap<RoomName, BTreeSet<UserName>>;

/// What the roster knows of one peer.
#[derive(Debug)]
struct Peer {
    incarnation: u64,
    /// When any message of it last came: it is gone [`GONE_AFTER_BEATS`] beats later.
    last_heard: Time,
    members: Members,
    /// The parts of an announcement with several parts received so far.
    assembling: Option<Assembly>,
}

/// An announcement being put together from its parts.
#[derive(Debug)]
struct Assembly {
    id: u64,
    full: bool,
    parts: u32,
    received: BTreeSet<u32>,
    rooms: Members,
}

/// A node's view of the other nodes' users (see the module).
#[derive(Debug)]
pub struct Roster {
    node: String,
    incarnation: u64,
    /// This node's members per room (rooms without members are absent).
    local: Members,
    /// Rooms whose local members changed since they were last announced.
    dirty: BTreeSet<RoomName>,
    /// A full snapshot goes out with the next transmit (a new peer was heard).
    snapshot_due: bool,
    next_announcement: u64,
    next_beat: Time,
    beats: u64,
    peers: BTreeMap<String, Peer>,
    /// Per room, each remote user and how many peers list it: the union of the peers' members.
    remote: BTreeMap<RoomName, BTreeMap<UserName, usize>>,
    /// Rooms whose union changed since the last [`PresenceEvent::Members`] of them.
    changed: BTreeSet<RoomName>,
    typing: VecDeque<(RoomName, UserName)>,
    transmits: VecDeque<PresenceMessage>,
    counters: RosterCounters,
}

impl Roster {
    /// The roster of run `incarnation` of node `node` (at most [`NODE_NAME_BYTES_MAX`] bytes,
    /// cut to it otherwise), starting at `now`: its first beat, a full snapshot, is due at once.
    pub fn new(node: &str, incarnation: u64, now: Time) -> Self {
        let mut cut = node.len().min(NODE_NAME_BYTES_MAX);
        while !node.is_char_boundary(cut) {
            cut -= 1;
        }
        Self {
            node: node[..cut].to_owned(),
            incarnation,
            local: Members::new(),
            dirty: BTreeSet::new(),
            snapshot_due: false,
            next_announcement: 1,
            next_beat: now,
            beats: 0,
            peers: BTreeMap::new(),
            remote: BTreeMap::new(),
            changed: BTreeSet::new(),
            typing: VecDeque::new(),
            transmits: VecDeque::new(),
            counters: RosterCounters::default(),
        }
    }

    /// This node's local members in `room` are now `users` (all of them).
    pub fn handle_local_members(&mut self, room: RoomName, users: BTreeSet<UserName>) {
        let others: usize = self.local.iter().filter(|(name, _)| **name != room).map(|(_, users)| users.len()).sum();
        let room_len_max = PEER_ENTRIES_MAX.saturating_sub(others);
        let users = self.bounded(users, room_len_max);
        let old = self.local.get(&room).cloned().unwrap_or_default();
        if old == users {
            return;
        }
        if users.is_empty() {
            self.local.remove(&room);
        } else {
            self.local.insert(room.clone(), users);
        }
        self.dirty.insert(room);
    }

    /// A local user is typing in `room`: the other nodes hear it at once.
    pub fn handle_local_typing(&mut self, room: RoomName, user: UserName) {
        self.transmit(PresenceBody::Typing { room, user });
    }

    /// A message from the bus (this node's own are ignored).
    pub fn handle_message(&mut self, message: PresenceMessage, now: Time) {
        if message.node == self.node {
            return;
        }
        let known = self.peers.get(&message.node).map(|peer| peer.incarnation);
        match known {
            None if self.peers.len() >= PEERS_MAX => {
                self.counters.peers_refused += 1;
                return;
            }
            None => self.meet(&message.node, message.incarnation, now),
            Some(incarnation) if message.incarnation < incarnation => {
                self.counters.stale_messages += 1;
                return;
            }
            Some(incarnation) if message.incarnation > incarnation => {
                // A restart: what the earlier run said no longer holds.
                self.forget(&message.node);
                self.meet(&message.node, message.incarnation, now);
            }
            Some(_) => {}
        }
        let Some(peer) = self.peers.get_mut(&message.node) else { return };
        peer.last_heard = now;
        match message.body {
            PresenceBody::Beat => {}
            PresenceBody::Typing { room, user } => self.typing.push_back((room, user)),
            PresenceBody::Members(announcement) => self.handle_announcement(&message.node, announcement),
        }
    }

    /// Time passed: peers silent too long are gone, and the beat goes out when due.
    pub fn handle_timeout(&mut self, now: Time) {
        let gone_ms = BEAT_MS * GONE_AFTER_BEATS;
        let gone: Vec<String> = self
            .peers
            .iter()
            .filter(|(_, peer)| now.millis_since(peer.last_heard) >= gone_ms)
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            self.forget(&name);
        }
        if now >= self.next_beat {
            if self.beats.is_multiple_of(SNAPSHOT_EVERY_BEATS) {
                self.snapshot_due = true;
            } else {
                self.transmit(PresenceBody::Beat);
            }
            self.beats += 1;
            self.next_beat = now.plus_millis(BEAT_MS);
        }
    }

    /// When [`Roster::handle_timeout`] is next due: the next beat, or a peer going silent.
    pub fn poll_timeout(&self) -> Time {
        let gone_ms = BEAT_MS * GONE_AFTER_BEATS;
        self.peers.values().map(|peer| peer.last_heard.plus_millis(gone_ms)).fold(self.next_beat, Time::min)
    }

    /// The next message to publish on the bus, if any.
    pub fn poll_transmit(&mut self) -> Option<PresenceMessage> {
        if self.snapshot_due {
            self.snapshot_due = false;
            self.dirty.clear();
            let rooms =
                self.local.iter().map(|(room, users)| (room.clone(), users.iter().cloned().collect())).collect();
            self.announce(true, rooms);
        } else if !self.dirty.is_empty() {
            let dirty = std::mem::take(&mut self.dirty);
            let rooms = dirty
                .into_iter()
                .map(|room| {
                    let users = self.local.get(&room).map(|users| users.iter().cloned().collect()).unwrap_or_default();
                    (room, users)
                })
                .collect();
            self.announce(false, rooms);
        }
        self.transmits.pop_front()
    }

    /// The next thing to tell a room, if any.
    pub fn poll_event(&mut self) -> Option<PresenceEvent> {
        if let Some(room) = self.changed.pop_first() {
            let users = self.remote_members(&room);
            return Some(PresenceEvent::Members { room, users });
        }
        self.typing.pop_front().map(|(room, user)| PresenceEvent::Typing { room, user })
    }

    /// The users other nodes have in `room` now (for a room that starts on this node).
    pub fn remote_members(&self, room: &RoomName) -> BTreeSet<UserName> {
        self.remote.get(room).map(|users| users.keys().cloned().collect()).unwrap_or_default()
    }

    /// The peers heard from and not gone, in name order.
    pub fn peers(&self) -> Vec<String> {
        self.peers.keys().cloned().collect()
    }

    /// What the roster dropped so far.
    pub fn counters(&self) -> RosterCounters {
        self.counters
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    fn transmit(&mut self, body: PresenceBody) {
        let message = PresenceMessage { node: self.node.clone(), incarnation: self.incarnation, body };
        self.transmits.push_back(message);
    }

    /// Queues an announcement of `rooms`, split into parts that each fit [`PAYLOAD_BYTES_MAX`].
    fn announce(&mut self, full: bool, rooms: Vec<(RoomName, Vec<UserName>)>) {
        let mut parts: Vec<Vec<(RoomName, Vec<UserName>)>> = vec![Vec::new()];
        let mut bytes = 0;
        for (room, users) in rooms {
            let room_bytes = 2 + room.as_str().len() + 4;
            let mut chunk = Vec::new();
            if bytes + room_bytes > PART_BYTES_MAX {
                parts.push(Vec::new());
                bytes = 0;
            }
            bytes += room_bytes;
            for user in users {
                let user_bytes = 2 + user.as_str().len();
                if bytes + user_bytes > PART_BYTES_MAX {
                    parts.last_mut().expect("a part").push((room.clone(), std::mem::take(&mut chunk)));
                    parts.push(Vec::new());
                    bytes = room_bytes;
                }
                bytes += user_bytes;
                chunk.push(user);
            }
            parts.last_mut().expect("a part").push((room, chunk));
        }
        let id = self.next_announcement;
        self.next_announcement += 1;
        let count = u32::try_from(parts.len()).unwrap_or(u32::MAX);
        assert!(count <= ANNOUNCEMENT_PARTS_MAX, "local members are bounded to fit the parts");
        for (part, rooms) in (0..count).zip(parts) {
            self.transmit(PresenceBody::Members(Announcement { id, full, part, parts: count, rooms }));
        }
    }

    fn handle_announcement(&mut self, node: &str, announcement: Announcement) {
        let Some(peer) = self.peers.get_mut(node) else { return };
        if announcement.part >= announcement.parts || announcement.parts > ANNOUNCEMENT_PARTS_MAX {
            return;
        }
        let fresh = peer.assembling.as_ref().is_none_or(|assembly| assembly.id != announcement.id);
        if fresh {
            if peer.assembling.take().is_some() {
                self.counters.announcements_incomplete += 1;
            }
            peer.assembling = Some(Assembly {
                id: announcement.id,
                full: announcement.full,
                parts: announcement.parts,
                received: BTreeSet::new(),
                rooms: Members::new(),
            });
        }
        let Some(assembly) = peer.assembling.as_mut() else { return };
        if !assembly.received.insert(announcement.part) {
            return;
        }
        let mut entries: usize = assembly.rooms.values().map(BTreeSet::len).sum();
        for (room, users) in announcement.rooms {
            let listed = assembly.rooms.entry(room).or_default();
            for user in users {
                if entries >= PEER_ENTRIES_MAX {
                    self.counters.entries_dropped += 1;
                    continue;
                }
                if listed.insert(user) {
                    entries += 1;
                }
            }
        }
        if assembly.received.len() < assembly.parts as usize {
            return;
        }
        let Some(assembly) = peer.assembling.take() else { return };
        self.apply(node, assembly.full, assembly.rooms);
    }

    /// A whole announcement of `node`: its members in the rooms named (in every room, if full).
    fn apply(&mut self, node: &str, full: bool, rooms: Members) {
        let Some(peer) = self.peers.get_mut(node) else { return };
        let mut next = if full { Members::new() } else { peer.members.clone() };
        for (room, users) in rooms {
            if users.is_empty() {
                next.remove(&room);
            } else {
                next.insert(room, users);
            }
        }
        // Bound what is kept of the peer, dropping the last entries in name order.
        let mut entries = 0;
        for users in next.values_mut() {
            let keep = users.len().min(PEER_ENTRIES_MAX - entries);
            if keep < users.len() {
                self.counters.entries_dropped += (users.len() - keep) as u64;
                *users = users.iter().take(keep).cloned().collect();
            }
            entries += keep;
        }
        next.retain(|_, users| !users.is_empty());
        let old = std::mem::replace(&mut peer.members, next.clone());
        self.update_union(&old, &next);
    }

    /// A peer (or a new run of one) is heard for the first time: it knows none of this node's
    /// members yet, so a full snapshot goes out with the next transmit.
    fn meet(&mut self, node: &str, incarnation: u64, now: Time) {
        let peer = Peer { incarnation, last_heard: now, members: Members::new(), assembling: None };
        self.peers.insert(node.to_owned(), peer);
        self.snapshot_due = true;
    }

    /// A peer is gone (silent, or replaced by a new incarnation): its users leave.
    fn forget(&mut self, node: &str) {
        if let Some(peer) = self.peers.remove(node) {
            self.update_union(&peer.members, &Members::new());
        }
    }

    /// One peer's members went from `old` to `new`: the union follows, and rooms whose union
    /// changed are noted for [`Roster::poll_event`].
    fn update_union(&mut self, old: &Members, new: &Members) {
        let rooms: BTreeSet<&RoomName> = old.keys().chain(new.keys()).collect();
        let empty = BTreeSet::new();
        for room in rooms {
            let (before, after) = (old.get(room).unwrap_or(&empty), new.get(room).unwrap_or(&empty));
            let union = self.remote.entry(room.clone()).or_default();
            for left in before.difference(after) {
                if let Some(count) = union.get_mut(left) {
                    *count -= 1;
                    if *count == 0 {
                        union.remove(left);
                        self.changed.insert(room.clone());
                    }
                }
            }
            for joined in after.difference(before) {
                let count = union.entry(joined.clone()).or_insert(0);
                *count += 1;
                if *count == 1 {
                    self.changed.insert(room.clone());
                }
            }
            if union.is_empty() {
                self.remote.remove(room);
            }
        }
    }

    /// `users` cut to `len_max`, keeping the first in name order (the rest are counted).
    fn bounded(&mut self, users: BTreeSet<UserName>, len_max: usize) -> BTreeSet<UserName> {
        if users.len() <= len_max {
            return users;
        }
        self.counters.entries_dropped += (users.len() - len_max) as u64;
        users.into_iter().take(len_max).collect()
    }
}

/// Why a presence message did not decode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// It is larger than [`PAYLOAD_BYTES_MAX`].
    #[error("presence message of {bytes} bytes is larger than {bytes_max}")]
    TooLarge {
        /// Its size.
        bytes: usize,
        /// The bound.
        bytes_max: usize,
    },
    /// It ends before its last field.
    #[error("presence message is truncated")]
    Truncated,
    /// It has bytes after its last field.
    #[error("presence message has {0} bytes after its end")]
    Trailing(usize),
    /// Its version or kind is not one this build knows.
    #[error("unknown presence message version {version} or kind {kind}")]
    Unknown {
        /// The version byte.
        version: u8,
        /// The kind byte.
        kind: u8,
    },
    /// A name in it is not a valid node, room or user name.
    #[error("presence message has an invalid name: {0}")]
    Name(String),
}

const KIND_BEAT: u8 = 1;
const KIND_MEMBERS: u8 = 2;
const KIND_TYPING: u8 = 3;

/// The message's bytes on the bus: a compact binary encoding (little-endian integers, names
/// as a u16 length and UTF-8), at most [`PAYLOAD_BYTES_MAX`] for what a [`Roster`] sends.
pub fn encode(message: &PresenceMessage) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.push(WIRE_VERSION);
    out.push(match &message.body {
        PresenceBody::Beat => KIND_BEAT,
        PresenceBody::Members(_) => KIND_MEMBERS,
        PresenceBody::Typing { .. } => KIND_TYPING,
    });
    put_str(&mut out, &message.node);
    out.extend_from_slice(&message.incarnation.to_le_bytes());
    match &message.body {
        PresenceBody::Beat => {}
        PresenceBody::Typing { room, user } => {
            put_str(&mut out, room.as_str());
            put_str(&mut out, user.as_str());
        }
        PresenceBody::Members(announcement) => {
            out.extend_from_slice(&announcement.id.to_le_bytes());
            out.push(u8::from(announcement.full));
            out.extend_from_slice(&announcement.part.to_le_bytes());
            out.extend_from_slice(&announcement.parts.to_le_bytes());
            put_len(&mut out, announcement.rooms.len());
            for (room, users) in &announcement.rooms {
                put_str(&mut out, room.as_str());
                put_len(&mut out, users.len());
                for user in users {
                    put_str(&mut out, user.as_str());
                }
            }
        }
    }
    out
}

/// A message from its bytes on the bus ([`encode`]'s inverse); names are validated.
pub fn decode(bytes: &[u8]) -> Result<PresenceMessage, WireError> {
    if bytes.len() > PAYLOAD_BYTES_MAX {
        return Err(WireError::TooLarge { bytes: bytes.len(), bytes_max: PAYLOAD_BYTES_MAX });
    }
    let mut reader = Reader { bytes };
    let (version, kind) = (reader.u8()?, reader.u8()?);
    if version != WIRE_VERSION || !(KIND_BEAT..=KIND_TYPING).contains(&kind) {
        return Err(WireError::Unknown { version, kind });
    }
    let node = reader.str()?.to_owned();
    if node.is_empty() || node.len() > NODE_NAME_BYTES_MAX {
        return Err(WireError::Name(format!("node name of {} bytes", node.len())));
    }
    let incarnation = reader.u64()?;
    let body = match kind {
        KIND_BEAT => PresenceBody::Beat,
        KIND_TYPING => PresenceBody::Typing { room: reader.room()?, user: reader.user()? },
        _ => {
            let id = reader.u64()?;
            let full = reader.u8()? != 0;
            let part = reader.u32()?;
            let parts = reader.u32()?;
            let room_count = reader.u32()?;
            let mut rooms = Vec::new();
            for _ in 0..room_count {
                let room = reader.room()?;
                let user_count = reader.u32()?;
                // Each user takes at least 3 bytes: a count beyond what is left is damage.
                if user_count as usize > reader.bytes.len() / 3 {
                    return Err(WireError::Truncated);
                }
                let users = (0..user_count).map(|_| reader.user()).collect::<Result<Vec<_>, _>>()?;
                rooms.push((room, users));
            }
            PresenceBody::Members(Announcement { id, full, part, parts, rooms })
        }
    };
    if !reader.bytes.is_empty() {
        return Err(WireError::Trailing(reader.bytes.len()));
    }
    Ok(PresenceMessage { node, incarnation, body })
}

fn put_str(out: &mut Vec<u8>, text: &str) {
    let len = u16::try_from(text.len()).expect("names are far shorter than 64 KiB");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(text.as_bytes());
}

fn put_len(out: &mut Vec<u8>, len: usize) {
    let len = u32::try_from(len).expect("bounded by the payload size");
    out.extend_from_slice(&len.to_le_bytes());
}

/// Reads fields off the front of a message.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], WireError> {
        let (head, rest) = self.bytes.split_at_checked(len).ok_or(WireError::Truncated)?;
        self.bytes = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().map_err(|_| WireError::Truncated)?))
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().map_err(|_| WireError::Truncated)?))
    }

    fn str(&mut self) -> Result<&'a str, WireError> {
        let len = u16::from_le_bytes(self.take(2)?.try_into().map_err(|_| WireError::Truncated)?);
        std::str::from_utf8(self.take(usize::from(len))?).map_err(|error| WireError::Name(error.to_string()))
    }

    fn room(&mut self) -> Result<RoomName, WireError> {
        RoomName::new(self.str()?).map_err(|error| WireError::Name(error.to_string()))
    }

    fn user(&mut self) -> Result<UserName, WireError> {
        UserName::new(self.str()?).map_err(|error| WireError::Name(error.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(name: &str) -> RoomName {
        RoomName::new(name).expect("a room name")
    }

    fn user(name: &str) -> UserName {
        UserName::new(name).expect("a user name")
    }

    fn users(names: &[&str]) -> BTreeSet<UserName> {
        names.iter().map(|name| user(name)).collect()
    }

    fn at(millis: u64) -> Time {
        Time::from_millis(millis)
    }

    /// Every message the roster has to send, each through the wire encoding.
    fn drain(roster: &mut Roster) -> Vec<PresenceMessage> {
        std::iter::from_fn(|| roster.poll_transmit())
            .map(|message| decode(&encode(&message)).expect("what a roster sends decodes"))
            .collect()
    }

    fn events(roster: &mut Roster) -> Vec<PresenceEvent> {
        std::iter::from_fn(|| roster.poll_event()).collect()
    }

    fn deliver(messages: &[PresenceMessage], to: &mut Roster, now: Time) {
        for message in messages {
            to.handle_message(message.clone(), now);
        }
    }

    fn members(room_name: &str, names: &[&str]) -> PresenceEvent {
        PresenceEvent::Members { room: room(room_name), users: users(names) }
    }

    #[test]
    fn a_change_reaches_the_peer_and_beats_keep_it() {
        let (mut a, mut b) = (Roster::new("a", 1, at(0)), Roster::new("b", 1, at(0)));
        a.handle_timeout(at(0));
        a.handle_local_members(room("lobby"), users(&["ann"]));
        deliver(&drain(&mut a), &mut b, at(0));
        assert_eq!(events(&mut b), vec![members("lobby", &["ann"])]);
        assert_eq!(b.peers(), vec!["a".to_owned()]);
        // Beats keep the peer alive well past the gone time.
        for second in 1..10 {
            a.handle_timeout(at(second * BEAT_MS));
            b.handle_timeout(at(second * BEAT_MS));
            deliver(&drain(&mut a), &mut b, at(second * BEAT_MS));
        }
        assert_eq!(events(&mut b), vec![]);
        assert_eq!(b.remote_members(&room("lobby")), users(&["ann"]));
        a.handle_local_members(room("lobby"), users(&[]));
        deliver(&drain(&mut a), &mut b, at(10 * BEAT_MS));
        assert_eq!(events(&mut b), vec![members("lobby", &[])]);
    }

    #[test]
    fn a_silent_peer_is_gone_and_its_users_leave() {
        let (mut a, mut b) = (Roster::new("a", 1, at(0)), Roster::new("b", 1, at(0)));
        a.handle_local_members(room("lobby"), users(&["ann", "bob"]));
        deliver(&drain(&mut a), &mut b, at(0));
        assert_eq!(events(&mut b), vec![members("lobby", &["ann", "bob"])]);
        assert_eq!(b.poll_timeout(), at(0), "b's own first beat is due");
        b.handle_timeout(at(0));
        assert_eq!(b.poll_timeout(), at(BEAT_MS));
        let gone_at = GONE_AFTER_BEATS * BEAT_MS;
        b.handle_timeout(at(gone_at - 1));
        assert_eq!(events(&mut b), vec![], "not gone a millisecond early");
        b.handle_timeout(at(gone_at));
        assert_eq!(events(&mut b), vec![members("lobby", &[])]);
        assert!(b.peers().is_empty());
    }

    #[test]
    fn a_full_snapshot_heals_a_lost_announcement() {
        let (mut a, mut b) = (Roster::new("a", 1, at(0)), Roster::new("b", 1, at(0)));
        a.handle_timeout(at(0));
        deliver(&drain(&mut a), &mut b, at(0));
        a.handle_local_members(room("lobby"), users(&["ann"]));
        let lost = drain(&mut a);
        assert_eq!(lost.len(), 1);
        let mut healed_at = None;
        for beat in 1..=SNAPSHOT_EVERY_BEATS {
            a.handle_timeout(at(beat * BEAT_MS));
            deliver(&drain(&mut a), &mut b, at(beat * BEAT_MS));
            if !events(&mut b).is_empty() {
                healed_at = Some(beat);
                break;
            }
        }
        assert_eq!(healed_at, Some(SNAPSHOT_EVERY_BEATS), "the snapshot beat brings ann");
        assert_eq!(b.remote_members(&room("lobby")), users(&["ann"]));
        // A lost leave heals the same way.
        a.handle_local_members(room("lobby"), users(&[]));
        drain(&mut a);
        for beat in SNAPSHOT_EVERY_BEATS + 1..=2 * SNAPSHOT_EVERY_BEATS {
            a.handle_timeout(at(beat * BEAT_MS));
            deliver(&drain(&mut a), &mut b, at(beat * BEAT_MS));
        }
        assert_eq!(events(&mut b), vec![members("lobby", &[])]);
    }

    #[test]
    fn a_new_incarnation_replaces_the_old_and_old_messages_are_ignored() {
        let (mut old, mut b) = (Roster::new("a", 1, at(0)), Roster::new("b", 1, at(0)));
        old.handle_local_members(room("lobby"), users(&["ann"]));
        old.handle_local_members(room("dev"), users(&["carl"]));
        let from_old = drain(&mut old);
        deliver(&from_old, &mut b, at(0));
        events(&mut b);
        let mut new = Roster::new("a", 2, at(100));
        new.handle_local_members(room("lobby"), users(&["ann", "dora"]));
        deliver(&drain(&mut new), &mut b, at(100));
        let mut seen = events(&mut b);
        seen.sort_by_key(|event| format!("{event:?}"));
        assert_eq!(seen, vec![members("dev", &[]), members("lobby", &["ann", "dora"])]);
        // A message of the previous run, late: ignored.
        deliver(&from_old, &mut b, at(200));
        assert_eq!(events(&mut b), vec![]);
        assert_eq!(b.counters().stale_messages, from_old.len() as u64);
    }

    #[test]
    fn a_user_on_two_peers_stays_until_both_drop_it() {
        let mut b = Roster::new("b", 1, at(0));
        for node in ["a", "c"] {
            let mut peer = Roster::new(node, 1, at(0));
            peer.handle_local_members(room("lobby"), users(&["ann"]));
            deliver(&drain(&mut peer), &mut b, at(0));
        }
        assert_eq!(events(&mut b), vec![members("lobby", &["ann"])], "one join, not two");
        let mut a = Roster::new("a", 1, at(0));
        a.handle_local_members(room("lobby"), users(&["ann"]));
        drain(&mut a);
        a.handle_local_members(room("lobby"), users(&[]));
        deliver(&drain(&mut a), &mut b, at(10));
        assert_eq!(events(&mut b), vec![], "still on c");
    }

    #[test]
    fn typing_passes_through_and_own_messages_are_ignored() {
        let (mut a, mut b) = (Roster::new("a", 1, at(0)), Roster::new("b", 1, at(0)));
        a.handle_local_typing(room("lobby"), user("ann"));
        let sent = drain(&mut a);
        deliver(&sent, &mut a, at(0));
        assert_eq!(events(&mut a), vec![]);
        deliver(&sent, &mut b, at(0));
        assert_eq!(events(&mut b), vec![PresenceEvent::Typing { room: room("lobby"), user: user("ann") }]);
    }

    #[test]
    fn a_large_snapshot_goes_in_parts_within_the_payload_and_a_lost_part_drops_it() {
        let (mut a, mut b) = (Roster::new(&"n".repeat(NODE_NAME_BYTES_MAX), 1, at(0)), Roster::new("b", 1, at(0)));
        let long = |prefix: &str, index: usize| format!("{prefix}{index:0>60}");
        for index in 0..2_000 {
            a.handle_local_members(room(&long("r", index)), users(&[&long("u", index), &long("v", index)]));
        }
        a.handle_timeout(at(0));
        let parts: Vec<PresenceMessage> = std::iter::from_fn(|| a.poll_transmit()).collect();
        assert!(parts.len() > 1);
        for part in &parts {
            assert!(encode(part).len() <= PAYLOAD_BYTES_MAX);
        }
        deliver(&parts[1..], &mut b, at(0));
        assert_eq!(events(&mut b), vec![], "incomplete: nothing applied");
        // The next snapshot (a new announcement) replaces the incomplete one.
        a.snapshot_due = true;
        let next: Vec<PresenceMessage> = std::iter::from_fn(|| a.poll_transmit()).collect();
        assert_eq!(next.len(), parts.len());
        deliver(&next, &mut b, at(1));
        assert_eq!(events(&mut b).len(), 2_000);
        assert_eq!(b.counters().announcements_incomplete, 1);
    }

    #[test]
    fn bounds_hold_for_peers_and_entries() {
        let mut b = Roster::new("b", 1, at(0));
        for index in 0..=PEERS_MAX {
            let mut peer = Roster::new(&format!("p{index}"), 1, at(0));
            peer.handle_timeout(at(0));
            deliver(&drain(&mut peer), &mut b, at(0));
        }
        assert_eq!(b.peers().len(), PEERS_MAX);
        assert_eq!(b.counters().peers_refused, 1);
        let mut a = Roster::new("a", 1, at(0));
        let many: BTreeSet<UserName> = (0..PEER_ENTRIES_MAX + 5).map(|index| user(&format!("u{index}"))).collect();
        a.handle_local_members(room("lobby"), many);
        assert_eq!(a.counters().entries_dropped, 5);
    }

    /// A small deterministic simulation: four nodes whose users come and go in three rooms
    /// while the bus loses about a third of all messages (a linear congruential generator
    /// picks, so every seed replays the same). After a quiet spell with no loss and no change,
    /// every node's view of each room's remote members is the union of the other nodes' local
    /// members. Several seeds.
    #[test]
    fn views_converge_to_the_union_after_loss_once_quiet() {
        for seed in [1_u64, 7, 42, 1_234] {
            let mut random = seed;
            let mut next = move |below: u64| {
                random = random.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                (random >> 33) % below
            };
            let names = ["n0", "n1", "n2", "n3"];
            let rooms = [room("lobby"), room("dev"), room("ops")];
            let people = ["ann", "bob", "carl", "dora", "eve"];
            let mut nodes: Vec<Roster> = names.iter().map(|name| Roster::new(name, 1, at(0))).collect();
            let mut local: Vec<Members> = vec![Members::new(); names.len()];
            let step_ms = 100;
            let quiet_from = 20_000;
            let end = quiet_from + (SNAPSHOT_EVERY_BEATS + 2) * BEAT_MS;
            let mut now = 0;
            while now <= end {
                let time = at(now);
                if now < quiet_from && next(4) == 0 {
                    let (node, room_index) = (next(4) as usize, next(3) as usize);
                    let person = user(people[next(5) as usize]);
                    let users = local[node].entry(rooms[room_index].clone()).or_default();
                    if !users.remove(&person) {
                        users.insert(person);
                    }
                    let users = users.clone();
                    nodes[node].handle_local_members(rooms[room_index].clone(), users);
                }
                let mut sent = Vec::new();
                for node in &mut nodes {
                    node.handle_timeout(time);
                    sent.extend(drain(node));
                }
                for message in sent {
                    for node in &mut nodes {
                        if now >= quiet_from || next(3) != 0 {
                            node.handle_message(message.clone(), time);
                        }
                    }
                }
                for node in &mut nodes {
                    events(node);
                }
                now += step_ms;
            }
            for (index, node) in nodes.iter().enumerate() {
                for room in &rooms {
                    let union: BTreeSet<UserName> = (0..names.len())
                        .filter(|other| *other != index)
                        .flat_map(|other| local[other].get(room).cloned().unwrap_or_default())
                        .collect();
                    assert_eq!(node.remote_members(room), union, "seed {seed}: node {index}, room {room}");
                }
            }
        }
    }

    #[test]
    fn damaged_messages_are_refused() {
        let message = PresenceMessage {
            node: "a".into(),
            incarnation: 7,
            body: PresenceBody::Typing { room: room("lobby"), user: user("ann") },
        };
        let bytes = encode(&message);
        assert_eq!(decode(&bytes), Ok(message));
        assert_eq!(decode(&bytes[..bytes.len() - 1]), Err(WireError::Truncated));
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode(&longer), Err(WireError::Trailing(1)));
        assert!(matches!(decode(&[9, 1]), Err(WireError::Unknown { version: 9, kind: 1 })));
        assert!(matches!(decode(&vec![0; PAYLOAD_BYTES_MAX + 1]), Err(WireError::TooLarge { .. })));
    }
}
