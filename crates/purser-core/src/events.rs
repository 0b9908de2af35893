//! Events: what the operator is told of a command, derived from its entries.
//!
//! [`derive`] is a pure function of one command's entries (all of one
//! account, in order) and the account's [`Levels`] before and after it. An
//! event's id names the entry it follows and its rank among that entry's
//! events, so the same entries always make the same events: a replayed
//! command (whose entries are not written again) or a recovery makes none.

use std::fmt;

use crate::credits::{CreditSum, Credits};
use crate::entry::{Body, Entry, PurchaseStatus, RechargeOutcome, ReleaseReason};
use crate::grant::GrantKind;
use crate::ids::AccountHandle;
use crate::time::Timestamp;

/// Every event type, as the API names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    CreditsLow,
    CreditsDepleted,
    CreditsRecovered,
    BudgetExhausted,
    BudgetRenewed,
    DebtIncurred,
    PurchaseCreated,
    PurchaseCompleted,
    PurchaseFailed,
    PurchaseCanceled,
    PurchaseRefunded,
    TierChanged,
    TierChangeScheduled,
    TierChangeCanceled,
    HoldExpired,
    AccountCreated,
    AccountClosed,
    AutoRechargeSucceeded,
    AutoRechargeFailed,
}

impl EventType {
    pub const ALL: [EventType; 19] = [
        EventType::CreditsLow,
        EventType::CreditsDepleted,
        EventType::CreditsRecovered,
        EventType::BudgetExhausted,
        EventType::BudgetRenewed,
        EventType::DebtIncurred,
        EventType::PurchaseCreated,
        EventType::PurchaseCompleted,
        EventType::PurchaseFailed,
        EventType::PurchaseCanceled,
        EventType::PurchaseRefunded,
        EventType::TierChanged,
        EventType::TierChangeScheduled,
        EventType::TierChangeCanceled,
        EventType::HoldExpired,
        EventType::AccountCreated,
        EventType::AccountClosed,
        EventType::AutoRechargeSucceeded,
        EventType::AutoRechargeFailed,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            EventType::CreditsLow => "credits.low",
            EventType::CreditsDepleted => "credits.depleted",
            EventType::CreditsRecovered => "credits.recovered",
            EventType::BudgetExhausted => "budget.exhausted",
            EventType::BudgetRenewed => "budget.renewed",
            EventType::DebtIncurred => "debt.incurred",
            EventType::PurchaseCreated => "purchase.created",
            EventType::PurchaseCompleted => "purchase.completed",
            EventType::PurchaseFailed => "purchase.failed",
            EventType::PurchaseCanceled => "purchase.canceled",
            EventType::PurchaseRefunded => "purchase.refunded",
            EventType::TierChanged => "tier.changed",
            EventType::TierChangeScheduled => "tier.change_scheduled",
            EventType::TierChangeCanceled => "tier.change_canceled",
            EventType::HoldExpired => "hold.expired",
            EventType::AccountCreated => "account.created",
            EventType::AccountClosed => "account.closed",
            EventType::AutoRechargeSucceeded => "auto_recharge.succeeded",
            EventType::AutoRechargeFailed => "auto_recharge.failed",
        }
    }

    pub fn parse(name: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.name() == name)
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An event's identity: the entry it follows and its rank among that
/// entry's events. Formats as `evt_` + the handle in hex + the entry's
/// sequence number in 12 hex digits + the rank in 2.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId {
    pub account: AccountHandle,
    pub seq: u64,
    pub rank: u8,
}

const SEQ_DIGITS: usize = 12;

impl EventId {
    pub fn format(self) -> String {
        format!(
            "evt_{:x}{:0width$x}{:02x}",
            self.account.raw(),
            self.seq,
            self.rank,
            width = SEQ_DIGITS
        )
    }

