//! The durable store: one redb file (`confab.redb`) in the data directory. redb is a pure-Rust
//! embedded B-tree database with ACID transactions; a commit with `Durability::Immediate`
//! returns after fsync, so one commit per writer batch is the group commit.
//!
//! Tables (format [`RedbStore::FORMAT`]):
//! - `meta`: `"format"` -> the format, so a foreign or future file is refused, not misread;
//! - `rooms_v2`: room name -> (epoch, last_seq, CRC-32 of name, epoch and last_seq);
//! - `messages_v2`: (room name, seq) -> CRC-32 of (name, seq, payload), then the payload (see
//!   [`encode`]).
//!
//! Every record carries a checksum because redb verifies its own page checksums only when it
//! repairs a file after a crash: a flipped bit in a clean file would otherwise be served.
//! A record that fails its checksum fences its room ([`StoreError::Damaged`]); other rooms are
//! unaffected. A format-1 file (no checksums) is upgraded in place, in one transaction, the
//! first time it is opened.
//!
//! Beside the file, [`RedbStore::MARKER_NAME`] records that a store was initialised in the
//! directory, so a store file that later goes missing or empty is refused instead of
//! silently restarting every room at 1.

use std::fs::{File, OpenOptions};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};

use confab_engine::{ChatMessage, ClientMsgId, RoomName, Seq, Time, UserName};
use redb::{
    Database, DatabaseError, Durability, ReadOnlyDatabase, ReadTransaction, ReadableDatabase, ReadableTable,
    TableDefinition, WriteTransaction,
};

use super::{Damage, HistoryStore, Retention, RoomAppend, StoreError, StoredRoom, StoredSummary, guard};

const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
const ROOMS: TableDefinition<&str, RoomRecord> = TableDefinition::new("rooms_v2");
const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages_v2");
/// One record the writer's probe rewrites, so a probe needs free space as a commit does.
const PROBE: TableDefinition<&str, &[u8]> = TableDefinition::new("probe");
/// Bytes the probe writes: one message of the default largest size. A probe that fits while a
/// real commit would not is still possible, but an empty commit (a header write) would
/// succeed on a full disk and turn health SERVING at once.
const PROBE_BYTES: usize = 64 * 1024;
/// Format 1's tables, read once to upgrade a format-1 file.
const ROOMS_V1: TableDefinition<&str, (u64, u64)> = TableDefinition::new("rooms");
const MESSAGES_V1: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");
const FORMAT_V1: &str = "confab-history-v1";

/// What a room record that fails its checksum is reported as.
const ROOM_RECORD_DAMAGED: &str = "its room record (epoch and last number) fails its checksum";

/// Bytes of the checksum in front of every stored message.
const CHECKSUM_BYTES: usize = 4;

/// redb's page cache, in bytes. redb's default (1 GiB) lets the cache, and so the server's RSS,
/// grow with the file; rooms read the store only when they are restored, and appends touch the
/// tail pages of each room, so a small cache serves them and keeps memory bounded.
pub(crate) const STORE_CACHE_BYTES: usize = 32 * 1024 * 1024;

/// Mode of the data directory and of the files in it: the history is the users' messages.
#[cfg(unix)]
const DIRECTORY_MODE: u32 = 0o700;
#[cfg(unix)]
const FILE_MODE: u32 = 0o600;

/// History in a redb file.
pub struct RedbStore {
    /// `None` after a failed write closed it: redb refuses every transaction after an I/O
    /// failure until the file is opened again, so the next call reopens it.
    database: RwLock<Option<Database>>,
    path: PathBuf,
    /// `path`, as errors show it.
    shown: String,
    retention: Retention,
    /// Whether redb had to repair the file when it was opened (it was not closed cleanly).
    needed_repair: bool,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore").field("path", &self.path).field("retention", &self.retention).finish()
    }
}

/// What [`RedbStore::check`] found: every record read and its checksum verified.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// The store file.
    pub path: String,
    /// Room records read.
    pub rooms: usize,
    /// Messages read whole and verified.
    pub messages: u64,
    /// Damaged rooms, in name order: the room (as stored) and what is damaged.
    pub damage: Vec<(String, Damage)>,
}

