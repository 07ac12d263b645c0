//! The durable store: one redb file (`confab.redb`) in the data directory. redb is a pure-Rust
//! embedded B-tree database with ACID transactions; a commit with `Durability::Immediate`
//! returns after fsync, so one commit per writer batch is the group commit.
//!
//! Tables:
//! - `meta`: `"format"` -> [`RedbStore::FORMAT`], so a foreign or future file is refused, not misread;
//! - `rooms`: room name -> (epoch, last_seq);
//! - `messages`: (room name, seq) -> an encoded message (see [`encode`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use confab_engine::{ChatMessage, ClientMsgId, RoomName, Time, UserName};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::{HistoryStore, Retention, RoomAppend, StoreError, StoredRoom};

const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
const ROOMS: TableDefinition<&str, (u64, u64)> = TableDefinition::new("rooms");
const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");

/// redb's page cache, in bytes. redb's default (1 GiB) lets the cache, and so the server's RSS,
/// grow with the file; rooms read the store only when they are restored, and appends touch the
/// tail pages of each room, so a small cache serves them and keeps memory bounded.
pub(crate) const STORE_CACHE_BYTES: usize = 32 * 1024 * 1024;

/// History in a redb file.
pub struct RedbStore {
    database: Database,
    path: PathBuf,
    retention: Retention,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore").field("path", &self.path).field("retention", &self.retention).finish()
    }
}

impl RedbStore {
    /// The file name inside the data directory.
    pub const FILE_NAME: &str = "confab.redb";

    /// The format this build reads and writes.
    pub const FORMAT: &str = "confab-history-v1";

    /// Opens (or creates) the store in `directory`, checking that an existing file is ours.
    pub fn open(directory: &Path, retention: Retention) -> Result<Self, StoreError> {
        let path = directory.join(Self::FILE_NAME);
        let shown = path.display().to_string();
        let open_error = |reason: String| StoreError::Open { path: shown.clone(), reason };
        std::fs::create_dir_all(directory).map_err(|error| open_error(format!("creating the directory: {error}")))?;
        let database = redb::Builder::new()
            .set_cache_size(STORE_CACHE_BYTES)
            .create(&path)
            .map_err(|error| open_error(error.to_string()))?;
        let store = Self { database, path, retention };
        store.check_format()?;
        Ok(store)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn shown(&self) -> String {
        self.path.display().to_string()
    }

    fn io(&self) -> impl Fn(String) -> StoreError + '_ {
        move |reason| StoreError::Io { path: self.shown(), reason }
    }

    /// Writes the format marker into a new file, or checks it in an existing one.
    fn check_format(&self) -> Result<(), StoreError> {
        let io = self.io();
        let mut txn = self.database.begin_write().map_err(|e| io(e.to_string()))?;
        txn.set_durability(Durability::Immediate).map_err(|e| io(e.to_string()))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| io(e.to_string()))?;
            let found = meta.get("format").map_err(|e| io(e.to_string()))?.map(|v| v.value().to_owned());
            match found {
                Some(format) if format == Self::FORMAT => {}
                Some(format) => {
                    return Err(StoreError::Foreign { path: self.shown(), found: format, expected: Self::FORMAT });
                }
                None => {
                    let rooms = txn.open_table(ROOMS).map_err(|e| io(e.to_string()))?;
                    if !rooms.is_empty().map_err(|e| io(e.to_string()))? {
                        let found = "none".to_owned();
                        return Err(StoreError::Foreign { path: self.shown(), found, expected: Self::FORMAT });
                    }
                    drop(rooms);
                    meta.insert("format", Self::FORMAT).map_err(|e| io(e.to_string()))?;
                }
            }
        }
        txn.commit().map_err(|e| io(e.to_string()))
    }
}

impl HistoryStore for RedbStore {
    fn load_room(&self, room: &RoomName) -> Result<Option<StoredRoom>, StoreError> {
        let io = self.io();
        let txn = self.database.begin_read().map_err(|e| io(e.to_string()))?;
        let rooms = match txn.open_table(ROOMS) {
            Ok(rooms) => rooms,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(error) => return Err(io(error.to_string())),
        };
        let Some((epoch, last_seq)) = rooms.get(room.as_str()).map_err(|e| io(e.to_string()))?.map(|v| v.value())
        else {
            return Ok(None);
        };
        let messages = txn.open_table(MESSAGES).map_err(|e| io(e.to_string()))?;
        let range = messages.range((room.as_str(), 0)..=(room.as_str(), last_seq)).map_err(|e| io(e.to_string()))?;
        let mut tail = Vec::new();
        for entry in range {
            let (key, value) = entry.map_err(|e| io(e.to_string()))?;
            let seq = key.value().1;
            let message = decode(room, seq, value.value()).map_err(|detail| StoreError::Corrupt {
                path: self.shown(),
                detail: format!("room {room} seq {seq}: {detail}"),
            })?;
            tail.push(message);
        }
        let contiguous = tail.windows(2).all(|pair| pair[1].seq == pair[0].seq + 1);
        let ends_right = tail.last().is_none_or(|message| message.seq == last_seq);
        if !contiguous || !ends_right {
            let detail = format!("room {room}: stored messages are not a contiguous run ending at {last_seq}");
            return Err(StoreError::Corrupt { path: self.shown(), detail });
        }
        Ok(Some(StoredRoom { epoch, last_seq, tail }))
    }

