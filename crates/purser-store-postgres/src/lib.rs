//! purser-store-postgres: the PostgreSQL store.
//!
//! The same tables as the embedded store: `entry` clustered by
//! `(account, seq)` with the commit order in `pos` and the usage facts in
//! columns; idempotency records, API keys, settings, partition snapshots.
//! A group commit is one transaction (`synchronous_commit` left on) with
//! every entry in one multi-row `INSERT … SELECT FROM unnest(…)`.
//!
//! Exactly one writer per database: a lease row with a fencing epoch. Opening
//! a store takes the lease (bumping the epoch) only when the last one ran out;
//! the writer renews it every second and in every commit, which checks the
//! epoch inside its own transaction. A writer whose lease ran out (it was
//! paused, or cut off) is fenced: it can never commit again.
//!
//! This crate holds no business rules.

mod lease;
mod schema;
mod usage;

use std::sync::{Mutex, MutexGuard};

use lease::LEASE_SECONDS;

use postgres::error::SqlState;
use postgres::{Client, NoTls};
use purser_core::{AccountHandle, Entry, Timestamp};
use purser_store::{
    ApiKeyRecord, Commit, EntryQuery, IdempotencyRecord, Store, StoreError, StoredSnapshot,
    UsageQuery, UsageRow, decode_entry, encode_entry, usage_of,
};

pub struct PostgresStore {
    url: String,
    /// The fencing epoch this writer holds the lease under.
    epoch: i64,
    /// Set once a renewal finds the lease gone: no commit may follow.
    fenced: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// `None` only while the store is being dropped.
    writer: Mutex<Option<Client>>,
    readers: Mutex<Vec<Client>>,
}

impl Drop for PostgresStore {
    /// A synchronous client owns a small runtime, which must not be dropped
    /// on an async thread: the clients are dropped on a thread of their own.
    /// Hands the lease back (a standby can take over at once), then closes.
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let writer = lock(&self.writer).take();
        let readers = std::mem::take(&mut *lock(&self.readers));
        let epoch = self.epoch;
        // Not joined: with the database unreachable this could take as long
        // as TCP does to give up, and the drop may happen on an async thread.
        // The lease runs out by itself if the hand-back never lands.
        let _ = std::thread::Builder::new()
            .name("purser-lease-release".into())
            .spawn(move || {
                if let Some(mut writer) = writer {
                    lease::hand_back(&mut writer, epoch);
                }
                drop(readers);
            });
    }
}

/// The writer connection; present for the store's whole life.
fn writer<'a>(guard: &'a mut MutexGuard<'_, Option<Client>>) -> &'a mut Client {
    guard
        .as_mut()
        .expect("the writer connection lives as long as the store")
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: only its host part is shown.
        let host = self.url.rsplit_once('@').map_or("", |(_, host)| host);
        f.debug_struct("PostgresStore")
            .field("host", &host)
            .finish_non_exhaustive()
    }
}