impl CheckReport {
    /// Whether nothing is damaged.
    pub fn is_clean(&self) -> bool {
        self.damage.is_empty()
    }
}

impl RedbStore {
    /// The file name inside the data directory.
    pub const FILE_NAME: &str = "confab.redb";

    /// The file beside it that says a store was initialised in this directory.
    pub const MARKER_NAME: &str = "confab.redb.initialised";

    /// The format this build reads and writes.
    pub const FORMAT: &str = "confab-history-v2";

    /// Opens (or creates) the store in `directory`, checking that an existing file is ours.
    /// A new directory gets mode 0700 and the file 0600, and the directory is fsynced once
    /// the file is in it.
    pub fn open(directory: &Path, retention: Retention) -> Result<Self, StoreError> {
        let path = directory.join(Self::FILE_NAME);
        let shown = path.display().to_string();
        let open_error = |reason: String| StoreError::Open { path: shown.clone(), reason };
        create_private_directory(directory).map_err(|error| open_error(format!("creating the directory: {error}")))?;
        let marker = directory.join(Self::MARKER_NAME);
        refuse_if_emptied(&path, &marker)?;
        let (database, needed_repair) = open_database(&path).map_err(open_error)?;
        let store =
            Self { database: RwLock::new(Some(database)), path, shown: shown.clone(), retention, needed_repair };
        guard::catch(|| store.check_format()).map_err(open_error)??;
        if !marker.exists() {
            write_marker(&marker).map_err(|error| open_error(format!("writing {}: {error}", marker.display())))?;
        }
        sync_directory(directory).map_err(|error| open_error(format!("syncing the directory: {error}")))?;
        Ok(store)
    }

