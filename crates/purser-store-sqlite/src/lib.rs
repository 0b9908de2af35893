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

use purser_core::{AccountHandle, Entry, Timestamp};
use purser_store::{
    ApiKeyRecord, Commit, EntryQuery, GroupBy, IdempotencyRecord, KIND_KEYS, Store, StoreError,
    StoredSnapshot, UsageQuery, UsageRow, UsageTotals, day_key, decode_entry, encode_entry,
    usage_of,
};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params, params_from_iter};

/// Migrations, in order; `MIGRATIONS[i]` brings the schema to version `i + 1`.
const MIGRATIONS: &[&str] = &[
    r#"
    CREATE TABLE journal (
        pos     INTEGER PRIMARY KEY,
        account INTEGER NOT NULL,
        seq     INTEGER NOT NULL,
        type    TEXT    NOT NULL,
        at      INTEGER NOT NULL,
        body    BLOB    NOT NULL
    );
    CREATE UNIQUE INDEX journal_by_account ON journal (account, seq);
    CREATE TABLE charge (
        account  INTEGER NOT NULL,
        seq      INTEGER NOT NULL,
        at       INTEGER NOT NULL,
        task     TEXT,
        member   TEXT,
        credits  INTEGER NOT NULL,
        budget   INTEGER NOT NULL,
        rollover INTEGER NOT NULL,
        package  INTEGER NOT NULL,
        promo    INTEGER NOT NULL,
        debt     INTEGER NOT NULL,
        PRIMARY KEY (account, seq)
    ) WITHOUT ROWID;
    CREATE TABLE reversal (
        account   INTEGER NOT NULL,
        seq       INTEGER NOT NULL,
        debit_seq INTEGER NOT NULL,
        credits   INTEGER NOT NULL,
        budget    INTEGER NOT NULL,
        rollover  INTEGER NOT NULL,
        package   INTEGER NOT NULL,
        promo     INTEGER NOT NULL,
        debt      INTEGER NOT NULL,
        PRIMARY KEY (account, seq)
    ) WITHOUT ROWID;
    CREATE TABLE idempotency (
        key         TEXT    PRIMARY KEY,
        fingerprint BLOB    NOT NULL,
        status      INTEGER NOT NULL,
        body        BLOB    NOT NULL,
        expires_at  INTEGER NOT NULL
    );
    CREATE INDEX idempotency_by_expiry ON idempotency (expires_at);
    CREATE TABLE api_key (
        id          TEXT    PRIMARY KEY,
        secret_hash BLOB    NOT NULL UNIQUE,
        scopes      TEXT    NOT NULL,
        created_at  INTEGER NOT NULL,
        revoked_at  INTEGER
    );
    CREATE TABLE setting (
        name  TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
"#,
    r#"
    CREATE TABLE snapshot (
        partition INTEGER PRIMARY KEY,
        position  INTEGER NOT NULL,
        body      BLOB    NOT NULL
    );
"#,
    r#"
    -- One table clustered by account: a charge writes one random B-tree page
    -- (its account's), not three; the commit-order index only appends.
    CREATE TABLE entry (
        account   INTEGER NOT NULL,
        seq       INTEGER NOT NULL,
        pos       INTEGER NOT NULL,
        type      TEXT    NOT NULL,
        at        INTEGER NOT NULL,
        body      BLOB    NOT NULL,
        task      TEXT,
        member    TEXT,
        credits   INTEGER,
        budget    INTEGER,
        rollover  INTEGER,
        package   INTEGER,
        promo     INTEGER,
        debt      INTEGER,
        debit_seq INTEGER,
        PRIMARY KEY (account, seq)
    ) WITHOUT ROWID;
    CREATE UNIQUE INDEX entry_by_pos ON entry (pos);
    INSERT INTO entry
    SELECT j.account, j.seq, j.pos, j.type, j.at, j.body,
           c.task, c.member, COALESCE(c.credits, r.credits),
           COALESCE(c.budget, r.budget), COALESCE(c.rollover, r.rollover),
           COALESCE(c.package, r.package), COALESCE(c.promo, r.promo),
           COALESCE(c.debt, r.debt), r.debit_seq
      FROM journal j
      LEFT JOIN charge c ON c.account = j.account AND c.seq = j.seq
      LEFT JOIN reversal r ON r.account = j.account AND r.seq = j.seq;
    DROP TABLE journal;
    DROP TABLE charge;
    DROP TABLE reversal;
"#,
    r#"
    -- The journal in commit order only: a group commit appends to the end of
    -- one B-tree whatever accounts it touches. The per-account index moves
    -- to history.db, built from here.
    CREATE TABLE log (
        pos     INTEGER PRIMARY KEY,
        account INTEGER NOT NULL,
        seq     INTEGER NOT NULL,
        body    BLOB    NOT NULL
    );
    INSERT INTO log (pos, account, seq, body) SELECT pos, account, seq, body FROM entry ORDER BY pos;
    DROP TABLE entry;
"#,
    r#"
    -- Idempotency records are only read back whole (on start) and purged by
    -- expiry: appended in commit order, with no index on the (random) key.
    -- The newest record of a key wins.
    CREATE TABLE idempotency_log (
        id          INTEGER PRIMARY KEY,
        key         TEXT    NOT NULL,
        fingerprint BLOB    NOT NULL,
        status      INTEGER NOT NULL,
        body        BLOB    NOT NULL,
        expires_at  INTEGER NOT NULL
    );
    CREATE INDEX idempotency_log_by_expiry ON idempotency_log (expires_at);
    INSERT INTO idempotency_log (key, fingerprint, status, body, expires_at)
    SELECT key, fingerprint, status, body, expires_at FROM idempotency ORDER BY expires_at, key;
    DROP TABLE idempotency;
"#,
];

/// The history index's schema (`history.db`), created when missing. It is
/// derived data: a mismatch is repaired by deleting the file.
const HISTORY_SCHEMA: &str = r#"
    CREATE TABLE IF NOT EXISTS entry (
        account   INTEGER NOT NULL,
        seq       INTEGER NOT NULL,
        pos       INTEGER NOT NULL,
        type      TEXT    NOT NULL,
        at        INTEGER NOT NULL,
        task      TEXT,
        member    TEXT,
        credits   INTEGER,
        budget    INTEGER,
        rollover  INTEGER,
        package   INTEGER,
        promo     INTEGER,
        debt      INTEGER,
        debit_seq INTEGER,
        PRIMARY KEY (account, seq)
    ) WITHOUT ROWID;
    -- `pos`: the log is indexed up to here. `partial`: rows of a batch
    -- being indexed may go up to here (the batch is inserted in slices).
    CREATE TABLE IF NOT EXISTS indexed (
        one     INTEGER PRIMARY KEY CHECK (one = 1),
        pos     INTEGER NOT NULL,
        partial INTEGER NOT NULL DEFAULT 0
    );
    INSERT OR IGNORE INTO indexed (one, pos) VALUES (1, 0);
"#;

/// Log entries the indexer takes (and sorts) per batch.
const INDEX_CHUNK: i64 = 100_000;
/// Index rows inserted per transaction: the index's write lock is never held
/// longer than one slice, so a history read that needs the index to catch up
/// waits at most one slice of the background indexer before it takes over.
const INDEX_SLICE: usize = 2_000;
/// With fewer entries than this to index, the background indexer lingers up
/// to `INDEX_LINGER` for more: large sorted batches are what make it cheap
/// (many entries per history page).
const INDEX_BATCH: u64 = 100_000;
const INDEX_LINGER: Duration = Duration::from_millis(1_000);

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
    /// reads that need it to catch up.
    worker: Arc<Mutex<IndexWorker>>,
    indexer: Option<std::thread::JoinHandle<()>>,
}

/// Where the log and its index are, shared with the indexer thread.
#[derive(Debug, Default)]
struct IndexState {
    progress: Mutex<Progress>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct Progress {
    /// The last position committed to the log.
    committed: u64,
    /// The last position in the history index.
    indexed: u64,
    stop: bool,
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
        let history = open_history(&history_path, committed as u64)?;
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
            worker,
            indexer: Some(indexer),
        })
    }

    /// Brings the history index up to everything committed so far. The
    /// background indexer runs at idle priority; a read that finds it behind
    /// does the rest itself, at the reader's priority (waiting at most for
    /// the slice the background thread is in).
    fn wait_indexed(&self) -> Result<(), StoreError> {
        let target = lock(&self.index.progress).committed;
        let mut worker = lock(&self.worker);
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

fn migrate(connection: &Connection) -> Result<(), StoreError> {
    connection
        .execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);")
        .map_err(backend)?;
    let current: i64 = connection
        .query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_version",
            [],
            |row| row.get(0),
        )
        .map_err(backend)?;
    let supported = MIGRATIONS.len() as i64;
    if current > supported {
        return Err(StoreError::SchemaTooNew {
            found: current,
            supported,
        });
    }
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let version = index as i64 + 1;
        let script = format!(
            "BEGIN; {migration} INSERT INTO schema_version (version) VALUES ({version}); COMMIT;"
        );
        connection.execute_batch(&script).map_err(backend)?;
    }
    Ok(())
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
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
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