fn backend(error: postgres::Error) -> StoreError {
    if error.code() == Some(&SqlState::UNIQUE_VIOLATION) {
        return StoreError::Duplicate;
    }
    StoreError::Backend(error.to_string())
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl PostgresStore {
    /// Connects, migrates, and takes the writer lease; refuses with
    /// [`StoreError::LeaseHeld`] while another purser's lease is current.
    /// `holder` names this process in the lease row.
    pub fn open(url: &str, holder: &str) -> Result<PostgresStore, StoreError> {
        let mut writer = Client::connect(url, NoTls).map_err(backend)?;
        // A writer paused inside a transaction must not keep the lease row
        // locked forever: PostgreSQL ends such a transaction after a while.
        writer
            .batch_execute(&format!(
                "SET idle_in_transaction_session_timeout = '{LEASE_SECONDS}s'"
            ))
            .map_err(backend)?;
        schema::migrate(&mut writer)?;
        let mut lease = Client::connect(url, NoTls).map_err(backend)?;
        let (epoch, locked) = lease::take(&mut writer, &mut lease, holder)?;
        let fenced = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        lease::spawn_renewal(url, lease, locked, epoch, fenced.clone(), stop.clone())?;
        Ok(PostgresStore {
            url: url.to_owned(),
            epoch,
            fenced,
            stop,
            writer: Mutex::new(Some(writer)),
            readers: Mutex::new(Vec::new()),
        })
    }

    /// The fencing epoch of this writer.
    pub fn epoch(&self) -> i64 {
        self.epoch
    }

    fn read<T>(
        &self,
        work: impl FnOnce(&mut Client) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut client = match lock(&self.readers).pop() {
            Some(client) if !client.is_closed() => client,
            _ => Client::connect(&self.url, NoTls).map_err(backend)?,
        };
        let result = work(&mut client);
        let mut pool = lock(&self.readers);
        if pool.len() < 8 && !client.is_closed() {
            pool.push(client);
        }
        result
    }
}

fn decode(account: i64, seq: i64, body: &[u8]) -> Result<Entry, StoreError> {
    decode_entry(body).map_err(|error| StoreError::Corrupt {
        account: AccountHandle::from_raw(account as u64),
        seq: seq as u64,
        error,
    })
}

/// The columns of a batch of entries, for one `unnest` insert.
#[derive(Default)]
struct Columns {
    account: Vec<i64>,
    seq: Vec<i64>,
    pos: Vec<i64>,
    kind: Vec<&'static str>,
    at: Vec<i64>,
    body: Vec<Vec<u8>>,
    task: Vec<Option<String>>,
    member: Vec<Option<String>>,
    credits: Vec<Option<i64>>,
    parts: [Vec<Option<i64>>; 5],
    debit_seq: Vec<Option<i64>>,
}

impl PostgresStore {
    /// Marks this writer fenced for good: no commit may follow.
    fn fence(&self) -> StoreError {
        self.fenced
            .store(true, std::sync::atomic::Ordering::Relaxed);
        StoreError::Fenced
    }

    /// Checks (and renews) the lease: [`StoreError::Fenced`] if it is gone.
    fn confirm_lease(&self) -> Result<(), StoreError> {
        let mut guard = lock(&self.writer);
        if !lease::renew(writer(&mut guard), self.epoch).map_err(backend)? {
            return Err(self.fence());
        }
        Ok(())
    }

    /// The usual group commit (no snapshot) as one statement, so one round
    /// trip: the lease check, the entries and the idempotency records in
    /// data-modifying CTEs that insert nothing unless the lease is still ours.
    fn commit_in_one_statement(&self, commit: Commit<'_>) -> Result<(), StoreError> {
        let columns = Columns::of(commit.entries, 1);
        let [budget, rollover, package, promo, debt] = &columns.parts;
        let keys = KeyColumns::of(commit.idempotency);
        let mut guard = lock(&self.writer);
        let row = writer(&mut guard)
            .query_one(
                "WITH lease AS (
                     UPDATE writer_lease SET expires_at = now() + make_interval(secs => $17)
                      WHERE id = 1 AND epoch = $16 AND expires_at >= now()
                  RETURNING epoch
                 ), base AS (
                     SELECT COALESCE(MAX(pos), 0) AS pos FROM entry
                 ), entries AS (
                     INSERT INTO entry (account, seq, pos, type, at, body, task, member, credits,
                                        budget, rollover, package, promo, debt, debit_seq)
                     SELECT u.account, u.seq, base.pos + u.n, u.type, u.at, u.body, u.task, u.member,
                            u.credits, u.budget, u.rollover, u.package, u.promo, u.debt, u.debit_seq
                       FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::text[], $5::bigint[],
                                   $6::bytea[], $7::text[], $8::text[], $9::bigint[], $10::bigint[],
                                   $11::bigint[], $12::bigint[], $13::bigint[], $14::bigint[], $15::bigint[])
                            AS u(account, seq, n, type, at, body, task, member, credits,
                                 budget, rollover, package, promo, debt, debit_seq),
                            base, lease
                     RETURNING 1
                 ), keys AS (
                     INSERT INTO idempotency (key, fingerprint, status, body, expires_at)
                     SELECT k.key, k.fingerprint, k.status, k.body, k.expires_at
                       FROM unnest($18::text[], $19::bytea[], $20::int[], $21::bytea[], $22::bigint[])
                            AS k(key, fingerprint, status, body, expires_at),
                            lease
                     ON CONFLICT (key) DO UPDATE SET fingerprint = excluded.fingerprint,
                        status = excluded.status, body = excluded.body, expires_at = excluded.expires_at
                     RETURNING 1
                 )
                 SELECT (SELECT count(*) FROM lease), (SELECT count(*) FROM entries), (SELECT count(*) FROM keys)",
                &[
                    &columns.account,
                    &columns.seq,
                    &columns.pos,
                    &columns.kind,
                    &columns.at,
                    &columns.body,
                    &columns.task,
                    &columns.member,
                    &columns.credits,
                    budget,
                    rollover,
                    package,
                    promo,
                    debt,
                    &columns.debit_seq,
                    &self.epoch,
                    &(LEASE_SECONDS as f64),
                    &keys.keys,
                    &keys.prints,
                    &keys.statuses,
                    &keys.bodies,
                    &keys.expiries,
                ],
            )
            .map_err(backend)?;
        let (lease, entries, records): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
        if lease == 0 {
            return Err(self.fence());
        }
        if entries != commit.entries.len() as i64 || records != commit.idempotency.len() as i64 {
            return Err(StoreError::Backend(format!(
                "commit wrote {entries} entries and {records} keys of {} and {}",
                commit.entries.len(),
                commit.idempotency.len()
            )));
        }
        Ok(())
    }
}