    /// Reads every record of the store in `directory` without changing it, and reports what
    /// is damaged. Fails if the file cannot be opened at all (in use, missing, not a store,
    /// not closed cleanly).
    pub fn check(directory: &Path) -> Result<CheckReport, StoreError> {
        let path = directory.join(Self::FILE_NAME);
        let shown = path.display().to_string();
        let open_error = |reason: String| StoreError::Open { path: shown.clone(), reason };
        refuse_if_emptied(&path, &directory.join(Self::MARKER_NAME))?;
        if !path.exists() {
            return Err(open_error("no such file".to_owned()));
        }
        let database = guard::catch(|| redb::Builder::new().set_cache_size(STORE_CACHE_BYTES).open_read_only(&path))
            .map_err(open_error)?
            .map_err(|error| open_error(explain(error)))?;
        guard::catch(|| check_records(&database, &shown)).map_err(|reason| StoreError::Corrupt {
            path: shown.clone(),
            detail: format!("the room table cannot be read: {reason}"),
        })?
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether redb had to repair the file when it was opened: the last run did not close it
    /// (a crash, a kill, or a power loss; never a clean shutdown).
    pub fn needed_repair(&self) -> bool {
        self.needed_repair
    }

    /// Reads every room record (not the messages: that is [`RedbStore::check`]) and returns
    /// the rooms whose record is damaged: cheap enough for start-up, where it reports what it
    /// can before any room is used. Fails if the room table cannot be read at all.
    pub fn damaged_room_records(&self) -> Result<Vec<(String, Damage)>, StoreError> {
        let unreadable = |reason: String| StoreError::Corrupt {
            path: self.shown.clone(),
            detail: format!("the room table cannot be read: {reason}"),
        };
        let records = guard::catch(|| room_records(&self.read()?, &self.shown)).map_err(unreadable)??;
        let damage = records.into_iter().filter_map(|(name, (epoch, last_seq, checksum))| {
            let detail = if checksum != room_checksum(&name, epoch, last_seq) {
                ROOM_RECORD_DAMAGED.to_owned()
            } else if let Err(error) = RoomName::new(&name) {
                format!("not a valid room name: {error}")
            } else {
                return None;
            };
            Some((name, Damage { seqs: None, detail }))
        });
        Ok(damage.collect())
    }

    /// The open database, reopening it first if a failed write closed it.
    fn database(&self) -> Result<RwLockReadGuard<'_, Option<Database>>, StoreError> {
        {
            let database = self.database.read().unwrap_or_else(PoisonError::into_inner);
            if database.is_some() {
                return Ok(database);
            }
        }
        let mut slot = self.database.write().unwrap_or_else(PoisonError::into_inner);
        if slot.is_none() {
            let (database, _) = open_database(&self.path).map_err(StoreError::io(&self.shown))?;
            *slot = Some(database);
        }
        drop(slot);
        Ok(self.database.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Runs `call` on the open database (reopening it if a failed write closed it).
    fn with_database<T>(&self, call: impl FnOnce(&Database) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let database = self.database()?;
        let database = database.as_ref().ok_or_else(|| StoreError::io(&self.shown)("closed".to_owned()))?;
        call(database)
    }

    /// Runs `write` in a write transaction that fsyncs on commit, and commits it.
    fn write(&self, write: impl FnOnce(&WriteTransaction) -> Result<(), StoreError>) -> Result<(), StoreError> {
        self.with_database(|database| {
            let io = StoreError::io(&self.shown);
            let mut txn = database.begin_write().map_err(|e| io(e.to_string()))?;
            txn.set_durability(Durability::Immediate).map_err(|e| io(e.to_string()))?;
            write(&txn)?;
            txn.commit().map_err(|e| io(e.to_string()))
        })
    }

    /// Closes the database after a failed write, so the next call reopens it.
    fn close_after_failure(&self) {
        *self.database.write().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// Writes the format marker into a new file, checks it in an existing one, and upgrades
    /// a format-1 file.
    fn check_format(&self) -> Result<(), StoreError> {
        let io = StoreError::io(&self.shown);
        self.write(|txn| {
            let mut meta = txn.open_table(META).map_err(|e| io(e.to_string()))?;
            let found = meta.get("format").map_err(|e| io(e.to_string()))?.map(|v| v.value().to_owned());
            match found.as_deref() {
                Some(Self::FORMAT) => {}
                Some(FORMAT_V1) => {
                    upgrade_v1(txn).map_err(|e| io(format!("upgrading from {FORMAT_V1}: {e}")))?;
                    meta.insert("format", Self::FORMAT).map_err(|e| io(e.to_string()))?;
                }
                Some(format) => {
                    let found = format.to_owned();
                    return Err(StoreError::Foreign { path: self.shown.clone(), found, expected: Self::FORMAT });
                }
                None => {
                    let tables = txn.list_tables().map_err(|e| io(e.to_string()))?.count();
                    if tables > 1 {
                        let found = "none".to_owned();
                        return Err(StoreError::Foreign { path: self.shown.clone(), found, expected: Self::FORMAT });
                    }
                    meta.insert("format", Self::FORMAT).map_err(|e| io(e.to_string()))?;
                }
            }
            Ok(())
        })
    }

    fn try_append(&self, appends: &[RoomAppend], now_ms: u64) -> Result<(), StoreError> {
        let io = StoreError::io(&self.shown);
        self.write(|txn| {
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
                let record = (append.epoch, last.seq, room_checksum(name, append.epoch, last.seq));
                rooms.insert(name, record).map_err(|e| io(e.to_string()))?;
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
            Ok(())
        })
    }
}

impl HistoryStore for RedbStore {
    fn load_room(&self, room: &RoomName) -> Result<Option<StoredRoom>, StoreError> {
        let txn = self.read()?;
        read_room(&txn, &self.shown, room.as_str()).map(|stored| stored.map(|(stored, _)| stored))
    }

    fn room_summaries(&self, after: Option<&RoomName>, limit: usize) -> Result<Vec<StoredSummary>, StoreError> {
        let txn = self.read()?;
        guard::catch(|| room_summaries(&txn, &self.shown, after, limit)).unwrap_or_else(|panic| {
            Err(StoreError::io(&self.shown)(format!("listing the stored rooms failed: {panic}")))
        })
    }

    fn append(&self, appends: &[RoomAppend], now_ms: u64) -> Result<(), StoreError> {
        let outcome = self.try_append(appends, now_ms);
        self.close_if_failed(outcome)
    }

    fn probe(&self, _now_ms: u64) -> Result<(), StoreError> {
        let outcome = self.try_probe();
        self.close_if_failed(outcome)
    }
}

impl RedbStore {
    fn try_probe(&self) -> Result<(), StoreError> {
        let io = StoreError::io(&self.shown);
        self.write(|txn| {
            let mut probe = txn.open_table(PROBE).map_err(|e| io(e.to_string()))?;
            let filler = vec![0x5a; PROBE_BYTES];
            probe.insert("probe", filler.as_slice()).map_err(|e| io(e.to_string()))?;
            Ok(())
        })
    }

    /// A read transaction on the open database.
    fn read(&self) -> Result<ReadTransaction, StoreError> {
        self.with_database(|database| database.begin_read().map_err(|e| StoreError::io(&self.shown)(e.to_string())))
    }

    fn close_if_failed(&self, outcome: Result<(), StoreError>) -> Result<(), StoreError> {
        if outcome.is_err() {
            // A failed commit may leave redb refusing every later transaction (its
            // `PreviousIo`); reopening lets writes resume once the disk takes them again.
            self.close_after_failure();
        }
        outcome
    }
}

/// Every room name in the rooms table, in order.
fn stored_room_names(txn: &ReadTransaction, shown: &str) -> Result<Vec<String>, StoreError> {
    Ok(room_records(txn, shown)?.into_iter().map(|(name, _)| name).collect())
}

/// Up to `limit` room summaries after `after`, in name order. Each costs its room record and
/// the key of its oldest message, never the messages: listing a store of many big rooms stays
/// cheap. A record that fails its checksum or holds an invalid name is damage, fenced by
/// `load_room` if a client ever asks for that room; listing skips it.
fn room_summaries(
    txn: &ReadTransaction,
    shown: &str,
    after: Option<&RoomName>,
    limit: usize,
) -> Result<Vec<StoredSummary>, StoreError> {
    let io = StoreError::io(shown);
    let rooms = match txn.open_table(ROOMS) {
        Ok(rooms) => rooms,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(error) => return Err(io(error.to_string())),
    };
    let messages = match txn.open_table(MESSAGES) {
        Ok(messages) => Some(messages),
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(error) => return Err(io(error.to_string())),
    };
    let range = match after {
        Some(after) => rooms.range::<&str>((Bound::Excluded(after.as_str()), Bound::Unbounded)),
        None => rooms.range::<&str>(..),
    };
    let mut summaries = Vec::new();
    for entry in range.map_err(|e| io(e.to_string()))? {
        if summaries.len() >= limit {
            break;
        }
        let (name, record) = entry.map_err(|e| io(e.to_string()))?;
        let (name, (epoch, last_seq, checksum)) = (name.value(), record.value());
        let Ok(room) = RoomName::new(name) else { continue };
        if checksum != room_checksum(name, epoch, last_seq) {
            continue;
        }
        let oldest = match &messages {
            Some(messages) => {
                let mut range = messages.range((name, 0)..=(name, last_seq)).map_err(|e| io(e.to_string()))?;
                range.next().transpose().map_err(|e| io(e.to_string()))?.map(|(key, _)| key.value().1)
            }
            None => None,
        };
        let first_retained_seq = oldest.unwrap_or(last_seq + 1);
        summaries.push(StoredSummary { name: room, epoch, last_seq, first_retained_seq });
    }
    Ok(summaries)
}

/// A stored room record: (epoch, last_seq, checksum).
type RoomRecord = (u64, Seq, u32);

/// Every room record, by name, in name order.
fn room_records(txn: &ReadTransaction, shown: &str) -> Result<Vec<(String, RoomRecord)>, StoreError> {
    let io = StoreError::io(shown);
    let rooms = match txn.open_table(ROOMS) {
        Ok(rooms) => rooms,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(error) => return Err(io(error.to_string())),
    };
    let mut records = Vec::new();
    for entry in rooms.iter().map_err(|e| io(e.to_string()))? {
        let (name, record) = entry.map_err(|e| io(e.to_string()))?;
        records.push((name.value().to_owned(), record.value()));
    }
    Ok(records)
}

/// One room's stored state and how many messages were read, verifying every checksum.
fn read_room(txn: &ReadTransaction, shown: &str, room: &str) -> Result<Option<(StoredRoom, usize)>, StoreError> {
    let io = StoreError::io(shown);
    let damaged = |seqs: Option<(Seq, Seq)>, detail: String| StoreError::Damaged {
        path: shown.to_owned(),
        room: room.to_owned(),
        damage: Damage { seqs, detail },
    };
    let rooms = match txn.open_table(ROOMS) {
        Ok(rooms) => rooms,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(error) => return Err(io(error.to_string())),
    };
    let Some((epoch, last_seq, checksum)) = rooms.get(room).map_err(|e| io(e.to_string()))?.map(|v| v.value()) else {
        return Ok(None);
    };
    if checksum != room_checksum(room, epoch, last_seq) {
        return Err(damaged(None, ROOM_RECORD_DAMAGED.to_owned()));
    }
    let name = RoomName::new(room).map_err(|error| damaged(None, format!("not a valid room name: {error}")))?;
    let messages = txn.open_table(MESSAGES).map_err(|e| io(e.to_string()))?;
    let mut range = messages.range((room, 0)..=(room, last_seq)).map_err(|e| io(e.to_string()))?;
    let mut tail: Vec<ChatMessage> = Vec::new();
    // The first and last damaged sequence numbers, and what the first one had wrong.
    let mut bad: Option<(Seq, Seq, String)> = None;
    loop {
        // A damaged page can make redb panic mid-iteration: what was read so far is good, the
        // rest of the room cannot be read.
        let entry = match guard::catch(|| range.next()) {
            Ok(None) => break,
            Ok(Some(Ok(entry))) => entry,
            Ok(Some(Err(error))) => return Err(unreadable(&damaged, &tail, last_seq, error.to_string())),
            Err(panic) => return Err(unreadable(&damaged, &tail, last_seq, panic)),
        };
        let (key, value) = entry;
        let seq = key.value().1;
        match decode(&name, seq, value.value()) {
            Ok(message) => tail.push(message),
            Err(detail) => {
                bad = Some(match bad {
                    None => (seq, seq, detail),
                    Some((first, _, detail)) => (first, seq, detail),
                });
            }
        }
    }
    if let Some((first, last, detail)) = bad {
        return Err(damaged(Some((first, last)), detail));
    }
    for pair in tail.windows(2) {
        if pair[1].seq != pair[0].seq + 1 {
            return Err(damaged(Some((pair[0].seq + 1, pair[1].seq - 1)), "missing from the store".to_owned()));
        }
    }
    if let Some(newest) = tail.last().filter(|newest| newest.seq < last_seq) {
        return Err(damaged(Some((newest.seq + 1, last_seq)), "missing from the store".to_owned()));
    }
    let read = tail.len();
    Ok(Some((StoredRoom { epoch, last_seq, tail }, read)))
}

/// A room whose messages after the last one read cannot be read at all.
fn unreadable(
    damaged: &impl Fn(Option<(Seq, Seq)>, String) -> StoreError,
    read: &[ChatMessage],
    last_seq: Seq,
    why: String,
) -> StoreError {
    let from = read.last().map_or(1, |message| message.seq + 1);
    damaged(Some((from, last_seq.max(from))), format!("cannot be read: {why}"))
}

/// Reads every room of an open store, collecting damage instead of stopping at it.
fn check_records(database: &ReadOnlyDatabase, shown: &str) -> Result<CheckReport, StoreError> {
    let io = StoreError::io(shown);
    let txn = database.begin_read().map_err(|e| io(e.to_string()))?;
    let format = match txn.open_table(META) {
        Ok(meta) => meta.get("format").map_err(|e| io(e.to_string()))?.map(|v| v.value().to_owned()),
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(error) => return Err(io(error.to_string())),
    };
    if format.as_deref() != Some(RedbStore::FORMAT) {
        let found = format.unwrap_or_else(|| "none".to_owned());
        return Err(StoreError::Foreign { path: shown.to_owned(), found, expected: RedbStore::FORMAT });
    }
    let mut report = CheckReport { path: shown.to_owned(), ..CheckReport::default() };
    for name in stored_room_names(&txn, shown)? {
        report.rooms += 1;
        match guard::catch(|| read_room(&txn, shown, &name)) {
            Ok(Ok(Some((_, read)))) => report.messages += read as u64,
            Ok(Ok(None)) => {}
            Ok(Err(StoreError::Damaged { damage, .. })) => report.damage.push((name, damage)),
            Ok(Err(error)) => report.damage.push((name, Damage { seqs: None, detail: error.to_string() })),
            Err(panic) => report.damage.push((name, Damage { seqs: None, detail: format!("cannot be read: {panic}") })),
        }
    }
    Ok(report)
}

/// Copies a format-1 file's tables into format 2's, with checksums, and drops the old ones.
fn upgrade_v1(txn: &WriteTransaction) -> Result<(), String> {
    let text = |error: redb::Error| error.to_string();
    {
        let old_rooms = txn.open_table(ROOMS_V1).map_err(|e| text(e.into()))?;
        let mut rooms = txn.open_table(ROOMS).map_err(|e| text(e.into()))?;
        for entry in old_rooms.iter().map_err(|e| text(e.into()))? {
            let (name, record) = entry.map_err(|e| text(e.into()))?;
            let (epoch, last_seq) = record.value();
            let record = (epoch, last_seq, room_checksum(name.value(), epoch, last_seq));
            rooms.insert(name.value(), record).map_err(|e| text(e.into()))?;
        }
        let old_messages = txn.open_table(MESSAGES_V1).map_err(|e| text(e.into()))?;
        let mut messages = txn.open_table(MESSAGES).map_err(|e| text(e.into()))?;
        let mut value = Vec::new();
        for entry in old_messages.iter().map_err(|e| text(e.into()))? {
            let (key, payload) = entry.map_err(|e| text(e.into()))?;
            let (name, seq) = key.value();
            value.clear();
            value.extend_from_slice(&message_checksum(name, seq, payload.value()).to_le_bytes());
            value.extend_from_slice(payload.value());
            messages.insert((name, seq), value.as_slice()).map_err(|e| text(e.into()))?;
        }
    }
    txn.delete_table(ROOMS_V1).map_err(|e| text(e.into()))?;
    txn.delete_table(MESSAGES_V1).map_err(|e| text(e.into()))?;
    Ok(())
}

/// Opens or creates the redb file (mode 0600); also says whether redb had to repair it. A
/// damaged file that makes redb panic is an error here, not a panic.
fn open_database(path: &Path) -> Result<(Database, bool), String> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, FILE_MODE);
    let file = options.open(path).map_err(|error| error.to_string())?;
    restrict(&file).map_err(|error| format!("setting its mode: {error}"))?;
    // redb reports a repair while it lays out a new, empty file too: only an existing file can
    // have been left unclean.
    let created = file.metadata().map_err(|error| error.to_string())?.len() == 0;
    let repaired = Arc::new(AtomicBool::new(false));
    let noticed = Arc::clone(&repaired);
    let database = guard::catch(move || {
        redb::Builder::new()
            .set_cache_size(STORE_CACHE_BYTES)
            .set_repair_callback(move |_| noticed.store(true, Ordering::Relaxed))
            .create_file(file)
    })?
    .map_err(explain)?;
    Ok((database, !created && repaired.load(Ordering::Relaxed)))
}

/// redb's open errors, in the operator's terms.
fn explain(error: DatabaseError) -> String {
    match error {
        DatabaseError::DatabaseAlreadyOpen => "the file is in use (is a confab server running on it?)".to_owned(),
        DatabaseError::RepairAborted => {
            "the file was not closed cleanly: start `confab serve` on it once, which repairs it".to_owned()
        }
        error => format!("the file is damaged or truncated, or not a redb file ({error})"),
    }
}

/// A store file that a marker says was initialised, but that is missing or empty, is refused.
fn refuse_if_emptied(path: &Path, marker: &Path) -> Result<(), StoreError> {
    if !marker.exists() {
        return Ok(());
    }
    let state = match std::fs::metadata(path) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => "missing",
        Ok(metadata) if metadata.len() == 0 => "empty (0 bytes)",
        _ => return Ok(()),
    };
    Err(StoreError::Emptied { path: path.display().to_string(), state, marker: marker.display().to_string() })
}

