//! The schemas: `purser.db`'s forward-only migrations and `history.db`'s
//! tables (derived data, recreated when missing).

use super::*;

/// Migrations, in order; `MIGRATIONS[i]` brings the schema to version `i + 1`.
pub(crate) const MIGRATIONS: &[&str] = &[
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
    r#"
    -- The checked journal (purser_store::journal): every row's checksum, the
    -- chain hash on each group commit's last row; idempotency records with
    -- the journal position their commit ended at, and a checksum; incidents
    -- (loss an operator accepted). Rows from before are sealed by
    -- `seal_existing` in the same transaction.
    ALTER TABLE log ADD COLUMN sum INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE log ADD COLUMN chain BLOB;
    ALTER TABLE idempotency_log ADD COLUMN pos INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE idempotency_log ADD COLUMN sum INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE snapshot ADD COLUMN sum INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE incident (
        id          INTEGER PRIMARY KEY,
        at          INTEGER NOT NULL,
        journal_end INTEGER NOT NULL,
        report      TEXT    NOT NULL
    );
"#,
    r#"
    -- Idempotency records by key hash (purser_store::key_hash: the key's
    -- text is not kept), looked up by it one at a time; purged oldest
    -- first by id (expiry follows the order stored), so no expiry index.
    -- Rows are copied from idempotency_log by `rekey_records`.
    CREATE TABLE idempotency_record (
        id          INTEGER PRIMARY KEY,
        key         BLOB    NOT NULL,
        fingerprint BLOB    NOT NULL,
        status      INTEGER NOT NULL,
        body        BLOB    NOT NULL,
        expires_at  INTEGER NOT NULL,
        pos         INTEGER NOT NULL,
        sum         INTEGER NOT NULL
    );
    -- Indexed by the key hash's first 8 bytes (half the index; the row
    -- holds all 16, which a lookup compares).
    CREATE INDEX idempotency_record_by_key ON idempotency_record (substr(key, 1, 8));
"#,
    r#"
    -- The outbox: events, written in the same transaction as the entries
    -- they derive from; pos is the order they were committed in. `account`,
    -- `seq` and `rank` are the event's id (the entry it follows).
    CREATE TABLE event (
        pos        INTEGER PRIMARY KEY,
        account    INTEGER NOT NULL,
        seq        INTEGER NOT NULL,
        rank       INTEGER NOT NULL,
        account_id TEXT    NOT NULL,
        type       TEXT    NOT NULL,
        at         INTEGER NOT NULL,
        body       BLOB    NOT NULL,
        sum        INTEGER NOT NULL,
        -- The journal position of the end of the commit that wrote it.
        journal_end INTEGER NOT NULL
    );
    CREATE UNIQUE INDEX event_by_id ON event (account, seq, rank);
    CREATE INDEX event_by_account ON event (account_id, pos);
    CREATE INDEX event_by_type ON event (type, pos);
"#,
    r#"
    -- Webhook delivery attempts, newest kept per endpoint (bounded).
    CREATE TABLE webhook_delivery (
        id           INTEGER PRIMARY KEY,
        endpoint     TEXT    NOT NULL,
        event        TEXT    NOT NULL,
        at           INTEGER NOT NULL,
        status       INTEGER,
        error        TEXT,
        duration_ms  INTEGER NOT NULL,
        next_attempt INTEGER
    );
    CREATE INDEX webhook_delivery_by_endpoint ON webhook_delivery (endpoint, id);
"#,
    r#"
    -- Idempotency records made smaller (issue 14: at most 120 bytes a
    -- record on disk): an 8-byte fingerprint and the expiry in whole
    -- seconds (`expires`, 4 bytes until 2038 and 6 after, where
    -- microseconds took 8). Rows are
    -- checked and copied from the old table by `shrink_records`.
    ALTER TABLE idempotency_record RENAME TO idempotency_record_v7;
    DROP INDEX idempotency_record_by_key;
    CREATE TABLE idempotency_record (
        id          INTEGER PRIMARY KEY,
        key         BLOB    NOT NULL,
        fingerprint BLOB    NOT NULL,
        status      INTEGER NOT NULL,
        body        BLOB    NOT NULL,
        expires     INTEGER NOT NULL,
        pos         INTEGER NOT NULL,
        sum         INTEGER NOT NULL
    );
    CREATE INDEX idempotency_record_by_key ON idempotency_record (substr(key, 1, 8));