/// The columns of a batch of idempotency records, for one `unnest` insert.
struct KeyColumns<'a> {
    keys: Vec<&'a str>,
    prints: Vec<&'a [u8]>,
    statuses: Vec<i32>,
    bodies: Vec<&'a [u8]>,
    expiries: Vec<i64>,
}

impl<'a> KeyColumns<'a> {
    fn of(records: &'a [IdempotencyRecord]) -> KeyColumns<'a> {
        KeyColumns {
            keys: records.iter().map(|r| r.key.as_str()).collect(),
            prints: records.iter().map(|r| &r.fingerprint[..]).collect(),
            statuses: records.iter().map(|r| i32::from(r.status)).collect(),
            bodies: records.iter().map(|r| r.body.as_slice()).collect(),
            expiries: records.iter().map(|r| r.expires_at.micros()).collect(),
        }
    }
}

impl Columns {
    /// The columns of `entries`, positions counted from `first_pos`.
    fn of(entries: &[Entry], first_pos: i64) -> Columns {
        let mut columns = Columns::default();
        for (offset, entry) in entries.iter().enumerate() {
            let mut body = Vec::with_capacity(128);
            encode_entry(entry, &mut body);
            let usage = usage_of(entry);
            columns.account.push(entry.account.raw() as i64);
            columns.seq.push(entry.seq as i64);
            columns.pos.push(first_pos + offset as i64);
            columns.kind.push(entry.body.type_name());
            columns.at.push(entry.at.micros());
            columns.body.push(body);
            columns
                .task
                .push(usage.as_ref().and_then(|u| u.task.clone()));
            columns
                .member
                .push(usage.as_ref().and_then(|u| u.member.clone()));
            columns.credits.push(usage.as_ref().map(|u| u.credits));
            for (index, part) in columns.parts.iter_mut().enumerate() {
                part.push(usage.as_ref().map(|u| u.by_kind[index]));
            }
            columns.debit_seq.push(
                usage
                    .as_ref()
                    .filter(|u| !u.is_charge)
                    .map(|u| u.charge_seq as i64),
            );
        }
        columns
    }
}

impl Store for PostgresStore {
    fn commit(&self, commit: Commit<'_>) -> Result<(), StoreError> {
        if self.fenced.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(StoreError::Fenced);
        }
        if commit.entries.is_empty() && commit.idempotency.is_empty() && commit.snapshots.is_empty()
        {
            // Reads and refusals: answered only once the lease is known to
            // be ours after they arrived, so a writer that was paused and
            // lost its lease never answers from its stale memory.
            return self.confirm_lease();
        }
        if commit.snapshots.is_empty() {
            return self.commit_in_one_statement(commit);
        }
        let mut guard = lock(&self.writer);
        let mut transaction = writer(&mut guard).transaction().map_err(backend)?;
        // Fencing: the lease row, checked and renewed inside the commit.
        if !lease::renew(&mut transaction, self.epoch).map_err(backend)? {
            return Err(self.fence());
        }
        let before: i64 = transaction
            .query_one("SELECT COALESCE(MAX(pos), 0) FROM entry", &[])
            .map_err(backend)?
            .get(0);
        for snapshot in commit.snapshots {
            transaction
                .execute(
                    "INSERT INTO snapshot (partition, position, body) VALUES ($1, $2, $3)
                     ON CONFLICT (partition) DO UPDATE SET position = excluded.position, body = excluded.body",
                    &[&i32::from(snapshot.partition), &before, &snapshot.body],
                )
                .map_err(backend)?;
        }
        if !commit.entries.is_empty() {
            let columns = Columns::of(commit.entries, before + 1);
            let [budget, rollover, package, promo, debt] = &columns.parts;
            transaction
                .execute(
                    "INSERT INTO entry (account, seq, pos, type, at, body, task, member, credits,
                                        budget, rollover, package, promo, debt, debit_seq)
                     SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::text[], $5::bigint[],
                                          $6::bytea[], $7::text[], $8::text[], $9::bigint[], $10::bigint[],
                                          $11::bigint[], $12::bigint[], $13::bigint[], $14::bigint[], $15::bigint[])",
                    &[
                        &columns.account,
                        &columns.seq,
                        &columns.pos,
                        &columns.kind,
                        &columns.at,
                        &columns.body,
                        &columns.task,
                        &columns.member,
                        &columns.credits,
                        budget,
                        rollover,
                        package,
                        promo,
                        debt,
                        &columns.debit_seq,
                    ],
                )
                .map_err(backend)?;
        }
        if !commit.idempotency.is_empty() {
            let keys = KeyColumns::of(commit.idempotency);
            transaction
                .execute(
                    "INSERT INTO idempotency (key, fingerprint, status, body, expires_at)
                     SELECT * FROM unnest($1::text[], $2::bytea[], $3::int[], $4::bytea[], $5::bigint[])
                     ON CONFLICT (key) DO UPDATE SET fingerprint = excluded.fingerprint, status = excluded.status,
                                                     body = excluded.body, expires_at = excluded.expires_at",
                    &[&keys.keys, &keys.prints, &keys.statuses, &keys.bodies, &keys.expiries],
                )
                .map_err(backend)?;
        }
        transaction.commit().map_err(backend)
    }

    fn replay_after(
        &self,
        position: u64,
        visit: &mut dyn FnMut(u64, Entry) -> Result<(), StoreError>,
    ) -> Result<u64, StoreError> {
        self.read(|client| {
            let mut transaction = client.transaction().map_err(backend)?;
            let portal = transaction
                .bind(
                    "SELECT pos, account, seq, body FROM entry WHERE pos > $1 ORDER BY pos",
                    &[&(position as i64)],
                )
                .map_err(backend)?;
            let mut count = 0;
            loop {
                let rows = transaction.query_portal(&portal, 10_000).map_err(backend)?;
                if rows.is_empty() {
                    break;
                }
                for row in rows {
                    let pos: i64 = row.get(0);
                    let body: &[u8] = row.get(3);
                    visit(pos as u64, decode(row.get(1), row.get(2), body)?)?;
                    count += 1;
                }
            }
            Ok(count)
        })
    }

    fn snapshots(&self) -> Result<Vec<StoredSnapshot>, StoreError> {
        self.read(|client| {
            let rows = client
                .query(
                    "SELECT partition, position, body FROM snapshot ORDER BY partition",
                    &[],
                )
                .map_err(backend)?;
            Ok(rows
                .iter()
                .map(|row| StoredSnapshot {
                    partition: row.get::<_, i32>(0) as u16,
                    position: row.get::<_, i64>(1) as u64,
                    body: row.get(2),
                })
                .collect())
        })
    }

    fn entry(&self, account: AccountHandle, seq: u64) -> Result<Option<Entry>, StoreError> {
        self.read(|client| {
            let row = client
                .query_opt(
                    "SELECT body FROM entry WHERE account = $1 AND seq = $2",
                    &[&(account.raw() as i64), &(seq as i64)],
                )
                .map_err(backend)?;
            row.map(|row| decode(account.raw() as i64, seq as i64, row.get(0)))
                .transpose()
        })
    }

    fn entries(&self, query: &EntryQuery) -> Result<Vec<Entry>, StoreError> {
        self.read(|client| {
            let types: Vec<&str> = query.types.to_vec();
            let rows = client
                .query(
                    "SELECT seq, body FROM entry
                     WHERE account = $1 AND seq < $2 AND (cardinality($3::text[]) = 0 OR type = ANY($3))
                     ORDER BY seq DESC LIMIT $4",
                    &[
                        &(query.account.raw() as i64),
                        &query.before_seq.map_or(i64::MAX, |seq| seq as i64),
                        &types,
                        &(query.limit as i64),
                    ],
                )
                .map_err(backend)?;
            rows.iter()
                .map(|row| decode(query.account.raw() as i64, row.get(0), row.get(1)))
                .collect()
        })
    }

    fn usage(&self, query: &UsageQuery) -> Result<Vec<UsageRow>, StoreError> {
        self.read(|client| usage::usage(client, query))
    }

    fn idempotency_records(&self, now: Timestamp) -> Result<Vec<IdempotencyRecord>, StoreError> {
        self.read(|client| {
            let rows = client
                .query(
                    "SELECT key, fingerprint, status, body, expires_at FROM idempotency
                     WHERE expires_at > $1 ORDER BY expires_at, key",
                    &[&now.micros()],
                )
                .map_err(backend)?;
            Ok(rows
                .iter()
                .map(|row| {
                    let fingerprint: Vec<u8> = row.get(1);
                    IdempotencyRecord {
                        key: row.get(0),
                        fingerprint: fingerprint.try_into().unwrap_or([0; 32]),
                        status: row.get::<_, i32>(2) as u16,
                        body: row.get(3),
                        expires_at: Timestamp::from_micros(row.get(4)),
                    }
                })
                .collect())
        })
    }

    fn purge_idempotency(&self, now: Timestamp) -> Result<u64, StoreError> {
        let mut guard = lock(&self.writer);
        writer(&mut guard)
            .execute(
                "DELETE FROM idempotency WHERE expires_at <= $1",
                &[&now.micros()],
            )
            .map_err(backend)
    }

    fn insert_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        let mut guard = lock(&self.writer);
        writer(&mut guard)
            .execute(
                "INSERT INTO api_key (id, secret_hash, scopes, created_at, revoked_at) VALUES ($1, $2, $3, $4, $5)",
                &[
                    &key.id,
                    &&key.secret_hash[..],
                    &key.scopes.join(" "),
                    &key.created_at.micros(),
                    &key.revoked_at.map(|t| t.micros()),
                ],
            )
            .map_err(backend)?;
        Ok(())
    }

    fn revoke_api_key(&self, id: &str, at: Timestamp) -> Result<bool, StoreError> {
        let mut guard = lock(&self.writer);
        let changed = writer(&mut guard)
            .execute(
                "UPDATE api_key SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1",
                &[&id, &at.micros()],
            )
            .map_err(backend)?;
        Ok(changed > 0)
    }

    fn api_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        self.read(|client| {
            let rows = client
                .query(
                    "SELECT id, secret_hash, scopes, created_at, revoked_at FROM api_key ORDER BY created_at, id",
                    &[],
                )
                .map_err(backend)?;
            Ok(rows
                .iter()
                .map(|row| {
                    let hash: Vec<u8> = row.get(1);
                    let scopes: String = row.get(2);
                    ApiKeyRecord {
                        id: row.get(0),
                        secret_hash: hash.try_into().unwrap_or([0; 32]),
                        scopes: scopes.split_whitespace().map(str::to_owned).collect(),
                        created_at: Timestamp::from_micros(row.get(3)),
                        revoked_at: row.get::<_, Option<i64>>(4).map(Timestamp::from_micros),
                    }
                })
                .collect())
        })
    }

    fn setting(&self, name: &str) -> Result<Option<String>, StoreError> {
        self.read(|client| {
            let row = client
                .query_opt("SELECT value FROM setting WHERE name = $1", &[&name])
                .map_err(backend)?;
            Ok(row.map(|row| row.get(0)))
        })
    }

    fn set_setting(&self, name: &str, value: &str) -> Result<(), StoreError> {
        let mut guard = lock(&self.writer);
        writer(&mut guard)
            .execute(
                "INSERT INTO setting (name, value) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                &[&name, &value],
            )
            .map_err(backend)?;
        Ok(())
    }

    fn ping(&self) -> Result<(), StoreError> {
        self.read(|client| client.simple_query("SELECT 1").map(|_| ()).map_err(backend))
    }

    fn hand_back(&self) {
        self.fenced
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let mut guard = lock(&self.writer);
        lease::hand_back(writer(&mut guard), self.epoch);
    }

    fn is_fenced(&self) -> bool {
        self.fenced.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
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
                snapshots: &[],
            })
            .unwrap();
        assert!(
            store
                .commit(Commit {
                    entries: &journal[2..6],
                    idempotency: &[],
                    snapshots: &[]
                })
                .is_err()
        );
        let count = store.replay(&mut |_| Ok(())).unwrap();
        assert_eq!(count, 3);
    }
}