/// Creates the directory (and missing parents) with mode 0700, syncing the parent of each one
/// created so the new entry survives a power loss. An existing directory is left as it is.
fn create_private_directory(directory: &Path) -> std::io::Result<()> {
    if directory.is_dir() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, DIRECTORY_MODE);
    builder.create(directory)?;
    match directory.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_directory(parent),
        _ => Ok(()),
    }
}

fn write_marker(marker: &Path) -> std::io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, FILE_MODE);
    let mut file = options.open(marker)?;
    let text = format!(
        "A confab history store ({}) was initialised in this directory. While this file exists, confab refuses \
         to start on a missing or empty {}; delete it to start an empty store on purpose.\n",
        RedbStore::FORMAT,
        RedbStore::FILE_NAME
    );
    std::io::Write::write_all(&mut file, text.as_bytes())?;
    file.sync_all()
}

/// fsyncs a directory, so the entries created in it are durable.
fn sync_directory(directory: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    File::open(directory)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = directory;
    Ok(())
}

/// Takes group and other access away from a store file created before modes were set.
fn restrict(file: &File) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if file.metadata()?.permissions().mode() & 0o077 != 0 {
            file.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))?;
        }
    }
    #[cfg(not(unix))]
    let _ = file;
    Ok(())
}

fn room_checksum(room: &str, epoch: u64, last_seq: Seq) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(room.as_bytes());
    hasher.update(&epoch.to_le_bytes());
    hasher.update(&last_seq.to_le_bytes());
    hasher.finalize()
}

