//! The schema: forward-only, versioned migrations in `purser_schema_version`.

use postgres::Client;
use purser_store::StoreError;

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
];

/// Serializes concurrent migrations of several purser processes.
const MIGRATION_LOCK: i64 = 0x7075_7273_6572;

pub(crate) fn migrate(client: &mut Client) -> Result<(), StoreError> {
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
