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

mod columns;
mod idempotency;
mod lease;
mod outbox;
mod schema;
mod settings;
mod usage;

use std::sync::{Mutex, MutexGuard};

use columns::{Columns, EventColumns, KeyColumns};
use lease::LEASE_SECONDS;
use outbox::{CHECKED_EVENT, checked_event};

use postgres::error::SqlState;
use postgres::{Client, NoTls};
use purser_core::{AccountHandle, Entry, EventId, EventType, KeyHash, Timestamp};
use purser_store::{
    ApiKeyRecord, ChainHash, Commit, Damage, DamageReport, DeliveryRecord, EntryQuery, EventQuery,
    EventRecord, IdempotencyRecord, KEPT_DELIVERIES, SettledKind, SettledRecord, Store, StoreError,
    StoredEvent, StoredKey, StoredRow, StoredSnapshot, UsageQuery, UsageRow, Witness, decode_entry,
    entry_sum, record_sum,
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
    /// The journal's last position and chain hash, as this writer last
    /// committed them; `None` after a failure (read again before the next
    /// commit, as the failed one may or may not have landed).
    tail: Mutex<Option<(i64, ChainHash)>>,
    /// Opened by `verify`: one read-only transaction on `writer`, no lease.
    read_only: bool,
}

/// An idempotency record that failed its checksum: never answered from.
fn damaged_record(id: i64) -> StoreError {
    StoreError::Damaged(format!(
        "idempotency record {id} does not match its checksum; restore a backup"
    ))
}

/// An idempotency record from the columns `key, fingerprint, status, body,
/// expires` starting at column `first` (a key or fingerprint of the wrong
/// length reads as zeros, which its checksum then refuses).
pub(crate) fn record_of(row: &postgres::Row, first: usize) -> IdempotencyRecord {
    let key: Vec<u8> = row.get(first);
    let fingerprint: Vec<u8> = row.get(first + 1);
    IdempotencyRecord {
        key: key.try_into().unwrap_or([0; 16]),
        fingerprint: fingerprint.try_into().unwrap_or([0; 8]),
        status: row.get::<_, i32>(first + 2) as u16,
        body: row.get(first + 3),
        expires_at: purser_store::from_seconds(row.get(first + 4)),
    }
}

/// The columns [`checked_record`] reads, in its order.
pub(crate) const CHECKED_RECORD: &str =
    "SELECT id, key, fingerprint, status, body, expires, pos, sum FROM idempotency_record";

/// A row of [`CHECKED_RECORD`]: the record and whether it matches its checksum.
pub(crate) fn checked_record(row: &postgres::Row) -> (IdempotencyRecord, bool) {
    let record = record_of(row, 1);
    let (pos, sum): (i64, i64) = (row.get(6), row.get(7));
    let sound = record_sum(&record, pos as u64) == sum;
    (record, sound)
}

/// Runs `sql` page after page (keyset paging: its `$1` is the first column
/// of the previous page's last row, `start` at first); `visit` gets each
/// page, and the client for work of its own. Memory holds one page.
pub(crate) fn paged<C, K>(
    client: &mut C,
    sql: &str,
    start: K,
    mut visit: impl FnMut(&mut C, &[postgres::Row]) -> Result<(), StoreError>,
) -> Result<(), StoreError>
where
    C: postgres::GenericClient,
    K: postgres::types::ToSql + Sync + for<'a> postgres::types::FromSql<'a>,
{
    let mut after = start;
    loop {
        let rows = client.query(sql, &[&after]).map_err(backend)?;
        let Some(last) = rows.last() else {
            return Ok(());
        };
        after = last.get(0);
        visit(client, &rows)?;
    }
}

/// The journal's last position and chain hash.
fn read_tail(client: &mut impl postgres::GenericClient) -> Result<(i64, ChainHash), StoreError> {
    let row = client
        .query_opt(
            "SELECT pos, chain FROM entry ORDER BY pos DESC LIMIT 1",
            &[],
        )
        .map_err(backend)?;
    let Some(row) = row else {
        return Ok((0, purser_store::GENESIS));
    };
    let pos: i64 = row.get(0);
    let chain: Option<Vec<u8>> = row.get(1);
    let chain = chain.ok_or_else(|| {
        StoreError::Damaged(format!(
            "the journal ends at position {pos} inside a commit"
        ))
    })?;
    let chain = chain
        .try_into()
        .map_err(|_| StoreError::Damaged(format!("the chain hash at journal position {pos}")))?;
    Ok((pos, chain))
}

