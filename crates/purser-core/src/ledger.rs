//! A partition of accounts: the unit a single writer owns.

use std::hash::BuildHasher;
use std::sync::Arc;

use crate::account::{Account, AccountSnapshot, ApplyError};
use crate::catalog::Catalog;
use crate::command::{Command, Target};
use crate::credits::Credits;
use crate::decide::{Context, Decided};
use crate::entry::Actor;
use crate::entry::{BalanceAfter, Body, Entry, Opened};
use crate::events::{self, Event};
use crate::ids::{AccountHandle, AccountId, TierId};
use crate::limits::{Limit, MAX_NAME_LEN};
use crate::metadata::Metadata;
use crate::rejection::Rejection;
use crate::time::{Timestamp, period_index_at};

/// What an accepted command produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Receipt {
    pub account: AccountHandle,
    /// Index in the output buffer of the entry that answers the command
    /// (the debit, the hold, the grant…); `None` when the command changed
    /// nothing (completing a completed purchase, choosing the current tier).
    pub primary: Option<usize>,
    /// Whether the account's next due instant ([`Account::next_due`]) moved:
    /// a scheduler keeping one entry per account needs a new one only then.
    pub due_moved: bool,
}

/// The accounts of one partition, and the catalog they are charged against.
///
/// `execute` decides a command and appends its entries to a caller's buffer
/// (entries already applied to memory); `apply` replays stored entries.
/// Callers pass a `now` that never goes backwards.
#[derive(Debug)]
pub struct Ledger {
    partition: u16,
    catalog: Arc<Catalog>,
    pub(crate) accounts: Vec<Account>,
    /// Positions in `accounts`, found by hashing the account's own id (four
    /// bytes a slot instead of a second reference to the id). Account ids
    /// are the operator's own, not an attacker's: a fast, seeded hash is
    /// enough.
    by_id: hashbrown::HashTable<u32>,
    hasher: foldhash::fast::RandomState,
    /// Settled objects may leave memory (see `settled.rs`).
    pub(crate) settling: bool,
}

impl Ledger {
    pub fn new(partition: u16, catalog: Arc<Catalog>) -> Ledger {
        Ledger {
            partition,
            catalog,
            accounts: Vec::new(),
            by_id: hashbrown::HashTable::new(),
            hasher: foldhash::fast::RandomState::default(),
            settling: false,
        }
    }

