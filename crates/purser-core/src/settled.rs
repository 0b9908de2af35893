//! Settled objects leave memory for the store (issue 14).
//!
//! A purchase that is canceled, failed or refunded, or completed with its
//! package grant spent, and a package or promo grant with nothing left and
//! nothing held, can still be read and, rarely, changed again: a refund of
//! an old purchase, a reversal that gives credits back to a spent grant, a
//! redelivered webhook. None of that is worth their memory: a server
//! ([`Ledger::set_settling`]) takes them out after each command
//! ([`Ledger::settle`]) and keeps each as a row of the store, versioned by
//! the account's entry count when it left (`as_of`). Before a command that
//! may touch one ([`Ledger::page_in_for`]) and before a replayed entry that
//! does ([`Ledger::page_in_for_entry`]), it is read back: the newest
//! version at or before that point is its state then, because an object out
//! of memory cannot change (every change is decided in memory).
//!
//! Recovery never settles: what it read back stays until the server's
//! first sweep ([`Ledger::settle_all`]). A ledger that does not settle (the
//! core's own tests) keeps everything, as before.

use crate::account::Account;
use crate::command::Command;
use crate::entry::{Body, Entry, Purchase, PurchaseStatus};
use crate::grant::{Grant, GrantKind};
use crate::ids::AccountHandle;
use crate::ledger::Ledger;
use crate::time::Timestamp;

/// An object out of memory, as the store keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settled {
    Purchase(Purchase),
    Grant(Grant),
}

impl Settled {
    /// The sequence number of the entry that created it (its id).
    pub fn seq(&self) -> u64 {
        match self {
            Settled::Purchase(purchase) => purchase.seq,
            Settled::Grant(grant) => grant.seq,
        }
    }
}

/// Objects that left one account's memory after its entry `as_of - 1`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SettledBatch {
    pub account: AccountHandle,
    /// The account's entry count when they left.
    pub as_of: u64,
    pub objects: Vec<Settled>,
}

/// Whether a grant is out of burn order for good unless something gives
/// credits back: a package or promo grant with nothing left and nothing
/// held (live, voided or expired).
pub(crate) fn is_spent(grant: &Grant) -> bool {
    matches!(grant.kind, GrantKind::Package | GrantKind::Promo)
        && grant.remaining.is_zero()
        && grant.held.is_zero()
}

fn is_settled_status(status: PurchaseStatus) -> bool {
    matches!(
        status,
        PurchaseStatus::Canceled | PurchaseStatus::Failed | PurchaseStatus::Refunded
    )
}

impl Body {
    /// The grants and purchases (by sequence number) this entry changes or
    /// reads when applied, besides the ones it creates: what a replay needs
    /// in memory first. Grants a charge walks have credits, so they are in
    /// memory already; the ones listed here may not be.
    pub fn touches(&self) -> Vec<u64> {
        match self {
            Body::PurchaseUpdated { purchase, .. }
            | Body::PurchasePartlyRefunded { purchase, .. } => vec![*purchase],
            Body::AutoRecharge {
                purchase: Some(purchase),
                ..
            } => vec![*purchase],
            Body::Voided { allocation, .. } | Body::Expired(allocation) => vec![allocation.grant],
            Body::Reversed(reversal) => reversal.returned.iter().map(|a| a.grant).collect(),
            Body::Granted(grant) => match grant.source {
                crate::grant::GrantSource::Purchase { purchase } => vec![purchase],
                _ => Vec::new(),
            },
            _ => Vec::new(),
        }
    }
}

impl Account {
    /// Whether the grant or purchase created by entry `seq` is in memory.
    pub fn is_resident(&self, seq: u64) -> bool {
        self.grants.iter().any(|g| g.seq == seq)
            || self.is_spent(seq)
            || self.purchases.binary_search_by_key(&seq, |p| p.seq).is_ok()
    }

