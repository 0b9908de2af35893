//! The usage facts reports are built from, derived from charge and reversal
//! entries the same way by every backend.

use std::collections::BTreeMap;

use purser_core::{Allocation, Body, CreditSum, Credits, Entry, GrantKind};

use crate::UsageRow;

/// What a charge consumed, or (negative) what a reversal gave back, split by
/// the kind of grant it touched; `debt` is what no grant covered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Usage {
    /// The charge's own sequence number; for a reversal, the reversed charge's.
    pub charge_seq: u64,
    /// `None` for a reversal: its keys (task, member, day) are the charge's.
    pub task: Option<String>,
    pub member: Option<String>,
    /// Signed: positive for a charge, negative for a reversal.
    pub credits: i64,
    /// Signed parts by kind: budget, rollover, package, promo, debt.
    pub by_kind: [i64; 5],
    /// True for the charge itself, false for a reversal of it.
    pub is_charge: bool,
}

/// Index of a grant kind in [`Usage::by_kind`]; debt is 4.
pub fn kind_index(kind: GrantKind) -> usize {
    match kind {
        GrantKind::Budget => 0,
        GrantKind::Rollover => 1,
        GrantKind::Package => 2,
        GrantKind::Promo => 3,
    }
}

/// Names of the [`Usage::by_kind`] slots.
pub const KIND_KEYS: [&str; 5] = ["budget", "rollover", "package", "promo", "debt"];

/// The usage an entry records, if it is a charge or a reversal.
pub fn usage_of(entry: &Entry) -> Option<Usage> {
    let micros = |credits: Credits| credits.micros() as i64;
    let split = |allocations: &mut dyn Iterator<Item = &Allocation>, debt: Credits| {
        let mut parts = [0i64; 5];
        for allocation in allocations {
            parts[kind_index(allocation.kind)] += micros(allocation.credits);
        }
        parts[4] += micros(debt);
        parts
    };
    match &entry.body {
        Body::Debited(debit) => Some(Usage {
            charge_seq: entry.seq,
            task: debit.pricing.as_ref().map(|p| p.task.to_string()),
            member: debit.member.as_ref().map(|m| m.to_string()),
            credits: micros(debit.credits),
            by_kind: split(&mut debit.allocations.iter(), debit.debt_incurred),
            is_charge: true,
        }),
        Body::Captured(capture) => Some(Usage {
            charge_seq: entry.seq,
            task: capture.pricing.as_ref().map(|p| p.task.to_string()),
            member: capture.member.as_ref().map(|m| m.to_string()),
            credits: micros(capture.credits),
            by_kind: split(
                &mut capture.from_hold.iter().chain(&capture.excess),
                capture.debt_incurred,
            ),
            is_charge: true,
        }),
        Body::Reversed(reversal) => {
            let debt = reversal
                .debt_canceled
                .checked_add(reversal.debt_refunded)
                .unwrap_or(Credits::MAX);
            let parts = split(
                &mut reversal.returned.iter().chain(&reversal.forfeited),
                debt,
            );
            Some(Usage {
                charge_seq: reversal.debit,
                task: None,
                member: None,
                credits: -micros(reversal.credits),
                by_kind: parts.map(|part| -part),
                is_charge: false,
            })
        }
        _ => None,
    }
}

/// The `YYYY-MM-DD` key of a day number (days since 1970-01-01, UTC).
pub fn day_key(days: i64) -> String {
    let (year, month, day) = purser_core::time::civil_from_days(days);
    format!("{year:04}-{month:02}-{day:02}")
}

/// Sums of usage by group key, as backends add up their query rows.
#[derive(Debug, Default)]
pub struct UsageTotals(BTreeMap<Option<String>, (CreditSum, u64)>);

impl UsageTotals {
    /// Adds `micros` credits (negative for reversals) and `count` charges.
    pub fn add(&mut self, key: Option<String>, micros: i64, count: u64) {
        let slot = self.0.entry(key).or_insert((CreditSum::ZERO, 0));
        slot.0 = slot
            .0
            .checked_add(CreditSum::from_micros(i128::from(micros)))
            .unwrap_or(slot.0);
        slot.1 += count;
    }

    /// Drops groups with neither charges nor credits.
    pub fn retain_nonempty(&mut self) {
        self.0
            .retain(|_, (credits, count)| *count > 0 || *credits != CreditSum::ZERO);
    }

    /// The groups, ordered by key.
    pub fn into_rows(self) -> Vec<UsageRow> {
        self.0
            .into_iter()
            .map(|(key, (credits, count))| UsageRow {
                key,
                credits,
                count,
            })
            .collect()
    }
}
