//! `verify`'s checks of what `purser.db` and `history.db` hold besides the
//! journal: SQLite's own integrity check of both files, every idempotency
//! record against its checksum, and every row of the history index against
//! the log entry it was derived from.

use super::*;

impl SqliteStore {
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
    let mut statement = connection
        .prepare(
            "SELECT key, fingerprint, status, body, expires_at, id, pos, sum
               FROM idempotency_log ORDER BY id",
        )
        .map_err(backend)?;
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
        let id: i64 = row.get(5).map_err(backend)?;
        let checked = record_of(row, 0).and_then(|record| {
            let (pos, sum): (i64, i64) = (row.get(6)?, row.get(7)?);
            Ok(record_sum(&record, pos as u64) == sum)
        });
        match checked {
            Ok(true) => {}
            Ok(false) => found(structure(
                what,
                format!("record {id} does not match its checksum"),
            )),
            Err(error) => found(structure(what, format!("record {id}: {error}"))),
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
