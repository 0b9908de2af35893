//! The schema: forward-only, versioned migrations in `purser_schema_version`.

use postgres::Client;
use purser_core::Timestamp;
use purser_store::{LegacyRecord, StoreError};

use crate::backend;

/// Forward-only migrations; `MIGRATIONS[i]` brings the schema to version `i + 1`.
pub(crate) const MIGRATIONS: &[&str] = &[
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
    // The checked journal (purser_store::journal): every entry's checksum,
    // the chain hash on each group commit's last entry; idempotency records
    // with their commit's journal position and a checksum; incidents (loss
    // an operator accepted). Rows from before are sealed by `seal_existing`.
    r#"
    ALTER TABLE entry ADD COLUMN sum BIGINT NOT NULL DEFAULT 0, ADD COLUMN chain BYTEA;
    ALTER TABLE idempotency ADD COLUMN pos BIGINT NOT NULL DEFAULT 0,
                            ADD COLUMN sum BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE snapshot ADD COLUMN sum BIGINT NOT NULL DEFAULT 0;
    CREATE TABLE incident (
        id          BIGSERIAL PRIMARY KEY,
        at          BIGINT NOT NULL,
        journal_end BIGINT NOT NULL,
        report      TEXT   NOT NULL
    );
"#,
    // Idempotency records by key hash (purser_store::key_hash: the key's
    // text is not kept), looked up by it one at a time; purged oldest first
    // by id (expiry follows the order stored). Rows are copied from the old
    // table by `rekey_records`.
    r#"
    CREATE TABLE idempotency_record (
        id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        key         BYTEA  NOT NULL,
        fingerprint BYTEA  NOT NULL,
        status      INT    NOT NULL,
        body        BYTEA  NOT NULL,
        expires_at  BIGINT NOT NULL,
        pos         BIGINT NOT NULL,
        sum         BIGINT NOT NULL
    );
    CREATE INDEX idempotency_record_by_key ON idempotency_record (substring(key from 1 for 8), id);
"#,
    // The outbox: events, written in the same transaction as the entries
    // they derive from; pos is the order they were committed in (one
    // writer at a time). `account`, `seq` and `rank` are the event's id.
    r#"
    CREATE TABLE event (
        pos         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        account     BIGINT NOT NULL,
        seq         BIGINT NOT NULL,
        rank        INT    NOT NULL,
        account_id  TEXT   NOT NULL,
        type        TEXT   NOT NULL,
        at          BIGINT NOT NULL,
        body        BYTEA  NOT NULL,
        sum         BIGINT NOT NULL,
        journal_end BIGINT NOT NULL
    );
    CREATE UNIQUE INDEX event_by_id ON event (account, seq, rank);
    CREATE INDEX event_by_account ON event (account_id, pos);
    CREATE INDEX event_by_type ON event (type, pos);
"#,
    // Webhook delivery attempts, newest kept per endpoint (bounded).
    r#"
    CREATE TABLE webhook_delivery (
        id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        endpoint     TEXT   NOT NULL,
        event        TEXT   NOT NULL,
        at           BIGINT NOT NULL,
        status       INT,
        error        TEXT,
        duration_ms  BIGINT NOT NULL,
        next_attempt BIGINT
    );
    CREATE INDEX webhook_delivery_by_endpoint ON webhook_delivery (endpoint, id);
"#,
    // Idempotency records made smaller: an 8-byte fingerprint and the
    // expiry in whole seconds (`expires`). Each record is checked and
    // rewritten by `shrink_records`, which then drops `expires_at`.
    r#"
    ALTER TABLE idempotency_record ADD COLUMN expires BIGINT;
"#,
    // Settled objects (issue 14): purchases and grants that left memory,
    // one row per version, each with its checksum and the journal's end at
    // its commit (a lost end of the journal takes its versions with it).
    r#"
    CREATE TABLE settled (
        account BIGINT   NOT NULL,
        seq     BIGINT   NOT NULL,
        as_of   BIGINT   NOT NULL,
        kind    SMALLINT NOT NULL,
        body    BYTEA    NOT NULL,
        sum     BIGINT   NOT NULL,
        pos     BIGINT   NOT NULL,
        PRIMARY KEY (account, seq, as_of)
    );
"#,
];

