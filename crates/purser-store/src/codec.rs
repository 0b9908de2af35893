//! The binary form of journal entries, shared by every backend.
//!
//! Hand-written rather than derived, because the core must not know serde and
//! because this format is on disk forever: every field has a fixed place, every
//! enum a fixed tag, and the first byte is a format version. Integers are
//! LEB128 varints (signed ones zigzagged), strings are length-prefixed UTF-8.
//! Decoding re-parses every id and amount, so a corrupt record is an error,
//! never a value out of range.

use purser_core::{
    AccountHandle, AccountId, AccountSnapshot, AccountStatus, AccountUpdate, Actor, Allocation,
    AutoRecharge, AutoRechargeConfig, BalanceAfter, Body, Capture, ChargeMode, CreditSum, Credits,
    Debit, Entry, Grant, GrantKind, GrantSource, GrantState, Hold, MemberId, Metadata, Opened,
    PackageId, Pricing, Proration, Purchase, PurchaseStatus, Quantity, RechargeFailure,
    RechargeOutcome, RefundedShare, Release, ReleaseReason, Reversal, Settled, TaskId, TierChange,
    TierId, Timestamp, VoidReason,
};

/// The format version written first in every encoded entry.
pub const FORMAT_VERSION: u8 = 1;

/// Snapshots of accounts that have their own low-balance thresholds are
/// written in this version (each account then ends with them); others stay
/// in [`FORMAT_VERSION`], byte for byte as before. Both are read.
pub const SNAPSHOT_THRESHOLDS_VERSION: u8 = 2;

/// Snapshots with a partly refunded purchase are written in this version:
/// each account ends with its thresholds (as in version 2) and then the
/// partial refunds of its purchases. Others stay in version 1 or 2.
pub const SNAPSHOT_REFUNDS_VERSION: u8 = 3;

/// Snapshots with an account that has auto-recharge are written in this
/// version: each account ends as in version 3, then with its auto-recharge
/// (an option) and the sequence numbers of the purchases it made.
pub const SNAPSHOT_RECHARGE_VERSION: u8 = 4;

/// Entries that record their actor are written in this version (the actor
/// ends them); entries without one stay in [`FORMAT_VERSION`], byte for
/// byte as before. Both are read.
pub const ENTRY_ACTOR_VERSION: u8 = 2;

/// Why bytes could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("truncated record")]
    Truncated,
    #[error("unknown format version {0}")]
    Version(u8),
    #[error("invalid {0}")]
    Invalid(&'static str),
    #[error("{0} trailing bytes")]
    Trailing(usize),
}

/// Encodes an entry, appending to `out`.
pub fn encode_entry(entry: &Entry, out: &mut Vec<u8>) {
    let mut w = Writer(out);
    w.u8(if entry.actor.is_some() {
        ENTRY_ACTOR_VERSION
    } else {
        FORMAT_VERSION
    });
    w.varint(entry.account.raw());
    w.varint(entry.seq);
    w.time(entry.at);
    w.body(&entry.body);
    w.sum(entry.balance_after.available);
    w.sum(entry.balance_after.held);
    w.credits(entry.balance_after.debt);
    if let Some(actor) = &entry.actor {
        w.actor(actor);
    }
}

/// Encodes the snapshot of a partition's accounts, appending to `out`.
pub fn encode_snapshot(accounts: &[AccountSnapshot], out: &mut Vec<u8>) {
    let mut w = Writer(out);
    let recharge = accounts.iter().any(|account| {
        account.auto_recharge.is_some() || account.purchases.iter().any(|p| p.auto_recharge)
    });
    let refunds = recharge
        || accounts.iter().any(|account| {
            account
                .purchases
                .iter()
                .any(|p| p.partly_refunded.is_some())
        });
    let thresholds = refunds
        || accounts
            .iter()
            .any(|account| account.low_balance_thresholds.is_some());
    w.u8(if recharge {
        SNAPSHOT_RECHARGE_VERSION
    } else if refunds {
        SNAPSHOT_REFUNDS_VERSION
    } else if thresholds {
        SNAPSHOT_THRESHOLDS_VERSION
    } else {
        FORMAT_VERSION
    });
    w.varint(accounts.len() as u64);
    for account in accounts {
        w.account(account);
        if thresholds {
            w.option(account.low_balance_thresholds.as_ref(), |w, list| {
                w.thresholds(list);
            });
        }
        if refunds {
            let partly: Vec<_> = account
                .purchases
                .iter()
                .filter_map(|p| p.partly_refunded.map(|share| (p.seq, share)))
                .collect();
            w.varint(partly.len() as u64);
            for (seq, share) in partly {
                w.varint(seq);
                w.varint(share.refunded);
                w.varint(share.paid);
            }
        }
        if recharge {
            w.option(account.auto_recharge.as_ref(), |w, auto| w.auto_state(auto));
            let made: Vec<u64> = account
                .purchases
                .iter()
                .filter(|p| p.auto_recharge)
                .map(|p| p.seq)
                .collect();
            w.varint(made.len() as u64);
            for seq in made {
                w.varint(seq);
            }
        }
    }
}