/// Opens `history.db`, creating its schema; starts it over when it claims
/// more than the log holds (a log restored from elsewhere).
fn open_history(path: &Path, committed: u64) -> Result<Connection, StoreError> {
    let open = || -> Result<Connection, StoreError> {
        let connection = Connection::open(path).map_err(backend)?;
        connection
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = NORMAL;
                 PRAGMA cache_size = -131072;
                 PRAGMA busy_timeout = 10000;",
            )
            .map_err(backend)?;
        connection.execute_batch(HISTORY_SCHEMA).map_err(backend)?;
        // A history.db from before batches were indexed in slices.
        if connection.prepare("SELECT partial FROM indexed").is_err() {
            connection
                .execute_batch("ALTER TABLE indexed ADD COLUMN partial INTEGER NOT NULL DEFAULT 0")
                .map_err(backend)?;
        }
        Ok(connection)
    };
    let connection = open()?;
    let indexed: i64 = connection
        .query_row("SELECT MAX(pos, partial) FROM indexed", [], |row| {
            row.get(0)
        })
        .map_err(backend)?;
    if indexed as u64 <= committed {
        return Ok(connection);
    }
    tracing::warn!(
        indexed,
        committed,
        "history.db is ahead of the journal: rebuilding it"
    );
    connection
        .execute_batch("DELETE FROM entry; UPDATE indexed SET pos = 0, partial = 0;")
        .map_err(backend)?;
    Ok(connection)
}