    pub fn partition(&self) -> u16 {
        self.partition
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// A new catalog applies to commands from now on; history keeps the
    /// prices it was charged at.
    pub fn set_catalog(&mut self, catalog: Arc<Catalog>) {
        self.catalog = catalog;
    }

    pub fn len(&self) -> usize {
        self.accounts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty()
    }

    pub fn account(&self, id: &str) -> Option<&Account> {
        self.position(id)
            .map(|index| &self.accounts[index as usize])
    }

    /// The position of the account with this id.
    pub(crate) fn position(&self, id: &str) -> Option<u32> {
        let hash = self.hasher.hash_one(id);
        self.by_id
            .find(hash, |&index| {
                self.accounts[index as usize].id.as_str() == id
            })
            .copied()
    }

    /// Indexes the account at `position` (already in `accounts`) by its id.
    fn index_id(&mut self, position: u32) {
        let Ledger {
            by_id,
            accounts,
            hasher,
            ..
        } = self;
        let hash = hasher.hash_one(accounts[position as usize].id.as_str());
        by_id.insert_unique(hash, position, |&index| {
            hasher.hash_one(accounts[index as usize].id.as_str())
        });
    }

    pub fn account_by_handle(&self, handle: AccountHandle) -> Option<&Account> {
        if handle.partition() != self.partition {
            return None;
        }
        self.accounts.get(handle.index() as usize)
    }

    pub fn accounts(&self) -> impl Iterator<Item = &Account> {
        self.accounts.iter()
    }

    pub(crate) fn accounts_mut(&mut self) -> impl Iterator<Item = &mut Account> {
        self.accounts.iter_mut()
    }

    pub(crate) fn account_by_handle_mut(&mut self, handle: AccountHandle) -> Option<&mut Account> {
        if handle.partition() != self.partition {
            return None;
        }
        self.accounts.get_mut(handle.index() as usize)
    }

    /// Gives back the spare capacity that growing left behind (after
    /// recovery: a million accounts would otherwise keep up to half as much
    /// again in empty slots).
    pub fn shrink_to_fit(&mut self) {
        self.accounts.shrink_to_fit();
        let Ledger {
            by_id,
            accounts,
            hasher,
            ..
        } = self;
        by_id.shrink_to_fit(|&index| hasher.hash_one(accounts[index as usize].id.as_str()));
        for account in &mut self.accounts {
            account.grants.shrink_to_fit();
            account.holds.shrink_to_fit();
            account.purchases.shrink_to_fit();
        }
    }

    /// Decides `command` at `now`. Entries (including time-driven ones due
    /// before it, which are written even when the command is refused) are
    /// appended to `out`, already applied to memory. Invariants are checked
    /// after every command; a broken one is a bug and panics.
    pub fn execute(
        &mut self,
        now: Timestamp,
        command: Command,
        out: &mut Vec<Entry>,
    ) -> Result<Receipt, Rejection> {
        self.execute_observed(now, command, out, None)
    }

    /// [`Ledger::execute`], and the command's events ([`events::derive`])
    /// appended to `events` when given (also for a refused command whose
    /// time-driven work wrote entries).
    pub fn execute_observed(
        &mut self,
        now: Timestamp,
        command: Command,
        out: &mut Vec<Entry>,
        events: Option<&mut Vec<Event>>,
    ) -> Result<Receipt, Rejection> {
        self.execute_as(now, command, None, out, events)
    }

    /// [`Ledger::execute_observed`], each entry recording who caused it:
    /// `actor` for the command's own, [`Actor::System`] for the work that
    /// fell due before it (when an actor is given at all).
    pub fn execute_as(
        &mut self,
        now: Timestamp,
        command: Command,
        actor: Option<&Arc<Actor>>,
        out: &mut Vec<Entry>,
        events: Option<&mut Vec<Event>>,
    ) -> Result<Receipt, Rejection> {
        let Some(events) = events else {
            let first = out.len();
            let result = self.execute_inner(now, command, out);
            if let Some(actor) = actor {
                for entry in &mut out[first..] {
                    entry.actor = Some(actor.clone());
                }
            }
            return result;
        };
        let handle = match command.target() {
            Target::New(_) => None,
            Target::Id(id) => self.account(id.as_str()).map(Account::handle),
            Target::Handle(handle) => self.account_by_handle(handle).map(Account::handle),
        };
        let time_driven = matches!(command, Command::Advance { .. });
        // Event `entry` indexes count from here, the command's first entry
        // (time-driven work included).
        let start = out.len();
        // Work that fell due before the command (renewals, expiries) is a
        // change of its own, purser's: the command's events then compare
        // the account as that work left it (a charge just after a renewal
        // is measured against the new period, not the old one).
        let mut due_before = None;
        if let Some(handle) = handle
            && !time_driven
        {
            let due = self.account_by_handle(handle).expect("known").next_due();
            due_before = Some(due);
            if due <= now {
                let from = events.len();
                self.observe(now, Command::Advance { account: handle }, out, events)
                    .expect("advancing a known account is always accepted");
                for event in &mut events[from..] {
                    event.time_driven = true;
                }
                if actor.is_some() {
                    let system = Actor::system();
                    for entry in &mut out[start..] {
                        entry.actor = Some(system.clone());
                    }
                }
            }
        }
        let from = events.len();
        let offset = out.len() - start;
        let mut result = self.observe(now, command, out, events);
        for event in &mut events[from..] {
            event.entry += offset;
            event.time_driven |= time_driven;
        }
        if let Some(actor) = actor {
            let actor = if time_driven {
                Actor::system()
            } else {
                actor.clone()
            };
            for entry in &mut out[start + offset..] {
                entry.actor = Some(actor.clone());
            }
        }
        if let (Ok(receipt), Some(due_before)) = (&mut result, due_before) {
            let account = self.account_by_handle(receipt.account).expect("known");
            receipt.due_moved = account.next_due() != due_before;
        }
        result
    }

    /// Executes one command and derives its events.
    fn observe(
        &mut self,
        now: Timestamp,
        command: Command,
        out: &mut Vec<Entry>,
        events: &mut Vec<Event>,
    ) -> Result<Receipt, Rejection> {
        let first = out.len();
        // As the account stood before any work that fell due since: what
        // its last entry left (grants that ran out since still count).
        let levels_before = |a: &Account| {
            let due = a.next_due();
            a.levels(if due <= now {
                Timestamp::from_micros(due.micros() - 1)
            } else {
                now
            })
        };
        let before = match command.target() {
            Target::New(_) => None,
            Target::Id(id) => self.account(id.as_str()).map(levels_before),
            Target::Handle(handle) => self.account_by_handle(handle).map(levels_before),
        };
        let result = self.execute_inner(now, command, out);
        if let Some(entry) = out.get(first) {
            let account = self
                .account_by_handle(entry.account)
                .expect("entries name a known account");
            let thresholds = match account.low_balance_thresholds() {
                Some(own) => own,
                None => self
                    .catalog
                    .tier(account.tier().as_str())
                    .map_or(&[][..], |t| t.low_balance_thresholds()),
            };
            events::derive(
                &out[first..],
                before,
                account.levels(now),
                thresholds,
                account.status() == crate::account::AccountStatus::Active,
                events,
            );
        }
        result
    }

    fn execute_inner(
        &mut self,
        now: Timestamp,
        command: Command,
        out: &mut Vec<Entry>,
    ) -> Result<Receipt, Rejection> {
        let index = match command.target() {
            Target::New(_) => return self.open(now, command, out),
            Target::Id(id) => self
                .position(id.as_str())
                .ok_or(Rejection::AccountNotFound)?,
            Target::Handle(handle) => self.index_of(handle).ok_or_else(|| command.not_found())?,
        };
        let catalog = &*self.catalog;
        let account = &mut self.accounts[index as usize];
        let due_before = account.next_due();
        account.advance(catalog, now, out);
        // Buying or settling a purchase never starts a recharge: a failed
        // one would start the next at once, and a customer buying now is
        // paying already (the next command below the threshold does).
        let recharges = !matches!(
            command,
            Command::CreatePurchase { .. }
                | Command::CompletePurchase { .. }
                | Command::FailPurchase { .. }
                | Command::CancelPurchase { .. }
                | Command::RefundPurchase { .. }
        );
        let decided = dispatch(account, Context { catalog, now, out }, command);
        account.settle_debt(now, out);
        if recharges && account.auto_recharge.is_some() && decided.is_ok() {
            account.recharge(catalog, now, out);
        }
        if let Err(violation) = account.check_invariants(now) {
            panic!("ledger invariant broken: {violation}");
        }
        decided.map(|primary| Receipt {
            account: account.handle(),
            primary,
            due_moved: account.next_due() != due_before,
        })
    }

    /// Applies time-driven work due by `now` on every account (a full sweep;
    /// servers schedule per account with [`Account::next_due`] instead).
    pub fn advance_all(&mut self, now: Timestamp, out: &mut Vec<Entry>) {
        let catalog = &*self.catalog;
        for account in &mut self.accounts {
            account.advance(catalog, now, out);
        }
    }

    fn index_of(&self, handle: AccountHandle) -> Option<u32> {
        (handle.partition() == self.partition && (handle.index() as usize) < self.accounts.len())
            .then_some(handle.index())
    }

    fn open(
        &mut self,
        now: Timestamp,
        command: Command,
        out: &mut Vec<Entry>,
    ) -> Result<Receipt, Rejection> {
        let Command::OpenAccount {
            id,
            name,
            tier,
            anchor,
            member_monthly_cap,
            metadata,
            low_balance_thresholds,
            auto_recharge,
        } = command
        else {
            unreachable!("open is only called for OpenAccount");
        };
        if let Some(thresholds) = &low_balance_thresholds {
            crate::decide::check_thresholds(thresholds)?;
        }
        if let Some(config) = &auto_recharge {
            crate::purchases::check_auto_recharge(&self.catalog, config)?;
        }
        let mut opened =
            self.check_open(now, id, name, tier, anchor, member_monthly_cap, metadata)?;
        opened.low_balance_thresholds = low_balance_thresholds;
        opened.auto_recharge = auto_recharge.map(|config| *config);
        let handle = AccountHandle::new(self.partition, self.accounts.len() as u32);
        let entry = Entry {
            account: handle,
            seq: 0,
            at: now,
            body: Body::Opened(Box::new(opened)),
            balance_after: BalanceAfter::default(),
            actor: None,
        };
        self.apply_opened(&entry)
            .expect("a checked opening applies");
        out.push(entry);
        let primary = out.len() - 1;
        let catalog = &*self.catalog;
        let account = self.accounts.last_mut().expect("just opened");
        let monthly = catalog
            .tier(account.tier().as_str())
            .map_or(Credits::ZERO, |t| t.monthly_credits);
        let grant = account.budget_grant(monthly, account.period_index(), account.period_start());
        account.emit(now, Body::Granted(Box::new(grant)), out);
        account.recharge(catalog, now, out);
        if let Err(violation) = account.check_invariants(now) {
            panic!("ledger invariant broken: {violation}");
        }
        Ok(Receipt {
            account: handle,
            primary: Some(primary),
            due_moved: true,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn check_open(
        &self,
        now: Timestamp,
        id: AccountId,
        name: Option<String>,
        tier: TierId,
        anchor: Option<Timestamp>,
        member_monthly_cap: Option<Credits>,
        metadata: Metadata,
    ) -> Result<Opened, Rejection> {
        if self.position(id.as_str()).is_some() {
            return Err(Rejection::AccountExists);
        }
        if self.catalog.tier(tier.as_str()).is_none() {
            return Err(Rejection::UnknownTier);
        }
        let name = name.unwrap_or_else(|| id.to_string());
        if name.is_empty() || name.chars().count() > MAX_NAME_LEN {
            return Err(Rejection::LimitExceeded(Limit::NameLength));
        }
        let anchor = anchor.unwrap_or(now);
        Ok(Opened {
            id,
            name: name.into(),
            tier,
            anchor,
            member_monthly_cap,
            metadata,
            period_index: period_index_at(anchor, now),
            low_balance_thresholds: None,
            auto_recharge: None,
        })
    }

    fn apply_opened(&mut self, entry: &Entry) -> Result<(), ApplyError> {
        let Body::Opened(opened) = &entry.body else {
            return Err(ApplyError::UnknownAccount);
        };
        if entry.seq != 0 {
            return Err(ApplyError::NotFirstEntry);
        }
        if entry.account.partition() != self.partition {
            return Err(ApplyError::WrongPartition);
        }
        if entry.account.index() as usize != self.accounts.len()
            || self.position(opened.id.as_str()).is_some()
        {
            return Err(ApplyError::AccountExists);
        }
        let mut account = Account::open(entry.account, entry.seq, entry.at, opened);
        account.settling = self.settling;
        self.accounts.push(account);
        self.index_id(entry.account.index());
        Ok(())
    }

    /// Every account as plain data, in handle order.
    pub fn snapshot(&self) -> Vec<AccountSnapshot> {
        self.accounts.iter().map(Account::snapshot).collect()
    }

    /// Restores a snapshotted account; accounts come back in handle order.
    pub fn restore(&mut self, snapshot: AccountSnapshot) -> Result<(), ApplyError> {
        let handle = snapshot.handle;
        if handle.partition() != self.partition {
            return Err(ApplyError::WrongPartition);
        }
        if handle.index() as usize != self.accounts.len()
            || self.position(snapshot.id.as_str()).is_some()
        {
            return Err(ApplyError::AccountExists);
        }
        let mut account = Account::restore(snapshot);
        account.settling = self.settling;
        self.accounts.push(account);
        self.index_id(handle.index());
        Ok(())
    }

    /// Whether a stored entry is already reflected in memory (restored from a
    /// snapshot taken after it): recovery skips those.
    pub fn contains(&self, entry: &Entry) -> bool {
        self.index_of(entry.account)
            .is_some_and(|index| entry.seq < self.accounts[index as usize].next_seq())
    }

    /// Makes accounts share the catalog's tier ids instead of each holding a
    /// copy decoded from the journal (recovery calls it; it changes no value).
    pub fn share_catalog_ids(&mut self) {
        let catalog = self.catalog.clone();
        let shared = |tier: &mut TierId| {
            if let Some(known) = catalog.tier(tier.as_str()) {
                *tier = known.id.clone();
            }
        };
        for account in &mut self.accounts {
            shared(&mut account.tier);
            if let Some(pending) = account.pending_tier.as_mut() {
                shared(pending);
            }
            for grant in &mut account.grants {
                if let crate::grant::GrantSource::Period { tier, .. } = &mut grant.source {
                    shared(tier);
                }
            }
        }
    }

    /// Replays a stored entry (recovery, `verify`). The entry's recorded
    /// balances must match the replayed ones.
    pub fn apply(&mut self, entry: &Entry) -> Result<(), ApplyError> {
        if matches!(entry.body, Body::Opened(_)) {
            return self.apply_opened(entry);
        }
        let index = self
            .index_of(entry.account)
            .ok_or(ApplyError::UnknownAccount)?;
        let account = &mut self.accounts[index as usize];
        account.apply(entry)?;
        let replayed = account.balance_after(entry.at);
        if replayed != entry.balance_after
            && account.legacy_balance_after(entry.at) != entry.balance_after
        {
            return Err(ApplyError::BalanceMismatch {
                recorded: entry.balance_after,
                replayed,
            });
        }
        Ok(())
    }
}

fn dispatch(account: &mut Account, cx: Context<'_>, command: Command) -> Decided {
    match command {
        Command::OpenAccount { .. } => Err(Rejection::AccountExists),
        Command::UpdateAccount { update, .. } => account.update(cx, update),
        Command::CloseAccount { .. } => account.close(cx),
        Command::Charge {
            amount,
            member,
            mode,
            metadata,
            ..
        } => account.charge(cx, amount, member, mode, metadata),
        Command::PlaceHold {
            amount,
            ttl_seconds,
            member,
            metadata,
            ..
        } => account.place_hold(cx, amount, ttl_seconds, member, metadata),
        Command::CaptureHold { hold, amount, mode } => account.capture(cx, hold.seq, amount, mode),
        Command::ReleaseHold { hold } => account.release(cx, hold.seq),
        Command::Reverse { debit, credits } => account.reverse(cx, &debit, credits),
        Command::IssueGrant {
            kind,
            credits,
            expires_at,
            priority,
            reason,
            ..
        } => account.issue_grant(cx, kind, credits, expires_at, priority, reason),
        Command::VoidGrant { grant } => account.void_grant(cx, grant.seq),
        Command::CreatePurchase { package, .. } => account.create_purchase(cx, package),
        Command::CompletePurchase { purchase } => account.complete_purchase(cx, purchase.seq),
        Command::FailPurchase { purchase, reason } => {
            account.fail_purchase(cx, purchase.seq, reason)
        }
        Command::CancelPurchase { purchase } => account.cancel_purchase(cx, purchase.seq),
        Command::RefundPurchase { purchase, share } => {
            account.refund_purchase(cx, purchase.seq, share)
        }
        Command::ChangeTier {
            tier, proration, ..
        } => account.change_tier(cx, tier, proration),
        Command::Advance { .. } => Ok(None),
    }
}