/// The version whose migration adds checksums: entries stored before it are
/// sealed as they are (each its own commit: boundaries were not kept).
const CHECKED_JOURNAL: usize = 4;

/// The version whose migration stores idempotency keys by hash.
const HASHED_KEYS: usize = 5;

/// The version whose migration makes idempotency records smaller.
const SMALL_RECORDS: usize = 8;

/// A record of the old `idempotency` table (versions 1-4: the key's text)
/// from the columns `key, fingerprint, status, body, expires_at`: the key's
/// text, and the record as versions 5 to 7 stored it.
fn legacy_record(row: &postgres::Row) -> (String, Vec<u8>, LegacyRecord) {
    let text: String = row.get(0);
    let fingerprint: Vec<u8> = row.get(1);
    let record = LegacyRecord {
        key: purser_store::key_hash(&text),
        fingerprint: fingerprint
            .get(..16)
            .and_then(|f| f.try_into().ok())
            .unwrap_or([0; 16]),
        status: row.get::<_, i32>(2) as u16,
        body: row.get(3),
        expires_at: Timestamp::from_micros(row.get(4)),
    };
    (text, fingerprint, record)
}

/// Migration 5: every record of the old table checked against its version
/// 4 checksum and copied by key hash, with its new checksum, in the order
/// of their commits (then of expiry): the last copied has the highest
/// position, as the journal's witness expects.
fn rekey_records(transaction: &mut postgres::Transaction<'_>) -> Result<(), StoreError> {
    transaction
        .batch_execute(
            "SET LOCAL idle_in_transaction_session_timeout = 0; SET LOCAL statement_timeout = 0",
        )
        .map_err(backend)?;
    // Read through a portal, a page at a time: the table is never held whole.
    let portal = transaction
        .bind(
            "SELECT key, fingerprint, status, body, expires_at, pos, sum FROM idempotency
              ORDER BY pos, expires_at, key",
            &[],
        )
        .map_err(backend)?;
    loop {
        let rows = transaction.query_portal(&portal, 1000).map_err(backend)?;
        if rows.is_empty() {
            break;
        }
        for row in &rows {
            let (text, fingerprint, record) = legacy_record(row);
            let (pos, sum): (i64, i64) = (row.get(5), row.get(6));
            if purser_store::record_sum_with_text(&record, &text, &fingerprint, pos as u64) != sum {
                return Err(StoreError::Damaged(format!(
                    "the idempotency record of key {text:?} does not match its checksum; restore a backup"
                )));
            }
            transaction
            .execute(
                "INSERT INTO idempotency_record (key, fingerprint, status, body, expires_at, pos, sum)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[
                    &&record.key[..],
                    &&record.fingerprint[..],
                    &i32::from(record.status),
                    &record.body,
                    &record.expires_at.micros(),
                    &pos,
                    &purser_store::legacy_record_sum(&record, pos as u64),
                ],
            )
            .map_err(backend)?;
        }
    }
    drop(portal);
    transaction
        .batch_execute("DROP TABLE idempotency")
        .map_err(backend)
}

