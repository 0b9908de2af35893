//! Deciding commands: each handler checks the command against the account's
//! state, refuses it with a [`Rejection`] before anything changes, or emits
//! the journal entries that carry it out (each applied at once through
//! [`Account::apply`], so later steps see the new state).

use crate::account::{Account, AccountStatus};
use crate::catalog::{Catalog, price_at};
use crate::command::{Amount, CaptureAmount, DebitRecord};
use crate::credits::{CreditSum, Credits};
use crate::entry::{
    AccountUpdate, Allocation, BalanceAfter, Body, Capture, ChargeMode, Debit, Entry, Hold,
    Pricing, Proration, Release, ReleaseReason, Reversal, TierChange, VoidReason,
};
use crate::grant::{Grant, GrantKind, GrantSource, GrantState, MAX_PRIORITY};
use crate::ids::{MemberId, TierId};
use crate::limits::{
    Limit, MAX_ACTIVE_HOLDS_PER_ACCOUNT, MAX_GRANTS_PER_ACCOUNT, MAX_HOLD_TTL_SECONDS,
    MAX_MEMBERS_PER_PERIOD, MAX_NAME_LEN, MAX_REASON_LEN,
};
use crate::metadata::Metadata;
use crate::purchases::check_auto_recharge;
use crate::rejection::Rejection;
use crate::time::{Timestamp, period_start};

/// What every handler needs besides the account: the catalog, the instant,
/// and where entries go.
pub(crate) struct Context<'a> {
    pub catalog: &'a Catalog,
    pub now: Timestamp,
    pub out: &'a mut Vec<Entry>,
}

/// The index in `out` of the entry that answers the command, if one was written.
pub(crate) type Decided = Result<Option<usize>, Rejection>;

impl Account {
    /// Applies `body` as the next entry at `at` and appends it to `out`.
    /// A failure here is a bug in a handler: it stops the process.
    pub(crate) fn emit(&mut self, at: Timestamp, body: Body, out: &mut Vec<Entry>) -> usize {
        let mut entry = Entry {
            account: self.handle,
            seq: self.next_seq,
            at,
            body,
            balance_after: BalanceAfter::default(),
            actor: None,
        };
        if let Err(error) = self.apply(&entry) {
            panic!("ledger bug: a decided entry does not apply ({error}): {entry:?}");
        }
        entry.balance_after = self.balance_after(at);
        out.push(entry);
        out.len() - 1
    }

    // ----- time -----

    /// Applies everything due by `now`, in time order; at one instant hold
    /// expiries first, then grant expiries, then renewal. However late it is
    /// called, each due event happens once, at its own instant.
    pub(crate) fn advance(&mut self, catalog: &Catalog, now: Timestamp, out: &mut Vec<Entry>) {
        while self.next_due <= now {
            let instant = self.next_due;
            self.expire_holds(instant, out);
            self.expire_grants(catalog, instant, out);
            if self.status == AccountStatus::Active && self.period_end <= instant {
                self.renew(catalog, instant, out);
            }
            self.settle_debt(instant, out);
            assert!(
                self.next_due > instant,
                "ledger bug: work due at {instant:?} made no progress"
            );
        }
    }

    fn expire_holds(&mut self, instant: Timestamp, out: &mut Vec<Entry>) {
        while let Some(seq) = self
            .holds
            .iter()
            .filter(|h| h.expires_at <= instant)
            .min_by_key(|h| (h.expires_at, h.seq))
            .map(|h| h.seq)
        {
            // Grants expiring at this same instant are expired next, with the
            // returned credits (so those can still roll over).
            let lost_if_expired_by = Timestamp::from_micros(instant.micros() - 1);
            self.end_hold(
                seq,
                ReleaseReason::Expired,
                instant,
                lost_if_expired_by,
                out,
            );
        }
    }

    fn end_hold(
        &mut self,
        seq: u64,
        reason: ReleaseReason,
        at: Timestamp,
        lost_if_expired_by: Timestamp,
        out: &mut Vec<Entry>,
    ) -> usize {
        let allocations = self
            .hold(seq)
            .map(|h| h.allocations.clone())
            .unwrap_or_default();
        let index = self.emit(
            at,
            Body::Released(Release {
                hold: seq,
                reason,
                allocations: allocations.clone(),
            }),
            out,
        );
        self.lose_returned(&allocations, at, lost_if_expired_by, out);
        index
    }

