//! purser-store-sqlite: the embedded default store.
//!
//! Two SQLite files in the data directory:
//! - `purser.db`, in WAL mode with `synchronous=FULL`: the truth. Each group
//!   commit is one transaction and one fsync that appends entries to `log`
//!   (clustered by commit position, so a batch fills pages in order however
//!   many accounts it touches), appends idempotency records (no index on
//!   their random keys: they are read back whole on start) and writes
//!   snapshots.
//! - `history.db`: the per-account history index (`entry`, keyed by account
//!   and sequence number, with the usage facts reports group by), derived
//!   from `log` by a background indexer thread (idle scheduling priority)
//!   in large sorted batches, inserted in slices, with the position reached
//!   stored with a batch's last slice. It is never ahead of the log and is
//!   rebuilt from it when missing or behind; a history read first brings it
//!   up to every committed entry (indexing the rest itself if the background
//!   thread is behind), so it sees all of them.
//!
//! Schema changes are versioned migrations, applied forward-only on open.
//! This crate holds no business rules: it stores entries the core produced
//! and answers queries about them.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use purser_core::{AccountHandle, Entry, EventId, EventType, KeyHash, Timestamp};
use purser_store::{
    ApiKeyRecord, Commit, Damage, DamageReport, DeliveryRecord, EntryQuery, EventQuery,
    EventRecord, GroupBy, IdempotencyRecord, KEPT_DELIVERIES, KIND_KEYS, LegacyRecord, SettledKind,
    SettledRecord, Store, StoreError, StoredEvent, StoredKey, StoredRow, StoredSnapshot,
    UsageQuery, UsageRow, UsageTotals, Witness, day_key, decode_entry, encode_entry, entry_sum,
    record_sum, usage_of,
};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params, params_from_iter};

mod backup;
mod indexer;
mod marker;
mod outbox;
mod schema;
mod usage;
mod verify;

pub use backup::{backup, restore};
pub use marker::lock_data_dir;

use indexer::*;
use marker::*;
use schema::*;
use usage::usage;

/// The SQLite store. The writer connection is used by the committer; readers
/// take a connection from a small pool (with `history.db` attached), so
/// history queries never wait for a commit (WAL readers see the last
/// committed state); the indexer thread keeps `history.db` up with the log.
#[derive(Debug)]
pub struct SqliteStore {
    path: PathBuf,
    history_path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    index: Arc<IndexState>,
    /// The index's writer, shared by the background thread and by history
    /// reads that need it to catch up; `None` when read-only.
    worker: Option<Arc<Mutex<IndexWorker>>>,
    indexer: Option<std::thread::JoinHandle<()>>,
    /// Opened by `verify`: one read transaction on `writer`, nothing written.
    read_only: bool,
    /// Whether `history.db` is attached to reads (always, unless a
    /// read-only open found none).
    history: bool,
    /// The data directory's lock, held while this process may write.
    _lock: Option<std::fs::File>,
    /// `purser.end`, written after every commit (`None` when read-only).
    marker: Option<EndMarker>,
    /// What `purser.end` said when the store was opened (a read-only open
    /// reads it before the log, so a serving writer's later commits cannot
    /// put it ahead of what is read); set again by `accept_loss`.
    marker_at_open: Mutex<Option<(u64, purser_store::ChainHash)>>,
}

/// An idempotency record that failed its checksum: never answered from.
fn damaged_record(id: i64) -> StoreError {
    StoreError::Damaged(format!(
        "idempotency record {id} (in purser.db) does not match its checksum; restore a backup (`purser restore`)"
    ))
}