/// The background indexer: waits until there is a batch worth indexing (or
/// the linger runs out), then indexes it one slice per transaction,
/// releasing the index between slices. It runs at idle scheduling priority:
/// building the index is deferrable work and must not take CPU from the
/// commands in flight (history reads never wait for it; see
/// [`SqliteStore::wait_indexed`]).
fn run_indexer(worker: &Mutex<IndexWorker>, index: &IndexState) {
    lower_priority();
    loop {
        {
            let mut progress = lock(&index.progress);
            let mut linger_until: Option<std::time::Instant> = None;
            loop {
                if progress.stop {
                    return;
                }
                let pending = progress.committed.saturating_sub(progress.indexed);
                let now = std::time::Instant::now();
                if pending >= INDEX_BATCH || (pending > 0 && linger_until.is_some_and(|t| now >= t))
                {
                    break;
                }
                progress = if pending == 0 {
                    linger_until = None;
                    index
                        .changed
                        .wait(progress)
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                } else {
                    let until = *linger_until.get_or_insert(now + INDEX_LINGER);
                    index
                        .changed
                        .wait_timeout(progress, until.saturating_duration_since(now))
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .0
                };
            }
        }
        loop {
            if lock(&index.progress).stop {
                return;
            }
            let outcome = lock(worker).step(index, INDEX_SLICE);
            match outcome {
                Ok(true) => break,
                Ok(false) => {}
                Err(error) => {
                    tracing::error!(%error, "the background history indexer stopped; history reads index for themselves");
                    return;
                }
            }
        }
    }
}