    /// Held credits given back to a grant that was voided, or that expired by
    /// `lost_if_expired_by`, are lost at once: voided or expired.
    fn lose_returned(
        &mut self,
        allocations: &[Allocation],
        at: Timestamp,
        lost_if_expired_by: Timestamp,
        out: &mut Vec<Entry>,
    ) {
        for allocation in allocations {
            let Some(grant) = self.grant(allocation.grant) else {
                continue;
            };
            let body = if grant.state == GrantState::Voided {
                Body::Voided {
                    allocation: *allocation,
                    reason: VoidReason::HoldEnded,
                }
            } else if grant.expires_at <= lost_if_expired_by {
                Body::Expired(*allocation)
            } else {
                continue;
            };
            self.emit(at, body, out);
        }
    }

    /// Expires the free credits of grants whose time has come; the ending
    /// period's budget first moves up to the tier's rollover cap into a
    /// rollover grant.
    fn expire_grants(&mut self, catalog: &Catalog, instant: Timestamp, out: &mut Vec<Entry>) {
        let ending = self.period_index;
        let is_ending_budget =
            |g: &Grant| g.period_index() == Some(ending) && g.expires_at == instant;
        let leftover: Credits = self
            .grants
            .iter()
            .filter(|g| g.state == GrantState::Live && is_ending_budget(g))
            .map(Grant::free)
            .sum::<CreditSum>()
            .to_credits()
            .unwrap_or(Credits::MAX);
        let cap = match self.status {
            AccountStatus::Active => catalog
                .tier(self.tier.as_str())
                .map_or(Credits::ZERO, |t| t.rollover_cap),
            AccountStatus::Closed => Credits::ZERO,
        };
        let rolled = leftover.min(cap);
        if !rolled.is_zero() {
            let from = take_in_order(
                self.grants
                    .iter()
                    .filter(|g| g.state == GrantState::Live && is_ending_budget(g)),
                rolled,
                Grant::free,
            );
            let grant = Grant {
                seq: self.next_seq,
                kind: GrantKind::Rollover,
                priority: GrantKind::Rollover.default_priority(),
                amount: rolled,
                remaining: rolled,
                held: Credits::ZERO,
                consumed: Credits::ZERO,
                effective_at: instant,
                expires_at: period_start(self.anchor, ending + 2),
                state: GrantState::Live,
                source: GrantSource::Rollover { index: ending },
            };
            self.emit(
                instant,
                Body::RolledOver {
                    from,
                    grant: Box::new(grant),
                },
                out,
            );
        }
        let expiring: Vec<Allocation> = self
            .grants
            .iter()
            .filter(|g| {
                g.state == GrantState::Live && g.expires_at <= instant && !g.free().is_zero()
            })
            .map(|g| Allocation {
                grant: g.seq,
                kind: g.kind,
                credits: g.free(),
            })
            .collect();
        for allocation in expiring {
            self.emit(instant, Body::Expired(allocation), out);
        }
    }

    /// Starts the next period: a scheduled downgrade takes effect, and the
    /// tier's monthly credits are granted until the period's end.
    fn renew(&mut self, catalog: &Catalog, instant: Timestamp, out: &mut Vec<Entry>) {
        debug_assert_eq!(self.period_end, instant);
        if let Some(pending) = self.pending_tier.clone() {
            let change = TierChange {
                from: self.tier.clone(),
                to: pending,
                proration: Proration::None,
                budget_increase: Credits::ZERO,
                budget_grant: None,
                scheduled: true,
            };
            self.emit(instant, Body::TierChanged(Box::new(change)), out);
        }
        let next = self.period_index + 1;
        let monthly = catalog
            .tier(self.tier.as_str())
            .map_or(Credits::ZERO, |t| t.monthly_credits);
        let grant = self.budget_grant(monthly, next, instant);
        self.emit(instant, Body::Granted(Box::new(grant)), out);
    }