fn backend(error: rusqlite::Error) -> StoreError {
    match error {
        rusqlite::Error::SqliteFailure(code, _)
            if code.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            StoreError::Duplicate
        }
        other => StoreError::Backend(other.to_string()),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves a connection in a usable state
    // (SQLite rolls back an unfinished transaction), so poisoning is ignored.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl SqliteStore {
    /// Opens (creating if needed) `purser.db` in `data_dir`, migrates it,
    /// opens its history index and starts the indexer.
    pub fn open(data_dir: &Path) -> Result<SqliteStore, StoreError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| StoreError::Backend(format!("{}: {e}", data_dir.display())))?;
        let dir_lock = lock_data_dir(data_dir, LOCK_WAIT)?;
        let path = data_dir.join("purser.db");
        let history_path = data_dir.join("history.db");
        let writer = Connection::open(&path).map_err(backend)?;
        writer
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = FULL;
                 PRAGMA foreign_keys = OFF;
                 PRAGMA cache_size = -65536;
                 PRAGMA mmap_size = 4294967296;
                 PRAGMA wal_autocheckpoint = 2000;
                 PRAGMA busy_timeout = 10000;",
            )
            .map_err(backend)?;
        migrate(&writer)?;
        let committed: i64 = writer
            .query_row("SELECT COALESCE(MAX(pos), 0) FROM log", [], |row| {
                row.get(0)
            })
            .map_err(backend)?;
        let history = open_history(&history_path)?;
        let indexed: i64 = history
            .query_row("SELECT pos FROM indexed", [], |row| row.get(0))
            .map_err(backend)?;
        let index = Arc::new(IndexState::default());
        {
            let mut progress = lock(&index.progress);
            progress.committed = committed as u64;
            progress.indexed = indexed as u64;
        }
        let worker = Arc::new(Mutex::new(IndexWorker {
            log: open_reader(&path, None)?,
            history,
            batch: Vec::new(),
            next: 0,
            reached: 0,
        }));
        let indexer = {
            let index = index.clone();
            let worker = worker.clone();
            std::thread::Builder::new()
                .name("purser-indexer".into())
                .spawn(move || run_indexer(&worker, &index))
                .map_err(|e| StoreError::Backend(format!("starting the indexer: {e}")))?
        };
        Ok(SqliteStore {
            path,
            history_path,
            writer: Mutex::new(writer),
            readers: Mutex::new(Vec::new()),
            index,
            worker: Some(worker),
            indexer: Some(indexer),
            read_only: false,
            history: true,
            _lock: Some(dir_lock),
            marker_at_open: Mutex::new(read_marker(data_dir)),
            marker: Some(EndMarker::open(data_dir)?),
        })
    }

    /// Brings the history index up to everything committed so far. The
    /// background indexer runs at idle priority; a read that finds it behind
    /// does the rest itself, at the reader's priority (waiting at most for
    /// the slice the background thread is in).
    fn wait_indexed(&self) -> Result<(), StoreError> {
        let Some(worker) = &self.worker else {
            return Ok(());
        };
        let target = lock(&self.index.progress).committed;
        let mut worker = lock(worker);
        loop {
            let before = lock(&self.index.progress).indexed;
            if before >= target {
                return Ok(());
            }
            worker
                .step(&self.index, usize::MAX)
                .map_err(|error| StoreError::Backend(format!("the history index: {error}")))?;
            if lock(&self.index.progress).indexed == before {
                return Err(StoreError::Backend(format!(
                    "the history index is at {before}, the log should reach {target}"
                )));
            }
        }
    }

    /// A read of the history index, once it holds every committed entry.
    fn read_history<T>(
        &self,
        work: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.wait_indexed()?;
        self.read(work)
    }

    fn read<T>(
        &self,
        work: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        if self.read_only {
            // A read inside another (recovery reads settled objects while
            // it scans the journal) gets a connection of its own.
            return match self.writer.try_lock() {
                Ok(connection) => work(&connection),
                Err(std::sync::TryLockError::Poisoned(poisoned)) => work(&poisoned.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) => work(&open_reader(
                    &self.path,
                    self.history.then_some(&*self.history_path),
                )?),
            };
        }
        let connection = match lock(&self.readers).pop() {
            Some(connection) => connection,
            None => open_reader(&self.path, Some(&self.history_path))?,
        };
        let result = work(&connection);
        let mut pool = lock(&self.readers);
        if pool.len() < 8 {
            pool.push(connection);
        }
        result
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        lock(&self.index.progress).stop = true;
        self.index.changed.notify_all();
        if let Some(indexer) = self.indexer.take() {
            let _ = indexer.join();
        }
    }
}

