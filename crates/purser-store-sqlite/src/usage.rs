//! Usage summaries, grouped in SQL.

use super::*;

/// Usage grouped in SQL: charges in the window, minus their reversals
/// (attributed to the charge's own time, task and member).
pub(crate) fn usage(
    connection: &Connection,
    query: &UsageQuery,
) -> Result<Vec<UsageRow>, StoreError> {
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
