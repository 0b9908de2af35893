//! The store's own tests: the conformance suite every backend runs, and
//! what is particular to this backend.

use super::*;

fn fresh() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    (dir, store)
}

/// A fresh store in its own temporary directory, kept alive with it.
struct Fresh(tempfile::TempDir, SqliteStore);

impl std::ops::Deref for Fresh {
    type Target = SqliteStore;
    fn deref(&self) -> &SqliteStore {
        let _ = &self.0;
        &self.1
    }
}

fn make() -> Fresh {
    let (dir, store) = fresh();
    Fresh(dir, store)
}

purser_store::conformance_tests!(make());

#[test]
fn reopening_keeps_everything_and_does_not_migrate_twice() {
    let dir = tempfile::tempdir().unwrap();
    let journal = purser_store::conformance::sample_journal();
    {
        let store = SqliteStore::open(dir.path()).unwrap();
        store
            .commit(Commit {
                entries: &journal,
                idempotency: &[],
                events: &[],
                settled: &[],
                snapshots: &[],
            })
            .unwrap();
    }
    let store = SqliteStore::open(dir.path()).unwrap();
    let mut count = 0;
    store
        .replay(&mut |_| {
            count += 1;
            Ok(())
        })
        .unwrap();
    assert_eq!(count, journal.len());
}

#[test]
fn a_failed_commit_stores_nothing_of_its_batch() {
    let (dir, store) = fresh();
    let journal = purser_store::conformance::sample_journal();
    store
        .commit(Commit {
            entries: &journal[..3],
            idempotency: &[],
            events: &[],
            settled: &[],
            snapshots: &[],
        })
        .unwrap();
    // A failure half-way through a batch (injected: the log refuses its
    // fifth entry) rolls the whole batch back.
    Connection::open(dir.path().join("purser.db"))
        .unwrap()
        .execute_batch(
            "CREATE TRIGGER fail BEFORE INSERT ON log WHEN NEW.pos = 5
             BEGIN SELECT RAISE(ABORT, 'injected'); END;",
        )
        .unwrap();
    let error = store.commit(Commit {
        entries: &journal[3..7],
        idempotency: &[],
        events: &[],
        settled: &[],
        snapshots: &[],
    });
    assert!(error.is_err());
    let mut count = 0;
    store
        .replay(&mut |_| {
            count += 1;
            Ok(())
        })
        .unwrap();
    assert_eq!(count, 3);
    assert_eq!(
        store
            .entries(&EntryQuery {
                account: journal[0].account,
                types: Vec::new(),
                before_seq: None,
                limit: 100,
            })
            .unwrap()
            .len(),
        journal[..3]
            .iter()
            .filter(|e| e.account == journal[0].account)
            .count()
    );
}

/// A closed store holding the sample journal, a query of its first
/// account's entries, and that query's answer.
fn committed_sample() -> (tempfile::TempDir, Vec<Entry>, EntryQuery, Vec<Entry>) {
    let dir = tempfile::tempdir().unwrap();
    let journal = purser_store::conformance::sample_journal();
    let query = EntryQuery {
        account: journal[0].account,
        types: Vec::new(),
        before_seq: None,
        limit: 100,
    };
    let before = {
        let store = SqliteStore::open(dir.path()).unwrap();
        store
            .commit(Commit {
                entries: &journal,
                idempotency: &[],
                events: &[],
                settled: &[],
                snapshots: &[],
            })
            .unwrap();
        store.entries(&query).unwrap()
    };
    assert!(!before.is_empty());
    (dir, journal, query, before)
}

#[test]
fn a_lost_history_index_is_rebuilt_from_the_log() {
    let (dir, _, query, before) = committed_sample();
    for file in ["history.db", "history.db-wal", "history.db-shm"] {
        let _ = std::fs::remove_file(dir.path().join(file));
    }
    let store = SqliteStore::open(dir.path()).unwrap();
    assert_eq!(store.entries(&query).unwrap(), before);
}

