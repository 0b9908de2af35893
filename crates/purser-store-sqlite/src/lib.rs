//! purser-store-sqlite: the embedded default store.
//!
//! One SQLite database file in the data directory, in WAL mode with
//! `synchronous=FULL`: each group commit is one transaction and one fsync.
//! The `entry` table holds the journal clustered by account (history and
//! reports read one account's range), its commit order in `pos` (an index that
//! only appends), and the usage facts of charges and reversals in columns that
//! reports group by: a charge costs one random B-tree page, its account's. Schema changes
//! are versioned migrations, applied forward-only on open.
//!
//! This crate holds no business rules: it stores entries the core produced
//! and answers queries about them.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

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
];

/// The SQLite store. The writer connection is used by the committer; readers
/// take a connection from a small pool, so history queries never wait for a
/// commit (WAL readers see the last committed state).
#[derive(Debug)]
pub struct SqliteStore {
    path: std::path::PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
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
    /// Opens (creating if needed) `purser.db` in `data_dir` and migrates it.
    pub fn open(data_dir: &Path) -> Result<SqliteStore, StoreError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| StoreError::Backend(format!("{}: {e}", data_dir.display())))?;
        let path = data_dir.join("purser.db");
        let writer = Connection::open(&path).map_err(backend)?;
        writer
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = FULL;
                 PRAGMA foreign_keys = OFF;
                 PRAGMA cache_size = -262144;
                 PRAGMA mmap_size = 4294967296;
                 PRAGMA wal_autocheckpoint = 2000;
                 PRAGMA busy_timeout = 10000;",
            )
            .map_err(backend)?;
        migrate(&writer)?;
        Ok(SqliteStore {
            path,
            writer: Mutex::new(writer),
            readers: Mutex::new(Vec::new()),
        })
    }

    fn read<T>(
        &self,
        work: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let connection = match lock(&self.readers).pop() {
            Some(connection) => connection,
            None => {
                let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
                let connection = Connection::open_with_flags(&self.path, flags).map_err(backend)?;
                connection
                    .busy_timeout(std::time::Duration::from_secs(10))
                    .map_err(backend)?;
                connection
            }
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
        if !commit.snapshots.is_empty() {
            // Everything committed before this transaction is in the snapshots.
            let position: i64 = transaction
                .query_row("SELECT COALESCE(MAX(pos), 0) FROM entry", [], |row| {
                    row.get(0)
                })
                .map_err(backend)?;
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
            let mut pos: i64 = transaction
                .query_row("SELECT COALESCE(MAX(pos), 0) FROM entry", [], |row| {
                    row.get(0)
                })
                .map_err(backend)?;
            let mut insert = transaction
                .prepare_cached(
                    "INSERT INTO entry (account, seq, pos, type, at, body, task, member, credits,
                                        budget, rollover, package, promo, debt, debit_seq)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
                )
                .map_err(backend)?;
            let mut buffer = Vec::with_capacity(256);
            for entry in commit.entries {
                buffer.clear();
                encode_entry(entry, &mut buffer);
                pos += 1;
                let usage = usage_of(entry);
                let kind = |index: usize| usage.as_ref().map(|u| u.by_kind[index]);
                let debit_seq = usage
                    .as_ref()
                    .filter(|u| !u.is_charge)
                    .map(|u| u.charge_seq as i64);
                insert
                    .execute(params![
                        entry.account.raw() as i64,
                        entry.seq as i64,
                        pos,
                        entry.body.type_name(),
                        entry.at.micros(),
                        buffer,
                        usage.as_ref().and_then(|u| u.task.as_deref()),
                        usage.as_ref().and_then(|u| u.member.as_deref()),
                        usage.as_ref().map(|u| u.credits),
                        kind(0),
                        kind(1),
                        kind(2),
                        kind(3),
                        kind(4),
                        debit_seq,
                    ])
                    .map_err(backend)?;
            }
            let mut idempotency = transaction
                .prepare_cached(
                    "INSERT OR REPLACE INTO idempotency (key, fingerprint, status, body, expires_at)
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
        transaction.commit().map_err(backend)
    }

    fn replay_after(
        &self,
        position: u64,
        visit: &mut dyn FnMut(u64, Entry) -> Result<(), StoreError>,
    ) -> Result<u64, StoreError> {
        self.read(|connection| {
            let mut statement = connection
                .prepare("SELECT pos, account, seq, body FROM entry WHERE pos > ?1 ORDER BY pos")
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
        self.read(|connection| {
            let body: Option<Vec<u8>> = connection
                .prepare_cached("SELECT body FROM entry WHERE account = ?1 AND seq = ?2")
                .map_err(backend)?
                .query_row(params![account.raw() as i64, seq as i64], |row| row.get(0))
                .optional()
                .map_err(backend)?;
            body.map(|body| decode(account.raw() as i64, seq as i64, &body))
                .transpose()
        })
    }

    fn entries(&self, query: &EntryQuery) -> Result<Vec<Entry>, StoreError> {
        self.read(|connection| {
            let placeholders = vec!["?"; query.types.len()].join(", ");
            let type_filter = if query.types.is_empty() {
                String::new()
            } else {
                format!("AND type IN ({placeholders})")
            };
            let sql = format!(
                "SELECT seq, body FROM entry WHERE account = ? AND seq < ? {type_filter} ORDER BY seq DESC LIMIT ?"
            );
            let mut values: Vec<rusqlite::types::Value> = vec![
                (query.account.raw() as i64).into(),
                query.before_seq.map_or(i64::MAX, |seq| seq as i64).into(),
            ];
            values.extend(query.types.iter().map(|t| rusqlite::types::Value::Text((*t).into())));
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
        self.read(|connection| usage(connection, query))
    }

    fn idempotency_records(&self, now: Timestamp) -> Result<Vec<IdempotencyRecord>, StoreError> {
        self.read(|connection| {
            let mut statement = connection
                .prepare(
                    "SELECT key, fingerprint, status, body, expires_at FROM idempotency
                     WHERE expires_at > ?1 ORDER BY expires_at, key",
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
            rows.collect::<Result<Vec<_>, _>>().map_err(backend)
        })
    }

    fn purge_idempotency(&self, now: Timestamp) -> Result<u64, StoreError> {
        let connection = lock(&self.writer);
        let purged = connection
            .execute(
                "DELETE FROM idempotency WHERE expires_at <= ?1",
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
        let (_dir, store) = fresh();
        let journal = purser_store::conformance::sample_journal();
        store
            .commit(Commit {
                entries: &journal[..3],
                idempotency: &[],
                snapshots: &[],
            })
            .unwrap();
        // Committing the same entries again violates (account, seq) uniqueness
        // half-way through the batch: the whole batch must roll back.
        let error = store.commit(Commit {
            entries: &journal[2..6],
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
    }

    #[test]
    fn days_before_the_epoch_group_correctly() {
        assert_eq!(day_key(0), "1970-01-01");
        assert_eq!(day_key(-1), "1969-12-31");
        assert_eq!(day_key(20_781), "2026-11-24");
    }
}