    pub fn parse(text: &str) -> Option<EventId> {
        let rest = text.strip_prefix("evt_")?;
        if rest.len() <= SEQ_DIGITS + 2
            || rest.len() > SEQ_DIGITS + 2 + 16
            || !rest
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return None;
        }
        let (handle, tail) = rest.split_at(rest.len() - SEQ_DIGITS - 2);
        let (seq, rank) = tail.split_at(SEQ_DIGITS);
        Some(EventId {
            account: AccountHandle::from_raw(u64::from_str_radix(handle, 16).ok()?),
            seq: u64::from_str_radix(seq, 16).ok()?,
            rank: u8::from_str_radix(rank, 16).ok()?,
        })
    }

    /// The account's journal position after the change (the number of its
    /// entries then): what consumers order an account's events by.
    pub fn sequence(self) -> u64 {
        self.seq + 1
    }
}

/// What balance events compare before and after a command.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Levels {
    /// What a strict charge could take.
    pub available: CreditSum,
    /// The free credits of the current period's budget.
    pub budget: CreditSum,
    pub debt: Credits,
}

/// One event of a command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub id: EventId,
    pub kind: EventType,
    pub at: Timestamp,
    /// The entry it follows, as an index into the command's entries.
    pub entry: usize,
    /// `credits.low`: the threshold crossed.
    pub threshold: Option<Credits>,
    /// Caused by time (renewals, expiries: purser itself), not by the
    /// command's caller.
    pub time_driven: bool,
}

/// What a renewal did, read from its entries: `budget.renewed`'s data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Renewal {
    pub period_index: i64,
    pub period_start: Timestamp,
    pub period_end: Timestamp,
    pub granted: Credits,
    pub rolled_over: Credits,
    /// Free credits that expired at the renewal's instant.
    pub expired: CreditSum,
}