    fn room_names(&self) -> Result<Vec<RoomName>, StoreError> {
        let io = self.io();
        let txn = self.database.begin_read().map_err(|e| io(e.to_string()))?;
        let rooms = match txn.open_table(ROOMS) {
            Ok(rooms) => rooms,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(error) => return Err(io(error.to_string())),
        };
        let mut names = Vec::new();
        for entry in rooms.iter().map_err(|e| io(e.to_string()))? {
            let (name, _) = entry.map_err(|e| io(e.to_string()))?;
            let name = RoomName::new(name.value()).map_err(|error| StoreError::Corrupt {
                path: self.shown(),
                detail: format!("room name {:?}: {error}", name.value()),
            })?;
            names.push(name);
        }
        Ok(names)
    }

    fn append(&self, appends: &[RoomAppend], now_ms: u64) -> Result<(), StoreError> {
        let io = self.io();
        let mut txn = self.database.begin_write().map_err(|e| io(e.to_string()))?;
        txn.set_durability(Durability::Immediate).map_err(|e| io(e.to_string()))?;
        {
            let mut rooms = txn.open_table(ROOMS).map_err(|e| io(e.to_string()))?;
            let mut messages = txn.open_table(MESSAGES).map_err(|e| io(e.to_string()))?;
            let mut encoded = Vec::new();
            for append in appends {
                let Some(last) = append.messages.last() else { continue };
                let name = append.room.as_str();
                for message in &append.messages {
                    encoded.clear();
                    encode(message, &mut encoded);
                    messages.insert((name, message.seq), encoded.as_slice()).map_err(|e| io(e.to_string()))?;
                }
                rooms.insert(name, (append.epoch, last.seq)).map_err(|e| io(e.to_string()))?;
                // Retention: keep the newest `len_max`, and nothing older than `age_max_ms`.
                // Only the span being dropped is touched, so a commit costs the same however
                // long the room's history is.
                let keep_from = (last.seq + 1).saturating_sub(self.retention.len_max as u64);
                if keep_from > 1 {
                    messages.retain_in((name, 0)..(name, keep_from), |_, _| false).map_err(|e| io(e.to_string()))?;
                }
                if let Some(age_max_ms) = self.retention.age_max_ms {
                    let cutoff = now_ms.saturating_sub(age_max_ms);
                    let mut expired = Vec::new();
                    for entry in messages.range((name, keep_from)..(name, last.seq)).map_err(|e| io(e.to_string()))? {
                        let (key, value) = entry.map_err(|e| io(e.to_string()))?;
                        if accepted_at(value.value()).is_some_and(|at| at >= cutoff) {
                            break;
                        }
                        expired.push(key.value().1);
                    }
                    for seq in expired {
                        messages.remove((name, seq)).map_err(|e| io(e.to_string()))?;
                    }
                }
            }
        }
        txn.commit().map_err(|e| io(e.to_string()))
    }
}

// Message encoding: accepted_at (u64 LE), then user, client_msg_id and body, each as a u32 LE
// length and UTF-8 bytes. The room and seq are the key.

fn encode(message: &ChatMessage, out: &mut Vec<u8>) {
    out.extend_from_slice(&message.accepted_at.as_millis().to_le_bytes());
    let id = message.client_msg_id.as_ref().map(ClientMsgId::as_str).unwrap_or("");
    for text in [message.user.as_str(), id, &message.body] {
        out.extend_from_slice(&(text.len() as u32).to_le_bytes());
        out.extend_from_slice(text.as_bytes());
    }
}

fn accepted_at(value: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(value.get(..8)?.try_into().ok()?))
}

fn decode(room: &RoomName, seq: u64, value: &[u8]) -> Result<ChatMessage, String> {
    let at = accepted_at(value).ok_or("shorter than its timestamp")?;
    let mut rest = &value[8..];
    let mut text = || -> Result<String, String> {
        let len_bytes: [u8; 4] = rest.get(..4).ok_or("truncated length")?.try_into().map_err(|_| "bad length")?;
        let len = u32::from_le_bytes(len_bytes) as usize;
        let bytes = rest.get(4..4 + len).ok_or("truncated text")?;
        rest = &rest[4 + len..];
        String::from_utf8(bytes.to_vec()).map_err(|_| "text is not UTF-8".to_owned())
    };
    let user = UserName::new(&text()?).map_err(|error| error.to_string())?;
    let client_msg_id = ClientMsgId::new(&text()?).map_err(|error| error.to_string())?;
    let body: Arc<str> = Arc::from(text()?);
    if !rest.is_empty() {
        return Err(format!("{} unexpected trailing bytes", rest.len()));
    }
    Ok(ChatMessage { room: room.clone(), seq, user, client_msg_id, body, accepted_at: Time::from_millis(at) })
}
