//! An account's snapshot: its whole state as plain data, taken and restored
//! (split from `account.rs`, which keeps the state and its one mutation
//! path).

use crate::account::{Account, AccountStatus};
use crate::credits::{CreditSum, Credits};
use crate::entry::{Hold, Purchase, PurchaseStatus};
use crate::grant::Grant;
use crate::ids::{AccountHandle, AccountId, MemberId, TierId};
use crate::metadata::Metadata;
use crate::time::{Timestamp, period_start};

/// An account's whole state as plain data: what a store snapshots so that
/// recovery need not replay the journal from the beginning. Derived fields
/// (period bounds, the next due instant) are recomputed on restore.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountSnapshot {
    pub id: AccountId,
    pub handle: AccountHandle,
    pub name: Box<str>,
    pub tier: TierId,
    pub pending_tier: Option<TierId>,
    pub anchor: Timestamp,
    pub created_at: Timestamp,
    pub status: AccountStatus,
    pub member_monthly_cap: Option<Credits>,
    pub metadata: Metadata,
    pub period_index: i64,
    pub next_seq: u64,
    pub debt: Credits,
    pub grants: Vec<Grant>,
    pub holds: Vec<Hold>,
    pub purchases: Vec<Purchase>,
    /// Sorted by member.
    pub member_usage: Vec<(MemberId, CreditSum)>,
    /// Sorted by debit.
    pub reversed: Vec<(u64, Credits)>,
    /// The account's own low-balance thresholds (`None`: its tier's).
    pub low_balance_thresholds: Option<Vec<Credits>>,
    pub auto_recharge: Option<crate::account::AutoRecharge>,
}

impl Account {
    pub fn snapshot(&self) -> AccountSnapshot {
        let mut member_usage: Vec<(MemberId, CreditSum)> = self
            .member_usage
            .iter()
            .flat_map(|usage| usage.iter())
            .map(|(m, c)| (m.clone(), *c))
            .collect();
        member_usage.sort();
        let mut reversed: Vec<(u64, Credits)> = self
            .reversed
            .iter()
            .flat_map(|r| r.iter())
            .map(|(d, c)| (*d, *c))
            .collect();
        reversed.sort();
        AccountSnapshot {
            id: self.id.clone(),
            handle: self.handle,
            name: self.name().into(),
            tier: self.tier.clone(),
            pending_tier: self.pending_tier.clone(),
            anchor: self.anchor,
            created_at: self.created_at,
            status: self.status,
            member_monthly_cap: self.member_monthly_cap,
            metadata: self.metadata.clone(),
            period_index: self.period_index,
            next_seq: self.next_seq,
            debt: self.debt,
            grants: {
                let spent = self.spent.iter().flat_map(|s| s.values());
                self.grants.iter().chain(spent).cloned().collect()
            },
            holds: self.holds.to_vec(),
            purchases: self.purchases.to_vec(),
            member_usage,
            reversed,
            low_balance_thresholds: self.low_balance_thresholds.as_deref().cloned(),
            auto_recharge: self.auto_recharge.as_deref().cloned(),
        }
    }

    pub fn restore(snapshot: AccountSnapshot) -> Account {
        let name = (*snapshot.name != *snapshot.id.as_str()).then_some(snapshot.name);
        let mut account = Account {
            id: snapshot.id,
            handle: snapshot.handle,
            name,
            tier: snapshot.tier,
            pending_tier: snapshot.pending_tier,
            anchor: snapshot.anchor,
            created_at: snapshot.created_at,
            status: snapshot.status,
            member_monthly_cap: snapshot.member_monthly_cap,
            metadata: snapshot.metadata,
            period_index: snapshot.period_index,
            period_start: period_start(snapshot.anchor, snapshot.period_index),
            period_end: period_start(snapshot.anchor, snapshot.period_index + 1),
            next_seq: snapshot.next_seq,
            debt: snapshot.debt,
            pending: snapshot
                .purchases
                .iter()
                .filter(|p| p.status == PurchaseStatus::Pending)
                .count() as u32,
            grants: snapshot.grants,
            spent: None,
            spent_expiry: Timestamp::NEVER,
            holds: snapshot.holds.into(),
            purchases: snapshot.purchases.into(),
            member_usage: (!snapshot.member_usage.is_empty())
                .then(|| Box::new(snapshot.member_usage.into_iter().collect())),
            reversed: (!snapshot.reversed.is_empty())
                .then(|| Box::new(snapshot.reversed.into_iter().collect())),
            low_balance_thresholds: snapshot.low_balance_thresholds.map(Box::new),
            auto_recharge: snapshot.auto_recharge.map(Box::new),
            next_due: Timestamp::NEVER,
            settling: false,
        };
        account.set_aside_spent();
        account.next_due = account.compute_next_due();
        account
    }
}