    /// A budget grant of `credits` for period `index`, as the next entry.
    pub(crate) fn budget_grant(
        &self,
        credits: Credits,
        index: i64,
        effective_at: Timestamp,
    ) -> Grant {
        Grant {
            seq: self.next_seq,
            kind: GrantKind::Budget,
            priority: GrantKind::Budget.default_priority(),
            amount: credits,
            remaining: credits,
            held: Credits::ZERO,
            consumed: Credits::ZERO,
            effective_at,
            expires_at: period_start(self.anchor, index + 1),
            state: GrantState::Live,
            source: GrantSource::Period {
                tier: self.tier.clone(),
                index,
            },
        }
    }

    /// Rule 3: credits that become available pay outstanding debt first.
    pub(crate) fn settle_debt(&mut self, at: Timestamp, out: &mut Vec<Entry>) {
        if self.debt.is_zero() {
            return;
        }
        let (allocations, taken) = self.take_free(at, self.debt);
        if !taken.is_zero() {
            self.emit(at, Body::DebtPaid(allocations), out);
        }
    }

    // ----- reading state for decisions -----

    /// Free credits of active grants in burn order, up to `credits`: the
    /// allocations and how much they cover.
    pub(crate) fn take_free(&self, at: Timestamp, credits: Credits) -> (Vec<Allocation>, Credits) {
        let allocations = take_in_order(
            self.grants.iter().filter(|g| g.is_active(at)),
            credits,
            Grant::free,
        );
        let taken = crate::entry::allocated(&allocations)
            .to_credits()
            .unwrap_or(Credits::MAX);
        (allocations, taken)
    }

    pub(crate) fn ensure_active(&self) -> Result<(), Rejection> {
        match self.status {
            AccountStatus::Active => Ok(()),
            AccountStatus::Closed => Err(Rejection::AccountClosed),
        }
    }

    /// Rule 8: a member's consumption plus holds in the period stays within
    /// the cap for strict charges and holds; recorded charges only count.
    fn check_member(
        &self,
        catalog: &Catalog,
        member: &MemberId,
        credits: Credits,
        mode: ChargeMode,
    ) -> Result<(), Rejection> {
        let usage = self.member_usage(member.as_str());
        let holding = self
            .holds
            .iter()
            .filter(|h| h.member.as_ref() == Some(member));
        let known = usage > CreditSum::ZERO
            || self
                .member_usage
                .as_ref()
                .is_some_and(|u| u.contains_key(member))
            || holding.clone().next().is_some();
        let members = self.member_usage.as_ref().map_or(0, |u| u.len());
        if !known && members >= MAX_MEMBERS_PER_PERIOD {
            return Err(Rejection::LimitExceeded(Limit::MembersPerPeriod));
        }
        if mode == ChargeMode::Record {
            return Ok(());
        }
        let tier_cap = || {
            catalog
                .tier(self.tier.as_str())
                .and_then(|t| t.member_monthly_cap)
        };
        let Some(cap) = self.member_monthly_cap.or_else(tier_cap) else {
            return Ok(());
        };
        let held: CreditSum = holding.map(|h| h.credits).sum();
        let used = usage.checked_add(held).unwrap_or(usage);
        if used
            .checked_add(credits.to_sum())
            .is_none_or(|total| total > cap.to_sum())
        {
            return Err(Rejection::MemberLimitExceeded {
                member: member.clone(),
                cap,
                used,
                required: credits,
            });
        }
        Ok(())
    }

    /// Operator and purchase grants count toward the per-account bound, with
    /// the purchases that will become grants; spent ones do not (an account
    /// buys packages any number of times).
    pub(crate) fn bounded_grants(&self) -> usize {
        let grants = self
            .grants
            .iter()
            .filter(|g| matches!(g.kind, GrantKind::Package | GrantKind::Promo))
            .count();
        grants + self.pending_purchases()
    }

    // ----- commands -----

    pub(crate) fn update(&mut self, cx: Context<'_>, update: AccountUpdate) -> Decided {
        self.ensure_active()?;
        if update
            .name
            .as_ref()
            .is_some_and(|name| name.is_empty() || name.chars().count() > MAX_NAME_LEN)
        {
            return Err(Rejection::LimitExceeded(Limit::NameLength));
        }
        if let Some(Some(thresholds)) = &update.low_balance_thresholds {
            check_thresholds(thresholds)?;
        }
        match &update.auto_recharge {
            Some(Some(config)) => check_auto_recharge(cx.catalog, config)?,
            // Its state (the purchase in flight, this period's count) goes
            // with it: not while a recharge is pending.
            Some(None)
                if self
                    .auto_recharge
                    .as_deref()
                    .is_some_and(|auto| auto.in_flight.is_some()) =>
            {
                return Err(Rejection::RechargeInFlight);
            }
            _ => {}
        }
        Ok(Some(self.emit(
            cx.now,
            Body::Updated(Box::new(update)),
            cx.out,
        )))
    }