    /// Brings a settled object back into memory (nothing if it is there).
    pub(crate) fn page_in(&mut self, object: Settled) {
        if self.is_resident(object.seq()) {
            return;
        }
        match object {
            Settled::Purchase(purchase) => {
                if purchase.status == PurchaseStatus::Pending {
                    self.pending += 1;
                }
                let at = self.purchases.partition_point(|p| p.seq < purchase.seq);
                self.purchases.insert(at, purchase);
            }
            Settled::Grant(grant) if is_spent(&grant) => {
                self.spent_expiry = self.spent_expiry.min(grant.expires_at);
                self.spent
                    .get_or_insert_with(Default::default)
                    .insert(grant.seq, grant);
            }
            Settled::Grant(grant) => {
                let key = grant.burn_key();
                let at = self.grants.partition_point(|g| g.burn_key() < key);
                self.grants.insert(at, grant);
            }
        }
        self.next_due = self.compute_next_due();
    }

    /// Takes a paged-in object out again, unchanged (no command touched it).
    fn page_out(&mut self, seq: u64) {
        if let Some(spent) = self.spent.as_mut() {
            spent.remove(&seq);
        }
        self.grants.retain(|g| g.seq != seq);
        if let Ok(at) = self.purchases.binary_search_by_key(&seq, |p| p.seq) {
            let purchase = self.purchases.remove(at);
            if purchase.status == PurchaseStatus::Pending {
                self.pending -= 1;
            }
        }
        self.next_due = self.compute_next_due();
    }

    /// Takes every settled object out of memory, into `out`: the spent
    /// grants, the purchases that are over, and the completed ones whose
    /// package grant is spent or gone (a refund reads it back with them).
    fn settle_out(&mut self, out: &mut Vec<Settled>) {
        if let Some(spent) = self.spent.take() {
            out.extend(spent.into_values().map(Settled::Grant));
        }
        self.spent_expiry = Timestamp::NEVER;
        let grants = &self.grants;
        let over = |p: &mut Purchase| {
            is_settled_status(p.status)
                || (p.status == PurchaseStatus::Completed
                    && p.grant.is_none_or(|g| !grants.iter().any(|x| x.seq == g)))
        };
        if self.purchases.iter_mut().any(over) {
            let mut kept = thin_vec::ThinVec::with_capacity(self.purchases.len());
            for mut purchase in std::mem::take(&mut self.purchases) {
                if over(&mut purchase) {
                    out.push(Settled::Purchase(purchase));
                } else {
                    kept.push(purchase);
                }
            }
            self.purchases = kept;
        }
    }
}

impl Ledger {
    /// Settled objects of this ledger's accounts may leave memory (a
    /// server's ledgers, and the ones recovery and `verify` rebuild: they
    /// must prune as the server does).
    pub fn set_settling(&mut self, settling: bool) {
        self.settling = settling;
        for account in self.accounts_mut() {
            account.settling = settling;
        }
    }

    pub fn is_settling(&self) -> bool {
        self.settling
    }

    /// Reads back, with `fetch(account, seq, as_of)` (the newest stored
    /// version at or before `as_of`), the settled objects `command` may
    /// touch; returns the account and the sequence numbers read back.
    /// Nothing for a ledger that does not settle.
    pub fn page_in_for<E>(
        &mut self,
        command: &Command,
        fetch: &mut dyn FnMut(AccountHandle, u64, u64) -> Result<Option<Settled>, E>,
    ) -> Result<Option<(AccountHandle, Vec<u64>)>, E> {
        if !self.settling {
            return Ok(None);
        }
        let (handle, wanted): (AccountHandle, Vec<u64>) = match command {
            Command::CompletePurchase { purchase }
            | Command::FailPurchase { purchase, .. }
            | Command::CancelPurchase { purchase }
            | Command::RefundPurchase { purchase, .. } => (purchase.account, vec![purchase.seq]),
            Command::VoidGrant { grant } => (grant.account, vec![grant.seq]),
            Command::Reverse { debit, .. } => (
                debit.id.account,
                debit.allocations.iter().map(|a| a.grant).collect(),
            ),
            _ => return Ok(None),
        };
        let mut paged = Vec::new();
        for seq in wanted {
            self.page_in_one(handle, seq, fetch, &mut paged)?;
            // A purchase's package grant comes with it (a refund voids it).
            let grant = self
                .account_by_handle(handle)
                .and_then(|a| a.purchase(seq))
                .and_then(|p| p.grant);
            if let Some(grant) = grant {
                self.page_in_one(handle, grant, fetch, &mut paged)?;
            }
        }
        Ok(Some((handle, paged)))
    }