/// Decodes a partition snapshot; the bytes must hold exactly one.
pub fn decode_snapshot(bytes: &[u8]) -> Result<Vec<AccountSnapshot>, CodecError> {
    let mut r = Reader(bytes);
    let version = r.u8()?;
    if ![
        FORMAT_VERSION,
        SNAPSHOT_THRESHOLDS_VERSION,
        SNAPSHOT_REFUNDS_VERSION,
        SNAPSHOT_RECHARGE_VERSION,
    ]
    .contains(&version)
    {
        return Err(CodecError::Version(version));
    }
    let count = r.count()?;
    let accounts = (0..count)
        .map(|_| {
            let mut account = r.account()?;
            if version >= SNAPSHOT_THRESHOLDS_VERSION {
                account.low_balance_thresholds = r.option(Reader::thresholds)?;
            }
            if version >= SNAPSHOT_REFUNDS_VERSION {
                for _ in 0..r.count()? {
                    let seq = r.varint()?;
                    let share = RefundedShare {
                        refunded: r.varint()?,
                        paid: r.varint()?,
                    };
                    let purchase = account
                        .purchases
                        .iter_mut()
                        .find(|p| p.seq == seq)
                        .ok_or(CodecError::Invalid("refunded purchase"))?;
                    purchase.partly_refunded = Some(share);
                }
            }
            if version >= SNAPSHOT_RECHARGE_VERSION {
                account.auto_recharge = r.option(Reader::auto_state)?;
                for _ in 0..r.count()? {
                    let seq = r.varint()?;
                    account
                        .purchases
                        .iter_mut()
                        .find(|p| p.seq == seq)
                        .ok_or(CodecError::Invalid("recharge purchase"))?
                        .auto_recharge = true;
                }
            }
            Ok(account)
        })
        .collect::<Result<Vec<_>, CodecError>>()?;
    match r.0.len() {
        0 => Ok(accounts),
        n => Err(CodecError::Trailing(n)),
    }
}

/// Decodes one entry; the bytes must hold exactly one.
pub fn decode_entry(bytes: &[u8]) -> Result<Entry, CodecError> {
    let mut r = Reader(bytes);
    let version = r.u8()?;
    if version != FORMAT_VERSION && version != ENTRY_ACTOR_VERSION {
        return Err(CodecError::Version(version));
    }
    let entry = Entry {
        account: AccountHandle::from_raw(r.varint()?),
        seq: r.varint()?,
        at: r.time()?,
        body: r.body()?,
        balance_after: BalanceAfter {
            available: r.sum()?,
            held: r.sum()?,
            debt: r.credits()?,
        },
        actor: if version == ENTRY_ACTOR_VERSION {
            Some(std::sync::Arc::new(r.actor()?))
        } else {
            None
        },
    };
    match r.0.len() {
        0 => Ok(entry),
        n => Err(CodecError::Trailing(n)),
    }
}

/// The format version of a settled object ([`encode_settled`]).
pub const SETTLED_VERSION: u8 = 1;

/// Encodes an object that left memory for the store, appending to `out`:
/// a version, a tag (1 purchase, 2 grant), then the object whole (a
/// purchase with its partial refund and whether auto-recharge made it).
pub fn encode_settled(object: &Settled, out: &mut Vec<u8>) {
    let mut w = Writer(out);
    w.u8(SETTLED_VERSION);
    match object {
        Settled::Purchase(purchase) => {
            w.u8(1);
            w.purchase(purchase);
            w.option(purchase.partly_refunded.as_ref(), |w, share| {
                w.varint(share.refunded);
                w.varint(share.paid);
            });
            w.bool(purchase.auto_recharge);
        }
        Settled::Grant(grant) => {
            w.u8(2);
            w.grant(grant);
        }
    }
}

/// Decodes a settled object; the bytes must hold exactly one.
pub fn decode_settled(bytes: &[u8]) -> Result<Settled, CodecError> {
    let mut r = Reader(bytes);
    let version = r.u8()?;
    if version != SETTLED_VERSION {
        return Err(CodecError::Version(version));
    }
    let object = match r.u8()? {
        1 => {
            let mut purchase = r.purchase()?;
            purchase.partly_refunded = r.option(|r| {
                Ok(RefundedShare {
                    refunded: r.varint()?,
                    paid: r.varint()?,
                })
            })?;
            purchase.auto_recharge = r.bool()?;
            Settled::Purchase(purchase)
        }
        2 => Settled::Grant(r.grant()?),
        _ => return Err(CodecError::Invalid("settled object")),
    };
    match r.0.len() {
        0 => Ok(object),
        n => Err(CodecError::Trailing(n)),
    }
}

struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    fn u8(&mut self, value: u8) {
        self.0.push(value);
    }

    fn varint(&mut self, value: u64) {
        self.wide(u128::from(value));
    }

    fn wide(&mut self, mut value: u128) {
        while value >= 0x80 {
            self.0.push((value as u8) | 0x80);
            value >>= 7;
        }
        self.0.push(value as u8);
    }

    fn signed(&mut self, value: i64) {
        self.varint(((value << 1) ^ (value >> 63)) as u64);
    }

    fn sum(&mut self, value: CreditSum) {
        let micros = value.micros();
        self.wide(((micros << 1) ^ (micros >> 127)) as u128);
    }

    fn bool(&mut self, value: bool) {
        self.u8(u8::from(value));
    }

    fn str(&mut self, value: &str) {
        self.varint(value.len() as u64);
        self.0.extend_from_slice(value.as_bytes());
    }

    fn credits(&mut self, value: Credits) {
        self.varint(value.micros());
    }

    fn time(&mut self, value: Timestamp) {
        self.signed(value.micros());
    }

    fn option<T>(&mut self, value: Option<&T>, write: impl FnOnce(&mut Self, &T)) {
        match value {
            None => self.u8(0),
            Some(value) => {
                self.u8(1);
                write(self, value);
            }
        }
    }

    fn metadata(&mut self, metadata: &Metadata) {
        let pairs: Vec<(&str, &str)> = metadata.iter().collect();
        self.varint(pairs.len() as u64);
        for (key, value) in pairs {
            self.str(key);
            self.str(value);
        }
    }

    fn allocation(&mut self, allocation: &Allocation) {
        self.varint(allocation.grant);
        self.u8(kind_tag(allocation.kind));
        self.credits(allocation.credits);
    }

    fn allocations(&mut self, allocations: &[Allocation]) {
        self.varint(allocations.len() as u64);
        for allocation in allocations {
            self.allocation(allocation);
        }
    }

    fn pricing(&mut self, pricing: &Pricing) {
        self.str(pricing.task.as_str());
        self.option(pricing.quantity.as_ref(), |w, q| w.varint(q.micros()));
        self.credits(pricing.rate);
        self.option(pricing.minimum.as_ref(), |w, m| w.credits(*m));
    }

    fn member(&mut self, member: Option<&MemberId>) {
        self.option(member, |w, m| w.str(m.as_str()));
    }

    fn grant(&mut self, grant: &Grant) {
        self.varint(grant.seq);
        self.u8(kind_tag(grant.kind));
        self.varint(u64::from(grant.priority));
        self.credits(grant.amount);
        self.credits(grant.remaining);
        self.credits(grant.held);
        self.credits(grant.consumed);
        self.time(grant.effective_at);
        self.time(grant.expires_at);
        self.u8(match grant.state {
            GrantState::Live => 0,
            GrantState::Voided => 1,
        });
        match &grant.source {
            GrantSource::Period { tier, index } => {
                self.u8(0);
                self.str(tier.as_str());
                self.signed(*index);
            }
            GrantSource::Rollover { index } => {
                self.u8(1);
                self.signed(*index);
            }
            GrantSource::Purchase { purchase } => {
                self.u8(2);
                self.varint(*purchase);
            }
            GrantSource::Operator { reason } => {
                self.u8(3);
                self.str(reason);
            }
            GrantSource::Reversal { debit } => {
                self.u8(4);
                self.varint(*debit);
            }
        }
    }

    fn hold(&mut self, hold: &Hold) {
        self.varint(hold.seq);
        self.credits(hold.credits);
        self.option(hold.pricing.as_ref(), |w, p| w.pricing(p));
        self.member(hold.member.as_ref());
        self.allocations(&hold.allocations);
        self.time(hold.created_at);
        self.time(hold.expires_at);
        self.metadata(&hold.metadata);
    }

    fn actor(&mut self, actor: &Actor) {
        match actor {
            Actor::System => self.u8(0),
            Actor::ApiKey(id) => {
                self.u8(1);
                self.str(id);
            }
            Actor::Portal(id) => {
                self.u8(2);
                self.str(id);
            }
            Actor::Provider(id) => {
                self.u8(3);
                self.str(id);
            }
        }
    }

    fn auto_config(&mut self, config: &AutoRechargeConfig) {
        self.bool(config.enabled);
        self.credits(config.threshold);
        self.str(config.package.as_str());
        self.option(config.max_per_month.as_ref(), |w, max| {
            w.varint(u64::from(*max));
        });
    }

    fn auto_state(&mut self, auto: &AutoRecharge) {
        self.auto_config(&auto.config);
        self.option(auto.in_flight.as_ref(), |w, p| w.varint(*p));
        self.signed(auto.period);
        self.varint(u64::from(auto.made));
        self.u8(auto.failures);
        self.option(auto.limit_told.as_ref(), |w, p| w.signed(*p));
    }

    fn thresholds(&mut self, list: &[Credits]) {
        self.varint(list.len() as u64);
        for threshold in list {
            self.credits(*threshold);
        }
    }

    fn account(&mut self, account: &AccountSnapshot) {
        self.str(account.id.as_str());
        self.varint(account.handle.raw());
        self.str(&account.name);
        self.str(account.tier.as_str());
        self.option(account.pending_tier.as_ref(), |w, t| w.str(t.as_str()));
        self.time(account.anchor);
        self.time(account.created_at);
        self.u8(match account.status {
            AccountStatus::Active => 0,
            AccountStatus::Closed => 1,
        });
        self.option(account.member_monthly_cap.as_ref(), |w, c| w.credits(*c));
        self.metadata(&account.metadata);
        self.signed(account.period_index);
        self.varint(account.next_seq);
        self.credits(account.debt);
        self.varint(account.grants.len() as u64);
        for grant in &account.grants {
            self.grant(grant);
        }
        self.varint(account.holds.len() as u64);
        for hold in &account.holds {
            self.hold(hold);
        }
        self.varint(account.purchases.len() as u64);
        for purchase in &account.purchases {
            self.purchase(purchase);
        }
        self.varint(account.member_usage.len() as u64);
        for (member, usage) in &account.member_usage {
            self.str(member.as_str());
            self.sum(*usage);
        }
        self.varint(account.reversed.len() as u64);
        for (debit, credits) in &account.reversed {
            self.varint(*debit);
            self.credits(*credits);
        }
    }

    fn purchase(&mut self, purchase: &Purchase) {
        self.varint(purchase.seq);
        self.str(purchase.package.as_str());
        self.credits(purchase.credits);
        self.credits(purchase.price);
        self.u8(purchase_tag(purchase.status));
        self.option(purchase.grant.as_ref(), |w, g| w.varint(*g));
        self.time(purchase.created_at);
        self.time(purchase.updated_at);
    }

    fn body(&mut self, body: &Body) {
        match body {
            Body::Opened(opened) => {
                // Tag 20: with auto-recharge (its thresholds as an option);
                // tag 17: with the account's own thresholds; tag 0 otherwise,
                // as before either existed.
                self.u8(if opened.auto_recharge.is_some() {
                    20
                } else if opened.low_balance_thresholds.is_some() {
                    17
                } else {
                    0
                });
                self.str(opened.id.as_str());
                self.str(&opened.name);
                self.str(opened.tier.as_str());
                self.time(opened.anchor);
                self.option(opened.member_monthly_cap.as_ref(), |w, c| w.credits(*c));
                self.metadata(&opened.metadata);
                self.signed(opened.period_index);
                if let Some(config) = &opened.auto_recharge {
                    self.option(opened.low_balance_thresholds.as_ref(), |w, list| {
                        w.thresholds(list);
                    });
                    self.auto_config(config);
                } else if let Some(list) = &opened.low_balance_thresholds {
                    self.thresholds(list);
                }
            }
            Body::Updated(update) => {
                // Tag 21: changing auto-recharge (the thresholds' change as
                // an option); tag 18: changing the thresholds; tag 1 otherwise.
                self.u8(if update.auto_recharge.is_some() {
                    21
                } else if update.low_balance_thresholds.is_some() {
                    18
                } else {
                    1
                });
                self.option(update.name.as_ref(), |w, n| w.str(n));
                self.option(update.metadata.as_ref(), |w, m| w.metadata(m));
                self.option(update.member_monthly_cap.as_ref(), |w, cap| {
                    w.option(cap.as_ref(), |w, c| w.credits(*c));
                });
                if let Some(change) = &update.auto_recharge {
                    self.option(update.low_balance_thresholds.as_ref(), |w, change| {
                        w.option(change.as_ref(), |w, list| w.thresholds(list));
                    });
                    self.option(change.as_ref(), |w, config| w.auto_config(config));
                } else if let Some(change) = &update.low_balance_thresholds {
                    self.option(change.as_ref(), |w, list| w.thresholds(list));
                }
            }
            Body::Closed => self.u8(2),
            Body::Granted(grant) => {
                self.u8(3);
                self.grant(grant);
            }
            Body::Debited(debit) => {
                self.u8(4);
                self.credits(debit.credits);
                self.option(debit.pricing.as_ref(), |w, p| w.pricing(p));
                self.member(debit.member.as_ref());
                self.u8(mode_tag(debit.mode));
                self.allocations(&debit.allocations);
                self.credits(debit.debt_incurred);
                self.metadata(&debit.metadata);
            }
            Body::Held(hold) => {
                self.u8(5);
                self.hold(hold);
            }
            Body::Captured(capture) => {
                self.u8(6);
                self.varint(capture.hold);
                self.credits(capture.credits);
                self.option(capture.pricing.as_ref(), |w, p| w.pricing(p));
                self.member(capture.member.as_ref());
                self.u8(mode_tag(capture.mode));
                self.allocations(&capture.from_hold);
                self.allocations(&capture.excess);
                self.credits(capture.debt_incurred);
                self.allocations(&capture.released);
            }
            Body::Released(release) => {
                self.u8(7);
                self.varint(release.hold);
                self.u8(match release.reason {
                    ReleaseReason::Released => 0,
                    ReleaseReason::Expired => 1,
                });
                self.allocations(&release.allocations);
            }
            Body::Expired(allocation) => {
                self.u8(8);
                self.allocation(allocation);
            }
            Body::Voided { allocation, reason } => {
                self.u8(9);
                self.allocation(allocation);
                match reason {
                    VoidReason::GrantVoided => self.u8(0),
                    VoidReason::Refund { purchase } => {
                        self.u8(1);
                        self.varint(*purchase);
                    }
                    VoidReason::HoldEnded => self.u8(2),
                    VoidReason::PartialRefund { purchase } => {
                        self.u8(3);
                        self.varint(*purchase);
                    }
                }
            }
            Body::Reversed(reversal) => {
                self.u8(10);
                self.varint(reversal.debit);
                self.credits(reversal.credits);
                self.allocations(&reversal.returned);
                self.allocations(&reversal.forfeited);
                self.credits(reversal.debt_canceled);
                self.credits(reversal.debt_refunded);
                self.member(reversal.member.as_ref());
                self.credits(reversal.member_usage_reduced);
            }
            Body::DebtPaid(allocations) => {
                self.u8(11);
                self.allocations(allocations);
            }
            Body::TierChanged(change) => {
                self.u8(12);
                self.str(change.from.as_str());
                self.str(change.to.as_str());
                self.u8(match change.proration {
                    Proration::Full => 0,
                    Proration::Prorated => 1,
                    Proration::None => 2,
                });
                self.credits(change.budget_increase);
                self.option(change.budget_grant.as_ref(), |w, g| w.varint(*g));
                self.bool(change.scheduled);
            }
            Body::TierScheduled(tier) => {
                self.u8(13);
                self.option(tier.as_ref(), |w, t| w.str(t.as_str()));
            }
            Body::RolledOver { from, grant } => {
                self.u8(14);
                self.allocations(from);
                self.grant(grant);
            }
            Body::PurchaseCreated(purchase) => {
                // Tag 22: made by auto-recharge.
                self.u8(if purchase.auto_recharge { 22 } else { 15 });
                self.purchase(purchase);
            }
            Body::PurchaseUpdated { purchase, status } => {
                self.u8(16);
                self.varint(*purchase);
                self.u8(purchase_tag(*status));
            }
            Body::PurchasePartlyRefunded { purchase, share } => {
                self.u8(19);
                self.varint(*purchase);
                self.varint(share.refunded);
                self.varint(share.paid);
            }
            Body::AutoRecharge { purchase, outcome } => {
                self.u8(23);
                self.option(purchase.as_ref(), |w, p| w.varint(*p));
                self.u8(outcome_tag(*outcome));
            }
        }
    }
}