    pub(crate) fn close(&mut self, cx: Context<'_>) -> Decided {
        self.ensure_active()?;
        Ok(Some(self.emit(cx.now, Body::Closed, cx.out)))
    }

    pub(crate) fn charge(
        &mut self,
        cx: Context<'_>,
        amount: Amount,
        member: Option<MemberId>,
        mode: ChargeMode,
        metadata: Metadata,
    ) -> Decided {
        self.ensure_active()?;
        let (credits, pricing) = price(cx.catalog, amount)?;
        if let Some(member) = &member {
            self.check_member(cx.catalog, member, credits, mode)?;
        }
        let (allocations, taken) = self.take_free(cx.now, credits);
        let debt_incurred = self.shortfall(credits, taken, mode)?;
        let debit = Debit {
            credits,
            pricing,
            member,
            mode,
            allocations,
            debt_incurred,
            metadata,
        };
        Ok(Some(self.emit(cx.now, Body::Debited(debit), cx.out)))
    }

    /// What grants could not cover: refused in strict mode, debt in record mode.
    fn shortfall(
        &self,
        required: Credits,
        taken: Credits,
        mode: ChargeMode,
    ) -> Result<Credits, Rejection> {
        let short = required.saturating_sub(taken);
        if short.is_zero() {
            return Ok(short);
        }
        match mode {
            ChargeMode::Strict => Err(Rejection::InsufficientCredits {
                available: taken.to_sum(),
                required,
            }),
            ChargeMode::Record => {
                self.debt
                    .checked_add(short)
                    .ok_or(Rejection::AmountTooLarge)?;
                Ok(short)
            }
        }
    }

    pub(crate) fn place_hold(
        &mut self,
        cx: Context<'_>,
        amount: Amount,
        ttl_seconds: i64,
        member: Option<MemberId>,
        metadata: Metadata,
    ) -> Decided {
        self.ensure_active()?;
        if !(1..=MAX_HOLD_TTL_SECONDS).contains(&ttl_seconds) {
            return Err(Rejection::LimitExceeded(Limit::HoldTtl));
        }
        if self.holds.len() >= MAX_ACTIVE_HOLDS_PER_ACCOUNT {
            return Err(Rejection::LimitExceeded(Limit::ActiveHoldsPerAccount));
        }
        let (credits, pricing) = price(cx.catalog, amount)?;
        if let Some(member) = &member {
            self.check_member(cx.catalog, member, credits, ChargeMode::Strict)?;
        }
        let (allocations, taken) = self.take_free(cx.now, credits);
        self.shortfall(credits, taken, ChargeMode::Strict)?;
        let hold = Hold {
            seq: self.next_seq,
            credits,
            pricing,
            member,
            allocations,
            created_at: cx.now,
            expires_at: cx
                .now
                .checked_add_seconds(ttl_seconds)
                .unwrap_or(Timestamp::NEVER),
            metadata,
        };
        Ok(Some(self.emit(cx.now, Body::Held(Box::new(hold)), cx.out)))
    }

    fn active_hold(&self, seq: u64) -> Result<&Hold, Rejection> {
        match self.hold(seq) {
            Some(hold) => Ok(hold),
            None if seq < self.next_seq => Err(Rejection::HoldNotActive),
            None => Err(Rejection::HoldNotFound),
        }
    }

