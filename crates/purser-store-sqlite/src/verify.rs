//! `verify`'s read-only open, and its checks of what `purser.db` and `history.db` hold besides the
//! journal: SQLite's own integrity check of both files, every idempotency
//! record against its checksum, and every row of the history index against
//! the log entry it was derived from.

use super::*;

/// What a path keeps unescaped in an SQLite URI.
const PATH_IN_URI: percent_encoding::AsciiSet = percent_encoding::NON_ALPHANUMERIC
    .remove(b'/')
    .remove(b'.')
    .remove(b'-')
    .remove(b'_');

impl SqliteStore {
    /// Opens `purser.db` (and `history.db`, if present) read-only, for
    /// `verify`: no migration, no indexer, no rebuild, no lock (a serving
    /// purser may keep writing). Every read sees one consistent state: one
    /// read transaction, which reads the history index's position before
    /// the log's, so the index is never seen ahead of a log that is whole.
    pub fn open_read_only(data_dir: &Path) -> Result<SqliteStore, StoreError> {
        let path = data_dir.join("purser.db");
        if !path.exists() {
            return Err(StoreError::Backend(format!(
                "no purser store in {}",
                data_dir.display()
            )));
        }
        let history_path = data_dir.join("history.db");
        let has_history = history_path.exists();
        // Before anything of the log is read (see `marker_at_open`).
        let marker_at_open = read_marker(data_dir);
        let mut connection = open_reader(&path, None)?;
        let has_schema: i64 = connection
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE name = 'schema_version'",
                [],
                |row| row.get(0),
            )
            .map_err(backend)?;
        if has_schema == 0 {
            // No journal at all (a WAL lost before its first checkpoint):
            // checked as an empty store, so every witness of what was
            // there (history.db, purser.end) still speaks.
            tracing::warn!("{} holds no purser schema", path.display());
            connection = Connection::open_with_flags(
                ":memory:",
                OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_URI,
            )
            .map_err(backend)?;
            migrate(&connection)?;
        }
        check_version(&connection)?;
        if has_history {
            // Read-only whatever the main connection is (a URI with
            // mode=ro; SQLITE_OPEN_URI is set on both kinds of connection).
            let uri = format!(
                "file:{}?mode=ro",
                percent_encoding::utf8_percent_encode(
                    &history_path.to_string_lossy(),
                    &PATH_IN_URI
                )
            );
            connection
                .execute("ATTACH DATABASE ?1 AS h", [uri])
                .map_err(backend)?;
        }
        connection.execute_batch("BEGIN").map_err(backend)?;
        let index = Arc::new(IndexState::default());
        {
            let mut progress = lock(&index.progress);
            if has_history {
                let indexed: Option<i64> = connection
                    .query_row("SELECT MAX(pos, partial) FROM h.indexed", [], |row| {
                        row.get(0)
                    })
                    .optional()
                    .map_err(backend)?;
                progress.indexed = indexed.unwrap_or(0) as u64;
            }
            let committed: i64 = connection
                .query_row("SELECT COALESCE(MAX(pos), 0) FROM log", [], |row| {
                    row.get(0)
                })
                .map_err(backend)?;
            progress.committed = committed as u64;
        }
        Ok(SqliteStore {
            path,
            history_path,
            writer: Mutex::new(connection),
            readers: Mutex::new(Vec::new()),
            index,
            worker: None,
            indexer: None,
            read_only: true,
            history: has_history,
            _lock: None,
            marker: None,
            marker_at_open: Mutex::new(marker_at_open),
        })
    }

    pub(crate) fn check_sqlite_structures(
        &self,
        found: &mut dyn FnMut(Damage),
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), StoreError> {
        self.read(|connection| {
            let mut files = vec![("main", "purser.db")];
            if self.history {
                files.push(("h", "history.db"));
            }
            for (schema, file) in files {
                integrity(connection, schema, file, found)?;
            }
            records(connection, found)?;
            settled(connection, found)?;
            events(connection, found)?;
            if self.history {
                history(connection, found, progress)?;
            }
            Ok(())
        })
    }
}

fn structure(what: &str, detail: String) -> Damage {
    Damage::Structure {
        what: what.to_owned(),
        detail,
    }
}

/// SQLite's `integrity_check` of one attached file.
fn integrity(
    connection: &Connection,
    schema: &str,
    file: &str,
    found: &mut dyn FnMut(Damage),
) -> Result<(), StoreError> {
    let mut statement = connection
        .prepare(&format!("PRAGMA {schema}.integrity_check(100)"))
        .map_err(backend)?;
    let mut rows = statement.query([]).map_err(backend)?;
    loop {
        match rows.next() {
            Ok(Some(row)) => {
                let line: String = row.get(0).map_err(backend)?;
                if line != "ok" {
                    found(structure(file, line));
                }
            }
            Ok(None) => return Ok(()),
            Err(error) => {
                found(structure(file, format!("integrity check failed: {error}")));
                return Ok(());
            }
        }
    }
}

