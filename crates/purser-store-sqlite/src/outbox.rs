//! The outbox and webhook delivery attempts in `purser.db`: events read
//! back (each checked), purged past their retention, and delivery attempts
//! kept and trimmed per endpoint. Events are written by `commit`, in the
//! transaction of their entries (`schema::insert_event`).

use super::*;

impl SqliteStore {
    pub(crate) fn events_in_outbox(
        &self,
        query: &EventQuery,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let mut sql = format!("{CHECKED_EVENT} WHERE 1 = 1");
        let mut values: Vec<rusqlite::types::Value> = Vec::new();
        if let Some(account) = &query.account {
            values.push(account.clone().into());
            sql += &format!(" AND account_id = ?{}", values.len());
        }
        if let Some(kind) = query.kind {
            values.push(kind.name().to_owned().into());
            sql += &format!(" AND type = ?{}", values.len());
        }
        let ascending = query.after.is_some();
        if let Some(after) = query.after {
            values.push((after as i64).into());
            sql += &format!(" AND pos > ?{}", values.len());
        } else if let Some(before) = query.before {
            values.push((before as i64).into());
            sql += &format!(" AND pos < ?{}", values.len());
        }
        values.push((query.limit as i64).into());
        sql += &format!(
            " ORDER BY pos {} LIMIT ?{}",
            if ascending { "ASC" } else { "DESC" },
            values.len()
        );
        self.read(|connection| {
            let mut statement = connection.prepare_cached(&sql).map_err(backend)?;
            let mut rows = statement
                .query(params_from_iter(values.iter()))
                .map_err(backend)?;
            let mut events = Vec::new();
            while let Some(row) = rows.next().map_err(backend)? {
                events.push(checked_event(row)?);
            }
            Ok(events)
        })
    }

    pub(crate) fn event_in_outbox(&self, id: EventId) -> Result<Option<StoredEvent>, StoreError> {
        self.read(|connection| {
            let mut statement = connection
                .prepare_cached(&format!(
                    "{CHECKED_EVENT} WHERE account = ?1 AND seq = ?2 AND rank = ?3"
                ))
                .map_err(backend)?;
            let mut rows = statement
                .query(params![
                    id.account.raw() as i64,
                    id.seq as i64,
                    i64::from(id.rank)
                ])
                .map_err(backend)?;
            match rows.next().map_err(backend)? {
                Some(row) => checked_event(row).map(Some),
                None => Ok(None),
            }
        })
    }

    pub(crate) fn last_event_in_outbox(&self) -> Result<u64, StoreError> {
        self.read(|connection| {
            connection
                .prepare_cached("SELECT COALESCE(MAX(pos), 0) FROM event")
                .map_err(backend)?
                .query_row([], |row| row.get::<_, i64>(0))
                .map(|pos| pos as u64)
                .map_err(backend)
        })
    }

    pub(crate) fn purge_events_in_outbox(&self, before: Timestamp) -> Result<u64, StoreError> {
        if self.read_only {
            return Err(StoreError::ReadOnly);
        }
        let mut purged = 0;
        loop {
            // A chunk per transaction: a commit waits for one chunk at most.
            let connection = lock(&self.writer);
            let oldest: Vec<(i64, i64)> = connection
                .prepare_cached("SELECT pos, at FROM event ORDER BY pos LIMIT 1000")
                .map_err(backend)?
                .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
                .map_err(backend)?
                .collect::<Result<_, _>>()
                .map_err(backend)?;
            let old = oldest
                .iter()
                .take_while(|(_, at)| *at < before.micros())
                .count();
            if old == 0 {
                return Ok(purged);
            }
            let last = oldest[old - 1].0;
            purged += connection
                .prepare_cached("DELETE FROM event WHERE pos <= ?1")
                .map_err(backend)?
                .execute([last])
                .map_err(backend)? as u64;
            if old < oldest.len() || oldest.len() < 1000 {
                return Ok(purged);
            }
        }
    }

    pub(crate) fn record_delivery_in_outbox(
        &self,
        delivery: &DeliveryRecord,
    ) -> Result<(), StoreError> {
        if self.read_only {
            return Err(StoreError::ReadOnly);
        }
        let connection = lock(&self.writer);
        let id: i64 = connection
            .prepare_cached(
                "INSERT INTO webhook_delivery
                    (endpoint, event, at, status, error, duration_ms, next_attempt)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) RETURNING id",
            )
            .map_err(backend)?
            .query_row(
                params![
                    delivery.endpoint,
                    delivery.event,
                    delivery.at.micros(),
                    delivery.status,
                    delivery.error,
                    delivery.duration_ms as i64,
                    delivery.next_attempt.map(Timestamp::micros),
                ],
                |row| row.get(0),
            )
            .map_err(backend)?;
        // Now and then, what is past the endpoint's newest kept attempts.
        if id % 256 == 0 {
            connection
                .prepare_cached(
                    "DELETE FROM webhook_delivery WHERE endpoint = ?1 AND id <=
                        (SELECT id FROM webhook_delivery WHERE endpoint = ?1
                          ORDER BY id DESC LIMIT 1 OFFSET ?2)",
                )
                .map_err(backend)?
                .execute(params![delivery.endpoint, KEPT_DELIVERIES as i64])
                .map_err(backend)?;
        }
        Ok(())
    }

    pub(crate) fn deliveries_in_outbox(
        &self,
        endpoint: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<DeliveryRecord>, StoreError> {
        let before = before.map_or(i64::MAX, |id| id.min(i64::MAX as u64) as i64);
        self.read(|connection| {
            let mut statement = connection
                .prepare_cached(
                    "SELECT endpoint, event, at, status, error, duration_ms, next_attempt, id
                       FROM webhook_delivery WHERE endpoint = ?1 AND id < ?2
                      ORDER BY id DESC LIMIT ?3",
                )
                .map_err(backend)?;
            let rows = statement
                .query_map(params![endpoint, before, limit as i64], |row| {
                    Ok(DeliveryRecord {
                        id: row.get::<_, i64>(7)? as u64,
                        endpoint: row.get(0)?,
                        event: row.get(1)?,
                        at: Timestamp::from_micros(row.get(2)?),
                        status: row.get(3)?,
                        error: row.get(4)?,
                        duration_ms: row.get::<_, i64>(5)? as u64,
                        next_attempt: row.get::<_, Option<i64>>(6)?.map(Timestamp::from_micros),
                    })
                })
                .map_err(backend)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(backend)
        })
    }
}
