use std::path::PathBuf;
use std::sync::Arc;

use confab_actors::store::{
    HistoryStore, MemoryStore, RedbStore, Retention, RoomAppend, StoreError, StoredRoom, StoredSummary,
};
use confab_actors::{Engine, EngineConfig, EngineError, EngineHealth};
use confab_engine::{Limits, RoomError, RoomEvent, RoomName};

use super::faulty_store::FaultyStore;
use super::{draft, next, room, subscribed};

const RETENTION: Retention = Retention { len_max: 10_000, age_max_ms: None };

fn durable_engine(store: Arc<dyn HistoryStore>) -> Engine {
    Engine::start(EngineConfig::default().with_storage(store)).expect("engine")
}

/// A fresh directory under the system's temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("confab-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("temp dir");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Sends, "restarts" (a new engine on the same store), and checks that numbering, dedupe,
/// history and resume carry on, with the same epoch.
async fn survives_a_restart(store: Arc<dyn HistoryStore>) {
    let lobby = room("lobby");
    let first = durable_engine(Arc::clone(&store));
    for i in 1..=5u64 {
        let sent = first.send(&lobby, draft("ann", &format!("id{i}"), &format!("m{i}"))).await.expect("durable send");
        assert_eq!(sent.seq, i);
    }
    let epoch = first.room(&lobby).await.expect("info").expect("exists").epoch;
    first.shutdown().await.expect("shutdown");
    drop(first);

    let second = durable_engine(store);
    let rooms = second.rooms().await.expect("rooms");
    assert_eq!(
        rooms.iter().map(|r| (r.name.to_string(), r.last_seq, r.epoch)).collect::<Vec<_>>(),
        vec![("lobby".into(), 5, epoch)]
    );
    let retry = second.send(&lobby, draft("ann", "id3", "m3")).await.expect("retry");
    assert_eq!((retry.seq, retry.duplicate), (3, true), "G4 across a restart");
    assert_eq!(second.send(&lobby, draft("bob", "", "after")).await.expect("send").seq, 6, "numbers continue");
    let page = second.history(&lobby, 0, 0).await.expect("history");
    assert_eq!(page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), (1..=6).collect::<Vec<_>>());
    assert_eq!(page.epoch, epoch, "the epoch changes only if history was lost");
    let mut resumed = second.subscribe(&lobby, None, Some(4)).await.expect("subscribe");
    assert_eq!(subscribed(&mut resumed).await, (true, 5), "G5 across a restart");
    let seqs = [next(&mut resumed).await, next(&mut resumed).await].map(|e| e.and_then(|e| e.seq()));
    assert_eq!(seqs, [Some(5), Some(6)]);
}