/// Every idempotency record (expired ones too) against its checksum.
fn records(connection: &Connection, found: &mut dyn FnMut(Damage)) -> Result<(), StoreError> {
    let what = "the idempotency records";
    let mut statement = connection.prepare(CHECKED_RECORD).map_err(backend)?;
    let mut rows = statement.query([]).map_err(backend)?;
    loop {
        let row = match rows.next() {
            Ok(Some(row)) => row,
            Ok(None) => return Ok(()),
            Err(error) => {
                found(structure(what, format!("unreadable: {error}")));
                return Ok(());
            }
        };
        match checked_record(row) {
            Ok((_, _, true)) => {}
            Ok((_, id, false)) => found(structure(
                what,
                format!("record {id} does not match its checksum"),
            )),
            Err(error) => found(structure(what, format!("a record: {error}"))),
        }
    }
}

/// Every stored version of a settled object against its checksum.
fn settled(connection: &Connection, found: &mut dyn FnMut(Damage)) -> Result<(), StoreError> {
    let what = "the settled objects";
    let mut statement = connection
        .prepare("SELECT seq, as_of, body, sum, account FROM settled ORDER BY account, seq, as_of")
        .map_err(backend)?;
    let mut rows = statement.query([]).map_err(backend)?;
    loop {
        match rows.next() {
            Ok(Some(row)) => {
                let account = row
                    .get::<_, i64>(4)
                    .map(|raw| purser_core::AccountHandle::from_raw(raw as u64));
                let checked = account
                    .map_err(backend)
                    .and_then(|account| crate::schema::checked_settled(account, row));
                if let Err(error) = checked {
                    found(structure(what, error.to_string()));
                }
            }
            Ok(None) => return Ok(()),
            Err(error) => {
                found(structure(what, format!("unreadable: {error}")));
                return Ok(());
            }
        }
    }
}

/// Every event of the outbox against its checksum.
fn events(connection: &Connection, found: &mut dyn FnMut(Damage)) -> Result<(), StoreError> {
    let what = "the outbox (events)";
    let mut statement = connection
        .prepare(&format!("{CHECKED_EVENT} ORDER BY pos"))
        .map_err(backend)?;
    let mut rows = statement.query([]).map_err(backend)?;
    loop {
        match rows.next() {
            Ok(Some(row)) => {
                if let Err(error) = checked_event(row) {
                    found(structure(what, error.to_string()));
                }
            }
            Ok(None) => return Ok(()),
            Err(error) => {
                found(structure(what, format!("unreadable: {error}")));
                return Ok(());
            }
        }
    }
}

/// Every indexed log entry has its history row, with the facts the indexer
/// derives from the entry; the index holds no other row up to its position.
fn history(
    connection: &Connection,
    found: &mut dyn FnMut(Damage),
    progress: &mut dyn FnMut(u64),
) -> Result<(), StoreError> {
    let what = "the history index (history.db)";
    let indexed: i64 = connection
        .query_row("SELECT pos FROM h.indexed", [], |row| row.get(0))
        .map_err(backend)?;
    let mut log = connection
        .prepare("SELECT pos, account, seq, body FROM log WHERE pos <= ?1 ORDER BY pos")
        .map_err(backend)?;
    let mut lookup = connection
        .prepare(
            "SELECT pos, type, at, task, member, credits, budget, rollover, package, promo, debt, debit_seq
               FROM h.entry WHERE account = ?1 AND seq = ?2",
        )
        .map_err(backend)?;
    let mut rows = log.query([indexed]).map_err(backend)?;
    let mut checked: i64 = 0;
    let mut reported = 0;
    while let Some(row) = rows.next().map_err(backend)? {
        let (pos, account, seq): (i64, i64, i64) = (
            row.get(0).map_err(backend)?,
            row.get(1).map_err(backend)?,
            row.get(2).map_err(backend)?,
        );
        checked += 1;
        if checked % 10_000 == 0 {
            progress(10_000);
        }
        let body = row
            .get_ref(3)
            .map_err(backend)?
            .as_blob()
            .unwrap_or_default();
        // Entries that do not decode are the journal check's finding.
        let Ok(entry) = decode_entry(body) else {
            continue;
        };
        let expected = IndexRow {
            account,
            seq,
            pos,
            kind: entry.body.type_name(),
            at: entry.at.micros(),
            usage: usage_of(&entry),
        };
        let stored = lookup
            .query_row(params![account, seq], IndexRow::read_facts)
            .optional()
            .map_err(backend)?;
        let problem = match stored {
            None => Some("is missing".to_owned()),
            Some(stored) if stored != expected.facts() => Some(format!(
                "differs from the log: indexed {stored:?}, the log says {:?}",
                expected.facts()
            )),
            Some(_) => None,
        };
        if let Some(problem) = problem {
            reported += 1;
            if reported <= 100 {
                found(structure(
                    what,
                    format!(
                        "the row of account {:?} entry {seq} (position {pos}) {problem}",
                        AccountHandle::from_raw(account as u64)
                    ),
                ));
            }
        }
    }
    progress((checked % 10_000) as u64);
    let rows: i64 = connection
        .query_row(
            "SELECT COUNT(*) FROM h.entry WHERE pos <= ?1",
            [indexed],
            |row| row.get(0),
        )
        .map_err(backend)?;
    if rows != checked {
        found(structure(
            what,
            format!("{rows} rows up to position {indexed}, the log has {checked} entries there"),
        ));
    }
    Ok(())
}