#[test]
fn a_batch_cut_short_between_slices_is_finished_on_reopen() {
    let (dir, journal, query, before) = committed_sample();
    let history = || Connection::open(dir.path().join("history.db")).unwrap();
    // Every row is in, but the process stopped before the batch's last
    // slice stored its position: the rows are indexed again on reopen.
    history()
        .execute_batch(&format!(
            "UPDATE indexed SET pos = 0, partial = {}",
            journal.len()
        ))
        .unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    assert_eq!(store.entries(&query).unwrap(), before);
    drop(store);
    // Rows claimed beyond the log's end: evidence that the log lost
    // commits, kept as it is (never rebuilt silently) and witnessed.
    history()
        .execute_batch("UPDATE indexed SET pos = 0, partial = 1000000")
        .unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    let history_witness = store
        .witnesses()
        .unwrap()
        .into_iter()
        .find(|w| w.what.contains("history.db"))
        .unwrap();
    assert_eq!(history_witness.position, 1_000_000);
    // Once the loss is accepted, the index is rebuilt from the log.
    let report = purser_store::DamageReport {
        end: journal.len() as u64,
        damage: vec![Damage::Lost {
            end: journal.len() as u64,
            witness: history_witness,
        }],
        names: Default::default(),
    };
    store
        .accept_loss(&report, Timestamp::from_micros(0))
        .unwrap();
    assert_eq!(store.entries(&query).unwrap(), before);
    let rows: i64 = history()
        .query_row("SELECT COUNT(*) FROM entry", [], |row| row.get(0))
        .unwrap();
    assert_eq!(rows as usize, journal.len());
    assert_eq!(store.incidents().unwrap().len(), 1);
    let positions: Vec<u64> = store
        .witnesses()
        .unwrap()
        .iter()
        .map(|w| w.position)
        .collect();
    assert!(
        positions.iter().all(|p| *p <= journal.len() as u64),
        "{positions:?}"
    );
}

/// A store written before checksums (schema 5) is sealed by the
/// migration: every row, every snapshot and idempotency record passes
/// the checks afterwards, and the next commit chains on.
#[test]
fn an_older_store_is_sealed_by_its_migration() {
    let dir = tempfile::tempdir().unwrap();
    let journal = purser_store::conformance::sample_journal();
    {
        let old = Connection::open(dir.path().join("purser.db")).unwrap();
        old.execute_batch("CREATE TABLE schema_version (version INTEGER NOT NULL);")
            .unwrap();
        for (index, migration) in MIGRATIONS[..5].iter().enumerate() {
            old.execute_batch(migration).unwrap();
            old.execute("INSERT INTO schema_version VALUES (?1)", [index as i64 + 1])
                .unwrap();
        }
        for (index, entry) in journal.iter().enumerate() {
            let mut body = Vec::new();
            encode_entry(entry, &mut body);
            old.execute(
                "INSERT INTO log (pos, account, seq, body) VALUES (?1, ?2, ?3, ?4)",
                params![
                    index as i64 + 1,
                    entry.account.raw() as i64,
                    entry.seq as i64,
                    body
                ],
            )
            .unwrap();
        }
        old.execute(
            "INSERT INTO snapshot (partition, position, body) VALUES (0, 3, x'00')",
            [],
        )
        .unwrap();
        old.execute(
            "INSERT INTO idempotency_log (key, fingerprint, status, body, expires_at)
             VALUES ('k', zeroblob(32), 201, x'7b7d', 9000000000000000)",
            [],
        )
        .unwrap();
    }
    let store = SqliteStore::open(dir.path()).unwrap();
    let snapshots = store.snapshots().unwrap();
    assert_eq!(
        snapshots[0].sum,
        purser_store::snapshot_sum(0, 3, &snapshots[0].body)
    );
    let check_all = |store: &SqliteStore| {
        let mut check = purser_store::JournalCheck::new(vec![3]);
        store
            .scan(&mut |row| {
                check.row(&row);
                Ok(())
            })
            .unwrap();
        check.finish(store.witnesses().unwrap())
    };
    let report = check_all(&store);
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.end, journal.len() as u64);
    // The record migrated three times: sealed (6), stored by key hash (7),
    // made smaller (10).
    let record = store
        .idempotency_record(&purser_store::key_hash("k"))
        .unwrap()
        .expect("the record survives both migrations");
    assert_eq!((record.status, &record.body[..]), (201, &b"{}"[..]));
    // New commits chain on from the sealed rows.
    let next = purser_store::conformance::sample_journal();
    let more: Vec<Entry> = next
        .iter()
        .map(|entry| Entry {
            account: AccountHandle::from_raw(entry.account.raw() + (1 << 16) * 1000),
            ..entry.clone()
        })
        .collect();
    store
        .commit(Commit {
            entries: &more,
            idempotency: &[],
            events: &[],
            settled: &[],
            snapshots: &[],
        })
        .unwrap();
    let report = check_all(&store);
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.end, 2 * journal.len() as u64);
}