fn kind_tag(kind: GrantKind) -> u8 {
    match kind {
        GrantKind::Budget => 0,
        GrantKind::Rollover => 1,
        GrantKind::Package => 2,
        GrantKind::Promo => 3,
    }
}

fn mode_tag(mode: ChargeMode) -> u8 {
    match mode {
        ChargeMode::Strict => 0,
        ChargeMode::Record => 1,
    }
}

fn outcome_tag(outcome: RechargeOutcome) -> u8 {
    match outcome {
        RechargeOutcome::Succeeded => 0,
        RechargeOutcome::Failed(RechargeFailure::PaymentFailed) => 1,
        RechargeOutcome::Failed(RechargeFailure::ActionRequired) => 2,
        RechargeOutcome::Failed(RechargeFailure::NoPaymentMethod) => 3,
        RechargeOutcome::Failed(RechargeFailure::MonthlyLimitReached) => 4,
    }
}

fn purchase_tag(status: PurchaseStatus) -> u8 {
    match status {
        PurchaseStatus::Pending => 0,
        PurchaseStatus::Completed => 1,
        PurchaseStatus::Failed => 2,
        PurchaseStatus::Canceled => 3,
        PurchaseStatus::Refunded => 4,
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn u8(&mut self) -> Result<u8, CodecError> {
        let (&first, rest) = self.0.split_first().ok_or(CodecError::Truncated)?;
        self.0 = rest;
        Ok(first)
    }

    fn wide(&mut self) -> Result<u128, CodecError> {
        let mut value: u128 = 0;
        for shift in (0..128).step_by(7) {
            let byte = self.u8()?;
            value |= u128::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(CodecError::Invalid("varint"))
    }

    fn varint(&mut self) -> Result<u64, CodecError> {
        u64::try_from(self.wide()?).map_err(|_| CodecError::Invalid("varint"))
    }

    fn signed(&mut self) -> Result<i64, CodecError> {
        let raw = self.varint()?;
        Ok((raw >> 1) as i64 ^ -((raw & 1) as i64))
    }

    fn sum(&mut self) -> Result<CreditSum, CodecError> {
        let raw = self.wide()?;
        Ok(CreditSum::from_micros(
            (raw >> 1) as i128 ^ -((raw & 1) as i128),
        ))
    }

    fn bool(&mut self) -> Result<bool, CodecError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(CodecError::Invalid("bool")),
        }
    }

    fn str(&mut self) -> Result<&str, CodecError> {
        let len = usize::try_from(self.varint()?).map_err(|_| CodecError::Invalid("length"))?;
        if len > self.0.len() {
            return Err(CodecError::Truncated);
        }
        let (bytes, rest) = self.0.split_at(len);
        self.0 = rest;
        std::str::from_utf8(bytes).map_err(|_| CodecError::Invalid("utf-8"))
    }

    fn credits(&mut self) -> Result<Credits, CodecError> {
        Credits::from_micros(self.varint()?).ok_or(CodecError::Invalid("credits"))
    }

    fn quantity(&mut self) -> Result<Quantity, CodecError> {
        Quantity::from_micros(self.varint()?).ok_or(CodecError::Invalid("quantity"))
    }

    fn time(&mut self) -> Result<Timestamp, CodecError> {
        Ok(Timestamp::from_micros(self.signed()?))
    }

    fn option<T>(
        &mut self,
        read: impl FnOnce(&mut Self) -> Result<T, CodecError>,
    ) -> Result<Option<T>, CodecError> {
        match self.u8()? {
            0 => Ok(None),
            1 => read(self).map(Some),
            _ => Err(CodecError::Invalid("option")),
        }
    }

    fn metadata(&mut self) -> Result<Metadata, CodecError> {
        let count = self.varint()?;
        if count > purser_core::limits::MAX_METADATA_KEYS as u64 {
            return Err(CodecError::Invalid("metadata"));
        }
        let mut pairs = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let key = self.str()?.to_owned();
            pairs.push((key, self.str()?.to_owned()));
        }
        Metadata::new(pairs).map_err(|_| CodecError::Invalid("metadata"))
    }

    fn kind(&mut self) -> Result<GrantKind, CodecError> {
        match self.u8()? {
            0 => Ok(GrantKind::Budget),
            1 => Ok(GrantKind::Rollover),
            2 => Ok(GrantKind::Package),
            3 => Ok(GrantKind::Promo),
            _ => Err(CodecError::Invalid("grant kind")),
        }
    }

    fn mode(&mut self) -> Result<ChargeMode, CodecError> {
        match self.u8()? {
            0 => Ok(ChargeMode::Strict),
            1 => Ok(ChargeMode::Record),
            _ => Err(CodecError::Invalid("mode")),
        }
    }

    fn status(&mut self) -> Result<PurchaseStatus, CodecError> {
        match self.u8()? {
            0 => Ok(PurchaseStatus::Pending),
            1 => Ok(PurchaseStatus::Completed),
            2 => Ok(PurchaseStatus::Failed),
            3 => Ok(PurchaseStatus::Canceled),
            4 => Ok(PurchaseStatus::Refunded),
            _ => Err(CodecError::Invalid("purchase status")),
        }
    }

    fn tier(&mut self) -> Result<TierId, CodecError> {
        TierId::parse(self.str()?).map_err(|_| CodecError::Invalid("tier id"))
    }

    fn member(&mut self) -> Result<Option<MemberId>, CodecError> {
        self.option(|r| MemberId::parse(r.str()?).map_err(|_| CodecError::Invalid("member id")))
    }

    fn allocation(&mut self) -> Result<Allocation, CodecError> {
        Ok(Allocation {
            grant: self.varint()?,
            kind: self.kind()?,
            credits: self.credits()?,
        })
    }

    fn allocations(&mut self) -> Result<Vec<Allocation>, CodecError> {
        let count = self.varint()?;
        // Each allocation takes at least 3 bytes: refuse counts the bytes cannot hold.
        if count > self.0.len() as u64 {
            return Err(CodecError::Truncated);
        }
        (0..count).map(|_| self.allocation()).collect()
    }

    fn pricing(&mut self) -> Result<Pricing, CodecError> {
        Ok(Pricing {
            task: TaskId::parse(self.str()?).map_err(|_| CodecError::Invalid("task id"))?,
            quantity: self.option(Self::quantity)?,
            rate: self.credits()?,
            minimum: self.option(Self::credits)?,
        })
    }

    fn grant(&mut self) -> Result<Grant, CodecError> {
        Ok(Grant {
            seq: self.varint()?,
            kind: self.kind()?,
            priority: u16::try_from(self.varint()?).map_err(|_| CodecError::Invalid("priority"))?,
            amount: self.credits()?,
            remaining: self.credits()?,
            held: self.credits()?,
            consumed: self.credits()?,
            effective_at: self.time()?,
            expires_at: self.time()?,
            state: match self.u8()? {
                0 => GrantState::Live,
                1 => GrantState::Voided,
                _ => return Err(CodecError::Invalid("grant state")),
            },
            source: match self.u8()? {
                0 => GrantSource::Period {
                    tier: self.tier()?,
                    index: self.signed()?,
                },
                1 => GrantSource::Rollover {
                    index: self.signed()?,
                },
                2 => GrantSource::Purchase {
                    purchase: self.varint()?,
                },
                3 => GrantSource::Operator {
                    reason: self.str()?.into(),
                },
                4 => GrantSource::Reversal {
                    debit: self.varint()?,
                },
                _ => return Err(CodecError::Invalid("grant source")),
            },
        })
    }

    fn hold(&mut self) -> Result<Hold, CodecError> {
        Ok(Hold {
            seq: self.varint()?,
            credits: self.credits()?,
            pricing: self.option(Self::pricing)?,
            member: self.member()?,
            allocations: self.allocations()?,
            created_at: self.time()?,
            expires_at: self.time()?,
            metadata: self.metadata()?,
        })
    }

    /// A count of items that each take at least one byte.
    fn count(&mut self) -> Result<usize, CodecError> {
        let count = self.varint()?;
        if count > self.0.len() as u64 {
            return Err(CodecError::Truncated);
        }
        Ok(count as usize)
    }

    fn actor(&mut self) -> Result<Actor, CodecError> {
        let kind = self.u8()?;
        if kind == 0 {
            return Ok(Actor::System);
        }
        let id = self.str()?;
        if id.is_empty() || id.len() > 128 {
            return Err(CodecError::Invalid("actor id"));
        }
        Ok(match kind {
            1 => Actor::ApiKey(id.into()),
            2 => Actor::Portal(id.into()),
            3 => Actor::Provider(id.into()),
            _ => return Err(CodecError::Invalid("actor")),
        })
    }

    fn thresholds(&mut self) -> Result<Vec<Credits>, CodecError> {
        let count = self.count()?;
        if count > purser_core::MAX_THRESHOLDS {
            return Err(CodecError::Invalid("low-balance thresholds"));
        }
        (0..count).map(|_| self.credits()).collect()
    }

    fn account(&mut self) -> Result<AccountSnapshot, CodecError> {
        Ok(AccountSnapshot {
            id: AccountId::parse(self.str()?).map_err(|_| CodecError::Invalid("account id"))?,
            handle: AccountHandle::from_raw(self.varint()?),
            name: self.str()?.into(),
            tier: self.tier()?,
            pending_tier: self.option(Self::tier)?,
            anchor: self.time()?,
            created_at: self.time()?,
            status: match self.u8()? {
                0 => AccountStatus::Active,
                1 => AccountStatus::Closed,
                _ => return Err(CodecError::Invalid("account status")),
            },
            member_monthly_cap: self.option(Self::credits)?,
            metadata: self.metadata()?,
            period_index: self.signed()?,
            next_seq: self.varint()?,
            debt: self.credits()?,
            grants: (0..self.count()?)
                .map(|_| self.grant())
                .collect::<Result<_, _>>()?,
            holds: (0..self.count()?)
                .map(|_| self.hold())
                .collect::<Result<_, _>>()?,
            purchases: (0..self.count()?)
                .map(|_| self.purchase())
                .collect::<Result<_, _>>()?,
            member_usage: (0..self.count()?)
                .map(|_| {
                    let member = MemberId::parse(self.str()?)
                        .map_err(|_| CodecError::Invalid("member id"))?;
                    Ok((member, self.sum()?))
                })
                .collect::<Result<_, CodecError>>()?,
            reversed: (0..self.count()?)
                .map(|_| Ok((self.varint()?, self.credits()?)))
                .collect::<Result<_, CodecError>>()?,
            low_balance_thresholds: None,
            auto_recharge: None,
        })
    }

    fn purchase(&mut self) -> Result<Purchase, CodecError> {
        Ok(Purchase {
            seq: self.varint()?,
            package: PackageId::parse(self.str()?)
                .map_err(|_| CodecError::Invalid("package id"))?,
            credits: self.credits()?,
            price: self.credits()?,
            status: self.status()?,
            grant: self.option(Self::varint)?,
            created_at: self.time()?,
            updated_at: self.time()?,
            partly_refunded: None,
            auto_recharge: false,
        })
    }

    fn auto_config(&mut self) -> Result<AutoRechargeConfig, CodecError> {
        Ok(AutoRechargeConfig {
            enabled: self.bool()?,
            threshold: self.credits()?,
            package: PackageId::parse(self.str()?)
                .map_err(|_| CodecError::Invalid("package id"))?,
            max_per_month: self.option(|r| {
                u32::try_from(r.varint()?).map_err(|_| CodecError::Invalid("max_per_month"))
            })?,
        })
    }

    fn auto_state(&mut self) -> Result<AutoRecharge, CodecError> {
        Ok(AutoRecharge {
            config: self.auto_config()?,
            in_flight: self.option(Self::varint)?,
            period: self.signed()?,
            made: u32::try_from(self.varint()?).map_err(|_| CodecError::Invalid("made"))?,
            failures: self.u8()?,
            limit_told: self.option(Self::signed)?,
        })
    }

    fn body(&mut self) -> Result<Body, CodecError> {
        Ok(match self.u8()? {
            tag @ (0 | 17 | 20) => {
                let mut opened = Opened {
                    id: AccountId::parse(self.str()?)
                        .map_err(|_| CodecError::Invalid("account id"))?,
                    name: self.str()?.into(),
                    tier: self.tier()?,
                    anchor: self.time()?,
                    member_monthly_cap: self.option(Self::credits)?,
                    metadata: self.metadata()?,
                    period_index: self.signed()?,
                    low_balance_thresholds: None,
                    auto_recharge: None,
                };
                if tag == 17 {
                    opened.low_balance_thresholds = Some(self.thresholds()?);
                } else if tag == 20 {
                    opened.low_balance_thresholds = self.option(Self::thresholds)?;
                    opened.auto_recharge = Some(self.auto_config()?);
                }
                Body::Opened(Box::new(opened))
            }
            tag @ (1 | 18 | 21) => {
                let mut update = AccountUpdate {
                    name: self.option(|r| r.str().map(Into::into))?,
                    metadata: self.option(Self::metadata)?,
                    member_monthly_cap: self.option(|r| r.option(Self::credits))?,
                    low_balance_thresholds: None,
                    auto_recharge: None,
                };
                if tag == 18 {
                    update.low_balance_thresholds = Some(self.option(Self::thresholds)?);
                } else if tag == 21 {
                    update.low_balance_thresholds = self.option(|r| r.option(Self::thresholds))?;
                    update.auto_recharge = Some(self.option(|r| r.auto_config().map(Box::new))?);
                }
                Body::Updated(Box::new(update))
            }
            2 => Body::Closed,
            3 => Body::Granted(Box::new(self.grant()?)),
            4 => Body::Debited(Debit {
                credits: self.credits()?,
                pricing: self.option(Self::pricing)?,
                member: self.member()?,
                mode: self.mode()?,
                allocations: self.allocations()?,
                debt_incurred: self.credits()?,
                metadata: self.metadata()?,
            }),
            5 => Body::Held(Box::new(self.hold()?)),
            6 => Body::Captured(Box::new(Capture {
                hold: self.varint()?,
                credits: self.credits()?,
                pricing: self.option(Self::pricing)?,
                member: self.member()?,
                mode: self.mode()?,
                from_hold: self.allocations()?,
                excess: self.allocations()?,
                debt_incurred: self.credits()?,
                released: self.allocations()?,
            })),
            7 => Body::Released(Release {
                hold: self.varint()?,
                reason: match self.u8()? {
                    0 => ReleaseReason::Released,
                    1 => ReleaseReason::Expired,
                    _ => return Err(CodecError::Invalid("release reason")),
                },
                allocations: self.allocations()?,
            }),
            8 => Body::Expired(self.allocation()?),
            9 => Body::Voided {
                allocation: self.allocation()?,
                reason: match self.u8()? {
                    0 => VoidReason::GrantVoided,
                    1 => VoidReason::Refund {
                        purchase: self.varint()?,
                    },
                    2 => VoidReason::HoldEnded,
                    3 => VoidReason::PartialRefund {
                        purchase: self.varint()?,
                    },
                    _ => return Err(CodecError::Invalid("void reason")),
                },
            },
            10 => Body::Reversed(Box::new(Reversal {
                debit: self.varint()?,
                credits: self.credits()?,
                returned: self.allocations()?,
                forfeited: self.allocations()?,
                debt_canceled: self.credits()?,
                debt_refunded: self.credits()?,
                member: self.member()?,
                member_usage_reduced: self.credits()?,
            })),
            11 => Body::DebtPaid(self.allocations()?),
            12 => Body::TierChanged(Box::new(TierChange {
                from: self.tier()?,
                to: self.tier()?,
                proration: match self.u8()? {
                    0 => Proration::Full,
                    1 => Proration::Prorated,
                    2 => Proration::None,
                    _ => return Err(CodecError::Invalid("proration")),
                },
                budget_increase: self.credits()?,
                budget_grant: self.option(Self::varint)?,
                scheduled: self.bool()?,
            })),
            13 => Body::TierScheduled(self.option(Self::tier)?),
            14 => Body::RolledOver {
                from: self.allocations()?,
                grant: Box::new(self.grant()?),
            },
            tag @ (15 | 22) => {
                let mut purchase = self.purchase()?;
                purchase.auto_recharge = tag == 22;
                Body::PurchaseCreated(Box::new(purchase))
            }
            16 => Body::PurchaseUpdated {
                purchase: self.varint()?,
                status: self.status()?,
            },
            23 => Body::AutoRecharge {
                purchase: self.option(Self::varint)?,
                outcome: match self.u8()? {
                    0 => RechargeOutcome::Succeeded,
                    1 => RechargeOutcome::Failed(RechargeFailure::PaymentFailed),
                    2 => RechargeOutcome::Failed(RechargeFailure::ActionRequired),
                    3 => RechargeOutcome::Failed(RechargeFailure::NoPaymentMethod),
                    4 => RechargeOutcome::Failed(RechargeFailure::MonthlyLimitReached),
                    _ => return Err(CodecError::Invalid("recharge outcome")),
                },
            },
            19 => Body::PurchasePartlyRefunded {
                purchase: self.varint()?,
                share: RefundedShare {
                    refunded: self.varint()?,
                    paid: self.varint()?,
                },
            },
            _ => return Err(CodecError::Invalid("entry type")),
        })
    }
}