"#,
    r#"
    -- Settled objects (issue 14): purchases and grants that left memory,
    -- one row per version (`as_of`: the account's entry count when it
    -- left), each with its checksum and the journal's end at its commit
    -- (`pos`: a lost end of the journal takes its versions with it).
    CREATE TABLE settled (
        account INTEGER NOT NULL,
        seq     INTEGER NOT NULL,
        as_of   INTEGER NOT NULL,
        kind    INTEGER NOT NULL,
        body    BLOB    NOT NULL,
        sum     INTEGER NOT NULL,
        pos     INTEGER NOT NULL,
        PRIMARY KEY (account, seq, as_of)
    ) WITHOUT ROWID;
"#,
];

/// The version whose migration adds checksums: rows stored before it are
/// sealed as they are (each row its own commit, as commit boundaries were
/// not kept), trusted once, at the upgrade.
const CHECKED_JOURNAL: i64 = 6;

/// The version whose migration stores idempotency keys by hash.
const HASHED_KEYS: i64 = 7;

/// The version whose migration makes idempotency records smaller.
const SMALL_RECORDS: i64 = 10;

/// An idempotency record of `idempotency_log` (versions 5 and 6: the key's
/// text) from the columns `key, fingerprint, status, body, expires_at`:
/// the key's text, and the record as version 7 stored it.
fn legacy_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<Legacy> {
    let text: String = row.get(0)?;
    let fingerprint: Vec<u8> = row.get(1)?;
    let record = LegacyRecord {
        key: purser_store::key_hash(&text),
        fingerprint: fingerprint
            .get(..16)
            .and_then(|f| f.try_into().ok())
            .unwrap_or([0; 16]),
        status: row.get(2)?,
        body: row.get(3)?,
        expires_at: Timestamp::from_micros(row.get(4)?),
    };
    Ok(Legacy {
        text,
        fingerprint,
        record,
    })
}

/// A record as versions 5 and 6 stored it, and as version 7 stored it.
struct Legacy {
    text: String,
    fingerprint: Vec<u8>,
    record: LegacyRecord,
}

impl Legacy {
    /// Its checksum as version 6 computed it.
    fn sum(&self, pos: i64) -> i64 {
        purser_store::record_sum_with_text(&self.record, &self.text, &self.fingerprint, pos as u64)
    }
}

