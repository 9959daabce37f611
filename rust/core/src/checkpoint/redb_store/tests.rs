use super::*;
use crate::checkpoint::schema::{META, META_GENERATION, TABLE};
use crate::checkpoint::RowKind;
use redb::ReadableDatabase;
use redb::TableDefinition;
use std::sync::atomic::AtomicUsize;
use std::sync::Barrier;

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("cano-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn file(&self) -> PathBuf {
        self.0.join("checkpoints.redb")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Parks the writer thread inside a completion until the returned closure is called, so that
/// everything submitted meanwhile is queued into one batch.
fn hold_writer(store: &RedbStore) -> impl FnOnce() {
    let entered = Arc::new(Barrier::new(2));
    let release = Arc::new(Barrier::new(2));
    let (e, r) = (entered.clone(), release.clone());
    store
        .flush(move |_| {
            e.wait();
            r.wait();
        })
        .unwrap();
    entered.wait();
    move || {
        release.wait();
    }
}

fn row(id: &str, sequence: u64, state: &str) -> Row {
    Row::state_entry(id, sequence, state, "task")
}

#[test]
fn append_then_load_round_trips_every_field() {
    let dir = TempDir::new("roundtrip");
    let store = RedbStore::open(dir.file(), Durability::Immediate).unwrap();
    let full = Row {
        workflow_id: "order-1".into(),
        sequence: 1,
        state: "Charge".into(),
        task_id: "ChargeCard".into(),
        kind: RowKind::Compensation,
        output: Some(b"{\"charge\":12}".to_vec()),
        workflow_version: 4,
    };
    store.append_blocking(row("order-1", 0, "Start")).unwrap();
    store.append_blocking(full.clone()).unwrap();
    assert_eq!(store.load_run_blocking("order-1").unwrap(), vec![row("order-1", 0, "Start"), full]);
    assert_eq!(store.load_run_blocking("unknown").unwrap(), vec![]);
}

#[test]
fn load_is_ascending_whatever_the_append_order() {
    let dir = TempDir::new("ascending");
    let store = RedbStore::open(dir.file(), Durability::Eventual).unwrap();
    for seq in [5, 0, 300, 2, 1, 256] {
        store.append_blocking(row("w", seq, &format!("S{seq}"))).unwrap();
    }
    // A neighbouring id that sorts right after must not leak into the range.
    store.append_blocking(row("w\0", 0, "other")).unwrap();
    store.append_blocking(row("v", 9, "other")).unwrap();
    let seqs: Vec<u64> = store.load_run_blocking("w").unwrap().iter().map(|r| r.sequence).collect();
    assert_eq!(seqs, vec![0, 1, 2, 5, 256, 300]);
}

#[test]
fn conflict_rejects_only_the_duplicate_row_of_a_batch() {
    let dir = TempDir::new("conflict");
    let store = RedbStore::open(dir.file(), Durability::Immediate).unwrap();
    store.append_blocking(row("w", 0, "Original")).unwrap();

    let release = hold_writer(&store);
    let results = Arc::new(Mutex::new(Vec::new()));
    let rows = [row("w", 1, "A"), row("w", 0, "Duplicate"), row("x", 0, "B"), row("w", 1, "Again")];
    for r in rows {
        let results = results.clone();
        let key = (r.workflow_id.clone(), r.sequence, r.state.clone());
        store.append(r, move |outcome| results.lock().push((key, outcome))).unwrap();
    }
    let commits_before = store.commit_count();
    release();
    store.flush_blocking().unwrap();
    assert_eq!(store.commit_count(), commits_before + 1, "the appends share one commit");

    let results = results.lock();
    assert_eq!(results.len(), 4);
    assert_eq!(results[0].1, Ok(()));
    assert_eq!(results[1].1, Err(StoreError::Conflict { workflow_id: "w".into(), sequence: 0 }));
    assert_eq!(results[2].1, Ok(()));
    assert_eq!(results[3].1, Err(StoreError::Conflict { workflow_id: "w".into(), sequence: 1 }));
    let states: Vec<String> =
        store.load_run_blocking("w").unwrap().into_iter().map(|r| r.state).collect();
    assert_eq!(states, vec!["Original", "A"]);
    assert_eq!(store.load_run_blocking("x").unwrap().len(), 1);
}

#[test]
fn clear_removes_only_that_run() {
    let dir = TempDir::new("clear");
    let store = RedbStore::open(dir.file(), Durability::Immediate).unwrap();
    for id in ["a", "ab", "b"] {
        for seq in 0..3 {
            store.append_blocking(row(id, seq, "S")).unwrap();
        }
    }
    store.clear_blocking("a").unwrap();
    store.clear_blocking("never-existed").unwrap();
    assert!(store.load_run_blocking("a").unwrap().is_empty());
    assert_eq!(store.load_run_blocking("ab").unwrap().len(), 3);
    assert_eq!(store.load_run_blocking("b").unwrap().len(), 3);
    // A cleared id can start again at sequence 0.
    store.append_blocking(row("a", 0, "Again")).unwrap();
}

#[test]
fn list_runs_summarises_each_run() {
    let dir = TempDir::new("list");
    let store = RedbStore::open(dir.file(), Durability::Immediate).unwrap();
    assert!(store.list_runs_blocking().unwrap().is_empty());
    store.append_blocking(row("b", 0, "Start")).unwrap();
    store.append_blocking(row("a", 0, "Start")).unwrap();
    store.append_blocking(row("a", 1, "Pay")).unwrap();
    let runs = store.list_runs_blocking().unwrap();
    assert_eq!(
        runs,
        vec![
            RunSummary {
                workflow_id: "a".into(),
                rows: 2,
                last_state: "Pay".into(),
                last_sequence: 1
            },
            RunSummary {
                workflow_id: "b".into(),
                rows: 1,
                last_state: "Start".into(),
                last_sequence: 0
            },
        ]
    );
}

#[test]
fn group_commit_batches_concurrent_appends() {
    let dir = TempDir::new("group");
    let store = Arc::new(RedbStore::open(dir.file(), Durability::Immediate).unwrap());
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                let (tx, rx) = mpsc::channel();
                for i in 0..125 {
                    let tx = tx.clone();
                    store
                        .append(row(&format!("run-{t}"), i, "S"), move |r| tx.send(r).unwrap())
                        .unwrap();
                }
                drop(tx);
                let outcomes: Vec<_> = rx.iter().collect();
                assert_eq!(outcomes.len(), 125);
                assert!(outcomes.iter().all(Result::is_ok));
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let commits = store.commit_count();
    assert!(commits < 500, "1,000 appends took {commits} commits");
    let total: u64 = store.list_runs_blocking().unwrap().iter().map(|r| r.rows).sum();
    assert_eq!(total, 1000);
}

#[test]
fn queued_requests_share_one_commit() {
    let dir = TempDir::new("onecommit");
    let store = RedbStore::open(dir.file(), Durability::Immediate).unwrap();
    let release = hold_writer(&store);
    let done = Arc::new(AtomicUsize::new(0));
    for i in 0..999 {
        let done = done.clone();
        store
            .append(row("w", i, "S"), move |r| {
                assert_eq!(r, Ok(()));
                done.fetch_add(1, Ordering::Relaxed);
            })
            .unwrap();
    }
    let before = store.commit_count();
    release();
    store.flush_blocking().unwrap();
    assert_eq!(done.load(Ordering::Relaxed), 999);
    assert_eq!(store.commit_count() - before, 1);
}

#[test]
fn reopen_after_close_sees_the_rows() {
    let dir = TempDir::new("reopen");
    for durability in [Durability::Immediate, Durability::Eventual] {
        let path = dir.0.join(durability.as_str());
        let store = RedbStore::open(&path, durability).unwrap();
        store.append_blocking(row("w", 0, "Start")).unwrap();
        store.append_blocking(row("w", 1, "Next")).unwrap();
        store.close().unwrap();
        store.close().unwrap(); // idempotent
        assert!(matches!(store.append_blocking(row("w", 2, "X")), Err(StoreError::Closed { .. })));
        drop(store);

        let again = RedbStore::open(&path, durability).unwrap();
        assert_eq!(again.load_run_blocking("w").unwrap().len(), 2);
    }
}

#[test]
fn dropping_closes_and_releases_the_file() {
    let dir = TempDir::new("drop");
    let store = RedbStore::open(dir.file(), Durability::Eventual).unwrap();
    store.append_blocking(row("w", 0, "Start")).unwrap();
    drop(store);
    let again = RedbStore::open(dir.file(), Durability::Eventual).unwrap();
    assert_eq!(again.load_run_blocking("w").unwrap().len(), 1);
}

#[test]
fn close_with_releases_the_file_before_completing() {
    let dir = TempDir::new("closewith");
    let store = RedbStore::open(dir.file(), Durability::Eventual).unwrap();
    store.append_blocking(row("w", 0, "Start")).unwrap();
    let (tx, rx) = mpsc::channel();
    store.close_with(move |r| tx.send(r).unwrap()).unwrap();
    assert_eq!(rx.recv().unwrap(), Ok(()));
    let again = RedbStore::open(dir.file(), Durability::Immediate).unwrap();
    assert_eq!(again.load_run_blocking("w").unwrap().len(), 1);
    assert!(matches!(store.close_with(|_| {}), Err(StoreError::Closed { .. })));
}

#[test]
fn eventual_rows_are_visible_before_any_flush() {
    let dir = TempDir::new("eventual");
    let store = RedbStore::open(dir.file(), Durability::Eventual).unwrap();
    for seq in 0..10 {
        store.append(row("w", seq, "S"), |_| {}).unwrap();
    }
    assert_eq!(store.load_run_blocking("w").unwrap().len(), 10);
    let commits = store.commit_count();
    store.flush_blocking().unwrap();
    assert_eq!(store.commit_count(), commits + 1, "flush makes the eventual commits durable");
    store.flush_blocking().unwrap();
    assert_eq!(store.commit_count(), commits + 1, "nothing left to sync");
}

#[test]
fn second_open_of_the_same_file_fails_fast() {
    let dir = TempDir::new("inuse");
    let _first = RedbStore::open(dir.file(), Durability::Immediate).unwrap();
    let err = RedbStore::open(dir.file(), Durability::Immediate).unwrap_err();
    assert!(matches!(err, StoreError::InUse { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains(&dir.file().display().to_string()), "{text}");
    assert!(text.contains("single-process"), "{text}");
}

#[test]
fn garbage_file_is_not_a_store() {
    let dir = TempDir::new("garbage");
    let mut junk = b"this is not a redb file, just some text\n".repeat(200);
    junk.extend((0..=255u8).cycle().take(8192));
    std::fs::write(dir.file(), &junk).unwrap();
    let err = RedbStore::open(dir.file(), Durability::Immediate).unwrap_err();
    assert!(matches!(err, StoreError::NotAStore { .. }), "{err:?}");
    assert!(err.to_string().contains(&dir.file().display().to_string()), "{err}");
}

#[test]
fn missing_directory_is_an_io_error_naming_the_file() {
    let dir = TempDir::new("missing");
    let path = dir.0.join("no/such/dir/c.redb");
    let err = RedbStore::open(&path, Durability::Immediate).unwrap_err();
    assert!(matches!(err, StoreError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("no/such/dir/c.redb"), "{err}");
}

#[test]
fn damaged_row_is_reported_with_its_key() {
    let dir = TempDir::new("damaged");
    {
        let db = Database::create(dir.file()).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(TABLE).unwrap().insert(("w", 3u64), [9u8, 9, 9].as_slice()).unwrap();
        tx.commit().unwrap();
    }
    let store = RedbStore::open(dir.file(), Durability::Immediate).unwrap();
    let err = store.load_run_blocking("w").unwrap_err();
    assert!(
        matches!(&err, StoreError::Damaged { workflow_id, sequence: 3, .. } if workflow_id == "w")
    );
    let text = err.to_string();
    assert!(text.contains(&format!("{:?}", dir.file().display().to_string())), "{text}");
    assert!(store.list_runs_blocking().is_err());
}

#[test]
fn batch_hook_runs_after_each_batch() {
    let dir = TempDir::new("hook");
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let hook: BatchHook = Box::new(move || {
        c.fetch_add(1, Ordering::Relaxed);
    });
    let store = RedbStore::open_with_hook(dir.file(), Durability::Immediate, Some(hook)).unwrap();
    store.append_blocking(row("w", 0, "S")).unwrap();
    store.close().unwrap();
    assert_eq!(calls.load(Ordering::Relaxed), store.batch_count() as usize);
    assert!(calls.load(Ordering::Relaxed) >= 2);
}

#[test]
fn redb_file_with_a_foreign_table_layout_is_not_a_store() {
    let dir = TempDir::new("foreign");
    {
        let db = Database::create(dir.file()).unwrap();
        let tx = db.begin_write().unwrap();
        let foreign: TableDefinition<&str, u64> = TableDefinition::new("cano_checkpoints");
        tx.open_table(foreign).unwrap().insert("x", 1).unwrap();
        tx.commit().unwrap();
    }
    let err = RedbStore::open(dir.file(), Durability::Immediate).unwrap_err();
    assert!(matches!(err, StoreError::NotAStore { .. }), "{err:?}");
}

#[test]
fn requests_from_the_writer_thread_do_not_deadlock() {
    // A completion that closes the store (as a Python object dropped by its last future
    // would) must not wait for the writer it runs on.
    let dir = TempDir::new("selfclose");
    let store = Arc::new(RedbStore::open(dir.file(), Durability::Immediate).unwrap());
    let (tx, rx) = mpsc::channel();
    let inner = store.clone();
    store
        .flush(move |_| {
            tx.send(inner.close()).unwrap();
        })
        .unwrap();
    assert_eq!(rx.recv().unwrap(), Ok(()));
    store.close().unwrap();
    assert!(store.is_closed());
}

// ----- write-ahead log ------------------------------------------------------------------------

/// What the disk holds while `store` runs: its database file (as of the last checkpoint: redb
/// is not written between checkpoints) and its log, copied to `image/checkpoints.redb[.wal]`.
/// Reopening the copy is reopening after a crash at this instant.
fn crash_image(store: &RedbStore, image: &TempDir) -> PathBuf {
    // Queued behind everything submitted so far: the writer is idle once it returns.
    store.flush_blocking().unwrap();
    let target = image.file();
    std::fs::copy(store.path(), &target).unwrap();
    let log = wal::wal_path(store.path());
    if log.exists() {
        std::fs::copy(&log, wal::wal_path(&target)).unwrap();
    } else {
        let _ = std::fs::remove_file(wal::wal_path(&target));
    }
    target
}

/// The `(state, sequence)` of every row of every run, to compare stores.
fn contents(store: &RedbStore) -> Vec<(String, Vec<(u64, String)>)> {
    store
        .list_runs_blocking()
        .unwrap()
        .into_iter()
        .map(|run| {
            let rows = store.load_run_blocking(run.workflow_id.as_str()).unwrap();
            (run.workflow_id, rows.into_iter().map(|r| (r.sequence, r.state)).collect())
        })
        .collect()
}

/// Where both copies of each record of a log are: `(first, second, length)` (walking the
/// length headers; see `wal`'s layout).
fn record_copies(log: &[u8]) -> Vec<(usize, usize, usize)> {
    let mut copies = Vec::new();
    let mut at = 0;
    let page = |at: usize| at.div_ceil(wal::PAGE as usize) * wal::PAGE as usize;
    while at + 8 <= log.len() {
        let len = u32::from_le_bytes(log[at..at + 4].try_into().unwrap()) as usize + 8;
        if len == 8 || at + len > log.len() {
            break;
        }
        let second = page(at + len);
        copies.push((at, second, len));
        // Records start on page boundaries.
        at = page(second + len);
    }
    copies
}

fn seqs_of(store: &RedbStore, id: &str) -> Vec<u64> {
    store.load_run_blocking(id).unwrap().iter().map(|r| r.sequence).collect()
}

/// A crash image of a store holding rows 0..n of run "w", one batch each.
fn logged_image(name: &str, n: u64) -> (TempDir, TempDir, PathBuf) {
    let dir = TempDir::new(name);
    let store = RedbStore::open(dir.file(), Durability::Immediate).unwrap();
    for seq in 0..n {
        store.append_blocking(row("w", seq, &format!("S{seq}"))).unwrap();
    }
    let image = TempDir::new(&format!("{name}-image"));
    let copy = crash_image(&store, &image);
    drop(store);
    (dir, image, copy)
}

#[test]
fn acknowledged_rows_survive_a_crash_through_the_log() {
    let dir = TempDir::new("wal-crash");
    let image = TempDir::new("wal-crash-image");
    let store = RedbStore::open(dir.file(), Durability::Immediate).unwrap();
    store.append_blocking(row("a", 0, "A0")).unwrap();
    store.append_blocking(row("a", 1, "A1")).unwrap();
    store.append_blocking(row("b", 0, "B0")).unwrap();
    store.clear_blocking("b").unwrap();
    store.append_blocking(row("b", 0, "B0-again")).unwrap();
    store.append_blocking(row("c", 7, "C7")).unwrap();
    assert_eq!(store.checkpoint_count(), 0, "nothing reached redb yet");
    let expected = contents(&store);

    let copy = crash_image(&store, &image);
    let reopened = RedbStore::open(&copy, Durability::Immediate).unwrap();
    assert_eq!(reopened.replayed_records(), 6, "one record per acknowledged batch");
    assert_eq!(contents(&reopened), expected);
    // Replayed rows are rows like any other: a duplicate is refused.
    assert!(matches!(
        reopened.append_blocking(row("a", 1, "dup")),
        Err(StoreError::Conflict { .. })
    ));
    reopened.close().unwrap();
    assert!(!wal::wal_path(&copy).exists(), "a clean close leaves no log");
    let again = RedbStore::open(&copy, Durability::Immediate).unwrap();
    assert_eq!(again.replayed_records(), 0);
    assert_eq!(contents(&again), expected);
}

#[test]
fn a_record_torn_by_the_crash_is_not_replayed_and_nothing_before_it_is_lost() {
    let (_dir, _image, copy) = logged_image("wal-torn", 10);
    let pristine_db = std::fs::read(&copy).unwrap();
    let log = std::fs::read(wal::wal_path(&copy)).unwrap();
    let copies = record_copies(&log);
    assert_eq!(copies.len(), 10);
    // The last record stands for one the crash tore (it was never acknowledged): cut its
    // first copy anywhere and never write its second.
    let (first, second, len) = copies[9];
    for keep in [0, 1, 7, 8, 9, len / 2, len - 1] {
        let mut torn = log.clone();
        torn[first + keep..first + len].fill(0);
        torn[second..second + len].fill(0);
        std::fs::write(&copy, &pristine_db).unwrap();
        std::fs::write(wal::wal_path(&copy), &torn).unwrap();
        let reopened = RedbStore::open(&copy, Durability::Immediate).unwrap();
        assert_eq!(seqs_of(&reopened, "w"), (0..9).collect::<Vec<_>>(), "kept {keep} bytes");
        assert_eq!(reopened.replayed_records(), 9);
    }
}

#[test]
fn one_damaged_copy_of_any_record_loses_nothing() {
    let (_dir, _image, copy) = logged_image("wal-flip", 6);
    let pristine_db = std::fs::read(&copy).unwrap();
    let log = std::fs::read(wal::wal_path(&copy)).unwrap();
    for (first, second, len) in record_copies(&log) {
        for at in [first, first + 5, first + 9, first + len - 1, second + 3, second + len - 2] {
            let mut damaged = log.clone();
            damaged[at] ^= 0x40;
            std::fs::write(&copy, &pristine_db).unwrap();
            std::fs::write(wal::wal_path(&copy), &damaged).unwrap();
            let reopened = RedbStore::open(&copy, Durability::Immediate).unwrap();
            assert_eq!(seqs_of(&reopened, "w"), (0..6).collect::<Vec<_>>(), "byte {at}");
        }
    }
}

#[test]
fn a_hole_in_the_log_is_refused_and_repair_says_what_was_lost() {
    let (_dir, _image, copy) = logged_image("wal-hole", 6);
    let log = std::fs::read(wal::wal_path(&copy)).unwrap();
    let (first, second, _) = record_copies(&log)[2];
    let mut damaged = log.clone();
    damaged[first + 9] ^= 0xff;
    damaged[second + 9] ^= 0xff;
    std::fs::write(wal::wal_path(&copy), &damaged).unwrap();

    let err = RedbStore::open(&copy, Durability::Immediate).unwrap_err();
    assert!(matches!(err, StoreError::LogDamaged { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("record 3") && text.contains("repair=True"), "{text}");
    // The damaged log was not touched (redb may have repaired its own file after the crash).
    assert!(std::fs::read(wal::wal_path(&copy)).unwrap() == damaged);
    assert!(RedbStore::open(&copy, Durability::Immediate).is_err(), "still refused");

    let mut options = OpenOptions::new(Durability::Immediate);
    options.repair = true;
    let repaired = RedbStore::open_with(&copy, &options, None).unwrap();
    let report = repaired.repair_report().unwrap().clone();
    assert_eq!(report.missing, vec![3]);
    assert_eq!(report.replayed, 5);
    let aside = report.moved_to.clone().unwrap();
    assert!(std::fs::read(&aside).unwrap() == damaged, "the damaged log is kept");
    assert_eq!(seqs_of(&repaired, "w"), vec![0, 1, 3, 4, 5]);
    repaired.close().unwrap();
    drop(repaired);
    let again = RedbStore::open(&copy, Durability::Immediate).unwrap();
    assert_eq!(seqs_of(&again, "w"), vec![0, 1, 3, 4, 5]);
}

#[test]
fn a_deleted_or_truncated_log_is_refused() {
    let (_dir, _image, copy) = logged_image("wal-cut", 4);
    let log = std::fs::read(wal::wal_path(&copy)).unwrap();
    for cut in [0, 100, log.len() / 2, log.len() - 1] {
        std::fs::write(wal::wal_path(&copy), &log[..cut]).unwrap();
        let err = RedbStore::open(&copy, Durability::Immediate).unwrap_err();
        assert!(err.to_string().contains("truncated"), "cut {cut}: {err}");
    }
    std::fs::remove_file(wal::wal_path(&copy)).unwrap();
    let err = RedbStore::open(&copy, Durability::Immediate).unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
    // Repair acknowledges the loss and opens: the rows were only in the log.
    let mut options = OpenOptions::new(Durability::Immediate);
    options.repair = true;
    let repaired = RedbStore::open_with(&copy, &options, None).unwrap();
    assert!(!repaired.repair_report().unwrap().problems.is_empty());
    assert_eq!(seqs_of(&repaired, "w"), Vec::<u64>::new());
}

#[test]
fn a_clean_close_leaves_no_log_and_reopening_replays_nothing() {
    let dir = TempDir::new("clean");
    let store = RedbStore::open(dir.file(), Durability::Immediate).unwrap();
    store.append_blocking(row("w", 0, "A")).unwrap();
    store.close().unwrap();
    assert!(!wal::wal_path(&dir.file()).exists());
    let reopened = RedbStore::open(dir.file(), Durability::Immediate).unwrap();
    assert_eq!(seqs_of(&reopened, "w"), vec![0]);
    assert_eq!(reopened.replayed_records(), 0);
    assert_eq!(reopened.checkpoint_count(), 0);
}

#[test]
fn read_only_writes_nothing_and_refuses_writes() {
    let dir = TempDir::new("ro");
    let store = RedbStore::open(dir.file(), Durability::Immediate).unwrap();
    for seq in 0..3 {
        store.append_blocking(row("w", seq, "S")).unwrap();
    }
    store.close().unwrap();
    drop(store);
    let db_before = std::fs::read(dir.file()).unwrap();
    let mut options = OpenOptions::new(Durability::Immediate);
    options.read_only = true;
    options.create = false;
    let ro = RedbStore::open_with(dir.file(), &options, None).unwrap();
    // Readers share the file.
    let ro2 = RedbStore::open_with(dir.file(), &options, None).unwrap();
    assert_eq!(seqs_of(&ro, "w"), vec![0, 1, 2]);
    assert_eq!(ro2.list_runs_blocking().unwrap().len(), 1);
    assert!(matches!(ro.append_blocking(row("w", 9, "X")), Err(StoreError::ReadOnly { .. })));
    assert!(matches!(ro.clear_blocking("w"), Err(StoreError::ReadOnly { .. })));
    ro.close().unwrap();
    ro2.close().unwrap();
    drop((ro, ro2));
    assert!(std::fs::read(dir.file()).unwrap() == db_before, "the file is unchanged");
    assert!(!wal::wal_path(&dir.file()).exists());
    // Read-only never creates.
    let missing = dir.file().with_file_name("missing.redb");
    assert!(matches!(
        RedbStore::open_with(&missing, &options, None),
        Err(StoreError::NotFound { .. })
    ));
    assert!(!missing.exists());
}

#[test]
fn read_only_is_refused_while_a_writer_holds_the_file() {
    let dir = TempDir::new("ro-held");
    let _writer = RedbStore::open(dir.file(), Durability::Immediate).unwrap();
    let mut options = OpenOptions::new(Durability::Immediate);
    options.read_only = true;
    let err = RedbStore::open_with(dir.file(), &options, None).unwrap_err();
    assert!(matches!(err, StoreError::InUse { .. }), "{err}");
}

#[test]
fn an_empty_file_is_not_silently_a_new_store() {
    let dir = TempDir::new("empty");
    std::fs::write(dir.file(), b"").unwrap();
    let err = RedbStore::open(dir.file(), Durability::Immediate).unwrap_err();
    assert!(matches!(err, StoreError::NotAStore { .. }) && err.to_string().contains("empty"));
    assert_eq!(std::fs::metadata(dir.file()).unwrap().len(), 0, "left as it was");
}

#[test]
fn a_store_cannot_be_opened_on_another_store_s_log() {
    let dir = TempDir::new("on-log");
    let first = RedbStore::open(dir.file(), Durability::Immediate).unwrap();
    first.append_blocking(row("w", 0, "A")).unwrap();
    let log = wal::wal_path(&dir.file());
    assert!(RedbStore::open(&log, Durability::Immediate).is_err());
    first.append_blocking(row("w", 1, "B")).unwrap();
    first.close().unwrap();
    let reopened = RedbStore::open(dir.file(), Durability::Immediate).unwrap();
    assert_eq!(seqs_of(&reopened, "w"), vec![0, 1]);
}

#[test]
fn eventual_commits_become_durable_within_the_window() {
    let dir = TempDir::new("eventual-window");
    let store = RedbStore::open(dir.file(), Durability::Eventual).unwrap();
    store.append_blocking(row("w", 0, "A")).unwrap();
    let synced = store.checkpoint_count();
    // The writer makes it durable on its own, without a flush, once the window passes.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while store.checkpoint_count() == synced {
        assert!(std::time::Instant::now() < deadline, "never made durable");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn replaying_twice_changes_nothing() {
    let dir = TempDir::new("wal-idem");
    let store = RedbStore::open(dir.file(), Durability::Immediate).unwrap();
    store.append_blocking(row("a", 0, "A0")).unwrap();
    store.append_blocking(row("b", 0, "B0")).unwrap();
    store.clear_blocking("a").unwrap();
    store.append_blocking(row("a", 0, "A0-again")).unwrap();
    store.append_blocking(row("a", 1, "A1")).unwrap();
    let expected = contents(&store);
    let image = TempDir::new("wal-idem-image");
    let copy = crash_image(&store, &image);
    let log = std::fs::read(wal::wal_path(&copy)).unwrap();

    let generation = || {
        let db = Database::create(&copy).unwrap();
        let tx = db.begin_read().unwrap();
        let meta = tx.open_table(META).unwrap();
        let generation = meta.get(META_GENERATION).unwrap().unwrap().value();
        generation
    };
    let logged = generation();

    // Replay once, then put the log back and rewind the generation, as if the replay's
    // commit had been lost after writing: the second replay runs over rows it already wrote.
    let first = RedbStore::open(&copy, Durability::Immediate).unwrap();
    assert_eq!(contents(&first), expected);
    first.close().unwrap();
    drop(first);
    {
        let db = Database::create(&copy).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(META).unwrap().insert(META_GENERATION, logged).unwrap();
        tx.commit().unwrap();
    }
    std::fs::write(wal::wal_path(&copy), &log).unwrap();
    let second = RedbStore::open(&copy, Durability::Immediate).unwrap();
    assert_eq!(second.replayed_records(), 5);
    assert_eq!(contents(&second), expected);
}

#[test]
fn a_replayed_clear_removes_rows_that_were_in_redb() {
    let dir = TempDir::new("wal-clear");
    {
        let store = RedbStore::open(dir.file(), Durability::Immediate).unwrap();
        for seq in 0..3 {
            store.append_blocking(row("a", seq, "old")).unwrap();
            store.append_blocking(row("b", seq, "old")).unwrap();
        }
        store.close().unwrap();
    }
    let store = RedbStore::open(dir.file(), Durability::Immediate).unwrap();
    store.clear_blocking("a").unwrap();
    store.append_blocking(row("a", 0, "new")).unwrap();
    store.clear_blocking("b").unwrap();
    // Read through the overlay: redb still has the old rows, the clears hide them.
    assert_eq!(contents(&store), vec![("a".to_owned(), vec![(0, "new".to_owned())])]);
    let image = TempDir::new("wal-clear-image");
    let copy = crash_image(&store, &image);
    let reopened = RedbStore::open(&copy, Durability::Immediate).unwrap();
    assert_eq!(reopened.replayed_records(), 3);
    assert_eq!(contents(&reopened), vec![("a".to_owned(), vec![(0, "new".to_owned())])]);
}

#[test]
fn a_crash_after_checkpoints_replays_only_the_current_generation() {
    let dir = TempDir::new("wal-ckpt");
    let store = RedbStore::open(dir.file(), Durability::Immediate).unwrap();
    // Long runs, never cleared: their rows reach redb at each checkpoint; the log restarts
    // at offset 0 over the records of the previous generation.
    let batches = wal::CHECKPOINT_BATCHES * 3 + 5;
    for i in 0..batches {
        store.append_blocking(row(&format!("run-{}", i % 3), i / 3, &format!("S{i}"))).unwrap();
    }
    assert!(store.checkpoint_count() >= 3, "{} checkpoints", store.checkpoint_count());
    let expected = contents(&store);
    assert_eq!(expected.iter().map(|(_, rows)| rows.len() as u64).sum::<u64>(), batches);
    let image = TempDir::new("wal-ckpt-image");
    let copy = crash_image(&store, &image);
    let reopened = RedbStore::open(&copy, Durability::Immediate).unwrap();
    assert!(reopened.replayed_records() < wal::CHECKPOINT_BATCHES as usize);
    assert_eq!(contents(&reopened), expected);
}

#[test]
fn reads_merge_the_log_over_rows_already_in_redb() {
    let dir = TempDir::new("wal-merge");
    {
        let store = RedbStore::open(dir.file(), Durability::Immediate).unwrap();
        store.append_blocking(row("r", 0, "R0")).unwrap();
        store.append_blocking(row("r", 2, "R2")).unwrap();
        store.append_blocking(row("z", 0, "Z0")).unwrap();
        store.close().unwrap();
    }
    let store = RedbStore::open(dir.file(), Durability::Immediate).unwrap();
    // A resumed run: its earlier rows are in redb, new ones go to the overlay.
    store.append_blocking(row("r", 1, "R1")).unwrap();
    store.append_blocking(row("r", 3, "R3")).unwrap();
    assert!(matches!(
        store.append_blocking(row("r", 2, "dup")),
        Err(StoreError::Conflict { sequence: 2, .. })
    ));
    store.append_blocking(row("m", 0, "M0")).unwrap();
    let states: Vec<String> =
        store.load_run_blocking("r").unwrap().into_iter().map(|r| r.state).collect();
    assert_eq!(states, ["R0", "R1", "R2", "R3"]);
    let runs = store.list_runs_blocking().unwrap();
    let summary: Vec<(&str, u64, &str, u64)> = runs
        .iter()
        .map(|r| (r.workflow_id.as_str(), r.rows, r.last_state.as_str(), r.last_sequence))
        .collect();
    assert_eq!(summary, [("m", 1, "M0", 0), ("r", 4, "R3", 3), ("z", 1, "Z0", 0)]);
    // Clearing a run with rows in redb, then starting it again.
    store.clear_blocking("r").unwrap();
    assert!(store.load_run_blocking("r").unwrap().is_empty());
    store.append_blocking(row("r", 0, "fresh")).unwrap();
    assert_eq!(store.list_runs_blocking().unwrap().len(), 3);
    store.close().unwrap();
    let again = RedbStore::open(dir.file(), Durability::Eventual).unwrap();
    assert_eq!(
        contents(&again),
        vec![
            ("m".to_owned(), vec![(0, "M0".to_owned())]),
            ("r".to_owned(), vec![(0, "fresh".to_owned())]),
            ("z".to_owned(), vec![(0, "Z0".to_owned())]),
        ]
    );
}

#[test]
fn a_log_left_by_another_database_is_ignored() {
    let dir = TempDir::new("wal-foreign");
    let store = RedbStore::open(dir.file(), Durability::Immediate).unwrap();
    store.append_blocking(row("w", 0, "S")).unwrap();
    let image = TempDir::new("wal-foreign-image");
    let copy = crash_image(&store, &image);
    // The database file is gone (deleted by hand), its log is not: a new database starts.
    std::fs::remove_file(&copy).unwrap();
    let fresh = RedbStore::open(&copy, Durability::Immediate).unwrap();
    assert_eq!(fresh.replayed_records(), 0);
    assert!(fresh.list_runs_blocking().unwrap().is_empty());
    fresh.append_blocking(row("x", 0, "S")).unwrap();
    assert_eq!(fresh.list_runs_blocking().unwrap().len(), 1);
}

#[test]
fn an_eventual_store_replays_then_drops_the_log() {
    let dir = TempDir::new("wal-eventual");
    let store = RedbStore::open(dir.file(), Durability::Immediate).unwrap();
    store.append_blocking(row("w", 0, "S")).unwrap();
    store.append_blocking(row("w", 1, "S")).unwrap();
    let image = TempDir::new("wal-eventual-image");
    let copy = crash_image(&store, &image);
    let eventual = RedbStore::open(&copy, Durability::Eventual).unwrap();
    assert_eq!(eventual.replayed_records(), 2);
    assert!(!wal::wal_path(&copy).exists());
    assert_eq!(eventual.load_run_blocking("w").unwrap().len(), 2);
}

#[test]
fn one_fsync_per_batch_and_none_for_reads() {
    let dir = TempDir::new("wal-syncs");
    let store = RedbStore::open(dir.file(), Durability::Immediate).unwrap();
    let release = hold_writer(&store);
    let (tx, rx) = mpsc::channel();
    for seq in 0..5 {
        let tx = tx.clone();
        store.append(row("w", seq, "S"), move |r| tx.send(r).unwrap()).unwrap();
    }
    release();
    for _ in 0..5 {
        assert_eq!(rx.recv().unwrap(), Ok(()));
    }
    assert_eq!(store.wal_sync_count(), 1, "five appends, one batch, one fsync");
    store.load_run_blocking("w").unwrap();
    store.list_runs_blocking().unwrap();
    store.flush_blocking().unwrap();
    assert_eq!(store.wal_sync_count(), 1, "reads and flushes sync nothing");
    assert!(store.append_blocking(row("w", 0, "dup")).is_err());
    assert_eq!(store.wal_sync_count(), 1, "a refused append logs nothing");
}

#[test]
fn a_log_that_is_not_a_file_is_an_io_error() {
    let dir = TempDir::new("wal-dir");
    std::fs::create_dir(wal::wal_path(&dir.file())).unwrap();
    let err = RedbStore::open(dir.file(), Durability::Immediate).unwrap_err();
    assert!(matches!(err, StoreError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains(".wal"), "{err}");
}

fn wait<T: Send + 'static>(
    submit: impl FnOnce(Completion<T>) -> Result<(), StoreError>,
) -> Result<T, StoreError> {
    let (tx, rx) = mpsc::sync_channel(1);
    submit(Box::new(move |r| {
        let _ = tx.send(r);
    }))?;
    rx.recv().unwrap()
}

fn states(rows: &[Timed]) -> Vec<(u64, String)> {
    rows.iter().map(|(r, _)| (r.sequence, r.state.clone())).collect()
}

/// Records, histories and queue settings: kept apart from runs' logs, replaced whole, moved
/// with their times, forgotten together, and all of it through a crash (the log) and a close.
#[test]
fn records_and_histories_live_beside_the_logs() {
    for durability in [Durability::Immediate, Durability::Eventual] {
        let dir = TempDir::new("records");
        let store = RedbStore::open(dir.file(), durability).unwrap();
        wait(|d| store.put_value(Namespace::Record, "r1", b"{\"s\":\"RUNNING\"}", d)).unwrap();
        wait(|d| store.put_value(Namespace::Record, "r1", b"{\"s\":\"RUNNING\",\"a\":2}", d))
            .unwrap();
        wait(|d| store.put_value(Namespace::Queue, "slow", b"{\"cap\":1}", d)).unwrap();
        for (seq, state) in [(0, "A"), (1, "B")] {
            store.append_blocking(row("r1", seq, state)).unwrap();
        }
        let live = wait(|d| store.timed_rows("r1", false, d)).unwrap();
        assert!(live.iter().all(|(_, at)| *at > 0));
        // Only runs' logs are runs.
        let ids: Vec<String> =
            store.list_runs_blocking().unwrap().into_iter().map(|s| s.workflow_id).collect();
        assert_eq!(ids, ["r1"]);
        wait(|d| store.end_run("r1", b"{\"s\":\"COMPLETED\"}", true, d)).unwrap();
        assert!(store.load_run_blocking("r1").unwrap().is_empty());
        let history = wait(|d| store.timed_rows("r1", true, d)).unwrap();
        assert_eq!(states(&history), [(0, "A".into()), (1, "B".into())]);
        assert_eq!(
            history.iter().map(|h| h.1).collect::<Vec<_>>(),
            live.iter().map(|l| l.1).collect::<Vec<_>>(),
            "the rows keep the time they were written"
        );
        assert!(store.list_runs_blocking().unwrap().is_empty());
        let records = store.values_blocking(Namespace::Record).unwrap();
        assert_eq!(records, [("r1".to_owned(), b"{\"s\":\"COMPLETED\"}".to_vec())]);
        wait(|d| store.put_value(Namespace::Record, "r2", b"{}", d)).unwrap();
        store.close().unwrap();

        let store = RedbStore::open(dir.file(), durability).unwrap();
        let names: Vec<String> = store
            .values_blocking(Namespace::Record)
            .unwrap()
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        assert_eq!(names, ["r1", "r2"]);
        assert_eq!(
            store.values_blocking(Namespace::Queue).unwrap(),
            [("slow".to_owned(), b"{\"cap\":1}".to_vec())]
        );
        assert_eq!(wait(|d| store.timed_rows("r1", true, d)).unwrap().len(), 2);
        wait(|d| store.delete_run("r1", d)).unwrap();
        assert_eq!(wait(|d| store.value(Namespace::Record, "r1", d)).unwrap(), None);
        assert_eq!(
            wait(|d| store.value(Namespace::Record, "r2", d)).unwrap(),
            Some(b"{}".to_vec())
        );
        assert!(wait(|d| store.timed_rows("r1", true, d)).unwrap().is_empty());
        store.close().unwrap();
    }
}

/// A run archived in the same batch as its last append keeps that row; records survive a
/// crash that left them only in the write-ahead log, and checkpoints in between.
#[test]
fn archives_see_their_batch_and_records_replay_from_the_log() {
    let dir = TempDir::new("archive-batch");
    let store = RedbStore::open(dir.file(), Durability::Immediate).unwrap();
    let release = hold_writer(&store);
    let (tx, rx) = mpsc::channel();
    for seq in 0..3 {
        let tx = tx.clone();
        store.append(row("x", seq, "S"), move |r| tx.send(r).unwrap()).unwrap();
    }
    let t = tx.clone();
    store.end_run("x", b"{\"done\":1}", true, move |r| t.send(r).unwrap()).unwrap();
    release();
    for _ in 0..4 {
        rx.recv().unwrap().unwrap();
    }
    assert_eq!(wait(|d| store.timed_rows("x", true, d)).unwrap().len(), 3);
    // Many runs, past several checkpoints (every 16 batches in tests).
    for i in 0..40 {
        let id = format!("run-{i}");
        store.append_blocking(row(&id, 0, "A")).unwrap();
        wait(|d| store.put_value(Namespace::Record, &id, b"{}", d)).unwrap();
        if i % 2 == 0 {
            wait(|d| store.end_run(&id, b"{\"ok\":1}", true, d)).unwrap();
        }
    }
    assert!(store.checkpoint_count() > 0);
    // A crash: the process "dies" with the log holding the last batches.
    let path = dir.file();
    std::mem::forget(store);
    // (The writer thread still holds the file lock: copy the files, as a dead process would
    // leave them.)
    let crashed = dir.0.join("crashed.redb");
    std::fs::copy(&path, &crashed).unwrap();
    std::fs::copy(wal::wal_path(&path), wal::wal_path(&crashed)).unwrap();
    let store = RedbStore::open(&crashed, Durability::Immediate).unwrap();
    let records = store.values_blocking(Namespace::Record).unwrap();
    assert_eq!(records.len(), 41);
    let ended = records.iter().filter(|(_, json)| json == b"{\"ok\":1}").count();
    assert_eq!(ended, 20);
    let runs = store.list_runs_blocking().unwrap();
    assert_eq!(runs.len(), 20, "the runs not ended keep their logs");
    assert_eq!(wait(|d| store.timed_rows("run-38", true, d)).unwrap().len(), 1);
    store.close().unwrap();
}

/// `insert_value` stores a value only where there is none, and says what it found — in the
/// overlay, in redb after a checkpoint, and without a log.
#[test]
fn inserting_a_value_keeps_the_one_already_there() {
    for durability in [Durability::Immediate, Durability::Eventual] {
        let dir = TempDir::new("insert");
        let store = RedbStore::open(dir.file(), durability).unwrap();
        let insert = |name: &str, json: &[u8]| {
            let json = json.to_vec();
            wait(|d| store.insert_value(Namespace::Record, name, &json, d)).unwrap()
        };
        assert_eq!(insert("a", b"1"), None);
        assert_eq!(insert("a", b"2"), Some(b"1".to_vec()));
        store.close().unwrap();
        let store = RedbStore::open(dir.file(), durability).unwrap();
        let again = wait(|d| store.insert_value(Namespace::Record, "a", b"3", d)).unwrap();
        assert_eq!(again, Some(b"1".to_vec()));
        wait(|d| store.delete_run("a", d)).unwrap();
        let fresh = wait(|d| store.insert_value(Namespace::Record, "a", b"4", d)).unwrap();
        assert_eq!(fresh, None);
        assert_eq!(
            store.values_blocking(Namespace::Record).unwrap(),
            [("a".into(), b"4".to_vec())]
        );
        store.close().unwrap();
    }
}

#[test]
fn fences_hold_until_replaced_or_dropped() {
    let dir = TempDir::new("fences");
    let store = RedbStore::open(dir.file(), Durability::Immediate).unwrap();
    assert!(!store.fence_holds("r", "w1", 1));
    store.set_fence("r", Some(("w1".into(), 1)));
    assert!(store.fence_holds("r", "w1", 1));
    store.set_fence("r", Some(("w2".into(), 2)));
    assert!(!store.fence_holds("r", "w1", 1) && store.fence_holds("r", "w2", 2));
    store.set_fence("r", None);
    assert!(!store.fence_holds("r", "w2", 2));
}

/// A run's step history is one value (one B-tree insert however long the run), and the
/// histories earlier builds wrote, a row per key, still read.
#[test]
fn a_history_is_one_value_and_old_per_row_histories_still_read() {
    let dir = TempDir::new("packed-history");
    let store = RedbStore::open(dir.file(), Durability::Immediate).unwrap();
    for seq in 0..50 {
        store.append_blocking(row("long", seq, "S")).unwrap();
    }
    wait(|d| store.end_run("long", b"{}", true, d)).unwrap();
    let stored = store.load_run_blocking(Namespace::History.key("long")).unwrap();
    assert_eq!(stored.len(), 1, "one value for the whole history");
    assert_eq!(stored[0].sequence, codec::PACKED);
    let history = wait(|d| store.timed_rows("long", true, d)).unwrap();
    assert_eq!(
        history.iter().map(|(r, _)| r.sequence).collect::<Vec<_>>(),
        (0..50).collect::<Vec<_>>()
    );
    assert!(history
        .iter()
        .all(|(r, at)| r.workflow_id == Namespace::History.key("long") && *at > 0));

    // As an earlier build wrote it: a row per key under the history's key.
    let old = Namespace::History.key("old");
    for seq in 0..3 {
        store.append_blocking(row(&old, seq, "T")).unwrap();
    }
    let history = wait(|d| store.timed_rows("old", true, d)).unwrap();
    assert_eq!(states(&history), [(0, "T".into()), (1, "T".into()), (2, "T".into())]);
    store.close().unwrap();
}

/// A run's lease cell follows its claims: it holds for the epoch it was taken under, and
/// stops holding once the run is claimed again (a new epoch, any owner) or released; a
/// lease that did not hold when asked for gets a cell that never holds.
#[test]
fn a_fence_cell_holds_only_for_its_claim() {
    let dir = TempDir::new("fence-cell");
    let store = RedbStore::open(dir.file(), Durability::Immediate).unwrap();
    store.set_fence("r", Some(("w1".into(), 1)));
    let first = store.fence("r", "w1", 1);
    assert!(first.holds(1) && store.fence_holds("r", "w1", 1));
    assert!(!store.fence("r", "w2", 1).holds(1), "another owner's claim is not this one");
    store.set_fence("r", Some(("w2".into(), 2))); // taken over
    assert!(!first.holds(1) && !store.fence_holds("r", "w1", 1));
    let second = store.fence("r", "w2", 2);
    assert!(second.holds(2));
    store.set_fence("r", None); // released
    assert!(!second.holds(2) && !store.fence_holds("r", "w2", 2));
    store.set_fence("r", Some(("w2".into(), 2))); // a new entry: the old cell stays dead
    assert!(!second.holds(2) && store.fence("r", "w2", 2).holds(2));
    assert!(!store.fence("nobody", "w1", 1).holds(1));
    store.close().unwrap();
}

/// A run whose rows are partly in redb (before a reopen) and partly in the log is moved into
/// its history whole and in order, with each row's time, even when a later append has a
/// lower sequence than a row already in redb.
#[test]
fn a_history_gathers_rows_from_redb_and_the_log_in_order() {
    for durability in [Durability::Immediate, Durability::Eventual] {
        let dir = TempDir::new("history-split");
        let store = RedbStore::open(dir.file(), durability).unwrap();
        for (seq, state) in [(1, "B"), (5, "F")] {
            store.append_blocking(row("r", seq, state)).unwrap();
        }
        store.close().unwrap(); // everything into redb
        let store = RedbStore::open(dir.file(), durability).unwrap();
        for (seq, state) in [(3, "D"), (0, "A"), (7, "H")] {
            store.append_blocking(row("r", seq, state)).unwrap();
        }
        let live = wait(|d| store.timed_rows("r", false, d)).unwrap();
        wait(|d| store.end_run("r", b"{}", true, d)).unwrap();
        let history = wait(|d| store.timed_rows("r", true, d)).unwrap();
        assert_eq!(
            states(&history),
            [(0, "A".into()), (1, "B".into()), (3, "D".into()), (5, "F".into()), (7, "H".into())],
            "{durability:?}"
        );
        let same = |rows: &[Timed]| -> Vec<(u64, String, u64)> {
            rows.iter().map(|(r, at)| (r.sequence, r.state.clone(), *at)).collect()
        };
        assert_eq!(same(&history), same(&live), "{durability:?}: the same rows and times");
        store.close().unwrap();
        let store = RedbStore::open(dir.file(), durability).unwrap();
        assert_eq!(same(&wait(|d| store.timed_rows("r", true, d)).unwrap()), same(&live));
        assert!(store.load_run_blocking("r").unwrap().is_empty());
    }
}

/// A run's rows appended through its handle: each finishes once, in the order queued, with
/// its own outcome (a taken key is a conflict), and reads back like any appended row.
#[test]
fn a_runs_rows_appended_through_its_handle_finish_in_order() {
    struct Heard {
        id: String,
        outcomes: std::sync::Mutex<Vec<Result<(), StoreError>>>,
        all: std::sync::mpsc::Sender<()>,
    }
    impl RunRows for Heard {
        fn workflow_id(&self) -> &str {
            &self.id
        }
        fn finished(self: Arc<Self>, result: Result<(), StoreError>) {
            self.outcomes.lock().unwrap().push(result);
            let _ = self.all.send(());
        }
    }
    for durability in [Durability::Immediate, Durability::Eventual] {
        let dir = TempDir::new("run-rows");
        let store = RedbStore::open(dir.file(), durability).unwrap();
        let (all, heard) = std::sync::mpsc::channel();
        let run = Arc::new(Heard { id: "r".into(), outcomes: Default::default(), all });
        let handle: Arc<dyn RunRows> = run.clone();
        let rows = [(0, "A"), (1, "B"), (1, "X"), (2, "C")];
        for (seq, state) in rows {
            store.append_run(&handle, seq, codec::encode(&row("r", seq, state))).unwrap();
        }
        for _ in rows {
            heard.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
        }
        let outcomes = run.outcomes.lock().unwrap();
        assert!(outcomes[0].is_ok() && outcomes[1].is_ok() && outcomes[3].is_ok());
        assert!(
            matches!(outcomes[2], Err(StoreError::Conflict { sequence: 1, .. })),
            "{durability:?}: {:?}",
            outcomes[2]
        );
        drop(outcomes);
        let states: Vec<String> =
            store.load_run_blocking("r").unwrap().into_iter().map(|r| r.state).collect();
        assert_eq!(states, ["A", "B", "C"], "{durability:?}");
        store.close().unwrap();
        // Closed: nothing is queued, and the handle hears nothing.
        assert!(store.append_run(&handle, 3, codec::encode(&row("r", 3, "D"))).is_err());
        assert_eq!(run.outcomes.lock().unwrap().len(), 4);
    }
}

/// Appends from the test thread while the writer is parked, so that they are applied by this
/// thread (once the first batch gave the log room): outcomes in order, a taken key refused.
#[test]
fn rows_appended_beside_a_busy_writer_are_applied_by_their_thread_in_order() {
    let dir = TempDir::new("front");
    let store = RedbStore::open(dir.file(), Durability::Immediate).unwrap();
    store.append_blocking(row("warm", 0, "S")).unwrap();
    let release = hold_writer(&store);
    let before = store.staged_row_count();
    let (tx, rx) = mpsc::channel();
    for (seq, state) in [(0, "A"), (0, "dup"), (1, "B")] {
        let tx = tx.clone();
        store.append(row("w", seq, state), move |r| tx.send((seq, r)).unwrap()).unwrap();
    }
    let staged = store.staged_row_count() - before;
    release(); // before any assertion: a parked writer would hang the failing test
    assert_eq!(staged, 3, "applied beside the parked writer");
    let outcomes: Vec<_> = (0..3).map(|_| rx.recv().unwrap()).collect();
    assert!(matches!(outcomes[0], (0, Ok(()))));
    assert!(matches!(outcomes[1], (0, Err(StoreError::Conflict { sequence: 0, .. }))));
    assert!(matches!(outcomes[2], (1, Ok(()))));
    assert_eq!(seqs_of(&store, "w"), [0, 1]);
    assert_eq!(store.load_run_blocking("w").unwrap()[0].state, "A");
    // They were logged like any row: a crash image replays them.
    let image = TempDir::new("front-image");
    let copy = crash_image(&store, &image);
    let reopened = RedbStore::open(&copy, Durability::Immediate).unwrap();
    assert_eq!(seqs_of(&reopened, "w"), [0, 1]);
}

/// A request still in the channel keeps the rows it concerns behind it: a read of a run sees
/// exactly the rows appended before it, while other runs' rows go on beside the writer; a
/// request that concerns everything holds every row back.
#[test]
fn a_queued_request_keeps_the_rows_it_concerns_behind_it() {
    let dir = TempDir::new("front-order");
    let store = RedbStore::open(dir.file(), Durability::Immediate).unwrap();
    store.append_blocking(row("warm", 0, "S")).unwrap();
    let release = hold_writer(&store);
    let ok = |_: Result<(), StoreError>| {};
    store.append(row("x", 0, "A"), ok).unwrap();
    let (seen_tx, seen) = mpsc::channel();
    store.load_run("x", move |r| seen_tx.send(r).unwrap()).unwrap();
    let mut staged = vec![store.staged_row_count()];
    store.append(row("x", 1, "B"), ok).unwrap();
    staged.push(store.staged_row_count());
    store.append(row("y", 0, "C"), ok).unwrap();
    staged.push(store.staged_row_count());
    let (listed_tx, listed) = mpsc::channel();
    store.list_runs(move |r| listed_tx.send(r).unwrap()).unwrap();
    store.append(row("z", 0, "D"), ok).unwrap();
    staged.push(store.staged_row_count());
    release(); // before any assertion: a parked writer would hang the failing test
    let s0 = staged[0];
    // x waits behind the read of x, y does not, and everything waits behind a list.
    assert_eq!(staged, [s0, s0, s0 + 1, s0 + 1]);
    let rows = seen.recv().unwrap().unwrap();
    assert_eq!(rows.iter().map(|r| r.sequence).collect::<Vec<_>>(), [0]);
    let runs = listed.recv().unwrap().unwrap();
    let ids: Vec<&str> = runs.iter().map(|r| r.workflow_id.as_str()).collect();
    assert_eq!(ids, ["warm", "x", "y"], "the list sees what was appended before it");
    store.flush_blocking().unwrap();
    assert_eq!(seqs_of(&store, "x"), [0, 1]);
    assert_eq!(seqs_of(&store, "z"), [0]);
}

/// Many threads appending at once, with clears and reads of their own runs between: every
/// caller sees its own operations in the order it made them.
#[test]
fn concurrent_appenders_each_see_their_own_order() {
    let dir = TempDir::new("front-threads");
    let store = Arc::new(RedbStore::open(dir.file(), Durability::Immediate).unwrap());
    let threads: Vec<_> = (0..6)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                let id = format!("run-{t}");
                for round in 0..20u64 {
                    let (tx, rx) = mpsc::channel();
                    for seq in 0..10 {
                        let tx = tx.clone();
                        store.append(row(&id, seq, "S"), move |r| tx.send(r).unwrap()).unwrap();
                    }
                    let (seen_tx, seen) = mpsc::channel();
                    store.load_run(id.clone(), move |r| seen_tx.send(r).unwrap()).unwrap();
                    store.clear(id.clone(), |_| {}).unwrap();
                    drop(tx);
                    assert!(rx.iter().all(|r| r.is_ok()), "round {round} of {id}");
                    let rows = seen.recv().unwrap().unwrap();
                    assert_eq!(rows.len(), 10, "round {round} of {id}: {rows:?}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(store.list_runs_blocking().unwrap().is_empty());
}

/// A row applied by its thread is logged with everything its caller sent before it, whatever
/// key that concerns — even more than one batch's worth: never in an earlier record.
#[test]
fn a_staged_row_is_never_more_durable_than_what_its_caller_sent_before() {
    let dir = TempDir::new("front-prefix");
    let store = Arc::new(RedbStore::open(dir.file(), Durability::Immediate).unwrap());
    store.append_blocking(row("warm", 0, "S")).unwrap();
    let release = hold_writer(&store);
    let last_value_batch = Arc::new(AtomicUsize::new(0));
    let n = MAX_BATCH + 500;
    for i in 0..n {
        let (store2, seen) = (store.clone(), last_value_batch.clone());
        store
            .put_value(Namespace::Record, &format!("v{i}"), b"{}", move |r| {
                assert_eq!(r, Ok(()));
                seen.fetch_max(store2.batch_count() as usize, Ordering::SeqCst);
            })
            .unwrap();
    }
    let staged = store.staged_row_count();
    let (tx, rx) = mpsc::channel();
    let store2 = store.clone();
    store.append(row("y", 0, "S"), move |r| tx.send((r, store2.batch_count())).unwrap()).unwrap();
    let staged = store.staged_row_count() - staged;
    release(); // before any assertion: a parked writer would hang the failing test
    let (outcome, row_batch) = rx.recv().unwrap();
    store.flush_blocking().unwrap();
    assert_eq!(outcome, Ok(()));
    assert_eq!(staged, 1, "the row of another key was applied beside the parked writer");
    assert!(
        last_value_batch.load(Ordering::SeqCst) <= row_batch as usize,
        "the row was made durable in batch {row_batch}, before values sent ahead of it"
    );
    assert_eq!(store.values_blocking(Namespace::Record).unwrap().len(), n);
}

/// A writer thread that dies (here: a completion panics on it) leaves no row waiting for ever:
/// nothing is applied beside it any more, and every later append fails.
#[test]
fn rows_appended_after_the_writer_died_fail_instead_of_waiting() {
    let dir = TempDir::new("front-dead");
    let store = RedbStore::open(dir.file(), Durability::Immediate).unwrap();
    store.append_blocking(row("warm", 0, "S")).unwrap();
    store.append(row("p", 0, "S"), |_| panic!("a completion that panics")).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    // The channel closes once the writer thread is gone.
    while store.clear("x", |_| {}).is_ok() {
        assert!(std::time::Instant::now() < deadline, "the writer never stopped");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let (tx, rx) = mpsc::channel();
    let outcome = match store.append(row("q", 0, "S"), move |r| tx.send(r).unwrap()) {
        Err(e) => Err(e),
        Ok(()) => rx.recv_timeout(std::time::Duration::from_secs(10)).expect("never answered"),
    };
    assert!(matches!(outcome, Err(StoreError::WriterFailed { .. })), "{outcome:?}");
    drop(store); // closing a store whose writer died returns, it does not hang
}