/// A store of schema 9 (16-byte fingerprints, expiries in microseconds):
/// migration 10 checks each record against its old checksum and stores it
/// anew, the fingerprint's first 8 bytes and the expiry rounded up to the
/// second, found by its key after. A record that fails its old checksum
/// is carried over damaged: refused on its own, found by `verify`, while
/// the rest serve.
#[test]
fn records_are_made_smaller_by_migration_10() {
    let record_of = |key: &str| LegacyRecord {
        key: purser_store::key_hash(key),
        fingerprint: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16],
        status: 201,
        body: b"{}".to_vec(),
        expires_at: Timestamp::from_micros(1_800_000_000_000_001),
    };
    let (sound, damaged) = (record_of("order-17"), record_of("order-18"));
    let dir = tempfile::tempdir().unwrap();
    {
        let old = Connection::open(dir.path().join("purser.db")).unwrap();
        old.execute_batch("CREATE TABLE schema_version (version INTEGER NOT NULL);")
            .unwrap();
        for (index, migration) in MIGRATIONS[..9].iter().enumerate() {
            old.execute_batch(migration).unwrap();
            old.execute("INSERT INTO schema_version VALUES (?1)", [index as i64 + 1])
                .unwrap();
        }
        for (legacy, sum_offset) in [(&damaged, 1), (&sound, 0)] {
            old.execute(
                "INSERT INTO idempotency_record (key, fingerprint, status, body, expires_at, pos, sum)
                 VALUES (?1, ?2, 201, x'7b7d', ?3, 0, ?4)",
                params![
                    &legacy.key[..],
                    &legacy.fingerprint[..],
                    legacy.expires_at.micros(),
                    purser_store::legacy_record_sum(legacy, 0) + sum_offset
                ],
            )
            .unwrap();
        }
    }
    let store = SqliteStore::open(dir.path()).unwrap();
    let record = store
        .idempotency_record(&sound.key)
        .unwrap()
        .expect("the record survives the migration");
    assert_eq!(record.fingerprint, [1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(
        record.expires_at,
        Timestamp::from_micros(1_800_000_001_000_000)
    );
    assert_eq!((record.status, &record.body[..]), (201, &b"{}"[..]));
    assert_eq!(record, sound.upgraded());
    assert!(
        matches!(
            store.idempotency_record(&damaged.key),
            Err(StoreError::Damaged(_))
        ),
        "the damaged record stays refused"
    );
    let keys = store.idempotency_keys(0, 10).unwrap();
    assert_eq!(
        keys.iter().map(|k| (k.key, k.sound)).collect::<Vec<_>>(),
        [(damaged.key, false), (sound.key, true)],
        "in their order, the damaged one known as such"
    );
    drop(store);
    let version: i64 = Connection::open(dir.path().join("purser.db"))
        .unwrap()
        .query_row("SELECT max(version) FROM schema_version", [], |row| {
            row.get(0)
        })
        .unwrap();
    assert_eq!(version, MIGRATIONS.len() as i64);
}

#[test]
fn days_before_the_epoch_group_correctly() {
    assert_eq!(day_key(0), "1970-01-01");
    assert_eq!(day_key(-1), "1969-12-31");
    assert_eq!(day_key(20_781), "2026-11-24");
}

/// A settled object's row changed on disk: refused where read, found by
/// `verify`'s structure check.
#[test]
fn a_damaged_settled_row_is_refused_and_found() {
    let (dir, store) = fresh();
    purser_store::conformance::damaged_settled_row(&store, |seq| {
        Connection::open(dir.path().join("purser.db"))
            .unwrap()
            .execute(
                "UPDATE settled SET body = zeroblob(length(body)) WHERE seq = ?1",
                [seq as i64],
            )
            .unwrap();
    });
}
