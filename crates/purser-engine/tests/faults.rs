//! The engine under store faults: a commit that stalls past the request
//! timeout, a request that goes away, a committer that panics. A key's life
//! ends with its command's outcome, never with its request; a broken
//! committer stops the engine.
//!
//! The store is a real SQLite store behind a gate (commits wait while it is
//! closed) and a switch (the next commit panics): fault injection around the
//! real thing, not a mock.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use purser_core::{
    Account, AccountHandle, AccountId, Amount, Catalog, ChargeMode, Command, Credits, Entry,
    Metadata, Notation, Rejection, TierId, Timestamp,
};
use purser_engine::{
    Accepted, Actor, Busy, CommitObserver, Engine, EngineConfig, EventContext, IdempotencyKey,
    Options, Outcome, Read, Render, Rendered,
};
use purser_store::{
    ApiKeyRecord, Commit, EntryQuery, IdempotencyRecord, SettledKind, SettledRecord, Store,
    StoreError, StoredSnapshot, UsageQuery, UsageRow,
};
use purser_store_sqlite::SqliteStore;

#[derive(Debug)]
struct Faulty {
    inner: SqliteStore,
    closed: Mutex<bool>,
    opened: Condvar,
    panic_next: AtomicBool,
    /// Idempotency lookups fail (a store that does not answer them).
    lookups_fail: AtomicBool,
    /// Idempotency lookups made.
    lookups: std::sync::atomic::AtomicUsize,
    /// Milliseconds each idempotency lookup takes (a slow store).
    lookup_delay_ms: std::sync::atomic::AtomicU64,
}

impl Faulty {
    fn close(&self) {
        *self.closed.lock().unwrap() = true;
    }

    fn open(&self) {
        *self.closed.lock().unwrap() = false;
        self.opened.notify_all();
    }
}

impl Store for Faulty {
    fn commit(&self, commit: Commit<'_>) -> Result<(), StoreError> {
        let mut closed = self.closed.lock().unwrap();
        while *closed {
            closed = self.opened.wait(closed).unwrap();
        }
        drop(closed);
        if self.panic_next.swap(false, Ordering::SeqCst) {
            panic!("injected: the committer panics");
        }
        self.inner.commit(commit)
    }
    fn replay_after(
        &self,
        position: u64,
        visit: &mut dyn FnMut(u64, Entry) -> Result<(), StoreError>,
    ) -> Result<u64, StoreError> {
        self.inner.replay_after(position, visit)
    }
    fn snapshots(&self) -> Result<Vec<StoredSnapshot>, StoreError> {
        self.inner.snapshots()
    }
    fn scan(
        &self,
        visit: &mut dyn FnMut(purser_store::StoredRow<'_>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.inner.scan(visit)
    }
    fn witnesses(&self) -> Result<Vec<purser_store::Witness>, StoreError> {
        self.inner.witnesses()
    }
    fn accept_loss(
        &self,
        report: &purser_store::DamageReport,
        at: purser_core::Timestamp,
    ) -> Result<(), StoreError> {
        self.inner.accept_loss(report, at)
    }
    fn check_structures(
        &self,
        found: &mut dyn FnMut(purser_store::Damage),
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), StoreError> {
        self.inner.check_structures(found, progress)
    }
    fn incidents(&self) -> Result<Vec<(purser_core::Timestamp, String)>, StoreError> {
        self.inner.incidents()
    }
    fn entry(&self, account: AccountHandle, seq: u64) -> Result<Option<Entry>, StoreError> {
        self.inner.entry(account, seq)
    }
    fn entries(&self, query: &EntryQuery) -> Result<Vec<Entry>, StoreError> {
        self.inner.entries(query)
    }
    fn settled(
        &self,
        account: AccountHandle,
        seq: u64,
        as_of: u64,
    ) -> Result<Option<SettledRecord>, StoreError> {
        self.inner.settled(account, seq, as_of)
    }
    fn settled_page(
        &self,
        account: AccountHandle,
        kind: SettledKind,
        before_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<SettledRecord>, StoreError> {
        self.inner.settled_page(account, kind, before_seq, limit)
    }
    fn usage(&self, query: &UsageQuery) -> Result<Vec<UsageRow>, StoreError> {
        self.inner.usage(query)
    }
    fn idempotency_record(
        &self,
        key: &purser_core::KeyHash,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(
            self.lookup_delay_ms.load(Ordering::SeqCst),
        ));
        if self.lookups_fail.load(Ordering::SeqCst) {
            return Err(StoreError::Backend("injected: lookups fail".into()));
        }
        self.inner.idempotency_record(key)
    }
    fn events(
        &self,
        query: &purser_store::EventQuery,
    ) -> Result<Vec<purser_store::StoredEvent>, StoreError> {
        self.inner.events(query)
    }
    fn event(
        &self,
        id: purser_core::EventId,
    ) -> Result<Option<purser_store::StoredEvent>, StoreError> {
        self.inner.event(id)
    }
    fn last_event(&self) -> Result<u64, StoreError> {
        self.inner.last_event()
    }
    fn purge_events(&self, before: purser_core::Timestamp) -> Result<u64, StoreError> {
        self.inner.purge_events(before)
    }
    fn record_delivery(&self, delivery: &purser_store::DeliveryRecord) -> Result<(), StoreError> {
        self.inner.record_delivery(delivery)
    }
    fn deliveries(
        &self,
        endpoint: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<purser_store::DeliveryRecord>, StoreError> {
        self.inner.deliveries(endpoint, before, limit)
    }
    fn idempotency_keys(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<purser_store::StoredKey>, StoreError> {
        self.inner.idempotency_keys(after, limit)
    }
    fn purge_idempotency(&self, now: Timestamp) -> Result<u64, StoreError> {
        self.inner.purge_idempotency(now)
    }
    fn insert_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        self.inner.insert_api_key(key)
    }
    fn revoke_api_key(&self, id: &str, at: Timestamp) -> Result<bool, StoreError> {
        self.inner.revoke_api_key(id, at)
    }
    fn api_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        self.inner.api_keys()
    }
    fn setting(&self, name: &str) -> Result<Option<String>, StoreError> {
        self.inner.setting(name)
    }
    fn set_setting(&self, name: &str, value: &str) -> Result<(), StoreError> {
        self.inner.set_setting(name, value)
    }
    fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping()
    }
}

