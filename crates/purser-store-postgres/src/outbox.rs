//! The outbox and webhook delivery attempts in PostgreSQL: events read
//! back (each checked), purged past their retention, and delivery attempts
//! kept and trimmed per endpoint. Events are written by the commits, in the
//! statement or transaction of their entries (`columns::EventColumns`).

use super::*;

/// The columns [`checked_event`] reads, in its order.
pub(crate) const CHECKED_EVENT: &str =
    "SELECT pos, account, seq, rank, account_id, type, at, body, sum FROM event";

/// A row of [`CHECKED_EVENT`], checked against its checksum.
pub(crate) fn checked_event(row: &postgres::Row) -> Result<StoredEvent, StoreError> {
    let position: i64 = row.get(0);
    let damaged = || StoreError::Damaged(format!("the event at outbox position {position}"));
    let kind: &str = row.get(5);
    let event = EventRecord {
        id: EventId {
            account: AccountHandle::from_raw(row.get::<_, i64>(1) as u64),
            seq: row.get::<_, i64>(2) as u64,
            rank: u8::try_from(row.get::<_, i32>(3)).map_err(|_| damaged())?,
        },
        account: row.get(4),
        kind: EventType::parse(kind).ok_or_else(damaged)?,
        at: Timestamp::from_micros(row.get(6)),
        body: row.get(7),
    };
    if row.get::<_, i64>(8) != purser_store::event_sum(&event) {
        return Err(damaged());
    }
    Ok(StoredEvent {
        position: position as u64,
        event,
    })
}

impl PostgresStore {
    pub(crate) fn events_in_outbox(
        &self,
        query: &EventQuery,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let ascending = query.after.is_some();
        let from = if ascending {
            query.after.map(|p| p as i64)
        } else {
            query.before.map(|p| p as i64)
        };
        let sql = format!(
            "{CHECKED_EVENT} WHERE ($1::text IS NULL OR account_id = $1)
               AND ($2::text IS NULL OR type = $2)
               AND ($3::bigint IS NULL OR pos {} $3)
             ORDER BY pos {} LIMIT $4",
            if ascending { ">" } else { "<" },
            if ascending { "ASC" } else { "DESC" },
        );
        self.read(|client| {
            let rows = client
                .query(
                    &sql,
                    &[
                        &query.account,
                        &query.kind.map(|k| k.name()),
                        &from,
                        &(query.limit as i64),
                    ],
                )
                .map_err(backend)?;
            rows.iter().map(checked_event).collect()
        })
    }

    pub(crate) fn event_in_outbox(&self, id: EventId) -> Result<Option<StoredEvent>, StoreError> {
        self.read(|client| {
            let row = client
                .query_opt(
                    &format!("{CHECKED_EVENT} WHERE account = $1 AND seq = $2 AND rank = $3"),
                    &[
                        &(id.account.raw() as i64),
                        &(id.seq as i64),
                        &i32::from(id.rank),
                    ],
                )
                .map_err(backend)?;
            row.as_ref().map(checked_event).transpose()
        })
    }

    pub(crate) fn last_event_in_outbox(&self) -> Result<u64, StoreError> {
        self.read(|client| {
            let row = client
                .query_one("SELECT COALESCE(MAX(pos), 0) FROM event", &[])
                .map_err(backend)?;
            Ok(row.get::<_, i64>(0) as u64)
        })
    }

    pub(crate) fn purge_events_in_outbox(&self, before: Timestamp) -> Result<u64, StoreError> {
        if self.read_only {
            return Err(StoreError::ReadOnly);
        }
        if self.fenced.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(StoreError::Fenced);
        }
        let mut purged = 0;
        loop {
            let (old, seen, last) = self.read(|client| {
                let rows = client
                    .query("SELECT pos, at FROM event ORDER BY pos LIMIT 1000", &[])
                    .map_err(backend)?;
                let old = rows
                    .iter()
                    .take_while(|row| row.get::<_, i64>(1) < before.micros())
                    .count();
                let last = old.checked_sub(1).map(|i| rows[i].get::<_, i64>(0));
                Ok((old, rows.len(), last))
            })?;
            let Some(last) = last else {
                return Ok(purged);
            };
            purged += self.read(|client| {
                client
                    .execute("DELETE FROM event WHERE pos <= $1", &[&last])
                    .map_err(backend)
            })?;
            if old < seen || seen < 1000 {
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
        if self.fenced.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(StoreError::Fenced);
        }
        self.read(|client| {
            let row = client
                .query_one(
                    "INSERT INTO webhook_delivery
                        (endpoint, event, at, status, error, duration_ms, next_attempt)
                     VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
                    &[
                        &delivery.endpoint,
                        &delivery.event,
                        &delivery.at.micros(),
                        &delivery.status.map(i32::from),
                        &delivery.error,
                        &(delivery.duration_ms as i64),
                        &delivery.next_attempt.map(Timestamp::micros),
                    ],
                )
                .map_err(backend)?;
            let id: i64 = row.get(0);
            // Now and then, what is past the endpoint's newest kept attempts.
            if id % 256 == 0 {
                client
                    .execute(
                        "DELETE FROM webhook_delivery WHERE endpoint = $1 AND id <=
                            (SELECT id FROM webhook_delivery WHERE endpoint = $1
                              ORDER BY id DESC LIMIT 1 OFFSET $2)",
                        &[&delivery.endpoint, &(KEPT_DELIVERIES as i64)],
                    )
                    .map_err(backend)?;
            }
            Ok(())
        })
    }

    pub(crate) fn deliveries_in_outbox(
        &self,
        endpoint: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<DeliveryRecord>, StoreError> {
        let before = before.map_or(i64::MAX, |id| id.min(i64::MAX as u64) as i64);
        self.read(|client| {
            let rows = client
                .query(
                    "SELECT endpoint, event, at, status, error, duration_ms, next_attempt, id
                       FROM webhook_delivery WHERE endpoint = $1 AND id < $2
                      ORDER BY id DESC LIMIT $3",
                    &[&endpoint, &before, &(limit as i64)],
                )
                .map_err(backend)?;
            Ok(rows
                .iter()
                .map(|row| DeliveryRecord {
                    id: row.get::<_, i64>(7) as u64,
                    endpoint: row.get(0),
                    event: row.get(1),
                    at: Timestamp::from_micros(row.get(2)),
                    status: row
                        .get::<_, Option<i32>>(3)
                        .and_then(|s| u16::try_from(s).ok()),
                    error: row.get(4),
                    duration_ms: row.get::<_, i64>(5) as u64,
                    next_attempt: row.get::<_, Option<i64>>(6).map(Timestamp::from_micros),
                })
                .collect())
        })
    }
}