/// The events of one command. `entries` are the command's (all of one
/// account, in order; empty when it wrote none), `before` the account's
/// levels before it (`None`: the command opened the account), `after` its
/// levels after, `thresholds` its low-balance thresholds (after the
/// command); `balance_events` is false for a closed account (its credits
/// still expire, but nobody is told they are low). Events go to `out` in
/// entry order; balance events follow the command's last entry.
pub fn derive(
    entries: &[Entry],
    before: Option<Levels>,
    after: Levels,
    thresholds: &[Credits],
    balance_events: bool,
    out: &mut Vec<Event>,
) {
    if entries.is_empty() {
        return;
    }
    let opened = matches!(entries[0].body, Body::Opened(_));
    let mut budget_spent = false;
    let mut debt_incurred = false;
    let mut rank = 0u8;
    let mut seq = u64::MAX;
    let mut push = |out: &mut Vec<Event>, index: usize, kind, threshold| {
        let entry = &entries[index];
        if entry.seq != seq {
            seq = entry.seq;
            rank = 0;
        }
        out.push(Event {
            id: EventId {
                account: entry.account,
                seq: entry.seq,
                rank,
            },
            kind,
            at: entry.at,
            entry: index,
            threshold,
            time_driven: false,
        });
        rank = rank.saturating_add(1);
    };
    for (index, entry) in entries.iter().enumerate() {
        let kind = match &entry.body {
            Body::Opened(_) => Some(EventType::AccountCreated),
            Body::Closed => Some(EventType::AccountClosed),
            // A budget grant starts a period, except the first one and the
            // one an upgrade issues when the period had none.
            Body::Granted(grant)
                if grant.period_index().is_some()
                    && !opened
                    && !(index > 0
                        && matches!(&entries[index - 1].body,
                            Body::TierChanged(change) if !change.scheduled)) =>
            {
                Some(EventType::BudgetRenewed)
            }
            Body::Debited(debit) => {
                budget_spent |= debit
                    .allocations
                    .iter()
                    .any(|a| a.kind == GrantKind::Budget);
                debt_incurred |= debit.debt_incurred > Credits::ZERO;
                None
            }
            Body::Held(hold) => {
                budget_spent |= hold.allocations.iter().any(|a| a.kind == GrantKind::Budget);
                None
            }
            Body::Captured(capture) => {
                budget_spent |= capture
                    .from_hold
                    .iter()
                    .chain(&capture.excess)
                    .any(|a| a.kind == GrantKind::Budget);
                debt_incurred |= capture.debt_incurred > Credits::ZERO;
                None
            }
            Body::Released(release) if release.reason == ReleaseReason::Expired => {
                Some(EventType::HoldExpired)
            }
            Body::TierChanged(_) => Some(EventType::TierChanged),
            Body::TierScheduled(Some(_)) => Some(EventType::TierChangeScheduled),
            Body::TierScheduled(None) => Some(EventType::TierChangeCanceled),
            Body::PurchaseCreated(_) => Some(EventType::PurchaseCreated),
            Body::PurchaseUpdated { status, .. } => match status {
                PurchaseStatus::Pending => None,
                PurchaseStatus::Completed => Some(EventType::PurchaseCompleted),
                PurchaseStatus::Failed => Some(EventType::PurchaseFailed),
                PurchaseStatus::Canceled => Some(EventType::PurchaseCanceled),
                PurchaseStatus::Refunded => Some(EventType::PurchaseRefunded),
            },
            Body::PurchasePartlyRefunded { .. } => Some(EventType::PurchaseRefunded),
            Body::AutoRecharge { outcome, .. } => Some(match outcome {
                RechargeOutcome::Succeeded => EventType::AutoRechargeSucceeded,
                RechargeOutcome::Failed(_) => EventType::AutoRechargeFailed,
            }),
            _ => None,
        };
        if let Some(kind) = kind {
            push(out, index, kind, None);
        }
    }
    let end = entries.len() - 1;
    if !balance_events {
        return;
    }
    let before = before.unwrap_or_default();
    if debt_incurred && after.debt > before.debt {
        push(out, end, EventType::DebtIncurred, None);
    }
    if budget_spent && before.budget > CreditSum::ZERO && after.budget == CreditSum::ZERO {
        push(out, end, EventType::BudgetExhausted, None);
    }
    // Highest threshold first: the order they were crossed in.
    let mut crossed: Vec<Credits> = thresholds
        .iter()
        .copied()
        .filter(|t| {
            let t = t.to_sum();
            before.available >= t && after.available < t
        })
        .collect();
    crossed.sort_unstable_by(|a, b| b.cmp(a));
    crossed.dedup();
    for threshold in crossed {
        push(out, end, EventType::CreditsLow, Some(threshold));
    }
    if !opened && before.available > CreditSum::ZERO && after.available <= CreditSum::ZERO {
        push(out, end, EventType::CreditsDepleted, None);
    }
    if !opened && before.available <= CreditSum::ZERO && after.available > CreditSum::ZERO {
        push(out, end, EventType::CreditsRecovered, None);
    }
}

/// What the renewal whose budget grant is `entries[index]` did: the
/// rollover and expiries at the same instant before it, back to the
/// previous renewal.
pub fn renewal(entries: &[Entry], index: usize) -> Option<Renewal> {
    let entry = entries.get(index)?;
    let Body::Granted(grant) = &entry.body else {
        return None;
    };
    let period_index = grant.period_index()?;
    let mut rolled_over = Credits::ZERO;
    let mut expired = CreditSum::ZERO;
    for earlier in entries[..index].iter().rev() {
        if earlier.at != entry.at || earlier.account != entry.account {
            break;
        }
        match &earlier.body {
            Body::Granted(g) if g.period_index().is_some() => break,
            Body::RolledOver { grant, .. } => rolled_over = grant.amount,
            Body::Expired(allocation) => {
                expired = expired
                    .checked_add(allocation.credits.to_sum())
                    .unwrap_or(expired);
            }
            _ => {}
        }
    }
    Some(Renewal {
        period_index,
        period_start: grant.effective_at,
        period_end: grant.expires_at,
        granted: grant.amount,
        rolled_over,
        expired,
    })
}
