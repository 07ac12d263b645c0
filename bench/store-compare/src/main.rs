//! Durable append throughput with group commit, redb against SQLite (WAL, synchronous=FULL),
//! written the way confab's writer thread writes: one transaction per batch, fsync on commit,
//! key (room, seq), a ~100-byte value. Prints messages per second for each batch size.

use std::time::Instant;

const MESSAGES: usize = 20_000;
const ROOMS: usize = 16;
const BATCH_SIZES: [usize; 4] = [1, 16, 256, 4096];

fn value(i: usize) -> Vec<u8> {
    format!("{:0>100}", i).into_bytes()
}

fn redb_rate(dir: &std::path::Path, batch: usize, total: usize) -> f64 {
    let path = dir.join(format!("redb-{batch}.redb"));
    let _ = std::fs::remove_file(&path);
    let db = redb::Database::create(&path).expect("create");
    let table: redb::TableDefinition<(&str, u64), &[u8]> = redb::TableDefinition::new("messages");
    let rooms: Vec<String> = (0..ROOMS).map(|r| format!("room{r}")).collect();
    let start = Instant::now();
    for chunk in (0..total).collect::<Vec<_>>().chunks(batch) {
        let mut txn = db.begin_write().expect("txn");
        txn.set_durability(redb::Durability::Immediate).expect("durability");
        {
            let mut t = txn.open_table(table).expect("table");
            for &i in chunk {
                t.insert((rooms[i % ROOMS].as_str(), i as u64), value(i).as_slice()).expect("insert");
            }
        }
        txn.commit().expect("commit");
    }
    total as f64 / start.elapsed().as_secs_f64()
}

fn sqlite_rate(dir: &std::path::Path, batch: usize, total: usize) -> f64 {
    let path = dir.join(format!("sqlite-{batch}.db"));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let mut db = rusqlite::Connection::open(&path).expect("open");
    db.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;
         CREATE TABLE messages (room TEXT NOT NULL, seq INTEGER NOT NULL, value BLOB NOT NULL, PRIMARY KEY (room, seq)) WITHOUT ROWID;",
    )
    .expect("schema");
    let rooms: Vec<String> = (0..ROOMS).map(|r| format!("room{r}")).collect();
    let start = Instant::now();
    for chunk in (0..total).collect::<Vec<_>>().chunks(batch) {
        let txn = db.transaction().expect("txn");
        {
            let mut insert = txn.prepare_cached("INSERT INTO messages (room, seq, value) VALUES (?1, ?2, ?3)").expect("prepare");
            for &i in chunk {
                insert.execute(rusqlite::params![rooms[i % ROOMS], i as i64, value(i)]).expect("insert");
            }
        }
        txn.commit().expect("commit");
    }
    total as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let dir = std::env::temp_dir().join(format!("store-compare-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    println!("| batch (messages per commit) | redb msgs/s | SQLite WAL msgs/s | redb / SQLite |");
    println!("|---|---|---|---|");
    for batch in BATCH_SIZES {
        // Fewer messages for tiny batches: each commit is an fsync.
        let total = if batch == 1 { 1_000 } else { MESSAGES };
        let redb = redb_rate(&dir, batch, total);
        let sqlite = sqlite_rate(&dir, batch, total);
        println!("| {batch} | {redb:.0} | {sqlite:.0} | {:.2} |", redb / sqlite);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