/// Answers as plain text: the entry an accepted command wrote, a refusal's
/// code, an account's available credits.
#[derive(Debug)]
struct Text;

impl Render for Text {
    fn accepted(&self, accepted: &Accepted<'_>) -> Rendered {
        let body = match accepted.receipt.primary {
            Some(index) => format!("entry {}", accepted.entries[index].seq),
            None => "done".to_owned(),
        }
        .into_bytes();
        Rendered {
            status: 201,
            remember: accepted.keyed.then(|| body.clone()),
            body,
        }
    }
    fn event(&self, event: &EventContext<'_>) -> Vec<u8> {
        event.event.kind.name().as_bytes().to_vec()
    }

    fn refused(&self, rejection: &Rejection) -> Rendered {
        Rendered {
            status: 400,
            body: rejection.code().as_bytes().to_vec(),
            remember: None,
        }
    }
    fn read(&self, _: Read, account: Option<&Account>, now: Timestamp) -> Rendered {
        let body = account.map_or("none".to_owned(), |a| a.balance(now).available.to_string());
        Rendered {
            status: 200,
            body: body.into_bytes(),
            remember: None,
        }
    }
    fn account(&self, account: &Account, _: Timestamp) -> Vec<u8> {
        account.id().as_str().as_bytes().to_vec()
    }
    fn recall_reads_store(&self, _: &[u8]) -> bool {
        false
    }
    fn recall(&self, remembered: &[u8], _: &dyn Store) -> Result<Vec<u8>, String> {
        Ok(remembered.to_vec())
    }
}

#[derive(Debug)]
struct Unobserved;

impl CommitObserver for Unobserved {
    fn observe_commit(&self, _: usize, _: usize, _: Duration) {}
}

const TIMEOUT: Duration = Duration::from_millis(300);

fn open(dir: &tempfile::TempDir) -> (Engine, Arc<Faulty>) {
    open_with(dir, false, Duration::from_secs(60), 100_000)
}