    pub(crate) fn capture(
        &mut self,
        cx: Context<'_>,
        seq: u64,
        amount: CaptureAmount,
        mode: ChargeMode,
    ) -> Decided {
        let hold = self.active_hold(seq)?.clone();
        let (credits, pricing) = match amount {
            CaptureAmount::Hold => (hold.credits, hold.pricing.clone()),
            CaptureAmount::Credits(credits) => {
                let pricing = hold.pricing.clone().map(|p| Pricing {
                    quantity: None,
                    ..p
                });
                (credits, pricing)
            }
            CaptureAmount::Quantity(quantity) => {
                let pricing = hold.pricing.clone().ok_or(Rejection::CaptureNeedsTask)?;
                let credits = price_at(pricing.rate, pricing.minimum, quantity)
                    .ok_or(Rejection::AmountTooLarge)?;
                (
                    credits,
                    Some(Pricing {
                        quantity: Some(quantity),
                        ..pricing
                    }),
                )
            }
        };
        let from_hold = take_in_order(hold.allocations.iter(), credits.min(hold.credits), |a| {
            a.credits
        });
        let released = remainder(&hold.allocations, &from_hold);
        let beyond = credits.saturating_sub(hold.credits);
        let (excess, debt_incurred) = if beyond.is_zero() {
            (Vec::new(), Credits::ZERO)
        } else {
            if let Some(member) = &hold.member {
                self.check_member(cx.catalog, member, beyond, mode)?;
            }
            let (excess, taken) = self.take_free(cx.now, beyond);
            let debt = self.shortfall(beyond, taken, mode)?;
            (excess, debt)
        };
        let capture = Capture {
            hold: seq,
            credits,
            pricing,
            member: hold.member.clone(),
            mode,
            from_hold,
            excess,
            debt_incurred,
            released: released.clone(),
        };
        let index = self.emit(cx.now, Body::Captured(Box::new(capture)), cx.out);
        self.lose_returned(&released, cx.now, cx.now, cx.out);
        Ok(Some(index))
    }

    pub(crate) fn release(&mut self, cx: Context<'_>, seq: u64) -> Decided {
        self.active_hold(seq)?;
        Ok(Some(self.end_hold(
            seq,
            ReleaseReason::Released,
            cx.now,
            cx.now,
            cx.out,
        )))
    }

    /// Rule 9: credits go back to the grants they came from, last taken first
    /// returned; a part whose grant expired or was voided is forfeited; the
    /// debt part cancels outstanding debt, or comes back as a promo grant.
    pub(crate) fn reverse(
        &mut self,
        cx: Context<'_>,
        debit: &DebitRecord,
        credits: Option<Credits>,
    ) -> Decided {
        if debit.id.seq >= self.next_seq {
            return Err(Rejection::DebitNotFound);
        }
        let done = self.reversed(debit.id.seq);
        let reversible = debit.credits.saturating_sub(done);
        if reversible.is_zero() {
            return Err(Rejection::NothingToReverse);
        }
        let credits = credits.unwrap_or(reversible);
        if credits > reversible {
            return Err(Rejection::ReversalTooLarge { reversible });
        }
        let (mut skip, mut left) = (done, credits);
        let (mut returned, mut forfeited, mut debt_part) = (Vec::new(), Vec::new(), Credits::ZERO);
        let debt_slice = Allocation {
            grant: u64::MAX,
            kind: GrantKind::Promo,
            credits: debit.debt_incurred,
        };
        for part in std::iter::once(&debt_slice).chain(debit.allocations.iter().rev()) {
            let skipped = part.credits.min(skip);
            skip = skip.saturating_sub(skipped);
            let take = part.credits.saturating_sub(skipped).min(left);
            if take.is_zero() {
                continue;
            }
            left = left.saturating_sub(take);
            let allocation = Allocation {
                credits: take,
                ..*part
            };
            if part.grant == u64::MAX {
                debt_part = take;
            } else if self
                .grant(part.grant)
                .is_some_and(|g| g.is_active(cx.now) && take <= g.consumed)
            {
                returned.push(allocation);
            } else {
                forfeited.push(allocation);
            }
        }
        let debt_canceled = debt_part.min(self.debt);
        let debt_refunded = debt_part.saturating_sub(debt_canceled);
        let member_usage_reduced = match &debit.member {
            Some(member) if debit.at >= self.period_start => {
                let usage = self
                    .member_usage(member.as_str())
                    .to_credits()
                    .unwrap_or(Credits::MAX);
                credits.min(usage)
            }
            _ => Credits::ZERO,
        };
        let reversal = Reversal {
            debit: debit.id.seq,
            credits,
            returned,
            forfeited,
            debt_canceled,
            debt_refunded,
            member: debit.member.clone(),
            member_usage_reduced,
        };
        let index = self.emit(cx.now, Body::Reversed(Box::new(reversal)), cx.out);
        if !debt_refunded.is_zero() {
            let grant = self.operator_grant(
                GrantKind::Promo,
                debt_refunded,
                Timestamp::NEVER,
                GrantKind::Promo.default_priority(),
                cx.now,
                GrantSource::Reversal {
                    debit: debit.id.seq,
                },
            );
            self.emit(cx.now, Body::Granted(Box::new(grant)), cx.out);
        }
        Ok(Some(index))
    }