impl Drop for PostgresStore {
    /// A synchronous client owns a small runtime, which must not be dropped
    /// on an async thread: the clients are dropped on a thread of their own.
    /// Hands the lease back (a standby can take over at once), then closes.
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let writer = lock(&self.writer).take().filter(|_| !self.read_only);
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
    // The server's own words ("db error" alone says nothing).
    match error.as_db_error() {
        Some(db) => StoreError::Backend(format!("{}: {}", db.code().code(), db.message())),
        None => StoreError::Backend(error.to_string()),
    }
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
            tail: Mutex::new(None),
            read_only: false,
        })
    }

    /// Opens the store read-only, for `verify`: no migration, no lease (a
    /// serving writer keeps its own), every read in one `REPEATABLE READ
    /// READ ONLY` transaction, so everything checked is one state.
    pub fn open_read_only(url: &str) -> Result<PostgresStore, StoreError> {
        let mut client = Client::connect(url, NoTls).map_err(backend)?;
        schema::check_version(&mut client)?;
        client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .map_err(backend)?;
        Ok(PostgresStore {
            url: url.to_owned(),
            epoch: 0,
            fenced: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true)),
            stop: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true)),
            writer: Mutex::new(Some(client)),
            readers: Mutex::new(Vec::new()),
            tail: Mutex::new(None),
            read_only: true,
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
        if self.read_only {
            // A read inside another (recovery reads settled objects while
            // it scans the journal) gets a connection of its own.
            return match self.writer.try_lock() {
                Ok(mut guard) => work(writer(&mut guard)),
                Err(std::sync::TryLockError::Poisoned(poisoned)) => {
                    work(writer(&mut poisoned.into_inner()))
                }
                Err(std::sync::TryLockError::WouldBlock) => {
                    work(&mut Client::connect(&self.url, NoTls).map_err(backend)?)
                }
            };
        }
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
        let mut guard = lock(&self.writer);
        let client = writer(&mut guard);
        let mut tail = lock(&self.tail);
        let (last, previous) = match *tail {
            Some(known) => known,
            None => read_tail(client)?,
        };
        // Cleared until this commit is known to have landed.
        *tail = None;
        let (columns, chain) = Columns::of(commit.entries, last, &previous);
        let [budget, rollover, package, promo, debt] = &columns.parts;
        let end = last + commit.entries.len() as i64;
        let keys = KeyColumns::of(commit.idempotency, end);
        let events = EventColumns::of(commit.events);
        // The positions were computed from the tail this writer knows: the
        // statement writes nothing unless the journal still ends there.
        let row = client
            .query_one(
                "WITH lease AS (
                     UPDATE writer_lease SET expires_at = now() + make_interval(secs => $17)
                      WHERE id = 1 AND epoch = $16 AND expires_at >= now()
                  RETURNING epoch
                 ), base AS (
                     SELECT 1 FROM (SELECT COALESCE(MAX(pos), 0) AS pos FROM entry) b WHERE b.pos = $25
                 ), entries AS (
                     INSERT INTO entry (account, seq, pos, type, at, body, task, member, credits,
                                        budget, rollover, package, promo, debt, debit_seq, sum, chain)
                     SELECT u.account, u.seq, u.pos, u.type, u.at, u.body, u.task, u.member,
                            u.credits, u.budget, u.rollover, u.package, u.promo, u.debt, u.debit_seq,
                            u.sum, u.chain
                       FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::text[], $5::bigint[],
                                   $6::bytea[], $7::text[], $8::text[], $9::bigint[], $10::bigint[],
                                   $11::bigint[], $12::bigint[], $13::bigint[], $14::bigint[], $15::bigint[],
                                   $23::bigint[], $24::bytea[])
                            AS u(account, seq, pos, type, at, body, task, member, credits,
                                 budget, rollover, package, promo, debt, debit_seq, sum, chain),
                            base, lease
                     RETURNING 1
                 ), keys AS (
                     INSERT INTO idempotency_record (key, fingerprint, status, body, expires, pos, sum)
                     SELECT k.key, k.fingerprint, k.status, k.body, k.expires, $26, k.sum
                       FROM unnest($18::bytea[], $19::bytea[], $20::int[], $21::bytea[], $22::bigint[],
                                   $27::bigint[]) WITH ORDINALITY
                            AS k(key, fingerprint, status, body, expires, sum, n),
                            base, lease
                      ORDER BY k.n
                     RETURNING 1
                 ), events AS (
                     INSERT INTO event (account, seq, rank, account_id, type, at, body, sum, journal_end)
                     SELECT e.account, e.seq, e.rank, e.account_id, e.type, e.at, e.body, e.sum, $26
                       FROM unnest($28::bigint[], $29::bigint[], $30::int[], $31::text[], $32::text[],
                                   $33::bigint[], $34::bytea[], $35::bigint[]) WITH ORDINALITY
                            AS e(account, seq, rank, account_id, type, at, body, sum, n),
                            base, lease
                      ORDER BY e.n
                     RETURNING 1
                 )
                 SELECT (SELECT count(*) FROM lease), (SELECT count(*) FROM base),
                        (SELECT count(*) FROM entries), (SELECT count(*) FROM keys),
                        (SELECT count(*) FROM events)",
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
                    &columns.sum,
                    &columns.chain,
                    &last,
                    &end,
                    &keys.sums,
                    &events.account,
                    &events.seq,
                    &events.rank,
                    &events.account_id,
                    &events.kind,
                    &events.at,
                    &events.body,
                    &events.sum,
                ],
            )
            .map_err(backend)?;
        let (lease, base, entries, records, stored_events): (i64, i64, i64, i64, i64) =
            (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
        if lease == 0 {
            return Err(self.fence());
        }
        if base == 0 {
            return Err(StoreError::Backend(format!(
                "the journal no longer ends at position {last}: another writer committed"
            )));
        }
        if entries != commit.entries.len() as i64
            || records != commit.idempotency.len() as i64
            || stored_events != commit.events.len() as i64
        {
            return Err(StoreError::Backend(format!(
                "commit wrote {entries} entries, {records} keys and {stored_events} events of {}, {} and {}",
                commit.entries.len(),
                commit.idempotency.len(),
                commit.events.len()
            )));
        }
        *tail = Some(if commit.entries.is_empty() {
            (last, previous)
        } else {
            (end, chain)
        });
        Ok(())
    }
}

