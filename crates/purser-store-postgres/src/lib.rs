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

use std::sync::{Mutex, MutexGuard};

use postgres::error::SqlState;
use postgres::{Client, NoTls};
use purser_core::{AccountHandle, Entry, Timestamp};
use purser_store::{
    ApiKeyRecord, Commit, EntryQuery, GroupBy, IdempotencyRecord, KIND_KEYS, Store, StoreError,
    StoredSnapshot, UsageQuery, UsageRow, UsageTotals, day_key, decode_entry, encode_entry,
    usage_of,
};

/// Forward-only migrations; `MIGRATIONS[i]` brings the schema to version `i + 1`.
const MIGRATIONS: &[&str] = &[
    r#"
    CREATE TABLE entry (
        account   BIGINT NOT NULL,
        seq       BIGINT NOT NULL,
        pos       BIGINT NOT NULL,
        type      TEXT   NOT NULL,
        at        BIGINT NOT NULL,
        body      BYTEA  NOT NULL,
        task      TEXT,
        member    TEXT,
        credits   BIGINT,
        budget    BIGINT,
        rollover  BIGINT,
        package   BIGINT,
        promo     BIGINT,
        debt      BIGINT,
        debit_seq BIGINT,
        PRIMARY KEY (account, seq)
    );
    CREATE UNIQUE INDEX entry_by_pos ON entry (pos);
    CREATE TABLE idempotency (
        key         TEXT   PRIMARY KEY,
        fingerprint BYTEA  NOT NULL,
        status      INT    NOT NULL,
        body        BYTEA  NOT NULL,
        expires_at  BIGINT NOT NULL
    );
    CREATE INDEX idempotency_by_expiry ON idempotency (expires_at);
    CREATE TABLE api_key (
        id          TEXT   PRIMARY KEY,
        secret_hash BYTEA  NOT NULL UNIQUE,
        scopes      TEXT   NOT NULL,
        created_at  BIGINT NOT NULL,
        revoked_at  BIGINT
    );
    CREATE TABLE setting (
        name  TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE snapshot (
        partition INT    PRIMARY KEY,
        position  BIGINT NOT NULL,
        body      BYTEA  NOT NULL
    );
"#,
    r#"
    CREATE TABLE writer_lease (
        id         INT         PRIMARY KEY CHECK (id = 1),
        epoch      BIGINT      NOT NULL,
        holder     TEXT        NOT NULL,
        expires_at TIMESTAMPTZ NOT NULL
    );
    INSERT INTO writer_lease (id, epoch, holder, expires_at) VALUES (1, 0, '', now());
"#,
    // Whether the lease's holder holds the writer's advisory lock (see
    // WRITER_LOCK): only then does a free lock prove the holder is gone.
    r#"
    ALTER TABLE writer_lease ADD COLUMN locked BOOLEAN NOT NULL DEFAULT false;
"#,
];

/// How long a writer's lease lasts without renewal; renewed every half
/// second and by every commit. A standby takes over once it has run out.
const LEASE_SECONDS: i64 = 5;

/// How often the lease thread renews the lease.
const RENEW_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// A lease not renewed for this long, whose holder's advisory lock is free,
/// belongs to a process that is gone. (A live holder renews every half
/// second, so its lease always has more than `LEASE_SECONDS - 1` to run.)
const SILENT_SECONDS: i64 = 1;

/// Serializes concurrent migrations of several purser processes.
const MIGRATION_LOCK: i64 = 0x7075_7273_6572;

/// A session-level advisory lock the writer holds beside its lease, on the
/// lease connection: PostgreSQL drops it the moment the holder's process is
/// gone (its connections close), so a new purser that gets it while the
/// lease row says its holder held it (`locked`) knows the holder is dead
/// and takes over at once instead of waiting for the lease to run out. A
/// holder that is merely paused keeps its connections, and so its lock: it
/// is fenced by the lease as before. A writer that took over from a paused
/// one (whose session still held the lock) takes the lock when it comes
/// free and only then marks the lease `locked`.
const WRITER_LOCK: i64 = 0x7075_7273_6572_0001;

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
        let _ = std::thread::Builder::new().name("purser-lease-release".into()).spawn(move || {
            if let Some(mut writer) = writer {
                let _ = writer.execute(
                    "UPDATE writer_lease SET expires_at = now() - interval '1 second' WHERE id = 1 AND epoch = $1",
                    &[&epoch],
                );
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
        migrate(&mut writer)?;
        let mut lease = Client::connect(url, NoTls).map_err(backend)?;
        let locked = try_writer_lock(&mut lease);
        let epoch: Option<i64> = writer
            .query_opt(
                "UPDATE writer_lease
                    SET epoch = epoch + 1, holder = $1, expires_at = now() + make_interval(secs => $2),
                        locked = $3
                  WHERE id = 1 AND (expires_at < now() OR holder = $1
                        OR ($3 AND locked AND expires_at < now() + make_interval(secs => $4)))
              RETURNING epoch",
                &[
                    &holder,
                    &(LEASE_SECONDS as f64),
                    &locked,
                    &((LEASE_SECONDS - SILENT_SECONDS) as f64),
                ],
            )
            .map_err(backend)?
            .map(|row| row.get(0));
        let epoch = epoch.ok_or(StoreError::LeaseHeld)?;
        let fenced = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        spawn_renewal(url, lease, locked, epoch, fenced.clone(), stop.clone())?;
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

/// Takes the writer's advisory lock if no live session holds it.
fn try_writer_lock(client: &mut Client) -> bool {
    client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&WRITER_LOCK])
        .is_ok_and(|row| row.get(0))
}

/// Renews the lease every second on a connection of its own (which also
/// holds the writer's advisory lock, taken again if it was not free at
/// start or the connection was lost); a renewal that finds another epoch
/// (or none) fences this writer for good.
fn spawn_renewal(
    url: &str,
    client: Client,
    locked: bool,
    epoch: i64,
    fenced: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Result<(), StoreError> {
    let url = url.to_owned();
    std::thread::Builder::new()
        .name("purser-lease".into())
        .spawn(move || {
            let mut client: Option<Client> = Some(client);
            let mut locked = locked;
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && !fenced.load(std::sync::atomic::Ordering::Relaxed)
            {
                std::thread::sleep(RENEW_EVERY);
                if client.as_ref().is_none_or(Client::is_closed) {
                    locked = false;
                    client = Client::connect(&url, NoTls).ok();
                    // The lock went with the old connection: until it is
                    // taken again, the row must not claim it.
                    let cleared = client.as_mut().map(|fresh| {
                        fresh.execute(
                            "UPDATE writer_lease SET locked = false WHERE id = 1 AND epoch = $1",
                            &[&epoch],
                        )
                    });
                    if !matches!(cleared, Some(Ok(_))) {
                        client = None;
                        continue;
                    }
                }
                let Some(connection) = client.as_mut() else {
                    continue;
                };
                if !locked && try_writer_lock(connection) {
                    locked = connection
                        .execute(
                            "UPDATE writer_lease SET locked = true WHERE id = 1 AND epoch = $1",
                            &[&epoch],
                        )
                        .is_ok();
                }
                match connection.execute(
                    "UPDATE writer_lease SET expires_at = now() + make_interval(secs => $2)
                      WHERE id = 1 AND epoch = $1 AND expires_at >= now()",
                    &[&epoch, &(LEASE_SECONDS as f64)],
                ) {
                    Ok(0) => fenced.store(true, std::sync::atomic::Ordering::Relaxed),
                    Ok(_) => {}
                    // Unreachable database: try again; commits fail meanwhile,
                    // and the lease runs out if this lasts.
                    Err(_) => client = None,
                }
            }
            drop(client);
        })
        .map_err(|e| StoreError::Backend(format!("lease thread: {e}")))?;
    Ok(())
}

fn migrate(client: &mut Client) -> Result<(), StoreError> {
    let mut transaction = client.transaction().map_err(backend)?;
    transaction
        .execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .map_err(backend)?;
    transaction
        .batch_execute("CREATE TABLE IF NOT EXISTS purser_schema_version (version INT NOT NULL);")
        .map_err(backend)?;
    let current: i32 = transaction
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM purser_schema_version",
            &[],
        )
        .map_err(backend)?
        .get(0);
    let supported = MIGRATIONS.len() as i64;
    if i64::from(current) > supported {
        return Err(StoreError::SchemaTooNew {
            found: i64::from(current),
            supported,
        });
    }
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        transaction.batch_execute(migration).map_err(backend)?;
        let version = index as i32 + 1;
        transaction
            .execute(
                "INSERT INTO purser_schema_version (version) VALUES ($1)",
                &[&version],
            )
            .map_err(backend)?;
    }
    transaction.commit().map_err(backend)
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
    /// Checks (and renews) the lease: [`StoreError::Fenced`] if it is gone.
    fn confirm_lease(&self) -> Result<(), StoreError> {
        let mut guard = lock(&self.writer);
        let renewed = writer(&mut guard)
            .execute(
                "UPDATE writer_lease SET expires_at = now() + make_interval(secs => $2)
                  WHERE id = 1 AND epoch = $1 AND expires_at >= now()",
                &[&self.epoch, &(LEASE_SECONDS as f64)],
            )
            .map_err(backend)?;
        if renewed == 0 {
            self.fenced
                .store(true, std::sync::atomic::Ordering::Relaxed);
            return Err(StoreError::Fenced);
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
            self.fenced
                .store(true, std::sync::atomic::Ordering::Relaxed);
            return Err(StoreError::Fenced);
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
        // Fencing: the lease row, checked and renewed inside the commit, and
        // locked until it ends, so no takeover can slip in between.
        let renewed = transaction
            .execute(
                "UPDATE writer_lease SET expires_at = now() + make_interval(secs => $2)
                  WHERE id = 1 AND epoch = $1 AND expires_at >= now()",
                &[&self.epoch, &(LEASE_SECONDS as f64)],
            )
            .map_err(backend)?;
        if renewed == 0 {
            self.fenced
                .store(true, std::sync::atomic::Ordering::Relaxed);
            return Err(StoreError::Fenced);
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
        self.read(|client| usage(client, query))
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
        // If this fails the lease runs out by itself.
        let _ = writer(&mut guard).execute(
            "UPDATE writer_lease SET expires_at = now() - interval '1 second' WHERE id = 1 AND epoch = $1",
            &[&self.epoch],
        );
    }

    fn is_fenced(&self) -> bool {
        self.fenced.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Usage grouped in SQL: charges in the window, minus their reversals
/// (attributed to the charge's own time, task and member).
fn usage(client: &mut Client, query: &UsageQuery) -> Result<Vec<UsageRow>, StoreError> {
    let account = query.account.raw() as i64;
    let from = query.from.map_or(i64::MIN, |t| t.micros());
    let to = query.to.map_or(i64::MAX, |t| t.micros());
    let mut totals = UsageTotals::default();
    let mut add =
        |key: Option<String>, micros: i64, count: i64| totals.add(key, micros, count.max(0) as u64);
    let window = "c.account = $1 AND c.type IN ('debit', 'capture') AND c.at >= $2 AND c.at < $3";
    let join = "FROM entry r JOIN entry c ON c.account = r.account AND c.seq = r.debit_seq
                WHERE r.account = $1 AND r.type = 'reversal' AND";
    let day = "(c.at / 86400000000 - CASE WHEN c.at < 0 AND c.at % 86400000000 <> 0 THEN 1 ELSE 0 END)::text";
    if matches!(query.group_by, GroupBy::Kind | GroupBy::DayKind) {
        let group = if query.group_by == GroupBy::DayKind {
            day
        } else {
            "NULL::text"
        };
        let sums = |t: &str| {
            KIND_KEYS
                .iter()
                .map(|k| format!("COALESCE(SUM({t}.{k}), 0)::bigint"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let counts = |filtered: bool| {
            KIND_KEYS
                .iter()
                .map(|k| {
                    if filtered {
                        format!("COUNT(*) FILTER (WHERE c.{k} <> 0)")
                    } else {
                        "0::bigint".to_owned()
                    }
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let charges = format!(
            "SELECT {group}, {}, {} FROM entry c WHERE {window} GROUP BY 1",
            sums("c"),
            counts(true)
        );
        let reversals = format!(
            "SELECT {group}, {}, {} {join} {window} GROUP BY 1",
            sums("r"),
            counts(false)
        );
        for sql in [charges, reversals] {
            for row in client
                .query(&sql, &[&account, &from, &to])
                .map_err(backend)?
            {
                let day: Option<String> = row.get(0);
                let day = day.and_then(|days| days.parse::<i64>().ok()).map(day_key);
                for (index, kind) in KIND_KEYS.iter().enumerate() {
                    let credits: i64 = row.get(index + 1);
                    let count: i64 = row.get(index + 6);
                    let key = match &day {
                        Some(day) => format!("{day}/{kind}"),
                        None => (*kind).to_owned(),
                    };
                    add(Some(key), credits, count);
                }
            }
        }
        totals.retain_nonempty();
    } else {
        let key = match query.group_by {
            GroupBy::Task => "c.task",
            GroupBy::Member => "c.member",
            GroupBy::Day | GroupBy::Kind | GroupBy::DayKind => day,
        };
        let charges = format!(
            "SELECT {key}, SUM(c.credits)::bigint, COUNT(*) FROM entry c WHERE {window} GROUP BY 1"
        );
        let reversals =
            format!("SELECT {key}, SUM(r.credits)::bigint, 0::bigint {join} {window} GROUP BY 1");
        for sql in [charges, reversals] {
            for row in client
                .query(&sql, &[&account, &from, &to])
                .map_err(backend)?
            {
                let mut key: Option<String> = row.get(0);
                if query.group_by == GroupBy::Day {
                    key = key.and_then(|days| days.parse::<i64>().ok()).map(day_key);
                }
                add(key, row.get(1), row.get(2));
            }
        }
    }
    Ok(totals.into_rows())
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