/// Migration 8: every record as versions 5 to 7 stored it checked against
/// its checksum and rewritten in place ([`LegacyRecord::upgraded`]: the
/// fingerprint's first 8 bytes, the expiry in seconds, the new checksum),
/// a page at a time; then the old expiry column goes. A record that fails
/// its old checksum is rewritten marked damaged
/// ([`purser_store::DAMAGED_SUM`]): refused on its own when its key comes
/// back, as it was before, while the rest keep serving.
fn shrink_records(transaction: &mut postgres::Transaction<'_>) -> Result<(), StoreError> {
    transaction
        .batch_execute(
            "SET LOCAL idle_in_transaction_session_timeout = 0; SET LOCAL statement_timeout = 0",
        )
        .map_err(backend)?;
    crate::paged(
        transaction,
        "SELECT id, key, fingerprint, status, body, expires_at, pos, sum FROM idempotency_record
          WHERE id > $1 ORDER BY id LIMIT 1000",
        0i64,
        |transaction, rows| {
            let (mut ids, mut prints, mut expiries, mut sums) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for row in rows {
                let id: i64 = row.get(0);
                let key: Vec<u8> = row.get(1);
                let fingerprint: Vec<u8> = row.get(2);
                let status: i32 = row.get(3);
                let expires_at = Timestamp::from_micros(row.get(5));
                let (pos, sum): (i64, i64) = (row.get(6), row.get(7));
                let legacy = LegacyRecord::checked(
                    &key,
                    &fingerprint,
                    i64::from(status),
                    row.get(4),
                    expires_at,
                    pos as u64,
                    sum,
                );
                ids.push(id);
                match legacy {
                    Some(legacy) => {
                        let record = legacy.upgraded();
                        prints.push(record.fingerprint.to_vec());
                        expiries.push(record.expires_seconds());
                        sums.push(purser_store::record_sum(&record, pos as u64));
                    }
                    None => {
                        tracing::error!(
                            record = id,
                            "an idempotency record does not match its checksum: kept as damaged"
                        );
                        prints.push(fingerprint[..fingerprint.len().min(8)].to_vec());
                        expiries.push(expires_at.micros().div_euclid(1_000_000));
                        sums.push(purser_store::DAMAGED_SUM);
                    }
                }
            }
            transaction
                .execute(
                    "UPDATE idempotency_record SET fingerprint = u.fingerprint, expires = u.expires, sum = u.sum
                       FROM unnest($1::bigint[], $2::bytea[], $3::bigint[], $4::bigint[])
                            AS u(id, fingerprint, expires, sum)
                      WHERE idempotency_record.id = u.id",
                    &[&ids, &prints, &expiries, &sums],
                )
                .map_err(backend)?;
            Ok(())
        },
    )?;
    transaction
        .batch_execute(
            "ALTER TABLE idempotency_record DROP COLUMN expires_at;
             ALTER TABLE idempotency_record ALTER COLUMN expires SET NOT NULL",
        )
        .map_err(backend)
}