impl Store for PostgresStore {
    fn commit(&self, commit: Commit<'_>) -> Result<(), StoreError> {
        if self.read_only {
            return Err(StoreError::ReadOnly);
        }
        if self.fenced.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(StoreError::Fenced);
        }
        if commit.entries.is_empty()
            && commit.idempotency.is_empty()
            && commit.snapshots.is_empty()
            && commit.settled.is_empty()
        {
            // Reads and refusals: answered only once the lease is known to
            // be ours after they arrived, so a writer that was paused and
            // lost its lease never answers from its stale memory.
            return self.confirm_lease();
        }
        if commit.snapshots.is_empty() && commit.settled.is_empty() {
            return self.commit_in_one_statement(commit);
        }
        let mut guard = lock(&self.writer);
        let mut transaction = writer(&mut guard).transaction().map_err(backend)?;
        // Fencing: the lease row, checked and renewed inside the commit.
        if !lease::renew(&mut transaction, self.epoch).map_err(backend)? {
            return Err(self.fence());
        }
        *lock(&self.tail) = None;
        let (before, previous) = read_tail(&mut transaction)?;
        for snapshot in commit.snapshots {
            let sum = purser_store::snapshot_sum(snapshot.partition, before as u64, &snapshot.body);
            transaction
                .execute(
                    "INSERT INTO snapshot (partition, position, body, sum) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (partition) DO UPDATE SET position = excluded.position,
                        body = excluded.body, sum = excluded.sum",
                    &[
                        &i32::from(snapshot.partition),
                        &before,
                        &snapshot.body,
                        &sum,
                    ],
                )
                .map_err(backend)?;
        }
        let (columns, chain) = Columns::of(commit.entries, before, &previous);
        let end = before + commit.entries.len() as i64;
        if !commit.entries.is_empty() {
            let [budget, rollover, package, promo, debt] = &columns.parts;
            transaction
                .execute(
                    "INSERT INTO entry (account, seq, pos, type, at, body, task, member, credits,
                                        budget, rollover, package, promo, debt, debit_seq, sum, chain)
                     SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::text[], $5::bigint[],
                                          $6::bytea[], $7::text[], $8::text[], $9::bigint[], $10::bigint[],
                                          $11::bigint[], $12::bigint[], $13::bigint[], $14::bigint[], $15::bigint[],
                                          $16::bigint[], $17::bytea[])",
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
                        &columns.sum,
                        &columns.chain,
                    ],
                )
                .map_err(backend)?;
        }
        for record in commit.settled {
            let body = record.body();
            let (account, seq) = (record.account.raw(), record.seq());
            transaction
                .execute(
                    "INSERT INTO settled (account, seq, as_of, kind, body, sum, pos)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)
                     ON CONFLICT (account, seq, as_of) DO UPDATE SET kind = excluded.kind,
                        body = excluded.body, sum = excluded.sum, pos = excluded.pos",
                    &[
                        &(account as i64),
                        &(seq as i64),
                        &(record.as_of as i64),
                        &(record.kind() as i16),
                        &body,
                        &purser_store::settled_sum(account, seq, record.as_of, &body),
                        &end,
                    ],
                )
                .map_err(backend)?;
        }
        if !commit.idempotency.is_empty() {
            let keys = KeyColumns::of(commit.idempotency, end);
            transaction
                .execute(
                    "INSERT INTO idempotency_record (key, fingerprint, status, body, expires, sum, pos)
                     SELECT k.key, k.fingerprint, k.status, k.body, k.expires, k.sum, $7
                       FROM unnest($1::bytea[], $2::bytea[], $3::int[], $4::bytea[], $5::bigint[], $6::bigint[])
                            WITH ORDINALITY AS k(key, fingerprint, status, body, expires, sum, n)
                      ORDER BY k.n",
                    &[&keys.keys, &keys.prints, &keys.statuses, &keys.bodies, &keys.expiries, &keys.sums, &end],
                )
                .map_err(backend)?;
        }
        if !commit.events.is_empty() {
            let events = EventColumns::of(commit.events);
            transaction
                .execute(
                    "INSERT INTO event (account, seq, rank, account_id, type, at, body, sum, journal_end)
                     SELECT e.account, e.seq, e.rank, e.account_id, e.type, e.at, e.body, e.sum, $9
                       FROM unnest($1::bigint[], $2::bigint[], $3::int[], $4::text[], $5::text[],
                                   $6::bigint[], $7::bytea[], $8::bigint[]) WITH ORDINALITY
                            AS e(account, seq, rank, account_id, type, at, body, sum, n)
                      ORDER BY e.n",
                    &[
                        &events.account,
                        &events.seq,
                        &events.rank,
                        &events.account_id,
                        &events.kind,
                        &events.at,
                        &events.body,
                        &events.sum,
                        &end,
                    ],
                )
                .map_err(backend)?;
        }
        transaction.commit().map_err(backend)?;
        *lock(&self.tail) = Some(if commit.entries.is_empty() {
            (before, previous)
        } else {
            (end, chain)
        });
        Ok(())
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
                    "SELECT pos, account, seq, body, sum FROM entry WHERE pos > $1 ORDER BY pos",
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
                    let (account, seq): (i64, i64) = (row.get(1), row.get(2));
                    let body: &[u8] = row.get(3);
                    if entry_sum(account as u64, seq as u64, body) != row.get::<_, i64>(4) {
                        return Err(StoreError::Damaged(format!(
                            "journal position {pos} does not match its checksum"
                        )));
                    }
                    visit(pos as u64, decode(account, seq, body)?)?;
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
                    "SELECT partition, position, body, sum FROM snapshot ORDER BY partition",
                    &[],
                )
                .map_err(backend)?;
            Ok(rows
                .iter()
                .map(|row| StoredSnapshot {
                    partition: row.get::<_, i32>(0) as u16,
                    position: row.get::<_, i64>(1) as u64,
                    body: row.get(2),
                    sum: row.get(3),
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

    fn settled(
        &self,
        account: AccountHandle,
        seq: u64,
        as_of: u64,
    ) -> Result<Option<SettledRecord>, StoreError> {
        self.read(|client| {
            let row = client
                .query_opt(
                    "SELECT seq, as_of, body, sum FROM settled
                     WHERE account = $1 AND seq = $2 AND as_of <= $3 ORDER BY as_of DESC LIMIT 1",
                    &[
                        &(account.raw() as i64),
                        &(seq.min(i64::MAX as u64) as i64),
                        &(as_of.min(i64::MAX as u64) as i64),
                    ],
                )
                .map_err(backend)?;
            row.map(|row| checked_settled(account, &row)).transpose()
        })
    }

    fn settled_page(
        &self,
        account: AccountHandle,
        kind: SettledKind,
        before_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<SettledRecord>, StoreError> {
        self.read(|client| {
            let rows = client
                .query(
                    "SELECT DISTINCT ON (seq) seq, as_of, body, sum FROM settled
                     WHERE account = $1 AND kind = $2 AND seq < $3
                     ORDER BY seq DESC, as_of DESC LIMIT $4",
                    &[
                        &(account.raw() as i64),
                        &(kind as i16),
                        &before_seq.map_or(i64::MAX, |seq| seq.min(i64::MAX as u64) as i64),
                        &(limit as i64),
                    ],
                )
                .map_err(backend)?;
            rows.iter()
                .map(|row| checked_settled(account, row))
                .collect()
        })
    }

    fn usage(&self, query: &UsageQuery) -> Result<Vec<UsageRow>, StoreError> {
        self.read(|client| usage::usage(client, query))
    }

    fn events(&self, query: &EventQuery) -> Result<Vec<StoredEvent>, StoreError> {
        self.events_in_outbox(query)
    }

    fn event(&self, id: EventId) -> Result<Option<StoredEvent>, StoreError> {
        self.event_in_outbox(id)
    }

    fn last_event(&self) -> Result<u64, StoreError> {
        self.last_event_in_outbox()
    }

    fn purge_events(&self, before: Timestamp) -> Result<u64, StoreError> {
        self.purge_events_in_outbox(before)
    }

    fn record_delivery(&self, delivery: &DeliveryRecord) -> Result<(), StoreError> {
        self.record_delivery_in_outbox(delivery)
    }

    fn deliveries(
        &self,
        endpoint: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<DeliveryRecord>, StoreError> {
        self.deliveries_in_outbox(endpoint, before, limit)
    }

    fn idempotency_record(&self, key: &KeyHash) -> Result<Option<IdempotencyRecord>, StoreError> {
        self.idempotency_record_stored(key)
    }

    fn idempotency_keys(&self, after: u64, limit: usize) -> Result<Vec<StoredKey>, StoreError> {
        self.idempotency_keys_stored(after, limit)
    }

    fn scan(
        &self,
        visit: &mut dyn FnMut(StoredRow<'_>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        // Pages by position: plain queries, so a read-only open's single
        // transaction (and its snapshot) holds across every page.
        self.read(|client| {
            paged(
                client,
                "SELECT pos, account, seq, body, sum, chain FROM entry
                  WHERE pos > $1 ORDER BY pos LIMIT 10000",
                0i64,
                |_, rows| {
                    for row in rows {
                        visit(StoredRow {
                            pos: row.get::<_, i64>(0) as u64,
                            account: row.get::<_, i64>(1) as u64,
                            seq: row.get::<_, i64>(2) as u64,
                            body: row.get(3),
                            sum: row.get(4),
                            chain: row.get(5),
                        })?;
                    }
                    Ok(())
                },
            )
        })
    }

    fn witnesses(&self) -> Result<Vec<Witness>, StoreError> {
        let keys: i64 = self.read(|client| {
            Ok(client
                // Stored in commit order: the last record's position is
                // the highest (one row read, however many keys).
                .query_one(
                    "SELECT COALESCE((SELECT pos FROM idempotency_record ORDER BY id DESC LIMIT 1), 0)",
                    &[],
                )
                .map_err(backend)?
                .get(0))
        })?;
        Ok(vec![Witness {
            what: "the idempotency records".into(),
            position: keys as u64,
            lost: Vec::new(),
            more: 0,
        }])
    }

    fn accept_loss(&self, report: &DamageReport, at: Timestamp) -> Result<(), StoreError> {
        if self.read_only {
            return Err(StoreError::ReadOnly);
        }
        if !report.is_tail_loss_only() {
            return Err(StoreError::Damaged(
                "only loss at the journal's end can be accepted; restore from a backup".into(),
            ));
        }
        let end = report.end as i64;
        let mut guard = lock(&self.writer);
        let mut transaction = writer(&mut guard).transaction().map_err(backend)?;
        if !lease::renew(&mut transaction, self.epoch).map_err(backend)? {
            return Err(self.fence());
        }
        transaction
            .batch_execute("SET LOCAL statement_timeout = 0")
            .map_err(backend)?;
        for statement in [
            "DELETE FROM entry WHERE pos > $1",
            "DELETE FROM snapshot WHERE position > $1",
            "DELETE FROM event WHERE journal_end > $1",
            "DELETE FROM idempotency_record WHERE pos > $1",
        ] {
            transaction.execute(statement, &[&end]).map_err(backend)?;
        }
        // A settled object's version written with lost entries.
        transaction
            .execute("DELETE FROM settled WHERE pos > $1", &[&end])
            .map_err(backend)?;
        transaction
            .execute(
                "INSERT INTO incident (at, journal_end, report) VALUES ($1, $2, $3)",
                &[&at.micros(), &end, &report.to_string()],
            )
            .map_err(backend)?;
        transaction.commit().map_err(backend)?;
        *lock(&self.tail) = None;
        Ok(())
    }

    fn check_structures(
        &self,
        found: &mut dyn FnMut(Damage),
        _progress: &mut dyn FnMut(u64),
    ) -> Result<(), StoreError> {
        // Paged by id: the table is never read whole.
        self.read(|client| {
            paged(
                client,
                &format!("{CHECKED_RECORD} WHERE id > $1 ORDER BY id LIMIT 1000"),
                0i64,
                |_, rows| {
                    for row in rows {
                        if !checked_record(row).1 {
                            found(Damage::Structure {
                                what: "the idempotency records".into(),
                                detail: format!(
                                    "record {} does not match its checksum",
                                    row.get::<_, i64>(0)
                                ),
                            });
                        }
                    }
                    Ok(())
                },
            )?;
            for row in client
                .query(
                    "SELECT seq, as_of, body, sum, account FROM settled ORDER BY account, seq, as_of",
                    &[],
                )
                .map_err(backend)?
            {
                let account = AccountHandle::from_raw(row.get::<_, i64>(4) as u64);
                if let Err(error) = checked_settled(account, &row) {
                    found(Damage::Structure {
                        what: "the settled objects".into(),
                        detail: error.to_string(),
                    });
                }
            }
            paged(
                client,
                &format!("{CHECKED_EVENT} WHERE pos > $1 ORDER BY pos LIMIT 1000"),
                0i64,
                |_, rows| {
                    for row in rows {
                        if let Err(error) = checked_event(row) {
                            found(Damage::Structure {
                                what: "the outbox (events)".into(),
                                detail: error.to_string(),
                            });
                        }
                    }
                    Ok(())
                },
            )
        })
    }

    fn incidents(&self) -> Result<Vec<(Timestamp, String)>, StoreError> {
        self.read(|client| {
            let rows = client
                .query("SELECT at, report FROM incident ORDER BY id", &[])
                .map_err(backend)?;
            Ok(rows
                .iter()
                .map(|row| (Timestamp::from_micros(row.get(0)), row.get(1)))
                .collect())
        })
    }

    fn purge_idempotency(&self, now: Timestamp) -> Result<u64, StoreError> {
        self.purge_idempotency_stored(now)
    }

    fn insert_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        self.insert_api_key_stored(key)
    }

    fn revoke_api_key(&self, id: &str, at: Timestamp) -> Result<bool, StoreError> {
        self.revoke_api_key_stored(id, at)
    }

    fn api_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        self.api_keys_stored()
    }

    fn setting(&self, name: &str) -> Result<Option<String>, StoreError> {
        self.setting_stored(name)
    }

    fn set_setting(&self, name: &str, value: &str) -> Result<(), StoreError> {
        self.set_setting_stored(name, value)
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
mod tests;

/// A `settled` row (`seq, as_of, body, sum`) read back and checked.
fn checked_settled(
    account: AccountHandle,
    row: &postgres::Row,
) -> Result<SettledRecord, StoreError> {
    let seq: i64 = row.get(0);
    let as_of: i64 = row.get(1);
    let body: Vec<u8> = row.get(2);
    SettledRecord::checked(account, seq as u64, as_of as u64, &body, row.get(3))
}