    pub(crate) fn operator_grant(
        &self,
        kind: GrantKind,
        credits: Credits,
        expires_at: Timestamp,
        priority: u16,
        now: Timestamp,
        source: GrantSource,
    ) -> Grant {
        Grant {
            seq: self.next_seq,
            kind,
            priority,
            amount: credits,
            remaining: credits,
            held: Credits::ZERO,
            consumed: Credits::ZERO,
            effective_at: now,
            expires_at,
            state: GrantState::Live,
            source,
        }
    }

    pub(crate) fn issue_grant(
        &mut self,
        cx: Context<'_>,
        kind: GrantKind,
        credits: Credits,
        expires_at: Option<Timestamp>,
        priority: Option<u16>,
        reason: String,
    ) -> Decided {
        self.ensure_active()?;
        if !matches!(kind, GrantKind::Promo | GrantKind::Package) {
            return Err(Rejection::GrantKindNotAllowed);
        }
        let expires_at = expires_at.unwrap_or(Timestamp::NEVER);
        if expires_at <= cx.now {
            return Err(Rejection::ExpiryInPast);
        }
        let priority = priority.unwrap_or(kind.default_priority());
        if priority > MAX_PRIORITY {
            return Err(Rejection::PriorityTooHigh);
        }
        if reason.chars().count() > MAX_REASON_LEN {
            return Err(Rejection::LimitExceeded(Limit::ReasonLength));
        }
        if self.bounded_grants() >= MAX_GRANTS_PER_ACCOUNT {
            return Err(Rejection::LimitExceeded(Limit::GrantsPerAccount));
        }
        let source = GrantSource::Operator {
            reason: reason.into(),
        };
        let grant = self.operator_grant(kind, credits, expires_at, priority, cx.now, source);
        Ok(Some(self.emit(
            cx.now,
            Body::Granted(Box::new(grant)),
            cx.out,
        )))
    }

    pub(crate) fn void_grant(&mut self, cx: Context<'_>, seq: u64) -> Decided {
        let grant = self.grant(seq).ok_or(Rejection::GrantNotFound)?;
        if grant.state == GrantState::Voided || grant.expires_at <= cx.now {
            return Err(Rejection::GrantNotLive);
        }
        let allocation = Allocation {
            grant: seq,
            kind: grant.kind,
            credits: grant.free(),
        };
        let body = Body::Voided {
            allocation,
            reason: VoidReason::GrantVoided,
        };
        Ok(Some(self.emit(cx.now, body, cx.out)))
    }