/// A read-only connection to `purser.db`, with `history.db` attached as `h`.
fn open_reader(path: &Path, history: Option<&Path>) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let connection = Connection::open_with_flags(path, flags).map_err(backend)?;
    connection
        .busy_timeout(Duration::from_secs(10))
        .map_err(backend)?;
    if let Some(history) = history {
        connection
            .execute(
                "ATTACH DATABASE ?1 AS h",
                [history.to_string_lossy().as_ref()],
            )
            .map_err(backend)?;
    }
    Ok(connection)
}

fn decode(account: i64, seq: i64, body: &[u8]) -> Result<Entry, StoreError> {
    decode_entry(body).map_err(|error| StoreError::Corrupt {
        account: AccountHandle::from_raw(account as u64),
        seq: seq as u64,
        error,
    })
}

impl Store for SqliteStore {
    fn commit(&self, commit: Commit<'_>) -> Result<(), StoreError> {
        if self.read_only {
            return Err(StoreError::ReadOnly);
        }
        if commit.entries.is_empty()
            && commit.idempotency.is_empty()
            && commit.snapshots.is_empty()
            && commit.settled.is_empty()
        {
            return Ok(());
        }
        // Encoded and sealed before the transaction: the checksums and the
        // chain hash need every body, and the lock need not wait for them.
        let mut bodies = Vec::with_capacity(commit.entries.len() * 160);
        let mut ends = Vec::with_capacity(commit.entries.len());
        for entry in commit.entries {
            encode_entry(entry, &mut bodies);
            ends.push(bodies.len());
        }
        let body = |index: usize| {
            let start = if index == 0 { 0 } else { ends[index - 1] };
            &bodies[start..ends[index]]
        };
        let mut connection = lock(&self.writer);
        let transaction = connection
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(backend)?;
        // The log's end and its chain hash (a prepared statement: this runs
        // on every commit).
        let tail: Option<(i64, Option<Vec<u8>>)> = transaction
            .prepare_cached("SELECT pos, chain FROM log ORDER BY pos DESC LIMIT 1")
            .map_err(backend)?
            .query_row([], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()
            .map_err(backend)?;
        let (mut pos, previous) = match tail {
            None => (0, purser_store::GENESIS),
            Some((pos, Some(chain))) => (
                pos,
                chain.try_into().map_err(|_| {
                    StoreError::Damaged(format!("the chain hash at journal position {pos}"))
                })?,
            ),
            Some((pos, None)) => {
                return Err(StoreError::Damaged(format!(
                    "the journal ends at position {pos} inside a commit"
                )));
            }
        };
        if !commit.snapshots.is_empty() {
            // Everything committed before this transaction is in the snapshots.
            let position = pos;
            let mut insert = transaction
                .prepare_cached(
                    "INSERT INTO snapshot (partition, position, body, sum) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (partition) DO UPDATE SET position = excluded.position,
                        body = excluded.body, sum = excluded.sum",
                )
                .map_err(backend)?;
            for snapshot in commit.snapshots {
                insert
                    .execute(params![
                        i64::from(snapshot.partition),
                        position,
                        snapshot.body,
                        purser_store::snapshot_sum(
                            snapshot.partition,
                            position as u64,
                            &snapshot.body
                        )
                    ])
                    .map_err(backend)?;
            }
        }
        let mut sealed = None;
        {
            let (sums, chain) = purser_store::seal(
                &previous,
                pos as u64,
                commit
                    .entries
                    .iter()
                    .enumerate()
                    .map(|(index, entry)| (entry.account.raw(), entry.seq, body(index))),
            );
            let mut insert = transaction
                .prepare_cached(
                    "INSERT INTO log (pos, account, seq, body, sum, chain) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(backend)?;
            let last = commit.entries.len().saturating_sub(1);
            for (index, entry) in commit.entries.iter().enumerate() {
                pos += 1;
                insert
                    .execute(params![
                        pos,
                        entry.account.raw() as i64,
                        entry.seq as i64,
                        body(index),
                        sums[index],
                        (index == last).then_some(&chain[..])
                    ])
                    .map_err(backend)?;
            }
            for record in commit.idempotency {
                schema::insert_record(&transaction, record, pos)?;
            }
            for record in commit.settled {
                schema::insert_settled(&transaction, record, pos)?;
            }
            if !commit.events.is_empty() {
                let last: i64 = transaction
                    .prepare_cached("SELECT COALESCE(MAX(pos), 0) FROM event")
                    .map_err(backend)?
                    .query_row([], |row| row.get(0))
                    .map_err(backend)?;
                for (index, event) in commit.events.iter().enumerate() {
                    schema::insert_event(&transaction, event, last + 1 + index as i64, pos)?;
                }
            }
            if !commit.entries.is_empty() {
                sealed = Some(chain);
            }
        }
        transaction.commit().map_err(backend)?;
        if let (Some(chain), Some(marker)) = (sealed, &self.marker) {
            marker.write(pos as u64, &chain);
        }
        if !commit.entries.is_empty() {
            let mut progress = lock(&self.index.progress);
            progress.committed = progress.committed.max(pos as u64);
            drop(progress);
            self.index.changed.notify_all();
        }
        Ok(())
    }

    fn scan(
        &self,
        visit: &mut dyn FnMut(StoredRow<'_>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.read(|connection| {
            let mut statement = connection
                .prepare("SELECT pos, account, seq, body, sum, chain FROM log ORDER BY pos")
                .map_err(backend)?;
            let mut rows = statement.query([]).map_err(backend)?;
            while let Some(row) = rows.next().map_err(backend)? {
                let blob = |index: usize| -> Result<Option<&[u8]>, StoreError> {
                    row.get_ref(index)
                        .map_err(backend)?
                        .as_blob_or_null()
                        .map_err(|e| StoreError::Backend(e.to_string()))
                };
                visit(StoredRow {
                    pos: row.get::<_, i64>(0).map_err(backend)? as u64,
                    account: row.get::<_, i64>(1).map_err(backend)? as u64,
                    seq: row.get::<_, i64>(2).map_err(backend)? as u64,
                    body: blob(3)?.unwrap_or_default(),
                    sum: row.get(4).map_err(backend)?,
                    chain: blob(5)?,
                })?;
            }
            Ok(())
        })
    }

    fn witnesses(&self) -> Result<Vec<Witness>, StoreError> {
        let committed = self.read(|connection| {
            connection
                .query_row("SELECT COALESCE(MAX(pos), 0) FROM log", [], |row| {
                    row.get::<_, i64>(0)
                })
                .map_err(backend)
        })?;
        let mut witnesses = Vec::new();
        let keys: i64 = self.read(|connection| {
            connection
                // Records are stored in commit order: the last one's
                // position is the highest (one row read, however many keys).
                .query_row(
                    "SELECT COALESCE((SELECT pos FROM idempotency_record ORDER BY id DESC LIMIT 1), 0)",
                    [],
                    |row| row.get(0),
                )
                .map_err(backend)
        })?;
        witnesses.push(Witness {
            what: "the idempotency records".into(),
            position: keys as u64,
            lost: Vec::new(),
            more: 0,
        });
        if let Some((position, _)) = *lock(&self.marker_at_open) {
            witnesses.push(Witness {
                what: format!("the journal's end marker ({MARKER_FILE})"),
                position,
                lost: Vec::new(),
                more: 0,
            });
        }
        if self.history {
            let (indexed, lost, more) =
                self.read(|connection| history_ahead(connection, committed))?;
            witnesses.push(Witness {
                what: "the history index (history.db)".into(),
                position: indexed,
                lost,
                more,
            });
        }
        Ok(witnesses)
    }

    fn checkpoints(&self) -> Result<Vec<(u64, purser_store::ChainHash)>, StoreError> {
        Ok(lock(&self.marker_at_open).iter().copied().collect())
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
        // What is left must be sound as a file too: damage in SQLite's own
        // structures (pages that lost rows) is not a loss at the end.
        let problems: Vec<String> = {
            let connection = lock(&self.writer);
            let mut statement = connection
                .prepare("PRAGMA quick_check(20)")
                .map_err(backend)?;
            let rows = statement
                .query_map([], |row| row.get::<_, String>(0))
                .map_err(backend)?;
            rows.collect::<Result<_, _>>().map_err(backend)?
        };
        if problems != ["ok"] {
            return Err(StoreError::Damaged(format!(
                "purser.db fails SQLite's structure check ({}); the loss cannot be accepted: restore a backup",
                problems.join("; ")
            )));
        }
        let end = report.end as i64;
        {
            let mut connection = lock(&self.writer);
            let transaction = connection.transaction().map_err(backend)?;
            transaction
                .execute("DELETE FROM log WHERE pos > ?1", [end])
                .map_err(backend)?;
            transaction
                .execute("DELETE FROM snapshot WHERE position > ?1", [end])
                .map_err(backend)?;
            transaction
                .execute("DELETE FROM idempotency_record WHERE pos > ?1", [end])
                .map_err(backend)?;
            // A settled object's version written with lost entries.
            transaction
                .execute("DELETE FROM settled WHERE pos > ?1", [end])
                .map_err(backend)?;
            // An event exists only with its entries.
            transaction
                .execute("DELETE FROM event WHERE journal_end > ?1", [end])
                .map_err(backend)?;
            transaction
                .execute(
                    "INSERT INTO incident (at, journal_end, report) VALUES (?1, ?2, ?3)",
                    params![at.micros(), end, report.to_string()],
                )
                .map_err(backend)?;
            let chain: Option<Vec<u8>> = transaction
                .query_row("SELECT chain FROM log WHERE pos = ?1", [end], |row| {
                    row.get(0)
                })
                .optional()
                .map_err(backend)?
                .flatten();
            transaction.commit().map_err(backend)?;
            let chain = chain
                .and_then(|c| <purser_store::ChainHash>::try_from(c).ok())
                .unwrap_or(purser_store::GENESIS);
            if let Some(marker) = &self.marker {
                marker.write(report.end, &chain);
            }
            *lock(&self.marker_at_open) = Some((report.end, chain));
        }
        // The history index is derived: it is rebuilt from the log as it is now.
        if let Some(worker) = &self.worker {
            let mut worker = lock(worker);
            worker
                .history
                .execute_batch("DELETE FROM entry; UPDATE indexed SET pos = 0, partial = 0;")
                .map_err(backend)?;
            worker.batch.clear();
            worker.next = 0;
            worker.reached = 0;
            let mut progress = lock(&self.index.progress);
            progress.indexed = 0;
            progress.committed = report.end;
        }
        self.index.changed.notify_all();
        Ok(())
    }

    fn check_structures(
        &self,
        found: &mut dyn FnMut(Damage),
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), StoreError> {
        self.check_sqlite_structures(found, progress)
    }

    fn incidents(&self) -> Result<Vec<(Timestamp, String)>, StoreError> {
        self.read(|connection| {
            let mut statement = connection
                .prepare("SELECT at, report FROM incident ORDER BY id")
                .map_err(backend)?;
            let rows = statement
                .query_map([], |row| {
                    Ok((Timestamp::from_micros(row.get(0)?), row.get(1)?))
                })
                .map_err(backend)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(backend)
        })
    }

    fn replay_after(
        &self,
        position: u64,
        visit: &mut dyn FnMut(u64, Entry) -> Result<(), StoreError>,
    ) -> Result<u64, StoreError> {
        self.read(|connection| {
            let mut statement = connection
                .prepare("SELECT pos, account, seq, body, sum FROM log WHERE pos > ?1 ORDER BY pos")
                .map_err(backend)?;
            let mut rows = statement.query([position as i64]).map_err(backend)?;
            let mut count = 0;
            while let Some(row) = rows.next().map_err(backend)? {
                let pos: i64 = row.get(0).map_err(backend)?;
                let (account, seq): (i64, i64) =
                    (row.get(1).map_err(backend)?, row.get(2).map_err(backend)?);
                let body = row
                    .get_ref(3)
                    .map_err(backend)?
                    .as_blob()
                    .map_err(|e| StoreError::Backend(e.to_string()))?;
                if entry_sum(account as u64, seq as u64, body)
                    != row.get::<_, i64>(4).map_err(backend)?
                {
                    return Err(StoreError::Damaged(format!(
                        "journal position {pos} does not match its checksum"
                    )));
                }
                let entry = decode(account, seq, body)?;
                visit(pos as u64, entry)?;
                count += 1;
            }
            Ok(count)
        })
    }

    fn snapshots(&self) -> Result<Vec<StoredSnapshot>, StoreError> {
        self.read(|connection| {
            let mut statement = connection
                .prepare("SELECT partition, position, body, sum FROM snapshot ORDER BY partition")
                .map_err(backend)?;
            let rows = statement
                .query_map([], |row| {
                    Ok(StoredSnapshot {
                        partition: row.get::<_, i64>(0)? as u16,
                        position: row.get::<_, i64>(1)? as u64,
                        body: row.get(2)?,
                        sum: row.get(3)?,
                    })
                })
                .map_err(backend)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(backend)
        })
    }

    fn entry(&self, account: AccountHandle, seq: u64) -> Result<Option<Entry>, StoreError> {
        self.read_history(|connection| {
            let body: Option<Vec<u8>> = connection
                .prepare_cached(
                    "SELECT l.body FROM h.entry e JOIN log l ON l.pos = e.pos
                     WHERE e.account = ?1 AND e.seq = ?2",
                )
                .map_err(backend)?
                .query_row(params![account.raw() as i64, seq as i64], |row| row.get(0))
                .optional()
                .map_err(backend)?;
            body.map(|body| decode(account.raw() as i64, seq as i64, &body))
                .transpose()
        })
    }

    fn entries(&self, query: &EntryQuery) -> Result<Vec<Entry>, StoreError> {
        self.read_history(|connection| {
            let placeholders = vec!["?"; query.types.len()].join(", ");
            let type_filter = if query.types.is_empty() {
                String::new()
            } else {
                format!("AND e.type IN ({placeholders})")
            };
            let sql = format!(
                "SELECT e.seq, l.body FROM h.entry e JOIN log l ON l.pos = e.pos
                 WHERE e.account = ? AND e.seq < ? {type_filter} ORDER BY e.seq DESC LIMIT ?"
            );
            let mut values: Vec<rusqlite::types::Value> = vec![
                (query.account.raw() as i64).into(),
                query.before_seq.map_or(i64::MAX, |seq| seq as i64).into(),
            ];
            values.extend(
                query
                    .types
                    .iter()
                    .map(|t| rusqlite::types::Value::Text((*t).into())),
            );
            values.push((query.limit as i64).into());
            let mut statement = connection.prepare_cached(&sql).map_err(backend)?;
            let mut rows = statement.query(params_from_iter(values)).map_err(backend)?;
            let mut entries = Vec::new();
            while let Some(row) = rows.next().map_err(backend)? {
                let seq: i64 = row.get(0).map_err(backend)?;
                let body: Vec<u8> = row.get(1).map_err(backend)?;
                entries.push(decode(query.account.raw() as i64, seq, &body)?);
            }
            Ok(entries)
        })
    }

    fn settled(
        &self,
        account: AccountHandle,
        seq: u64,
        as_of: u64,
    ) -> Result<Option<SettledRecord>, StoreError> {
        self.read(|connection| {
            let mut statement = connection
                .prepare_cached(
                    "SELECT seq, as_of, body, sum FROM settled
                     WHERE account = ?1 AND seq = ?2 AND as_of <= ?3 ORDER BY as_of DESC LIMIT 1",
                )
                .map_err(backend)?;
            let mut rows = statement
                .query(params![
                    account.raw() as i64,
                    seq as i64,
                    as_of.min(i64::MAX as u64) as i64
                ])
                .map_err(backend)?;
            match rows.next().map_err(backend)? {
                Some(row) => Ok(Some(schema::checked_settled(account, row)?)),
                None => Ok(None),
            }
        })
    }

    fn settled_page(
        &self,
        account: AccountHandle,
        kind: SettledKind,
        before_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<SettledRecord>, StoreError> {
        self.read(|connection| {
            let mut statement = connection
                .prepare_cached(
                    "SELECT s.seq, s.as_of, s.body, s.sum FROM settled s
                     WHERE s.account = ?1 AND s.kind = ?2 AND s.seq < ?3
                       AND s.as_of = (SELECT MAX(as_of) FROM settled
                                      WHERE account = ?1 AND seq = s.seq)
                     ORDER BY s.seq DESC LIMIT ?4",
                )
                .map_err(backend)?;
            let mut rows = statement
                .query(params![
                    account.raw() as i64,
                    kind as i64,
                    before_seq.map_or(i64::MAX, |seq| seq.min(i64::MAX as u64) as i64),
                    limit as i64
                ])
                .map_err(backend)?;
            let mut page = Vec::new();
            while let Some(row) = rows.next().map_err(backend)? {
                page.push(schema::checked_settled(account, row)?);
            }
            Ok(page)
        })
    }

    fn usage(&self, query: &UsageQuery) -> Result<Vec<UsageRow>, StoreError> {
        self.read_history(|connection| usage(connection, query))
    }

    fn idempotency_record(&self, key: &KeyHash) -> Result<Option<IdempotencyRecord>, StoreError> {
        self.read(|connection| {
            let mut statement = connection
                .prepare_cached(&format!(
                    "{CHECKED_RECORD} WHERE substr(key, 1, 8) = ?2 AND key = ?1 ORDER BY id DESC LIMIT 1"
                ))
                .map_err(backend)?;
            let mut rows = statement
                .query(params![&key[..], &key[..8]])
                .map_err(backend)?;
            let Some(row) = rows.next().map_err(backend)? else {
                return Ok(None);
            };
            let (record, id, sound) = checked_record(row).map_err(backend)?;
            if !sound || record.key != *key {
                return Err(damaged_record(id));
            }
            Ok(Some(record))
        })
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

    fn idempotency_keys(&self, after: u64, limit: usize) -> Result<Vec<StoredKey>, StoreError> {
        self.read(|connection| {
            let mut statement = connection
                .prepare_cached(&format!(
                    "{CHECKED_RECORD} WHERE id > ?1 ORDER BY id LIMIT ?2"
                ))
                .map_err(backend)?;
            let mut rows = statement
                .query(params![after as i64, limit as i64])
                .map_err(backend)?;
            let mut keys = Vec::new();
            while let Some(row) = rows.next().map_err(backend)? {
                let (record, id, sound) = checked_record(row).map_err(backend)?;
                keys.push(StoredKey {
                    id: id as u64,
                    key: record.key,
                    expires_at: record.expires_at,
                    sound,
                });
            }
            Ok(keys)
        })
    }

    fn purge_idempotency(&self, now: Timestamp) -> Result<u64, StoreError> {
        if self.read_only {
            return Err(StoreError::ReadOnly);
        }
        // In chunks, each its own transaction: a commit waits for one chunk
        // at most, never for a whole day's worth of keys. Each record is
        // checked before it goes: a damaged expiry must not get a record
        // deleted unseen.
        let mut purged = 0;
        loop {
            let connection = lock(&self.writer);
            let mut last = None;
            let mut chunk = 0;
            {
                let mut statement = connection
                    .prepare_cached(&format!("{CHECKED_RECORD} ORDER BY id LIMIT 1000"))
                    .map_err(backend)?;
                let mut rows = statement.query([]).map_err(backend)?;
                while let Some(row) = rows.next().map_err(backend)? {
                    let (record, id, sound) = checked_record(row).map_err(backend)?;
                    if !sound {
                        return Err(damaged_record(id));
                    }
                    if record.expires_at > now {
                        break;
                    }
                    last = Some(id);
                    chunk += 1;
                }
            }
            if let Some(last) = last {
                connection
                    .prepare_cached("DELETE FROM idempotency_record WHERE id <= ?1")
                    .map_err(backend)?
                    .execute([last])
                    .map_err(backend)?;
            }
            purged += chunk;
            if chunk < 1000 {
                return Ok(purged);
            }
        }
    }

    fn insert_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        let connection = lock(&self.writer);
        connection
            .execute(
                "INSERT INTO api_key (id, secret_hash, scopes, created_at, revoked_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    key.id,
                    &key.secret_hash[..],
                    key.scopes.join(" "),
                    key.created_at.micros(),
                    key.revoked_at.map(|t| t.micros())
                ],
            )
            .map_err(backend)?;
        Ok(())
    }

    fn revoke_api_key(&self, id: &str, at: Timestamp) -> Result<bool, StoreError> {
        let connection = lock(&self.writer);
        let changed = connection
            .execute(
                "UPDATE api_key SET revoked_at = COALESCE(revoked_at, ?2) WHERE id = ?1",
                params![id, at.micros()],
            )
            .map_err(backend)?;
        Ok(changed > 0)
    }

    fn api_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        self.read(|connection| {
            let mut statement = connection
                .prepare("SELECT id, secret_hash, scopes, created_at, revoked_at FROM api_key ORDER BY created_at, id")
                .map_err(backend)?;
            let rows = statement
                .query_map([], |row| {
                    let hash: Vec<u8> = row.get(1)?;
                    let scopes: String = row.get(2)?;
                    Ok(ApiKeyRecord {
                        id: row.get(0)?,
                        secret_hash: hash.try_into().unwrap_or([0; 32]),
                        scopes: scopes.split_whitespace().map(str::to_owned).collect(),
                        created_at: Timestamp::from_micros(row.get(3)?),
                        revoked_at: row.get::<_, Option<i64>>(4)?.map(Timestamp::from_micros),
                    })
                })
                .map_err(backend)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(backend)
        })
    }

    fn setting(&self, name: &str) -> Result<Option<String>, StoreError> {
        self.read(|connection| {
            connection
                .query_row("SELECT value FROM setting WHERE name = ?1", [name], |row| {
                    row.get(0)
                })
                .optional()
                .map_err(backend)
        })
    }

    fn set_setting(&self, name: &str, value: &str) -> Result<(), StoreError> {
        let connection = lock(&self.writer);
        connection
            .execute(
                "INSERT INTO setting (name, value) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                params![name, value],
            )
            .map_err(backend)?;
        Ok(())
    }

    fn ping(&self) -> Result<(), StoreError> {
        self.read(|connection| {
            connection
                .query_row("SELECT 1", [], |_| Ok(()))
                .map_err(backend)
        })
    }
}

#[cfg(test)]
mod tests;
