//! The history index (`history.db`): built off the commit path by a
//! background thread at idle priority, from sorted batches of the log.

use super::*;

/// Log entries the indexer takes (and sorts) per batch.
pub(crate) const INDEX_CHUNK: i64 = 100_000;
/// Index rows inserted per transaction: the index's write lock is never held
/// longer than one slice, so a history read that needs the index to catch up
/// waits at most one slice of the background indexer before it takes over.
pub(crate) const INDEX_SLICE: usize = 2_000;
/// With fewer entries than this to index, the background indexer lingers up
/// to `INDEX_LINGER` for more: large sorted batches are what make it cheap
/// (many entries per history page).
pub(crate) const INDEX_BATCH: u64 = 100_000;
pub(crate) const INDEX_LINGER: Duration = Duration::from_millis(1_000);

/// Where the log and its index are, shared with the indexer thread.
#[derive(Debug, Default)]
pub(crate) struct IndexState {
    pub(crate) progress: Mutex<Progress>,
    pub(crate) changed: Condvar,
}

#[derive(Debug, Default)]
pub(crate) struct Progress {
    /// The last position committed to the log.
    pub(crate) committed: u64,
    /// The last position in the history index.
    pub(crate) indexed: u64,
    pub(crate) stop: bool,
}

/// Opens `history.db`, creating its schema. An index that claims more than
/// the log holds is kept as it is: it is evidence that the log lost
/// acknowledged commits (see `witnesses`), never a reason to rebuild it
/// silently; `accept_loss` rebuilds it once an operator has decided.
pub(crate) fn open_history(path: &Path) -> Result<Connection, StoreError> {
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
}

/// How far the history index (attached as `h`) says the log reached, what
/// it holds beyond the log's end `committed` (the first 20), and how many
/// more.
pub(crate) fn history_ahead(
    connection: &Connection,
    committed: i64,
) -> Result<(u64, Vec<purser_store::Lost>, u64), StoreError> {
    let indexed: i64 = connection
        .query_row("SELECT MAX(pos, partial) FROM h.indexed", [], |row| {
            row.get(0)
        })
        .map_err(backend)?;
    let mut lost = Vec::new();
    let mut more = 0;
    if indexed > committed {
        let mut statement = connection
            .prepare(
                "SELECT account, seq, pos, type FROM h.entry WHERE pos > ?1 ORDER BY pos LIMIT 20",
            )
            .map_err(backend)?;
        let mut rows = statement.query([committed]).map_err(backend)?;
        while let Some(row) = rows.next().map_err(backend)? {
            lost.push(purser_store::Lost {
                account: row.get::<_, i64>(0).map_err(backend)? as u64,
                seq: row.get::<_, i64>(1).map_err(backend)? as u64,
                pos: row.get::<_, i64>(2).map_err(backend)? as u64,
                kind: row.get(3).map_err(backend)?,
            });
        }
        let count: i64 = connection
            .query_row(
                "SELECT COUNT(*) FROM h.entry WHERE pos > ?1",
                [committed],
                |row| row.get(0),
            )
            .map_err(backend)?;
        more = (count as u64).saturating_sub(lost.len() as u64);
    }
    Ok((indexed.max(0) as u64, lost, more))
}

/// The background indexer: waits until there is a batch worth indexing (or
/// the linger runs out), then indexes it one slice per transaction,
/// releasing the index between slices. It runs at idle scheduling priority:
/// building the index is deferrable work and must not take CPU from the
/// commands in flight (history reads never wait for it; see
/// [`SqliteStore::wait_indexed`]).
pub(crate) fn run_indexer(worker: &Mutex<IndexWorker>, index: &IndexState) {
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
pub(crate) fn lower_priority() {
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
pub(crate) struct IndexRow {
    pub(crate) account: i64,
    pub(crate) seq: i64,
    pub(crate) pos: i64,
    pub(crate) kind: &'static str,
    pub(crate) at: i64,
    pub(crate) usage: Option<purser_store::Usage>,
}

/// The history index's writer: the log reader it takes entries from, the
/// `history.db` connection, and the batch it is part way through.
#[derive(Debug)]
pub(crate) struct IndexWorker {
    pub(crate) log: Connection,
    pub(crate) history: Connection,
    /// Rows read from the log after the indexed position, sorted by account
    /// and sequence; `next` is the first not yet inserted.
    pub(crate) batch: Vec<IndexRow>,
    pub(crate) next: usize,
    /// The last log position in `batch`.
    pub(crate) reached: i64,
}

/// What a history row says of its entry, as compared by `verify`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Facts {
    pos: i64,
    kind: String,
    at: i64,
    task: Option<String>,
    member: Option<String>,
    credits: Option<i64>,
    parts: [Option<i64>; 5],
    debit_seq: Option<i64>,
}

impl IndexRow {
    pub(crate) fn facts(&self) -> Facts {
        let usage = self.usage.as_ref();
        Facts {
            pos: self.pos,
            kind: self.kind.to_owned(),
            at: self.at,
            task: usage.and_then(|u| u.task.clone()),
            member: usage.and_then(|u| u.member.clone()),
            credits: usage.map(|u| u.credits),
            parts: std::array::from_fn(|index| usage.map(|u| u.by_kind[index])),
            debit_seq: usage.filter(|u| !u.is_charge).map(|u| u.charge_seq as i64),
        }
    }

    /// The facts of a history row selected as `pos, type, at, task, member,
    /// credits, budget, rollover, package, promo, debt, debit_seq`.
    pub(crate) fn read_facts(row: &rusqlite::Row<'_>) -> rusqlite::Result<Facts> {
        Ok(Facts {
            pos: row.get(0)?,
            kind: row.get(1)?,
            at: row.get(2)?,
            task: row.get(3)?,
            member: row.get(4)?,
            credits: row.get(5)?,
            parts: [
                row.get(6)?,
                row.get(7)?,
                row.get(8)?,
                row.get(9)?,
                row.get(10)?,
            ],
            debit_seq: row.get(11)?,
        })
    }
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
    pub(crate) fn step(&mut self, index: &IndexState, slice: usize) -> Result<bool, StoreError> {
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
        // Mostly given back: up to INDEX_CHUNK rows (some 20 MiB) would
        // otherwise stay while the indexer idles.
        self.batch.clear();
        self.batch.shrink_to(INDEX_SLICE);
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