    /// Rule 5: an upgrade (or a move to a tier with as many monthly credits)
    /// applies at once and grows the current budget; a downgrade waits for
    /// the next period; choosing the current tier cancels a pending downgrade.
    pub(crate) fn change_tier(
        &mut self,
        cx: Context<'_>,
        tier: TierId,
        proration: Proration,
    ) -> Decided {
        self.ensure_active()?;
        let new_tier = cx
            .catalog
            .tier(tier.as_str())
            .ok_or(Rejection::UnknownTier)?;
        if tier == self.tier {
            return match self.pending_tier {
                Some(_) => Ok(Some(self.emit(cx.now, Body::TierScheduled(None), cx.out))),
                None => Ok(None),
            };
        }
        let current = cx
            .catalog
            .tier(self.tier.as_str())
            .map_or(Credits::ZERO, |t| t.monthly_credits);
        if new_tier.monthly_credits < current {
            if self.pending_tier.as_ref() == Some(&tier) {
                return Ok(None);
            }
            return Ok(Some(self.emit(
                cx.now,
                Body::TierScheduled(Some(tier)),
                cx.out,
            )));
        }
        let difference = new_tier.monthly_credits.saturating_sub(current);
        let increase = match proration {
            Proration::Full => difference,
            Proration::None => Credits::ZERO,
            Proration::Prorated => {
                let left = u64::try_from(self.period_end.micros_since(cx.now)).unwrap_or(0);
                let length =
                    u64::try_from(self.period_end.micros_since(self.period_start)).unwrap_or(0);
                difference
                    .mul_div_floor(left.min(length), length)
                    .unwrap_or(Credits::ZERO)
            }
        };
        let budget = self
            .grants
            .iter()
            .rfind(|g| g.period_index() == Some(self.period_index) && g.state == GrantState::Live)
            .map(|g| (g.seq, g.amount));
        if let Some((_, amount)) = budget
            && amount.checked_add(increase).is_none()
        {
            return Err(Rejection::AmountTooLarge);
        }
        let change = TierChange {
            from: self.tier.clone(),
            to: tier,
            proration,
            budget_increase: if budget.is_some() {
                increase
            } else {
                Credits::ZERO
            },
            budget_grant: budget.map(|(seq, _)| seq),
            scheduled: false,
        };
        let index = self.emit(cx.now, Body::TierChanged(Box::new(change)), cx.out);
        if budget.is_none() && !increase.is_zero() {
            let grant = self.budget_grant(increase, self.period_index, cx.now);
            self.emit(cx.now, Body::Granted(Box::new(grant)), cx.out);
        }
        Ok(Some(index))
    }
}

/// The credits and the rate-card pricing of an amount.
fn price(catalog: &Catalog, amount: Amount) -> Result<(Credits, Option<Pricing>), Rejection> {
    match amount {
        Amount::Credits(credits) => Ok((credits, None)),
        Amount::Task { task, quantity } => {
            let line = catalog.task(task.as_str()).ok_or(Rejection::UnknownTask)?;
            let credits = line.price(quantity).ok_or(Rejection::AmountTooLarge)?;
            let pricing = Pricing {
                task,
                quantity: Some(quantity),
                rate: line.credits_per_unit,
                minimum: line.minimum,
            };
            Ok((credits, Some(pricing)))
        }
    }
}

/// Takes up to `credits` from `items` in order, `size` of each at most.
fn take_in_order<'a, T: 'a + AsAllocation>(
    items: impl Iterator<Item = &'a T>,
    credits: Credits,
    size: impl Fn(&T) -> Credits,
) -> Vec<Allocation> {
    let mut left = credits;
    let mut allocations = Vec::new();
    for item in items {
        if left.is_zero() {
            break;
        }
        let take = size(item).min(left);
        if take.is_zero() {
            continue;
        }
        left = left.saturating_sub(take);
        allocations.push(item.allocation(take));
    }
    allocations
}

/// What is left of `whole` once `part` (a prefix taken in order) is removed.
fn remainder(whole: &[Allocation], part: &[Allocation]) -> Vec<Allocation> {
    whole
        .iter()
        .filter_map(|a| {
            let taken = part
                .iter()
                .find(|p| p.grant == a.grant)
                .map_or(Credits::ZERO, |p| p.credits);
            let left = a.credits.saturating_sub(taken);
            (!left.is_zero()).then_some(Allocation {
                credits: left,
                ..*a
            })
        })
        .collect()
}

/// Something credits can be taken from, naming the grant.
trait AsAllocation {
    fn allocation(&self, credits: Credits) -> Allocation;
}

impl AsAllocation for Grant {
    fn allocation(&self, credits: Credits) -> Allocation {
        Allocation {
            grant: self.seq,
            kind: self.kind,
            credits,
        }
    }
}

impl AsAllocation for Allocation {
    fn allocation(&self, credits: Credits) -> Allocation {
        Allocation { credits, ..*self }
    }
}

/// An account's low-balance thresholds: at most
/// [`MAX_THRESHOLDS`](crate::catalog::MAX_THRESHOLDS) (callers parse each
/// as a positive amount; a zero one would never be crossed).
pub(crate) fn check_thresholds(thresholds: &[Credits]) -> Result<(), Rejection> {
    if thresholds.len() > crate::catalog::MAX_THRESHOLDS {
        return Err(Rejection::LimitExceeded(Limit::LowBalanceThresholds));
    }
    Ok(())
}