fn open_with(
    dir: &tempfile::TempDir,
    test_clock: bool,
    purge_interval: Duration,
    cache_keys: usize,
) -> (Engine, Arc<Faulty>) {
    let store = Arc::new(Faulty {
        inner: SqliteStore::open(dir.path()).unwrap(),
        closed: Mutex::new(false),
        opened: Condvar::new(),
        panic_next: AtomicBool::new(false),
        lookups_fail: AtomicBool::new(false),
        lookups: Default::default(),
        lookup_delay_ms: Default::default(),
    });
    let options = Options {
        config: EngineConfig {
            shards: 2,
            partitions: 8,
            queue_capacity: 1_000,
            batch_limit: 100,
            idempotency_retention_seconds: 86_400,
            idempotency_purge_interval: purge_interval,
            idempotency_cache_keys: cache_keys,
            snapshot_every_entries: 1_000_000,
            event_retention_seconds: 30 * 86_400,
            request_timeout: TIMEOUT,
            list_reads_per_second: 0,
            list_reads_burst: 1,
            portal_actions_per_minute: 0,
            portal_actions_burst: 1,
        },
        test_clock,
        accept_loss: false,
        catalog: Catalog::builtin(),
        render: Arc::new(Text),
        observer: Arc::new(Unobserved),
    };
    let (engine, _) = Engine::open(store.clone(), options).unwrap();
    (engine, store)
}

fn acme() -> AccountId {
    AccountId::parse("acme").unwrap()
}

async fn open_acme(engine: &Engine) {
    let opened = engine
        .run(
            Command::OpenAccount {
                id: acme(),
                name: None,
                tier: TierId::parse("starter").unwrap(),
                anchor: None,
                member_monthly_cap: None,
                metadata: Metadata::default(),
                low_balance_thresholds: None,
                auto_recharge: None,
            },
            None,
            Actor::System,
        )
        .await;
    assert!(
        matches!(opened, Outcome::Answered { status: 201, .. }),
        "{opened:?}"
    );
}

fn charge(credits: &str) -> Command {
    Command::Charge {
        account: acme(),
        amount: Amount::Credits(Credits::parse_positive(credits, Notation::String).unwrap()),
        member: None,
        mode: ChargeMode::Strict,
        metadata: Metadata::default(),
    }
}

fn key(name: &str) -> Option<IdempotencyKey> {
    Some(IdempotencyKey::new(name, [7; 8]))
}

async fn available(engine: &Engine) -> String {
    let read = engine.read(Read::Balance(acme())).await.unwrap();
    String::from_utf8(read.body).unwrap()
}

