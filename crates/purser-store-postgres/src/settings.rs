//! API keys (hashes only) and small settings in PostgreSQL. A writer that
//! lost its lease writes no setting.

use super::*;

impl PostgresStore {
    pub(crate) fn insert_api_key_stored(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        let mut guard = lock(&self.writer);
        writer(&mut guard)
            .execute(
                "INSERT INTO api_key (id, secret_hash, scopes, created_at, revoked_at) VALUES ($1, $2, $3, $4, $5)",
                &[
                    &key.id,
                    &&key.secret_hash[..],
                    &key.scopes.join(" "),
                    &key.created_at.micros(),
                    &key.revoked_at.map(|t| t.micros()),
                ],
            )
            .map_err(backend)?;
        Ok(())
    }

    pub(crate) fn revoke_api_key_stored(
        &self,
        id: &str,
        at: Timestamp,
    ) -> Result<bool, StoreError> {
        let mut guard = lock(&self.writer);
        let changed = writer(&mut guard)
            .execute(
                "UPDATE api_key SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1",
                &[&id, &at.micros()],
            )
            .map_err(backend)?;
        Ok(changed > 0)
    }

    pub(crate) fn api_keys_stored(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        self.read(|client| {
            let rows = client
                .query(
                    "SELECT id, secret_hash, scopes, created_at, revoked_at FROM api_key ORDER BY created_at, id",
                    &[],
                )
                .map_err(backend)?;
            Ok(rows
                .iter()
                .map(|row| {
                    let hash: Vec<u8> = row.get(1);
                    let scopes: String = row.get(2);
                    ApiKeyRecord {
                        id: row.get(0),
                        secret_hash: hash.try_into().unwrap_or([0; 32]),
                        scopes: scopes.split_whitespace().map(str::to_owned).collect(),
                        created_at: Timestamp::from_micros(row.get(3)),
                        revoked_at: row.get::<_, Option<i64>>(4).map(Timestamp::from_micros),
                    }
                })
                .collect())
        })
    }

    pub(crate) fn setting_stored(&self, name: &str) -> Result<Option<String>, StoreError> {
        self.read(|client| {
            let row = client
                .query_opt("SELECT value FROM setting WHERE name = $1", &[&name])
                .map_err(backend)?;
            Ok(row.map(|row| row.get(0)))
        })
    }

    pub(crate) fn set_setting_stored(&self, name: &str, value: &str) -> Result<(), StoreError> {
        // A writer that lost its lease writes nothing more (its webhook
        // dispatcher's last progress would undo the new writer's changes).
        if self.fenced.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(StoreError::Fenced);
        }
        let mut guard = lock(&self.writer);
        writer(&mut guard)
            .execute(
                "INSERT INTO setting (name, value) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                &[&name, &value],
            )
            .map_err(backend)?;
        Ok(())
    }
}
