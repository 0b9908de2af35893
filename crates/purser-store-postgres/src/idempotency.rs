//! Idempotency records in PostgreSQL: looked up by key hash, listed for
//! the engine to learn at start, purged oldest first (each checked before
//! it goes). They are written by the commits, with their entries.

use super::*;

impl PostgresStore {
    pub(crate) fn idempotency_record_stored(
        &self,
        key: &KeyHash,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        self.read(|client| {
            let row = client
                .query_opt(
                    &format!(
                        "{CHECKED_RECORD} WHERE substring(key from 1 for 8) = $2 AND key = $1
                          ORDER BY id DESC LIMIT 1"
                    ),
                    &[&&key[..], &&key[..8]],
                )
                .map_err(backend)?;
            let Some(row) = row else {
                return Ok(None);
            };
            let (record, sound) = checked_record(&row);
            if !sound || record.key != *key {
                return Err(damaged_record(row.get(0)));
            }
            Ok(Some(record))
        })
    }

    pub(crate) fn idempotency_keys_stored(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredKey>, StoreError> {
        self.read(|client| {
            let rows = client
                .query(
                    &format!("{CHECKED_RECORD} WHERE id > $1 ORDER BY id LIMIT $2"),
                    &[&(after as i64), &(limit as i64)],
                )
                .map_err(backend)?;
            Ok(rows
                .iter()
                .map(|row| {
                    let (record, sound) = checked_record(row);
                    StoredKey {
                        id: row.get::<_, i64>(0) as u64,
                        key: record.key,
                        expires_at: record.expires_at,
                        sound,
                    }
                })
                .collect())
        })
    }

    pub(crate) fn purge_idempotency_stored(&self, now: Timestamp) -> Result<u64, StoreError> {
        if self.read_only {
            return Err(StoreError::ReadOnly);
        }
        // In chunks, oldest stored first: a commit waits for one chunk at
        // most. Each record is checked before it goes: a damaged expiry
        // must not get a record deleted unseen.
        let mut purged = 0;
        loop {
            let mut guard = lock(&self.writer);
            let client = writer(&mut guard);
            let rows = client
                .query(&format!("{CHECKED_RECORD} ORDER BY id LIMIT 1000"), &[])
                .map_err(backend)?;
            let mut last = None;
            let mut chunk = 0;
            for row in &rows {
                let (record, sound) = checked_record(row);
                if !sound {
                    return Err(damaged_record(row.get(0)));
                }
                if record.expires_at > now {
                    break;
                }
                last = Some(row.get::<_, i64>(0));
                chunk += 1;
            }
            if let Some(last) = last {
                client
                    .execute("DELETE FROM idempotency_record WHERE id <= $1", &[&last])
                    .map_err(backend)?;
            }
            purged += chunk;
            if chunk < 1000 {
                return Ok(purged);
            }
        }
    }
}