/// Retries a keyed command until it is answered (or 10 s pass).
async fn answered(engine: &Engine, command: fn() -> Command, name: &str) -> (u16, Vec<u8>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match engine.run(command(), key(name), Actor::System).await {
            Outcome::Answered { status, body } => return (status, body),
            Outcome::KeyInUse | Outcome::Pending if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => panic!("no answer for {name}: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_charge_that_times_out_is_applied_once_and_its_retry_answers_it() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, store) = open(&dir);
    open_acme(&engine).await;
    store.close();
    let first = engine.run(charge("10"), key("k1"), Actor::System).await;
    assert!(matches!(first, Outcome::Pending), "{first:?}");
    // Still running: the contract's 409, not a second charge.
    let retry = engine.run(charge("10"), key("k1"), Actor::System).await;
    assert!(matches!(retry, Outcome::KeyInUse), "{retry:?}");
    store.open();
    let (status, body) = answered(&engine, || charge("10"), "k1").await;
    assert_eq!(status, 201);
    assert_eq!(available(&engine).await, "90", "charged exactly once");
    assert_eq!(
        answered(&engine, || charge("10"), "k1").await,
        (status, body)
    );
    assert_eq!(available(&engine).await, "90");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_charge_whose_request_went_away_still_ends_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, store) = open(&dir);
    open_acme(&engine).await;
    store.close();
    // The request is dropped while its command waits on the store (a
    // client that hung up): its key is not given up.
    drop(engine.start(charge("10"), key("k2"), Actor::System).await);
    store.open();
    let (status, _) = answered(&engine, || charge("10"), "k2").await;
    assert_eq!(status, 201, "the retry gets the charge's answer");
    assert_eq!(available(&engine).await, "90", "charged exactly once");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refusal_releases_its_key_once_it_is_known() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, store) = open(&dir);
    open_acme(&engine).await;
    store.close();
    let first = engine.run(charge("500"), key("k3"), Actor::System).await;
    assert!(matches!(first, Outcome::Pending), "{first:?}");
    store.open();
    let (status, body) = answered(&engine, || charge("500"), "k3").await;
    assert_eq!(
        (status, body.as_slice()),
        (400, &b"insufficient_credits"[..])
    );
    // Released, not remembered: the key runs its next command afresh (the
    // test's fingerprints are all alike, so only a remembered answer could
    // stop it).
    let (status, _) = answered(&engine, || charge("10"), "k3").await;
    assert_eq!(status, 201);
    assert_eq!(available(&engine).await, "90");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_committer_that_panics_stops_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, store) = open(&dir);
    open_acme(&engine).await;
    store.panic_next.store(true, Ordering::SeqCst);
    // The panic may come after the commit: the outcome is not known.
    let charged = engine.run(charge("10"), key("k4"), Actor::System).await;
    assert!(matches!(charged, Outcome::Pending), "{charged:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !engine.is_poisoned() {
        assert!(Instant::now() < deadline, "the engine did not stop");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let after = engine.run(charge("10"), key("k4"), Actor::System).await;
    assert!(
        matches!(after, Outcome::Busy(Busy::Unavailable)),
        "{after:?}"
    );
    assert!(engine.read(Read::Balance(acme())).await.is_err());
}

/// Expired idempotency records leave the store and memory while the engine
/// serves (its janitor), not only at the next start: after the retention,
/// the store holds none of them and a key is new again.
#[tokio::test(flavor = "multi_thread")]
async fn expired_keys_are_purged_while_serving() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, store) = open_with(&dir, true, Duration::from_millis(100), 100_000);
    open_acme(&engine).await;
    for name in ["p1", "p2", "p3"] {
        assert_eq!(answered(&engine, || charge("1"), name).await.0, 201);
    }
    let stored = || store.inner.idempotency_keys(0, 100).unwrap().len();
    assert_eq!(stored(), 3);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(stored(), 3, "nothing is purged before its retention");
    engine.advance_test_clock(2 * 86_400).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while stored() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stored(), 0, "the janitor purged the expired records");
    // Forgotten in memory too: the key runs a new charge.
    assert_eq!(answered(&engine, || charge("1"), "p1").await.0, 201);
    assert_eq!(available(&engine).await, "96");
}

/// Waits until the engine learnt the keys the store held when it opened.
async fn learnt(engine: &Engine, keys: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while engine.idempotency_keys().0 < keys {
        assert!(
            Instant::now() < deadline,
            "keys not learnt: {:?}",
            engine.idempotency_keys()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Past the cache, a key's answer lives in the store only: a retry reads it
/// back (the same answer, nothing charged again), another request under it
/// is still refused, and memory holds the cache's worth of answers.
#[tokio::test(flavor = "multi_thread")]
async fn keys_beyond_the_cache_are_answered_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, store) = open_with(&dir, false, Duration::from_secs(60), 64);
    open_acme(&engine).await;
    let mut first = Vec::new();
    for n in 0..300 {
        first.push(answered(&engine, || charge("0.1"), &format!("c{n}")).await);
    }
    let (known, hot) = engine.idempotency_keys();
    assert_eq!(known, 300);
    assert!(hot <= 64 + 64, "answers in memory: {hot}");
    let before = store.lookups.load(Ordering::SeqCst);
    for (n, answer) in first.iter().enumerate() {
        assert_eq!(
            &answered(&engine, || charge("0.1"), &format!("c{n}")).await,
            answer
        );
    }
    assert!(
        store.lookups.load(Ordering::SeqCst) - before >= 300 - 128,
        "cold keys were read back from the store"
    );
    assert_eq!(available(&engine).await, "70", "each key charged once");
    // Another request under a cold key: refused after the lookup.
    let other = engine
        .run(
            charge("0.2"),
            Some(IdempotencyKey::new("c0", [8; 8])),
            Actor::System,
        )
        .await;
    assert!(matches!(other, Outcome::KeyReused), "{other:?}");
}

/// Retries of one cold key sent at once, while the store is slow to
/// answer the first one's lookup: every one gets the first answer (they
/// wait for the lookup), none is refused as "still running", and nothing
/// is charged again.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_retries_of_a_cold_key_all_get_its_answer() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, store) = open_with(&dir, false, Duration::from_secs(60), 64);
    open_acme(&engine).await;
    let mut first = Vec::new();
    for n in 0..200 {
        first.push(answered(&engine, || charge("0.1"), &format!("r{n}")).await);
    }
    store.lookup_delay_ms.store(50, Ordering::SeqCst);
    let before = available(&engine).await;
    let lookups = store.lookups.load(Ordering::SeqCst);
    let retries: Vec<_> = (0..8)
        .map(|_| {
            let engine = engine.clone();
            tokio::spawn(async move { engine.run(charge("0.1"), key("r0"), Actor::System).await })
        })
        .collect();
    for retry in retries {
        match retry.await.unwrap() {
            Outcome::Answered { status, body } => assert_eq!((status, body), first[0]),
            other => panic!("a retry of a cold key: {other:?}"),
        }
    }
    assert!(
        store.lookups.load(Ordering::SeqCst) > lookups,
        "r0 was cold: its answer came from the store"
    );
    assert_eq!(available(&engine).await, before, "nothing charged again");
}