/// Covers the key too, so a record that lands under another room or number is caught.
fn message_checksum(room: &str, seq: Seq, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(room.as_bytes());
    hasher.update(&seq.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

// Message encoding: the checksum (u32 LE), then the payload: accepted_at (u64 LE), then user,
// client_msg_id and body, each as a u32 LE length and UTF-8 bytes. The room and seq are the key.

/// Encodes `message` as a stored record (also cluster mode's entry payload).
pub(crate) fn encode(message: &ChatMessage, out: &mut Vec<u8>) {
    out.extend_from_slice(&[0; CHECKSUM_BYTES]);
    out.extend_from_slice(&message.accepted_at.as_millis().to_le_bytes());
    let id = message.client_msg_id.as_ref().map(ClientMsgId::as_str).unwrap_or("");
    for text in [message.user.as_str(), id, &message.body] {
        out.extend_from_slice(&(text.len() as u32).to_le_bytes());
        out.extend_from_slice(text.as_bytes());
    }
    let checksum = message_checksum(message.room.as_str(), message.seq, &out[CHECKSUM_BYTES..]);
    out[..CHECKSUM_BYTES].copy_from_slice(&checksum.to_le_bytes());
}

fn accepted_at(value: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(value.get(CHECKSUM_BYTES..CHECKSUM_BYTES + 8)?.try_into().ok()?))
}

/// The message of `room` numbered `seq` in a record [`encode`] made; why not, if damaged.
pub(crate) fn decode(room: &RoomName, seq: u64, value: &[u8]) -> Result<ChatMessage, String> {
    let (checksum, payload) = value.split_at_checked(CHECKSUM_BYTES).ok_or("shorter than its checksum")?;
    let checksum = u32::from_le_bytes(checksum.try_into().map_err(|_| "bad checksum")?);
    if checksum != message_checksum(room.as_str(), seq, payload) {
        return Err("the stored record fails its checksum".to_owned());
    }
    let at = accepted_at(value).ok_or("shorter than its timestamp")?;
    let mut rest = &payload[8..];
    let mut text = || -> Result<String, String> {
        let len_bytes: [u8; 4] = rest.get(..4).ok_or("truncated length")?.try_into().map_err(|_| "bad length")?;
        let len = u32::from_le_bytes(len_bytes) as usize;
        let bytes = rest.get(4..4 + len).ok_or("truncated text")?;
        rest = &rest[4 + len..];
        String::from_utf8(bytes.to_vec()).map_err(|_| "text is not UTF-8".to_owned())
    };
    let user = UserName::recorded(&text()?).map_err(|error| error.to_string())?;
    let client_msg_id = ClientMsgId::new(&text()?).map_err(|error| error.to_string())?;
    let body: Arc<str> = Arc::from(text()?);
    if !rest.is_empty() {
        return Err(format!("{} unexpected trailing bytes", rest.len()));
    }
    Ok(ChatMessage { room: room.clone(), seq, user, client_msg_id, body, accepted_at: Time::from_millis(at) })
}
