//! Usage summaries, grouped in SQL.

use postgres::Client;
use purser_store::{GroupBy, KIND_KEYS, StoreError, UsageQuery, UsageRow, UsageTotals, day_key};

use crate::backend;

/// Usage grouped in SQL: charges in the window, minus their reversals
/// (attributed to the charge's own time, task and member).
pub(crate) fn usage(client: &mut Client, query: &UsageQuery) -> Result<Vec<UsageRow>, StoreError> {
    let account = query.account.raw() as i64;
    let from = query.from.map_or(i64::MIN, |t| t.micros());
    let to = query.to.map_or(i64::MAX, |t| t.micros());
    let mut totals = UsageTotals::default();
    let mut add =
        |key: Option<String>, micros: i64, count: i64| totals.add(key, micros, count.max(0) as u64);
    let window = "c.account = $1 AND c.type IN ('debit', 'capture') AND c.at >= $2 AND c.at < $3";
    let join = "FROM entry r JOIN entry c ON c.account = r.account AND c.seq = r.debit_seq
                WHERE r.account = $1 AND r.type = 'reversal' AND";
    let day = "(c.at / 86400000000 - CASE WHEN c.at < 0 AND c.at % 86400000000 <> 0 THEN 1 ELSE 0 END)::text";
    if matches!(query.group_by, GroupBy::Kind | GroupBy::DayKind) {
        let group = if query.group_by == GroupBy::DayKind {
            day
        } else {
            "NULL::text"
        };
        let sums = |t: &str| {
            KIND_KEYS
                .iter()
                .map(|k| format!("COALESCE(SUM({t}.{k}), 0)::bigint"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let counts = |filtered: bool| {
            KIND_KEYS
                .iter()
                .map(|k| {
                    if filtered {
                        format!("COUNT(*) FILTER (WHERE c.{k} <> 0)")
                    } else {
                        "0::bigint".to_owned()
                    }
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let charges = format!(
            "SELECT {group}, {}, {} FROM entry c WHERE {window} GROUP BY 1",
            sums("c"),
            counts(true)
        );
        let reversals = format!(
            "SELECT {group}, {}, {} {join} {window} GROUP BY 1",
            sums("r"),
            counts(false)
        );
        for sql in [charges, reversals] {
            for row in client
                .query(&sql, &[&account, &from, &to])
                .map_err(backend)?
            {
                let day: Option<String> = row.get(0);
                let day = day.and_then(|days| days.parse::<i64>().ok()).map(day_key);
                for (index, kind) in KIND_KEYS.iter().enumerate() {
                    let credits: i64 = row.get(index + 1);
                    let count: i64 = row.get(index + 6);
                    let key = match &day {
                        Some(day) => format!("{day}/{kind}"),
                        None => (*kind).to_owned(),
                    };
                    add(Some(key), credits, count);
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
            "SELECT {key}, SUM(c.credits)::bigint, COUNT(*) FROM entry c WHERE {window} GROUP BY 1"
        );
        let reversals =
            format!("SELECT {key}, SUM(r.credits)::bigint, 0::bigint {join} {window} GROUP BY 1");
        for sql in [charges, reversals] {
            for row in client
                .query(&sql, &[&account, &from, &to])
                .map_err(backend)?
            {
                let mut key: Option<String> = row.get(0);
                if query.group_by == GroupBy::Day {
                    key = key.and_then(|days| days.parse::<i64>().ok()).map(day_key);
                }
                add(key, row.get(1), row.get(2));
            }
        }
    }
    Ok(totals.into_rows())
}