/// A store that cannot answer a lookup gets the request refused as
/// unavailable (not run, not remembered): the key is let go, and answers
/// once the store does.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_lookup_lets_its_key_go() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, store) = open_with(&dir, false, Duration::from_secs(60), 64);
    open_acme(&engine).await;
    let mut first = Vec::new();
    for n in 0..200 {
        first.push(answered(&engine, || charge("0.1"), &format!("f{n}")).await);
    }
    store.lookups_fail.store(true, Ordering::SeqCst);
    let mut failed = 0;
    for (n, answer) in first.iter().enumerate() {
        match engine
            .run(charge("0.1"), key(&format!("f{n}")), Actor::System)
            .await
        {
            Outcome::Busy(Busy::Unavailable) => failed += 1,
            // A key still in the cache needs no lookup.
            Outcome::Answered { status, body } => assert_eq!(&(status, body), answer),
            other => panic!("f{n}: {other:?}"),
        }
    }
    assert!(failed >= 200 - 128, "{failed} lookups failed");
    store.lookups_fail.store(false, Ordering::SeqCst);
    for (n, answer) in first.iter().enumerate() {
        assert_eq!(
            &answered(&engine, || charge("0.1"), &format!("f{n}")).await,
            answer
        );
    }
    assert_eq!(available(&engine).await, "80");
}

/// A reopened engine answers every remembered key at once, without reading
/// them at start: until it has learnt the stored keys (in the background),
/// it asks the store about every key it does not know.
#[tokio::test(flavor = "multi_thread")]
async fn a_reopened_engine_answers_every_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = Vec::new();
    {
        let (engine, _store) = open_with(&dir, false, Duration::from_secs(60), 64);
        open_acme(&engine).await;
        for n in 0..150 {
            first.push(answered(&engine, || charge("0.1"), &format!("r{n}")).await);
        }
    }
    // The first engine's threads let the store go once their queues close.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (engine, store) = loop {
        match std::panic::catch_unwind(|| open_with(&dir, false, Duration::from_secs(60), 64)) {
            Ok(opened) => break opened,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(_) => panic!("the store was not let go"),
        }
    };
    for (n, answer) in first.iter().enumerate() {
        assert_eq!(
            &answered(&engine, || charge("0.1"), &format!("r{n}")).await,
            answer
        );
    }
    learnt(&engine, 150).await;
    let before = store.lookups.load(Ordering::SeqCst);
    assert_eq!(answered(&engine, || charge("0.1"), "new").await.0, 201);
    assert_eq!(
        store.lookups.load(Ordering::SeqCst),
        before,
        "once learnt, a new key needs no lookup"
    );
    assert_eq!(available(&engine).await, "84.9");
}