/// Puts the calling thread in the idle scheduling class (Linux): it runs only
/// on CPU time nothing else wants.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        use thread_priority::unix::{
            NormalThreadSchedulePolicy, ThreadSchedulePolicy, set_thread_priority_and_policy,
            thread_native_id,
        };
        let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
        let set = set_thread_priority_and_policy(
            thread_native_id(),
            thread_priority::ThreadPriority::Min,
            idle,
        );
        if let Err(error) = set {
            tracing::debug!(?error, "could not lower the indexer's priority");
        }
    }
}

/// One row of the history index.
struct IndexRow {
    account: i64,
    seq: i64,
    pos: i64,
    kind: &'static str,
    at: i64,
    usage: Option<purser_store::Usage>,
}

/// The history index's writer: the log reader it takes entries from, the
/// `history.db` connection, and the batch it is part way through.
#[derive(Debug)]
struct IndexWorker {
    log: Connection,
    history: Connection,
    /// Rows read from the log after the indexed position, sorted by account
    /// and sequence; `next` is the first not yet inserted.
    batch: Vec<IndexRow>,
    next: usize,
    /// The last log position in `batch`.
    reached: i64,
}

impl std::fmt::Debug for IndexRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IndexRow({}, {})", self.account, self.seq)
    }
}

impl IndexWorker {
    /// Inserts up to `slice` rows of the current batch in one transaction
    /// (reading the next batch from the log first if there is none). The
    /// transaction that inserts a batch's last row also stores its position.
    /// Returns whether that batch is done (or there was nothing to index).
    fn step(&mut self, index: &IndexState, slice: usize) -> Result<bool, StoreError> {
        if self.next >= self.batch.len() {
            let from = lock(&index.progress).indexed;
            self.load(from)?;
            if self.batch.is_empty() {
                return Ok(true);
            }
        }
        let end = self.next.saturating_add(slice).min(self.batch.len());
        let last = end == self.batch.len();
        let transaction = self.history.transaction().map_err(backend)?;
        {
            if self.next == 0 {
                // Rows beyond the indexed position may be in before the batch
                // ends: `open_history` must know how far they go.
                transaction
                    .execute("UPDATE indexed SET partial = ?1", [self.reached])
                    .map_err(backend)?;
            }
            let mut insert = transaction
                .prepare_cached(
                    "INSERT OR IGNORE INTO entry (account, seq, pos, type, at, task, member, credits,
                                                  budget, rollover, package, promo, debt, debit_seq)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
                )
                .map_err(backend)?;
            for row in &self.batch[self.next..end] {
                let usage = row.usage.as_ref();
                let kind = |index: usize| usage.map(|u| u.by_kind[index]);
                let debit_seq = usage.filter(|u| !u.is_charge).map(|u| u.charge_seq as i64);
                insert
                    .execute(params![
                        row.account,
                        row.seq,
                        row.pos,
                        row.kind,
                        row.at,
                        usage.and_then(|u| u.task.as_deref()),
                        usage.and_then(|u| u.member.as_deref()),
                        usage.map(|u| u.credits),
                        kind(0),
                        kind(1),
                        kind(2),
                        kind(3),
                        kind(4),
                        debit_seq,
                    ])
                    .map_err(backend)?;
            }
            if last {
                transaction
                    .execute("UPDATE indexed SET pos = ?1", [self.reached])
                    .map_err(backend)?;
            }
        }
        transaction.commit().map_err(backend)?;
        self.next = end;
        if !last {
            return Ok(false);
        }
        self.batch.clear();
        self.next = 0;
        let mut progress = lock(&index.progress);
        progress.indexed = self.reached as u64;
        // Positions this process did not commit (another writer's log, or a
        // crash's tail) still count as committed.
        progress.committed = progress.committed.max(self.reached as u64);
        drop(progress);
        index.changed.notify_all();
        Ok(true)
    }

    /// Reads up to `INDEX_CHUNK` log entries after `from`, sorted for the index.
    fn load(&mut self, from: u64) -> Result<(), StoreError> {
        self.batch.clear();
        self.next = 0;
        let mut statement = self
            .log
            .prepare_cached(
                "SELECT pos, account, seq, body FROM log WHERE pos > ?1 ORDER BY pos LIMIT ?2",
            )
            .map_err(backend)?;
        let mut query = statement
            .query(params![from as i64, INDEX_CHUNK])
            .map_err(backend)?;
        while let Some(row) = query.next().map_err(backend)? {
            let pos: i64 = row.get(0).map_err(backend)?;
            let account: i64 = row.get(1).map_err(backend)?;
            let seq: i64 = row.get(2).map_err(backend)?;
            let body = row
                .get_ref(3)
                .map_err(backend)?
                .as_blob()
                .map_err(|e| StoreError::Backend(e.to_string()))?;
            let entry = decode(account, seq, body)?;
            self.reached = self.reached.max(pos);
            self.batch.push(IndexRow {
                account,
                seq,
                pos,
                kind: entry.body.type_name(),
                at: entry.at.micros(),
                usage: usage_of(&entry),
            });
        }
        self.batch
            .sort_unstable_by_key(|row| (row.account, row.seq));
        Ok(())
    }
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
        if commit.entries.is_empty() && commit.idempotency.is_empty() && commit.snapshots.is_empty()
        {
            return Ok(());
        }
        let mut connection = lock(&self.writer);
        let transaction = connection
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(backend)?;
        // The log's end (a prepared statement: this runs on every commit).
        let mut pos: i64 = transaction
            .prepare_cached("SELECT COALESCE(MAX(pos), 0) FROM log")
            .map_err(backend)?
            .query_row([], |row| row.get(0))
            .map_err(backend)?;
        if !commit.snapshots.is_empty() {
            // Everything committed before this transaction is in the snapshots.
            let position = pos;
            let mut insert = transaction
                .prepare_cached(
                    "INSERT INTO snapshot (partition, position, body) VALUES (?1, ?2, ?3)
                     ON CONFLICT (partition) DO UPDATE SET position = excluded.position, body = excluded.body",
                )
                .map_err(backend)?;
            for snapshot in commit.snapshots {
                insert
                    .execute(params![
                        i64::from(snapshot.partition),
                        position,
                        snapshot.body
                    ])
                    .map_err(backend)?;
            }
        }
        {
            let mut insert = transaction
                .prepare_cached("INSERT INTO log (pos, account, seq, body) VALUES (?1, ?2, ?3, ?4)")
                .map_err(backend)?;
            let mut buffer = Vec::with_capacity(256);
            for entry in commit.entries {
                buffer.clear();
                encode_entry(entry, &mut buffer);
                pos += 1;
                insert
                    .execute(params![
                        pos,
                        entry.account.raw() as i64,
                        entry.seq as i64,
                        buffer
                    ])
                    .map_err(backend)?;
            }
            let mut idempotency = transaction
                .prepare_cached(
                    "INSERT INTO idempotency_log (key, fingerprint, status, body, expires_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(backend)?;
            for record in commit.idempotency {
                idempotency
                    .execute(params![
                        record.key,
                        &record.fingerprint[..],
                        record.status,
                        record.body,
                        record.expires_at.micros()
                    ])
                    .map_err(backend)?;
            }
        }
        transaction.commit().map_err(backend)?;
        if !commit.entries.is_empty() {
            let mut progress = lock(&self.index.progress);
            progress.committed = progress.committed.max(pos as u64);
            drop(progress);
            self.index.changed.notify_all();
        }
        Ok(())
    }

    fn replay_after(
        &self,
        position: u64,
        visit: &mut dyn FnMut(u64, Entry) -> Result<(), StoreError>,
    ) -> Result<u64, StoreError> {
        self.read(|connection| {
            let mut statement = connection
                .prepare("SELECT pos, account, seq, body FROM log WHERE pos > ?1 ORDER BY pos")
                .map_err(backend)?;
            let mut rows = statement.query([position as i64]).map_err(backend)?;
            let mut count = 0;
            while let Some(row) = rows.next().map_err(backend)? {
                let pos: i64 = row.get(0).map_err(backend)?;
                let body = row
                    .get_ref(3)
                    .map_err(backend)?
                    .as_blob()
                    .map_err(|e| StoreError::Backend(e.to_string()))?;
                let entry = decode(
                    row.get(1).map_err(backend)?,
                    row.get(2).map_err(backend)?,
                    body,
                )?;
                visit(pos as u64, entry)?;
                count += 1;
            }
            Ok(count)
        })
    }

    fn snapshots(&self) -> Result<Vec<StoredSnapshot>, StoreError> {
        self.read(|connection| {
            let mut statement = connection
                .prepare("SELECT partition, position, body FROM snapshot ORDER BY partition")
                .map_err(backend)?;
            let rows = statement
                .query_map([], |row| {
                    Ok(StoredSnapshot {
                        partition: row.get::<_, i64>(0)? as u16,
                        position: row.get::<_, i64>(1)? as u64,
                        body: row.get(2)?,
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

    fn usage(&self, query: &UsageQuery) -> Result<Vec<UsageRow>, StoreError> {
        self.read_history(|connection| usage(connection, query))
    }

    fn idempotency_records(&self, now: Timestamp) -> Result<Vec<IdempotencyRecord>, StoreError> {
        self.read(|connection| {
            let mut statement = connection
                .prepare(
                    "SELECT key, fingerprint, status, body, expires_at FROM idempotency_log
                     WHERE expires_at > ?1 ORDER BY id",
                )
                .map_err(backend)?;
            let rows = statement
                .query_map([now.micros()], |row| {
                    let fingerprint: Vec<u8> = row.get(1)?;
                    Ok(IdempotencyRecord {
                        key: row.get(0)?,
                        fingerprint: fingerprint.try_into().unwrap_or([0; 32]),
                        status: row.get(2)?,
                        body: row.get(3)?,
                        expires_at: Timestamp::from_micros(row.get(4)?),
                    })
                })
                .map_err(backend)?;
            // The newest record of a key replaces older ones.
            let mut newest = std::collections::HashMap::new();
            for record in rows {
                let record = record.map_err(backend)?;
                newest.insert(record.key.clone(), record);
            }
            let mut records: Vec<IdempotencyRecord> = newest.into_values().collect();
            records.sort_by(|a, b| (a.expires_at, &a.key).cmp(&(b.expires_at, &b.key)));
            Ok(records)
        })
    }

    fn purge_idempotency(&self, now: Timestamp) -> Result<u64, StoreError> {
        let connection = lock(&self.writer);
        let purged = connection
            .execute(
                "DELETE FROM idempotency_log WHERE expires_at <= ?1",
                [now.micros()],
            )
            .map_err(backend)?;
        Ok(purged as u64)
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

/// Usage grouped in SQL: charges in the window, minus their reversals
/// (attributed to the charge's own time, task and member).
fn usage(connection: &Connection, query: &UsageQuery) -> Result<Vec<UsageRow>, StoreError> {
    let account = query.account.raw() as i64;
    let from = query.from.map_or(i64::MIN, |t| t.micros());
    let to = query.to.map_or(i64::MAX, |t| t.micros());
    let mut totals = UsageTotals::default();
    let mut add =
        |key: Option<String>, micros: i64, count: i64| totals.add(key, micros, count.max(0) as u64);
    let window = "c.account = ?1 AND c.type IN ('debit', 'capture') AND c.at >= ?2 AND c.at < ?3";
    let day = "CAST(c.at / 86400000000 - (c.at < 0 AND c.at % 86400000000 != 0) AS TEXT)";
    if matches!(query.group_by, GroupBy::Kind | GroupBy::DayKind) {
        let group = if query.group_by == GroupBy::DayKind {
            day
        } else {
            "NULL"
        };
        let columns = "SUM(c.budget), SUM(c.rollover), SUM(c.package), SUM(c.promo), SUM(c.debt)";
        let counts = "SUM(c.budget != 0), SUM(c.rollover != 0), SUM(c.package != 0), SUM(c.promo != 0), SUM(c.debt != 0)";
        let charges =
            format!("SELECT {group}, {columns}, {counts} FROM entry c WHERE {window} GROUP BY 1");
        let reversals = format!(
            "SELECT {group}, SUM(r.budget), SUM(r.rollover), SUM(r.package), SUM(r.promo), SUM(r.debt), 0, 0, 0, 0, 0
             FROM entry r JOIN entry c ON c.account = r.account AND c.seq = r.debit_seq
             WHERE r.account = ?1 AND r.type = 'reversal' AND {window} GROUP BY 1"
        );
        for sql in [charges, reversals] {
            let mut statement = connection.prepare_cached(&sql).map_err(backend)?;
            let mut rows = statement
                .query(params![account, from, to])
                .map_err(backend)?;
            while let Some(row) = rows.next().map_err(backend)? {
                let day: Option<String> = row.get(0).map_err(backend)?;
                let day = day.and_then(|days| days.parse::<i64>().ok()).map(day_key);
                for (index, kind) in KIND_KEYS.iter().enumerate() {
                    let credits: Option<i64> = row.get(index + 1).map_err(backend)?;
                    let count: Option<i64> = row.get(index + 6).map_err(backend)?;
                    if let Some(credits) = credits {
                        let key = match &day {
                            Some(day) => format!("{day}/{kind}"),
                            None => (*kind).to_owned(),
                        };
                        add(Some(key), credits, count.unwrap_or(0));
                    }
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
            "SELECT {key}, SUM(c.credits), COUNT(*) FROM entry c WHERE {window} GROUP BY {key}"
        );
        let reversals = format!(
            "SELECT {key}, SUM(r.credits), 0 FROM entry r
             JOIN entry c ON c.account = r.account AND c.seq = r.debit_seq
             WHERE r.account = ?1 AND r.type = 'reversal' AND {window} GROUP BY {key}"
        );
        for sql in [charges, reversals] {
            let mut statement = connection.prepare_cached(&sql).map_err(backend)?;
            let mut rows = statement
                .query(params![account, from, to])
                .map_err(backend)?;
            while let Some(row) = rows.next().map_err(backend)? {
                let mut key: Option<String> = row.get(0).map_err(backend)?;
                if query.group_by == GroupBy::Day {
                    key = key.and_then(|days| days.parse::<i64>().ok()).map(day_key);
                }
                let credits: i64 = row.get(1).map_err(backend)?;
                let count: i64 = row.get(2).map_err(backend)?;
                add(key, credits, count);
            }
        }
    }
    Ok(totals.into_rows())
}

#[cfg(test)]
mod tests {
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
        // Rows claimed beyond the log's end (a log restored from elsewhere):
        // the index is rebuilt.
        history()
            .execute_batch("UPDATE indexed SET pos = 0, partial = 1000000")
            .unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(store.entries(&query).unwrap(), before);
        let rows: i64 = history()
            .query_row("SELECT COUNT(*) FROM entry", [], |row| row.get(0))
            .unwrap();
        assert_eq!(rows as usize, journal.len());
    }

    #[test]
    fn days_before_the_epoch_group_correctly() {
        assert_eq!(day_key(0), "1970-01-01");
        assert_eq!(day_key(-1), "1969-12-31");
        assert_eq!(day_key(20_781), "2026-11-24");
    }
}