fn seal_existing(transaction: &mut postgres::Transaction<'_>) -> Result<(), StoreError> {
    // A large journal takes a while: no timeout may end the migration half
    // way (it would start over, and fail again, at every start).
    transaction
        .batch_execute(
            "SET LOCAL idle_in_transaction_session_timeout = 0; SET LOCAL statement_timeout = 0",
        )
        .map_err(backend)?;
    let mut chain = purser_store::GENESIS;
    let mut end: i64 = 0;
    // Keyset pages, each updated in one statement: memory stays bounded.
    crate::paged(
        transaction,
        "SELECT pos, account, seq, body FROM entry WHERE pos > $1 ORDER BY pos LIMIT 10000",
        0i64,
        |transaction, rows| {
            let (mut positions, mut sums, mut chains) = (Vec::new(), Vec::new(), Vec::new());
            for row in rows {
                let pos: i64 = row.get(0);
                let (account, seq): (i64, i64) = (row.get(1), row.get(2));
                let body: &[u8] = row.get(3);
                let (sum, next) = purser_store::seal(
                    &chain,
                    pos as u64 - 1,
                    [(account as u64, seq as u64, body)],
                );
                positions.push(pos);
                sums.push(sum[0]);
                chains.push(next.to_vec());
                chain = next;
                end = pos;
            }
            transaction
                .execute(
                    "UPDATE entry SET sum = u.sum, chain = u.chain
                       FROM unnest($1::bigint[], $2::bigint[], $3::bytea[]) AS u(pos, sum, chain)
                      WHERE entry.pos = u.pos",
                    &[&positions, &sums, &chains],
                )
                .map_err(backend)?;
            Ok(())
        },
    )?;
    let snapshots = transaction
        .query("SELECT partition, position, body FROM snapshot", &[])
        .map_err(backend)?;
    for row in &snapshots {
        let (partition, position): (i32, i64) = (row.get(0), row.get(1));
        let body: &[u8] = row.get(2);
        let sum = purser_store::snapshot_sum(partition as u16, position as u64, body);
        transaction
            .execute(
                "UPDATE snapshot SET sum = $2 WHERE partition = $1",
                &[&partition, &sum],
            )
            .map_err(backend)?;
    }
    crate::paged(
        transaction,
        "SELECT key, fingerprint, status, body, expires_at FROM idempotency
          WHERE key > $1 ORDER BY key LIMIT 1000",
        String::new(),
        |transaction, records| {
            let (mut keys, mut sums) = (Vec::new(), Vec::new());
            for row in records {
                let (text, fingerprint, record) = legacy_record(row);
                sums.push(purser_store::record_sum_with_text(
                    &record,
                    &text,
                    &fingerprint,
                    end as u64,
                ));
                keys.push(text);
            }
            transaction
                .execute(
                    "UPDATE idempotency SET pos = $3, sum = u.sum
                       FROM unnest($1::text[], $2::bigint[]) AS u(key, sum)
                      WHERE idempotency.key = u.key",
                    &[&keys, &sums, &end],
                )
                .map_err(backend)?;
            Ok(())
        },
    )?;
    Ok(())
}

/// Serializes concurrent migrations of several purser processes.
const MIGRATION_LOCK: i64 = 0x7075_7273_6572;

/// The schema version of a store opened read-only: it must be this
/// purser's (a read-only open migrates nothing).
pub(crate) fn check_version(client: &mut Client) -> Result<(), StoreError> {
    let found = stored_version(client)?;
    let supported = MIGRATIONS.len() as i64;
    if found < supported {
        return Err(StoreError::Backend(format!(
            "schema version {found} is older than this purser's ({supported}): `purser serve` migrates it"
        )));
    }
    Ok(())
}

/// The stored schema version; [`StoreError::SchemaTooNew`] if a newer
/// purser wrote it.
fn stored_version(client: &mut impl postgres::GenericClient) -> Result<i64, StoreError> {
    let current: i32 = client
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
    Ok(i64::from(current))
}

pub(crate) fn migrate(client: &mut Client) -> Result<(), StoreError> {
    let mut transaction = client.transaction().map_err(backend)?;
    transaction
        .execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .map_err(backend)?;
    transaction
        .batch_execute("CREATE TABLE IF NOT EXISTS purser_schema_version (version INT NOT NULL);")
        .map_err(backend)?;
    let current = stored_version(&mut transaction)?;
    if current >= 2 && (current as usize) < MIGRATIONS.len() {
        // A writer of the older schema may still be serving: migrating
        // under it would stall it (the migration locks its tables) and let
        // it write rows the new schema cannot check. Wait for its lease to
        // end (a standby retries).
        let live: bool = transaction
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM writer_lease WHERE id = 1 AND expires_at >= now())",
                &[],
            )
            .map_err(backend)?
            .get(0);
        if live {
            return Err(StoreError::LeaseHeld);
        }
    }
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        transaction.batch_execute(migration).map_err(backend)?;
        if index + 1 == CHECKED_JOURNAL {
            seal_existing(&mut transaction)?;
        }
        if index + 1 == HASHED_KEYS {
            rekey_records(&mut transaction)?;
        }
        if index + 1 == SMALL_RECORDS {
            shrink_records(&mut transaction)?;
        }
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