/// Migration 7: every record of `idempotency_log` checked against its
/// version 6 checksum and copied by key hash, with its version 7 checksum.
fn rekey_records(connection: &Connection) -> Result<(), StoreError> {
    {
        let mut read = connection
            .prepare("SELECT key, fingerprint, status, body, expires_at, pos, sum, id FROM idempotency_log ORDER BY id")
            .map_err(backend)?;
        let mut insert = connection
            .prepare(
                "INSERT INTO idempotency_record (key, fingerprint, status, body, expires_at, pos, sum)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .map_err(backend)?;
        let mut rows = read.query([]).map_err(backend)?;
        while let Some(row) = rows.next().map_err(backend)? {
            let legacy = legacy_record(row).map_err(backend)?;
            let record = &legacy.record;
            let (pos, sum, id): (i64, i64, i64) = (
                row.get(5).map_err(backend)?,
                row.get(6).map_err(backend)?,
                row.get(7).map_err(backend)?,
            );
            if legacy.sum(pos) != sum {
                return Err(damaged_record(id));
            }
            insert
                .execute(params![
                    &record.key[..],
                    &record.fingerprint[..],
                    record.status,
                    record.body,
                    record.expires_at.micros(),
                    pos,
                    purser_store::legacy_record_sum(record, pos as u64)
                ])
                .map_err(backend)?;
        }
    }
    connection
        .execute_batch("DROP TABLE idempotency_log;")
        .map_err(backend)
}

/// Migration 10: every record as versions 7 to 9 stored it checked against
/// its checksum and stored anew ([`LegacyRecord::upgraded`]), in the same
/// order, with its new checksum. A record that fails its old checksum is
/// carried over as it is, marked damaged ([`DAMAGED_SUM`]): refused on its
/// own when its key comes back and reported by `verify`, as it was before
/// the migration, while the rest keep serving.
fn shrink_records(connection: &Connection) -> Result<(), StoreError> {
    {
        let mut read = connection
            .prepare(
                "SELECT key, fingerprint, status, body, expires_at, pos, sum, id
                   FROM idempotency_record_v7 ORDER BY id",
            )
            .map_err(backend)?;
        let mut rows = read.query([]).map_err(backend)?;
        while let Some(row) = rows.next().map_err(backend)? {
            let key: Vec<u8> = row.get(0).map_err(backend)?;
            let fingerprint: Vec<u8> = row.get(1).map_err(backend)?;
            let status: i64 = row.get(2).map_err(backend)?;
            let body: Vec<u8> = row.get(3).map_err(backend)?;
            let expires_at = Timestamp::from_micros(row.get(4).map_err(backend)?);
            let (pos, sum, id): (i64, i64, i64) = (
                row.get(5).map_err(backend)?,
                row.get(6).map_err(backend)?,
                row.get(7).map_err(backend)?,
            );
            let legacy = LegacyRecord::checked(
                &key,
                &fingerprint,
                status,
                body.clone(),
                expires_at,
                pos as u64,
                sum,
            );
            match legacy {
                Some(legacy) => insert_record(connection, &legacy.upgraded(), pos)?,
                None => {
                    tracing::error!(
                        record = id,
                        "an idempotency record does not match its checksum: kept as damaged"
                    );
                    connection
                        .prepare_cached(
                            "INSERT INTO idempotency_record (key, fingerprint, status, body, expires, pos, sum)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                        )
                        .map_err(backend)?
                        .execute(params![
                            key,
                            &fingerprint[..fingerprint.len().min(8)],
                            status,
                            body,
                            expires_at.micros().div_euclid(1_000_000),
                            pos,
                            purser_store::DAMAGED_SUM
                        ])
                        .map_err(backend)?;
                }
            }
        }
    }
    connection
        .execute_batch("DROP TABLE idempotency_record_v7;")
        .map_err(backend)
}

fn seal_existing(connection: &Connection) -> Result<(), StoreError> {
    let mut chain = purser_store::GENESIS;
    let mut end = 0;
    {
        let mut read = connection
            .prepare("SELECT pos, account, seq, body FROM log ORDER BY pos")
            .map_err(backend)?;
        let mut update = connection
            .prepare("UPDATE log SET sum = ?2, chain = ?3 WHERE pos = ?1")
            .map_err(backend)?;
        let mut rows = read.query([]).map_err(backend)?;
        while let Some(row) = rows.next().map_err(backend)? {
            let pos: i64 = row.get(0).map_err(backend)?;
            let account: i64 = row.get(1).map_err(backend)?;
            let seq: i64 = row.get(2).map_err(backend)?;
            let body: Vec<u8> = row.get(3).map_err(backend)?;
            let (sums, next) = purser_store::seal(
                &chain,
                pos as u64 - 1,
                [(account as u64, seq as u64, &body)],
            );
            update
                .execute(params![pos, sums[0], &next[..]])
                .map_err(backend)?;
            chain = next;
            end = pos;
        }
    }
    let mut read = connection
        .prepare("SELECT partition, position, body FROM snapshot")
        .map_err(backend)?;
    let mut update = connection
        .prepare("UPDATE snapshot SET sum = ?3 WHERE partition = ?1 AND position = ?2")
        .map_err(backend)?;
    let mut rows = read.query([]).map_err(backend)?;
    while let Some(row) = rows.next().map_err(backend)? {
        let (partition, position): (i64, i64) =
            (row.get(0).map_err(backend)?, row.get(1).map_err(backend)?);
        let body: Vec<u8> = row.get(2).map_err(backend)?;
        let sum = purser_store::snapshot_sum(partition as u16, position as u64, &body);
        update
            .execute(params![partition, position, sum])
            .map_err(backend)?;
    }
    drop(rows);
    let mut read = connection
        .prepare("SELECT key, fingerprint, status, body, expires_at, id FROM idempotency_log")
        .map_err(backend)?;
    let mut update = connection
        .prepare("UPDATE idempotency_log SET pos = ?2, sum = ?3 WHERE id = ?1")
        .map_err(backend)?;
    let mut rows = read.query([]).map_err(backend)?;
    while let Some(row) = rows.next().map_err(backend)? {
        let id: i64 = row.get(5).map_err(backend)?;
        let legacy = legacy_record(row).map_err(backend)?;
        update
            .execute(params![id, end, legacy.sum(end)])
            .map_err(backend)?;
    }
    Ok(())
}

/// Stores an event at the next outbox position, with its checksum.
pub(crate) fn insert_event(
    connection: &Connection,
    event: &EventRecord,
    position: i64,
    journal_end: i64,
) -> Result<(), StoreError> {
    connection
        .prepare_cached(
            "INSERT INTO event (pos, account, seq, rank, account_id, type, at, body, sum, journal_end)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )
        .map_err(backend)?
        .execute(params![
            position,
            event.id.account.raw() as i64,
            event.id.seq as i64,
            i64::from(event.id.rank),
            event.account,
            event.kind.name(),
            event.at.micros(),
            event.body,
            purser_store::event_sum(event),
            journal_end
        ])
        .map_err(backend)?;
    Ok(())
}

/// The columns [`checked_event`] reads, in its order.
pub(crate) const CHECKED_EVENT: &str =
    "SELECT pos, account, seq, rank, account_id, type, at, body, sum FROM event";

/// A row of [`CHECKED_EVENT`], checked against its checksum.
pub(crate) fn checked_event(row: &rusqlite::Row<'_>) -> Result<StoredEvent, StoreError> {
    let position: i64 = row.get(0).map_err(backend)?;
    let kind: String = row.get(5).map_err(backend)?;
    let damaged = || StoreError::Damaged(format!("the event at outbox position {position}"));
    let event = EventRecord {
        id: EventId {
            account: AccountHandle::from_raw(row.get::<_, i64>(1).map_err(backend)? as u64),
            seq: row.get::<_, i64>(2).map_err(backend)? as u64,
            rank: u8::try_from(row.get::<_, i64>(3).map_err(backend)?).map_err(|_| damaged())?,
        },
        account: row.get(4).map_err(backend)?,
        kind: EventType::parse(&kind).ok_or_else(damaged)?,
        at: Timestamp::from_micros(row.get(6).map_err(backend)?),
        body: row.get(7).map_err(backend)?,
    };
    let sum: i64 = row.get(8).map_err(backend)?;
    if sum != purser_store::event_sum(&event) {
        return Err(damaged());
    }
    Ok(StoredEvent {
        position: position as u64,
        event,
    })
}

/// Stores an idempotency record of a commit that ended the journal at
/// `pos`, with its checksum.
pub(crate) fn insert_record(
    connection: &Connection,
    record: &IdempotencyRecord,
    pos: i64,
) -> Result<(), StoreError> {
    connection
        .prepare_cached(
            "INSERT INTO idempotency_record (key, fingerprint, status, body, expires, pos, sum)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .map_err(backend)?
        .execute(params![
            &record.key[..],
            &record.fingerprint[..],
            record.status,
            record.body,
            record.expires_seconds(),
            pos,
            record_sum(record, pos as u64)
        ])
        .map_err(backend)?;
    Ok(())
}

/// The columns [`checked_record`] reads, in its order.
pub(crate) const CHECKED_RECORD: &str =
    "SELECT key, fingerprint, status, body, expires, pos, sum, id FROM idempotency_record";

/// A row of [`CHECKED_RECORD`]: the record, its id, and whether it matches
/// its checksum.
pub(crate) fn checked_record(
    row: &rusqlite::Row<'_>,
) -> rusqlite::Result<(IdempotencyRecord, i64, bool)> {
    let record = record_of(row, 0)?;
    let (pos, sum, id): (i64, i64, i64) = (row.get(5)?, row.get(6)?, row.get(7)?);
    let sound = record_sum(&record, pos as u64) == sum;
    Ok((record, id, sound))
}

/// An idempotency record from the columns `key, fingerprint, status, body,
/// expires` starting at `first` (a key or fingerprint of the wrong length
/// reads as zeros, which its checksum then refuses).
pub(crate) fn record_of(
    row: &rusqlite::Row<'_>,
    first: usize,
) -> rusqlite::Result<IdempotencyRecord> {
    let fingerprint: Vec<u8> = row.get(first + 1)?;
    let key: Vec<u8> = row.get(first)?;
    Ok(IdempotencyRecord {
        key: key.try_into().unwrap_or([0; 16]),
        fingerprint: fingerprint.try_into().unwrap_or([0; 8]),
        status: row.get(first + 2)?,
        body: row.get(first + 3)?,
        expires_at: purser_store::from_seconds(row.get(first + 4)?),
    })
}

/// The history index's schema (`history.db`), created when missing. It is
/// derived data: a mismatch is repaired by deleting the file.
pub(crate) const HISTORY_SCHEMA: &str = r#"
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

/// The stored schema version; [`StoreError::SchemaTooNew`] if a newer
/// purser wrote it.
fn stored_version(connection: &Connection) -> Result<i64, StoreError> {
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
    Ok(current)
}

pub(crate) fn migrate(connection: &Connection) -> Result<(), StoreError> {
    connection
        .execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);")
        .map_err(backend)?;
    let current = stored_version(connection)?;
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let version = index as i64 + 1;
        let transaction = connection.unchecked_transaction().map_err(backend)?;
        transaction.execute_batch(migration).map_err(backend)?;
        if version == CHECKED_JOURNAL {
            seal_existing(&transaction)?;
        }
        if version == HASHED_KEYS {
            rekey_records(&transaction)?;
        }
        if version == SMALL_RECORDS {
            shrink_records(&transaction)?;
        }
        transaction
            .execute(
                "INSERT INTO schema_version (version) VALUES (?1)",
                [version],
            )
            .map_err(backend)?;
        transaction.commit().map_err(backend)?;
    }
    Ok(())
}

/// The schema version of a store opened read-only: it must be this
/// purser's (a read-only open migrates nothing).
pub(crate) fn check_version(connection: &Connection) -> Result<(), StoreError> {
    let current = stored_version(connection)?;
    let supported = MIGRATIONS.len() as i64;
    if current < supported {
        return Err(StoreError::Backend(format!(
            "schema version {current} is older than this purser's ({supported}): `purser serve` migrates it (back it up first)"
        )));
    }
    Ok(())
}

/// Stores one version of a settled object (replacing the same version).
pub(crate) fn insert_settled(
    transaction: &Connection,
    record: &purser_store::SettledRecord,
    pos: i64,
) -> Result<(), StoreError> {
    let body = record.body();
    let (account, seq) = (record.account.raw(), record.seq());
    transaction
        .prepare_cached(
            "INSERT INTO settled (account, seq, as_of, kind, body, sum, pos)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (account, seq, as_of) DO UPDATE SET kind = excluded.kind,
                body = excluded.body, sum = excluded.sum, pos = excluded.pos",
        )
        .map_err(backend)?
        .execute(rusqlite::params![
            account as i64,
            seq as i64,
            record.as_of as i64,
            record.kind() as i64,
            body,
            purser_store::settled_sum(account, seq, record.as_of, &body),
            pos,
        ])
        .map_err(backend)?;
    Ok(())
}

/// A `settled` row (`seq, as_of, body, sum`) read back and checked.
pub(crate) fn checked_settled(
    account: purser_core::AccountHandle,
    row: &rusqlite::Row<'_>,
) -> Result<purser_store::SettledRecord, StoreError> {
    let seq: i64 = row.get(0).map_err(backend)?;
    let as_of: i64 = row.get(1).map_err(backend)?;
    let body: Vec<u8> = row.get(2).map_err(backend)?;
    let sum: i64 = row.get(3).map_err(backend)?;
    purser_store::SettledRecord::checked(account, seq as u64, as_of as u64, &body, sum)
}