/// After a restart, rooms are listed page by page from their stored numbers: every stored room
/// appears once, in name order, with its numbers, and listing loads none of them (a store of
/// many big rooms once made one ListRooms call load every history into memory).
async fn lists_stored_rooms_in_pages_without_loading_them(store: Arc<dyn HistoryStore>) {
    let first = durable_engine(Arc::clone(&store));
    let names: Vec<String> = (0..7).map(|i| format!("room-{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        for n in 0..=i {
            first.send(&room(name), draft("ann", "", &format!("m{n}"))).await.expect("durable send");
        }
    }
    first.shutdown().await.expect("shutdown");
    drop(first);

    let second = durable_engine(store);
    // One live room among the stored ones: its own answer (a subscriber) shows in the list.
    let live = room("room-3");
    let _subscription = second.subscribe(&live, None, None).await.expect("subscribe");
    let mut listed = Vec::new();
    let mut after = None;
    let mut pages = 0;
    loop {
        let page = second.rooms_page(after.as_ref(), 3).await.expect("a page");
        assert!(page.rooms.len() <= 3, "a page holds at most its limit");
        pages += 1;
        listed.extend(page.rooms);
        match page.next_after {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(pages, 3, "7 rooms in pages of 3");
    let numbers: Vec<_> = listed.iter().map(|r| (r.name.to_string(), r.last_seq, r.first_retained_seq)).collect();
    let expected: Vec<_> = names.iter().enumerate().map(|(i, name)| (name.clone(), i as u64 + 1, 1)).collect();
    assert_eq!(numbers, expected, "every stored room once, in order, with its numbers");
    assert_eq!(listed[3].subscribers, 1, "the live room answers for itself");
    assert_eq!(second.stats().rooms, 1, "listing loaded no stored room");
    assert_eq!(second.rooms().await.expect("all rooms").len(), 7);
}

#[tokio::test(flavor = "current_thread")]
async fn stored_rooms_are_listed_in_pages_without_loading_them_in_the_memory_store() {
    lists_stored_rooms_in_pages_without_loading_them(Arc::new(MemoryStore::new(RETENTION))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_rooms_are_listed_in_pages_without_loading_them_in_the_redb_store() {
    let dir = TempDir::new("redb-list");
    let store = RedbStore::open(&dir.0, RETENTION).expect("open");
    lists_stored_rooms_in_pages_without_loading_them(Arc::new(store)).await;
}

#[tokio::test(flavor = "current_thread")]
async fn history_survives_a_restart_in_the_memory_store() {
    survives_a_restart(Arc::new(MemoryStore::new(RETENTION))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_survives_a_restart_in_the_redb_store() {
    let dir = TempDir::new("redb-restart");
    let store = RedbStore::open(&dir.0, RETENTION).expect("open");
    // A real process restart (reopening the file) is the crash test's job (tests/e2e/crash.rs).
    survives_a_restart(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_sends_are_delivered_only_once_stored_and_retention_compacts() {
    let dir = TempDir::new("redb-retention");
    let store = Arc::new(RedbStore::open(&dir.0, Retention { len_max: 3, age_max_ms: None }).expect("open"));
    let limits = Limits { history_len_max: 3, ..Limits::default() };
    let engine =
        Engine::start(EngineConfig::default().with_storage(store.clone()).with_limits(limits)).expect("engine");
    let lobby = room("lobby");
    let mut events = engine.subscribe(&lobby, None, None).await.expect("subscribe");
    subscribed(&mut events).await;
    for i in 1..=5 {
        engine.send(&lobby, draft("ann", "", &i.to_string())).await.expect("send");
    }
    for seq in 1..=5 {
        assert!(matches!(next(&mut events).await, Some(RoomEvent::Message(m)) if m.seq == seq));
    }
    let stored = store.load_room(&lobby).expect("load").expect("stored");
    assert_eq!(stored.last_seq, 5);
    assert_eq!(stored.tail.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![3, 4, 5], "compacted to the newest 3");
}

#[test]
fn a_damaged_or_foreign_file_is_a_clear_error() {
    let dir = TempDir::new("redb-garbage");
    std::fs::write(dir.0.join(RedbStore::FILE_NAME), b"this is not a database at all, just some bytes").expect("write");
    let error = RedbStore::open(&dir.0, RETENTION).expect_err("garbage is refused");
    assert!(matches!(&error, StoreError::Open { path, .. } if path.ends_with("confab.redb")), "{error}");

    let foreign = TempDir::new("redb-foreign");
    {
        let database = redb::Database::create(foreign.0.join(RedbStore::FILE_NAME)).expect("create");
        let txn = database.begin_write().expect("txn");
        {
            let mut meta = txn.open_table(redb::TableDefinition::<&str, &str>::new("meta")).expect("table");
            meta.insert("format", "someone-elses-v9").expect("insert");
        }
        txn.commit().expect("commit");
    }
    let error = RedbStore::open(&foreign.0, RETENTION).expect_err("foreign is refused");
    assert!(matches!(&error, StoreError::Foreign { found, .. } if found == "someone-elses-v9"), "{error}");
    assert!(error.to_string().contains("confab.redb"), "names the file: {error}");
}

#[test]
fn age_retention_drops_only_expired_messages() {
    use confab_actors::store::RoomAppend;
    use confab_engine::{ChatMessage, Time};
    let dir = TempDir::new("redb-age");
    let store = RedbStore::open(&dir.0, Retention { len_max: 100, age_max_ms: Some(1_000) }).expect("open");
    let lobby = room("lobby");
    let message = |seq: u64, at: u64| {
        Arc::new(ChatMessage {
            room: lobby.clone(),
            seq,
            user: super::user("ann"),
            client_msg_id: None,
            body: Arc::from("x"),
            accepted_at: Time::from_millis(at),
        })
    };
    let first = RoomAppend { room: lobby.clone(), epoch: 1, messages: vec![message(1, 1_000), message(2, 1_500)] };
    store.append(&[first], 1_600).expect("append");
    assert_eq!(store.load_room(&lobby).expect("load").expect("stored").tail.len(), 2, "nothing expired yet");
    let second = RoomAppend { room: lobby.clone(), epoch: 1, messages: vec![message(3, 2_200)] };
    store.append(&[second], 2_200).expect("append");
    let stored = store.load_room(&lobby).expect("load").expect("stored");
    assert_eq!(stored.tail.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![2, 3], "seq 1 is older than 1 s");
    assert_eq!(stored.last_seq, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_room_load_fences_that_room_and_the_engine_keeps_serving() {
    let store = Arc::new(FaultyStore::new(Some("broken")));
    let engine = durable_engine(store);
    let refused = engine.send(&room("broken"), draft("ann", "", "hi")).await.expect_err("the load panics");
    assert!(
        matches!(&refused, EngineError::Room(RoomError::DataLoss { reason }) if reason.contains("broken")),
        "{refused:?}"
    );
    // Again: the registry survived and answers the same way.
    let again = engine.history(&room("broken"), 0, 0).await.expect_err("still fenced");
    assert!(matches!(again, EngineError::Room(RoomError::DataLoss { .. })), "{again:?}");
    assert_eq!(engine.send(&room("fine"), draft("ann", "", "hi")).await.expect("another room").seq, 1);
    assert_eq!(engine.health(), EngineHealth::Serving);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_is_reported_in_health_and_writes_resume_without_a_gap() {
    let store = Arc::new(FaultyStore::new(None));
    let engine = durable_engine(store.clone());
    let lobby = room("lobby");
    assert_eq!(engine.send(&lobby, draft("ann", "a", "one")).await.expect("send").seq, 1);

    store.fail(true);
    // Several sends in flight at once, so some are queued behind the failing commit.
    let sends: Vec<_> = (0..20)
        .map(|i| {
            let engine = engine.clone();
            let lobby = lobby.clone();
            tokio::spawn(async move { engine.send(&lobby, draft("ann", &format!("f{i}"), "lost")).await })
        })
        .collect();
    for send in sends {
        let refused = send.await.expect("task").expect_err("the store is failing");
        assert!(matches!(refused, EngineError::Room(RoomError::Storage { .. })), "{refused:?}");
    }
    assert!(matches!(engine.health(), EngineHealth::StoreFailing(_)), "{:?}", engine.health());

    store.fail(false);
    // The writer probes the store while idle, so health recovers without a send.
    until_serving(&engine).await;
    let resumed = engine.send(&lobby, draft("ann", "b", "two")).await.expect("writes resume");
    assert_eq!(resumed.seq, 2, "numbering continues from the last durable message");
    let stored = store.load_room(&lobby).expect("load").expect("stored");
    let seqs: Vec<_> = stored.tail.iter().map(|m| (m.seq, m.body.to_string())).collect();
    assert_eq!(seqs, vec![(1, "one".to_owned()), (2, "two".to_owned())], "nothing lost is stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_through_failing_commits_store_exactly_the_acknowledged_messages() {
    let store = Arc::new(FaultyStore::new(None));
    let engine = durable_engine(store.clone());
    let rooms = [room("east"), room("west")];
    let acked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let senders: Vec<_> = (0..4)
        .map(|id| {
            let (engine, rooms, acked) = (engine.clone(), rooms.clone(), Arc::clone(&acked));
            let (done, refused) = (Arc::clone(&done), Arc::clone(&refused));
            tokio::spawn(async move {
                // Bounded, and stopped early once the failures are over.
                for i in 0..20_000 {
                    if done.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let target = &rooms[(id + i) % 2];
                    let body = format!("{id}-{i}");
                    match engine.send(target, draft("ann", "", &body)).await {
                        Ok(sent) => acked.lock().expect("acks").push((target.to_string(), sent.seq, body)),
                        Err(_) => {
                            refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    // Commits fail and recover three times while the senders run (the writer retries a
    // failing store once a second, so each round waits for health to recover).
    for _ in 0..3 {
        tokio::time::sleep(std::time::Duration::from_millis(15)).await;
        store.fail(true);
        tokio::time::sleep(std::time::Duration::from_millis(15)).await;
        store.fail(false);
        until_serving(&engine).await;
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    for sender in senders {
        sender.await.expect("sender");
    }
    assert!(refused.load(std::sync::atomic::Ordering::Relaxed) > 0, "some sends met a failing commit");
    let last = engine.send(&rooms[0], draft("ann", "", "last")).await.expect("writes resume after the failures");
    acked.lock().expect("acks").push((rooms[0].to_string(), last.seq, "last".to_owned()));
    let mut acked = acked.lock().expect("acks").clone();
    acked.sort();
    let mut stored = Vec::new();
    for name in &rooms {
        let Some(room) = store.load_room(name).expect("load") else { continue };
        let seqs: Vec<_> = room.tail.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, (1..=room.last_seq).collect::<Vec<_>>(), "room {name} is contiguous");
        stored.extend(room.tail.iter().map(|m| (name.to_string(), m.seq, m.body.to_string())));
    }
    stored.sort();
    assert_eq!(stored, acked, "the store holds exactly the acknowledged messages");
}

#[cfg(unix)]
#[test]
fn a_new_store_directory_is_private_and_its_file_0600() {
    use std::os::unix::fs::PermissionsExt;
    let parent = TempDir::new("redb-modes");
    let directory = parent.0.join("data");
    let store = RedbStore::open(&directory, RETENTION).expect("open");
    let mode = |path: &std::path::Path| std::fs::metadata(path).expect("metadata").permissions().mode() & 0o777;
    assert_eq!(mode(&directory), 0o700, "the data directory");
    assert_eq!(mode(store.path()), 0o600, "the store file");
    assert_eq!(mode(&directory.join(RedbStore::MARKER_NAME)), 0o600, "the marker");
    drop(store);

    // A file made by an older build with a looser mode is tightened when opened.
    std::fs::set_permissions(directory.join(RedbStore::FILE_NAME), std::fs::Permissions::from_mode(0o644))
        .expect("chmod");
    let store = RedbStore::open(&directory, RETENTION).expect("reopen");
    assert_eq!(mode(store.path()), 0o600, "tightened");
}

/// A new store file, and one closed cleanly, need no repair (a new file was once reported as
/// "not closed cleanly" at every first start); a copy of a file taken while it was open, as a
/// crash leaves it, does.
#[test]
fn only_a_file_left_open_is_reported_as_repaired() {
    use confab_engine::{ChatMessage, Time};
    let dir = TempDir::new("redb-repair");
    let fresh = dir.0.join("fresh");
    let store = RedbStore::open(&fresh, RETENTION).expect("create");
    assert!(!store.needed_repair(), "a new file");
    let lobby = room("lobby");
    let message = ChatMessage {
        room: lobby.clone(),
        seq: 1,
        user: super::user("ann"),
        client_msg_id: None,
        body: Arc::from("x"),
        accepted_at: Time::from_millis(1_000),
    };
    let append = RoomAppend { room: lobby, epoch: 1, messages: vec![Arc::new(message)] };
    store.append(&[append], 1_000).expect("commit");
    let crashed = dir.0.join("crashed");
    std::fs::create_dir_all(&crashed).expect("mkdir");
    for name in [RedbStore::FILE_NAME, RedbStore::MARKER_NAME] {
        std::fs::copy(fresh.join(name), crashed.join(name)).expect("copy while open");
    }
    drop(store);
    assert!(!RedbStore::open(&fresh, RETENTION).expect("reopen").needed_repair(), "closed cleanly");
    let recovered = RedbStore::open(&crashed, RETENTION).expect("open the copy");
    assert!(recovered.needed_repair(), "a file left open");
}

#[test]
fn an_emptied_store_is_refused_when_the_directory_was_initialised() {
    let dir = TempDir::new("redb-emptied");
    drop(RedbStore::open(&dir.0, RETENTION).expect("initialise"));
    std::fs::File::create(dir.0.join(RedbStore::FILE_NAME)).expect("truncate to 0 bytes");
    let error = RedbStore::open(&dir.0, RETENTION).expect_err("an emptied store is refused");
    assert!(matches!(error, StoreError::Emptied { state: "empty (0 bytes)", .. }), "{error}");
    std::fs::remove_file(dir.0.join(RedbStore::FILE_NAME)).expect("remove");
    let error = RedbStore::open(&dir.0, RETENTION).expect_err("a missing store is refused");
    assert!(matches!(error, StoreError::Emptied { state: "missing", .. }), "{error}");
}

#[test]
fn a_format_1_store_is_upgraded_in_place_with_checksums() {
    let dir = TempDir::new("redb-upgrade");
    {
        // What a format-1 build wrote: no checksums, tables `rooms` and `messages`.
        let database = redb::Database::create(dir.0.join(RedbStore::FILE_NAME)).expect("create");
        let txn = database.begin_write().expect("txn");
        {
            let mut meta = txn.open_table(redb::TableDefinition::<&str, &str>::new("meta")).expect("meta");
            meta.insert("format", "confab-history-v1").expect("format");
            let mut rooms = txn.open_table(redb::TableDefinition::<&str, (u64, u64)>::new("rooms")).expect("rooms");
            rooms.insert("lobby", (7, 2)).expect("room");
            let mut messages =
                txn.open_table(redb::TableDefinition::<(&str, u64), &[u8]>::new("messages")).expect("messages");
            for (seq, body) in [(1u64, "one"), (2, "two")] {
                let mut value = 1_000u64.to_le_bytes().to_vec();
                for text in ["ann", "", body] {
                    value.extend_from_slice(&(text.len() as u32).to_le_bytes());
                    value.extend_from_slice(text.as_bytes());
                }
                messages.insert(("lobby", seq), value.as_slice()).expect("message");
            }
        }
        txn.commit().expect("commit");
    }
    let store = RedbStore::open(&dir.0, RETENTION).expect("upgraded");
    let lobby = store.load_room(&room("lobby")).expect("load").expect("stored");
    assert_eq!((lobby.epoch, lobby.last_seq), (7, 2));
    let bodies: Vec<_> = lobby.tail.iter().map(|m| (m.seq, m.body.to_string())).collect();
    assert_eq!(bodies, vec![(1, "one".to_owned()), (2, "two".to_owned())]);
    drop(store);
    let report = RedbStore::check(&dir.0).expect("check");
    assert!(report.is_clean() && report.messages == 2, "{report:?}");
}

/// Waits (bounded) until the engine reports it can serve: the writer's probe recovers a store
/// that commits again within about a second.
async fn until_serving(engine: &Engine) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while engine.health() != EngineHealth::Serving {
        assert!(tokio::time::Instant::now() < deadline, "health recovers: {:?}", engine.health());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[test]
fn a_damaged_room_record_is_reported_at_open_and_fences_only_that_room() {
    use confab_actors::store::RoomAppend;
    use confab_engine::{ChatMessage, Time};
    use redb::ReadableTable as _;
    let dir = TempDir::new("redb-room-record");
    let store = RedbStore::open(&dir.0, RETENTION).expect("open");
    let appends: Vec<RoomAppend> = ["bad", "good"]
        .into_iter()
        .map(|name| {
            let message = ChatMessage {
                room: room(name),
                seq: 1,
                user: super::user("ann"),
                client_msg_id: None,
                body: Arc::from("hello"),
                accepted_at: Time::from_millis(1),
            };
            RoomAppend { room: room(name), epoch: 9, messages: vec![Arc::new(message)] }
        })
        .collect();
    store.append(&appends, 1).expect("append");
    assert_eq!(store.damaged_room_records().expect("scan"), Vec::new());
    drop(store);
    {
        // The record's last number changes under its checksum, as a flipped bit would.
        let database = redb::Database::create(dir.0.join(RedbStore::FILE_NAME)).expect("open raw");
        let txn = database.begin_write().expect("txn");
        {
            let definition = redb::TableDefinition::<&str, (u64, u64, u32)>::new("rooms_v2");
            let mut rooms = txn.open_table(definition).expect("rooms");
            let (epoch, _, checksum) = rooms.get("bad").expect("get").expect("stored").value();
            rooms.insert("bad", (epoch, 2, checksum)).expect("damage");
        }
        txn.commit().expect("commit");
    }
    let store = RedbStore::open(&dir.0, RETENTION).expect("reopen");
    let damaged = store.damaged_room_records().expect("scan");
    assert_eq!(damaged.iter().map(|(name, _)| name.as_str()).collect::<Vec<_>>(), vec!["bad"], "{damaged:?}");
    let error = store.load_room(&room("bad")).expect_err("fenced");
    assert!(matches!(&error, StoreError::Damaged { room, .. } if room == "bad"), "{error}");
    assert_eq!(store.load_room(&room("good")).expect("load").expect("stored").tail.len(), 1);
    drop(store);
    let report = RedbStore::check(&dir.0).expect("check");
    assert_eq!(report.damage.iter().map(|(name, _)| name.as_str()).collect::<Vec<_>>(), vec!["bad"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_reloaded_after_a_failed_commit_that_was_stored_anyway_writes_on() {
    let store = Arc::new(FaultyStore::new(None));
    let limits = Limits { room_idle_ms: 1, ..Limits::default() };
    let engine =
        Engine::start(EngineConfig::default().with_storage(store.clone()).with_limits(limits)).expect("engine");
    let lobby = room("lobby");
    assert_eq!(engine.send(&lobby, draft("ann", "a", "one")).await.expect("send").seq, 1);
    // The commit reaches the disk but reports failure: the room rolls back to 1, the store
    // holds 2.
    store.fail_after_storing(true);
    let refused = engine.send(&lobby, draft("ann", "b", "two")).await.expect_err("reported failed");
    assert!(matches!(refused, EngineError::Room(RoomError::Storage { .. })), "{refused:?}");
    store.fail_after_storing(false);
    until_serving(&engine).await;

    // The room retires and is loaded again from the store, which goes on from 2.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    assert_eq!(engine.retire_idle_rooms().await.expect("sweep"), 1);
    let sent =
        tokio::time::timeout(std::time::Duration::from_secs(10), engine.send(&lobby, draft("ann", "c", "three")))
            .await
            .expect("the reloaded room's write is not held back forever")
            .expect("writes on");
    assert_eq!(sent.seq, 3);
    let retry = engine.send(&lobby, draft("ann", "b", "two")).await.expect("retry");
    assert_eq!((retry.seq, retry.duplicate), (2, true), "the stored one is recognised (G4)");
}

/// A memory store whose load of one room blocks until it is opened: a big room on a slow disk.
#[derive(Debug)]
struct SlowLoadStore {
    inner: MemoryStore,
    slow: RoomName,
    open: std::sync::Mutex<bool>,
    opened: std::sync::Condvar,
}

impl SlowLoadStore {
    fn open(&self) {
        *self.open.lock().expect("gate") = true;
        self.opened.notify_all();
    }
}

impl HistoryStore for SlowLoadStore {
    fn load_room(&self, room: &RoomName) -> Result<Option<StoredRoom>, StoreError> {
        if *room == self.slow {
            let mut open = self.open.lock().expect("gate");
            while !*open {
                open = self.opened.wait(open).expect("gate");
            }
        }
        self.inner.load_room(room)
    }

    fn room_summaries(&self, after: Option<&RoomName>, limit: usize) -> Result<Vec<StoredSummary>, StoreError> {
        self.inner.room_summaries(after, limit)
    }

    fn append(&self, appends: &[RoomAppend], now_ms: u64) -> Result<(), StoreError> {
        self.inner.append(appends, now_ms)
    }
}

/// While a room loads from the store, the registry answers for every other room: new rooms are
/// created and used at once (the load ran in the registry's mailbox before, so one slow room
/// stalled them all), and the callers waiting for the slow room all get it once it is loaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_room_load_does_not_stall_other_rooms() {
    let patience = std::time::Duration::from_secs(10);
    let store = Arc::new(SlowLoadStore {
        inner: MemoryStore::new(RETENTION),
        slow: room("big"),
        open: std::sync::Mutex::new(false),
        opened: std::sync::Condvar::new(),
    });
    let engine = durable_engine(Arc::clone(&store) as Arc<dyn HistoryStore>);
    let slow_sends: Vec<_> = (0..2)
        .map(|i| {
            let engine = engine.clone();
            tokio::spawn(
                async move { engine.send(&room("big"), draft("ann", &format!("b{i}"), "to the big room")).await },
            )
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    for name in ["small-1", "small-2"] {
        let sent = tokio::time::timeout(patience, engine.send(&room(name), draft("bob", "", "meanwhile")))
            .await
            .expect("another room is served while the big one loads")
            .expect("send");
        assert_eq!(sent.seq, 1);
    }
    assert!(slow_sends.iter().all(|send| !send.is_finished()), "the big room is still loading");
    store.open();
    let mut seqs = Vec::new();
    for send in slow_sends {
        let sent = tokio::time::timeout(patience, send).await.expect("loaded").expect("task").expect("send");
        seqs.push(sent.seq);
    }
    seqs.sort_unstable();
    assert_eq!(seqs, vec![1, 2], "both callers reached the one loaded room");
}
