//! The store's own tests: the conformance suite every backend runs, and
//! what is particular to this backend.

use super::*;

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
            snapshots: &[],
        })
        .unwrap();
    assert!(
        store
            .commit(Commit {
                entries: &journal[2..6],
                idempotency: &[],
                events: &[],
                snapshots: &[]
            })
            .is_err()
    );
    let count = store.replay(&mut |_| Ok(())).unwrap();
    assert_eq!(count, 3);
}

/// A database of schema version 4 (records by key text) migrates to
/// records by key hash: each record checked against its old checksum and
/// found by its key's hash after.
#[test]
fn records_by_key_text_migrate_to_key_hashes() {
    let record = IdempotencyRecord {
        key: purser_store::key_hash("order-17"),
        fingerprint: [5; 16],
        status: 201,
        body: b"{}".to_vec(),
        expires_at: Timestamp::from_micros(9_000_000_000_000_000),
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
    assert_eq!(
        store.idempotency_record(&record.key).unwrap(),
        Some(record.clone())
    );
    assert_eq!(store.idempotency_keys(0, 10).unwrap().len(), 1);
}
