//! The store's own tests: the conformance suite every backend runs, and
//! what is particular to this backend.

use super::*;
use purser_store::LegacyRecord;

/// The server tests run against; a fresh database per test, dropped after.
fn admin_url() -> String {
    std::env::var("PURSER_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A store on a database of its own, dropped with it.
struct Fresh {
    store: Option<PostgresStore>,
    name: String,
}

impl std::ops::Deref for Fresh {
    type Target = PostgresStore;
    fn deref(&self) -> &PostgresStore {
        self.store.as_ref().expect("open")
    }
}

impl Drop for Fresh {
    fn drop(&mut self) {
        drop(self.store.take());
        if let Ok(mut admin) = Client::connect(&admin_url(), NoTls) {
            let _ = admin.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

fn database_url(name: &str) -> String {
    let admin = admin_url();
    let base = admin
        .rsplit_once('/')
        .map_or(admin.as_str(), |(base, _)| base);
    format!("{base}/{name}")
}

fn make() -> Fresh {
    make_with(|_| {})
}

/// A fresh database, `prepare`d (given its URL) before the store opens it.
fn make_with(prepare: impl FnOnce(&str)) -> Fresh {
    let mut bytes = [0u8; 6];
    getrandom::fill(&mut bytes).unwrap();
    let name = format!("purser_test_{}", hex::encode(bytes));
    let mut admin = Client::connect(&admin_url(), NoTls).unwrap_or_else(|error| {
        panic!(
            "PostgreSQL is required for these tests and is not reachable at {} ({error}); \
             start it, or point PURSER_TEST_POSTGRES_URL at one",
            admin_url()
        )
    });
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .unwrap();
    prepare(&database_url(&name));
    let store = PostgresStore::open(&database_url(&name), "test").unwrap();
    Fresh {
        store: Some(store),
        name,
    }
}

purser_store::conformance_tests!(make());

#[test]
fn a_second_writer_waits_for_the_lease_and_the_first_is_fenced_after() {
    let first = make();
    let url = database_url(&first.name);
    assert!(matches!(
        PostgresStore::open(&url, "second"),
        Err(StoreError::LeaseHeld)
    ));
    // The first writer stops renewing (as if paused): its lease runs out.
    first.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let second = loop {
        match PostgresStore::open(&url, "second") {
            Ok(store) => break store,
            Err(StoreError::LeaseHeld) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(250));
            }
            Err(other) => panic!("takeover failed: {other}"),
        }
    };
    assert!(second.epoch() > first.epoch());
    let journal = purser_store::conformance::sample_journal();
    let commit = Commit {
        entries: &journal[..2],
        idempotency: &[],
        events: &[],
        settled: &[],
        snapshots: &[],
    };
    assert!(
        matches!(first.commit(commit), Err(StoreError::Fenced)),
        "the old writer is fenced"
    );
    second.commit(commit).expect("the new writer commits");
    assert_eq!(second.replay(&mut |_| Ok(())).unwrap(), 2);
    drop(second);
}

#[test]
fn a_failed_commit_stores_nothing_of_its_batch() {
    let store = make();
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
    assert!(
        store
            .commit(Commit {
                entries: &journal[2..6],
                idempotency: &[],
                events: &[],
                settled: &[],
                snapshots: &[]
            })
            .is_err()
    );
    let count = store.replay(&mut |_| Ok(())).unwrap();
    assert_eq!(count, 3);
}

/// A database of schema version 4 (records by key text) migrates to
/// records by key hash (5), then to smaller records (8): each record
/// checked against its old checksum and found by its key's hash after,
/// with the fingerprint's first 8 bytes and the expiry rounded up to the
/// second.
#[test]
fn records_by_key_text_migrate_to_key_hashes() {
    let record = LegacyRecord {
        key: purser_store::key_hash("order-17"),
        fingerprint: [5; 16],
        status: 201,
        body: b"{}".to_vec(),
        expires_at: Timestamp::from_micros(9_000_000_000_000_001),
    };
    let store = make_with(|url| {
        let mut client = Client::connect(url, NoTls).unwrap();
        client
            .batch_execute("CREATE TABLE purser_schema_version (version INT NOT NULL)")
            .unwrap();
        for (index, migration) in schema::MIGRATIONS[..4].iter().enumerate() {
            client.batch_execute(migration).unwrap();
            client
                .execute(
                    "INSERT INTO purser_schema_version (version) VALUES ($1)",
                    &[&(index as i32 + 1)],
                )
                .unwrap();
        }
        let old_fingerprint = [5u8; 32];
        let sum = purser_store::record_sum_with_text(&record, "order-17", &old_fingerprint, 0);
        client
            .execute(
                "INSERT INTO idempotency (key, fingerprint, status, body, expires_at, pos, sum)
                 VALUES ('order-17', $1, 201, $2, $3, 0, $4)",
                &[
                    &&old_fingerprint[..],
                    &record.body,
                    &record.expires_at.micros(),
                    &sum,
                ],
            )
            .unwrap();
    });
    let upgraded = store.idempotency_record(&record.key).unwrap();
    assert_eq!(upgraded, Some(record.upgraded()));
    assert_eq!(
        upgraded.map(|r| (r.fingerprint, r.expires_at.micros())),
        Some(([5; 8], 9_000_000_001_000_000))
    );
    assert_eq!(store.idempotency_keys(0, 10).unwrap().len(), 1);
}

/// A record of schema 7 that fails its checksum is carried over damaged
/// by migration 8: the store opens, that key is refused on its own, and
/// the other record is served.
#[test]
fn a_damaged_record_stays_refused_after_the_migration_to_smaller_records() {
    let record_of = |key: &str| LegacyRecord {
        key: purser_store::key_hash(key),
        fingerprint: [6; 16],
        status: 201,
        body: b"{}".to_vec(),
        expires_at: Timestamp::from_micros(9_000_000_000_000_000),
    };
    let (damaged, sound) = (record_of("order-18"), record_of("order-19"));
    let store = make_with(|url| {
        let mut client = Client::connect(url, NoTls).unwrap();
        client
            .batch_execute("CREATE TABLE purser_schema_version (version INT NOT NULL)")
            .unwrap();
        for (index, migration) in schema::MIGRATIONS[..7].iter().enumerate() {
            client.batch_execute(migration).unwrap();
            client
                .execute(
                    "INSERT INTO purser_schema_version (version) VALUES ($1)",
                    &[&(index as i32 + 1)],
                )
                .unwrap();
        }
        for (record, sum_offset) in [(&damaged, 1), (&sound, 0)] {
            client
                .execute(
                    "INSERT INTO idempotency_record (key, fingerprint, status, body, expires_at, pos, sum)
                     VALUES ($1, $2, 201, $3, $4, 0, $5)",
                    &[
                        &&record.key[..],
                        &&record.fingerprint[..],
                        &record.body,
                        &record.expires_at.micros(),
                        &(purser_store::legacy_record_sum(record, 0) + sum_offset),
                    ],
                )
                .unwrap();
        }
    });
    assert_eq!(
        store.idempotency_record(&sound.key).unwrap(),
        Some(sound.upgraded())
    );
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
        [(damaged.key, false), (sound.key, true)]
    );
}

/// A settled object's row changed in the database: refused where read,
/// found by `verify`'s structure check.
#[test]
fn a_damaged_settled_row_is_refused_and_found() {
    let store = make();
    purser_store::conformance::damaged_settled_row(&*store, |seq| {
        Client::connect(&database_url(&store.name), NoTls)
            .unwrap()
            .execute(
                "UPDATE settled SET body = body || '\\x00'::bytea WHERE seq = $1",
                &[&(seq as i64)],
            )
            .unwrap();
    });
}