    fn page_in_one<E>(
        &mut self,
        handle: AccountHandle,
        seq: u64,
        fetch: &mut dyn FnMut(AccountHandle, u64, u64) -> Result<Option<Settled>, E>,
        paged: &mut Vec<u64>,
    ) -> Result<(), E> {
        let Some(account) = self.account_by_handle(handle) else {
            return Ok(());
        };
        if seq >= account.next_seq() || account.is_resident(seq) {
            return Ok(());
        }
        let as_of = account.next_seq();
        if let Some(object) = fetch(handle, seq, as_of)?
            && object.seq() == seq
        {
            self.account_by_handle_mut(handle)
                .expect("known")
                .page_in(object);
            paged.push(seq);
        }
        Ok(())
    }

    /// Reads back what a stored entry touches before it is replayed: the
    /// versions stored at or before it.
    pub fn page_in_for_entry<E>(
        &mut self,
        entry: &Entry,
        fetch: &mut dyn FnMut(AccountHandle, u64, u64) -> Result<Option<Settled>, E>,
    ) -> Result<(), E> {
        if !self.settling {
            return Ok(());
        }
        for seq in entry.body.touches() {
            let Some(account) = self.account_by_handle(entry.account) else {
                return Ok(());
            };
            if seq >= account.next_seq() || account.is_resident(seq) {
                continue;
            }
            if let Some(object) = fetch(entry.account, seq, entry.seq)?
                && object.seq() == seq
            {
                self.account_by_handle_mut(entry.account)
                    .expect("known")
                    .page_in(object);
            }
        }
        Ok(())
    }

    /// After a command on `account` that read back `paged` and wrote
    /// `entries`: what it read back and did not touch goes again, as it
    /// was (its stored version stands), and every settled object leaves.
    pub fn settle(
        &mut self,
        account: AccountHandle,
        paged: &[u64],
        entries: &[Entry],
    ) -> Option<SettledBatch> {
        if !self.settling {
            return None;
        }
        let account = self.account_by_handle_mut(account)?;
        for seq in paged {
            let touched = entries
                .iter()
                .filter(|e| e.account == account.handle())
                .any(|e| e.body.touches().contains(seq));
            if !touched {
                account.page_out(*seq);
            }
        }
        let mut objects = Vec::new();
        account.settle_out(&mut objects);
        (!objects.is_empty()).then(|| SettledBatch {
            account: account.handle(),
            as_of: account.next_seq(),
            objects,
        })
    }

    /// Every settled object of every account leaves memory (a server's
    /// start, after recovery read some back).
    pub fn settle_all(&mut self) -> Vec<SettledBatch> {
        if !self.settling {
            return Vec::new();
        }
        let mut batches = Vec::new();
        for account in self.accounts_mut() {
            let mut objects = Vec::new();
            account.settle_out(&mut objects);
            if !objects.is_empty() {
                batches.push(SettledBatch {
                    account: account.handle(),
                    as_of: account.next_seq(),
                    objects,
                });
            }
        }
        batches
    }

    /// Reads back every object `full` (the same accounts, everything in
    /// memory) holds that this ledger does not: what `verify` compares is
    /// then whole, and a stored version that is missing or wrong shows.
    pub fn page_in_like<E>(
        &mut self,
        full: &Ledger,
        fetch: &mut dyn FnMut(AccountHandle, u64, u64) -> Result<Option<Settled>, E>,
    ) -> Result<(), E> {
        for whole in full.accounts() {
            let Some(index) = self.position(whole.id().as_str()) else {
                continue;
            };
            let handle = self.accounts[index as usize].handle();
            let seqs = whole
                .grants()
                .iter()
                .map(|g| g.seq)
                .chain(whole.spent().map(|g| g.seq))
                .chain(whole.purchases().iter().map(|p| p.seq));
            for seq in seqs {
                let account = &self.accounts[index as usize];
                if account.is_resident(seq) {
                    continue;
                }
                if let Some(object) = fetch(handle, seq, account.next_seq())?
                    && object.seq() == seq
                {
                    self.accounts[index as usize].page_in(object);
                }
            }
        }
        Ok(())
    }
}
