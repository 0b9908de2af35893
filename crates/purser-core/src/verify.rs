//! Recomputing state from a journal and reporting every difference: what
//! recovery relies on and what `purser verify` runs.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::account::{Account, ApplyError, Violation};
use crate::catalog::Catalog;
use crate::entry::Entry;
use crate::ids::AccountHandle;
use crate::ledger::Ledger;
use crate::time::Timestamp;

/// One thing wrong with a stored ledger.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// An entry does not apply to the state its predecessors built; the
    /// account's later entries are skipped.
    Entry {
        account: AccountHandle,
        seq: u64,
        error: ApplyError,
    },
    /// An invariant of rule 11 does not hold after the replay.
    Invariant(Violation),
    /// The replayed account differs from the stored one in `field`.
    Differs {
        account: String,
        field: &'static str,
    },
    /// An account exists on one side only.
    Missing { account: String, side: &'static str },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Entry {
                account,
                seq,
                error,
            } => write!(f, "account {account:?} entry {seq}: {error}"),
            Problem::Invariant(violation) => write!(f, "{violation}"),
            Problem::Differs { account, field } => write!(
                f,
                "account {account}: stored {field} differs from the journal"
            ),
            Problem::Missing { account, side } => {
                write!(f, "account {account} is missing from the {side}")
            }
        }
    }
}

/// The outcome of a replay.
#[derive(Debug, Default)]
pub struct Report {
    pub accounts: usize,
    pub entries: u64,
    pub problems: Vec<Problem>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Rebuilds a partition from its journal (entries in order per account) and
/// checks every entry and, at the end, every invariant.
pub fn replay<'a>(
    partition: u16,
    catalog: Arc<Catalog>,
    entries: impl IntoIterator<Item = &'a Entry>,
) -> (Ledger, Report) {
    let mut replayer = Replayer::new(partition, catalog);
    for entry in entries {
        replayer.feed(entry);
    }
    replayer.finish()
}

/// [`replay`] one entry at a time, for a journal streamed from a store.
#[derive(Debug)]
pub struct Replayer {
    ledger: Ledger,
    report: Report,
    broken: HashMap<AccountHandle, ()>,
    last_at: HashMap<AccountHandle, Timestamp>,
}

impl Replayer {
    pub fn new(partition: u16, catalog: Arc<Catalog>) -> Replayer {
        Replayer {
            ledger: Ledger::new(partition, catalog),
            report: Report::default(),
            broken: HashMap::new(),
            last_at: HashMap::new(),
        }
    }

    /// Replays as a server's ledger does, settling objects out of memory
    /// (which changes when spent grants are set aside; see `settled.rs`).
    pub fn settling(mut self) -> Replayer {
        self.ledger.set_settling(true);
        self
    }

    /// Applies the partition's next entry (an account's later entries are
    /// skipped once one of its entries fails).
    pub fn feed(&mut self, entry: &Entry) {
        self.report.entries += 1;
        if self.broken.contains_key(&entry.account) {
            return;
        }
        match self.ledger.apply(entry) {
            Ok(()) => {
                self.last_at.insert(entry.account, entry.at);
            }
            Err(error) => {
                self.broken.insert(entry.account, ());
                self.report.problems.push(Problem::Entry {
                    account: entry.account,
                    seq: entry.seq,
                    error,
                });
            }
        }
    }

    /// Leaves an account out of the rest of the replay and of the final
    /// checks: its journal is damaged, which is reported by the caller.
    pub fn skip(&mut self, account: AccountHandle) {
        self.broken.insert(account, ());
    }

    /// Checks every invariant of every account the journal left intact.
    pub fn finish(mut self) -> (Ledger, Report) {
        for account in self.ledger.accounts() {
            if self.broken.contains_key(&account.handle()) {
                continue;
            }
            // The journal may end before work that was due (the server was
            // down): check as of the account's last entry.
            let at = self
                .last_at
                .get(&account.handle())
                .copied()
                .unwrap_or(account.created_at());
            if let Err(violation) = account.check_invariants(at) {
                self.report.problems.push(Problem::Invariant(violation));
            }
        }
        self.report.accounts = self.ledger.len();
        (self.ledger, self.report)
    }
}

/// Compares a replayed partition with stored state (a snapshot, or the live
/// ledger), field by field.
pub fn compare(replayed: &Ledger, stored: &Ledger) -> Vec<Problem> {
    let mut problems = Vec::new();
    for account in replayed.accounts() {
        match stored.account(account.id().as_str()) {
            None => problems.push(Problem::Missing {
                account: account.id().to_string(),
                side: "stored state",
            }),
            Some(other) => {
                for field in differing_fields(account, other) {
                    problems.push(Problem::Differs {
                        account: account.id().to_string(),
                        field,
                    });
                }
            }
        }
    }
    for account in stored.accounts() {
        if replayed.account(account.id().as_str()).is_none() {
            problems.push(Problem::Missing {
                account: account.id().to_string(),
                side: "journal",
            });
        }
    }
    problems
}

fn differing_fields(a: &Account, b: &Account) -> Vec<&'static str> {
    let checks: [(&'static str, bool); 18] = [
        ("handle", a.handle == b.handle),
        ("name", a.name == b.name),
        ("tier", a.tier == b.tier),
        ("pending_tier", a.pending_tier == b.pending_tier),
        ("anchor", a.anchor == b.anchor),
        ("created_at", a.created_at == b.created_at),
        ("status", a.status == b.status),
        (
            "member_monthly_cap",
            a.member_monthly_cap == b.member_monthly_cap,
        ),
        ("metadata", a.metadata == b.metadata),
        (
            "period",
            (a.period_index, a.period_start, a.period_end)
                == (b.period_index, b.period_start, b.period_end),
        ),
        ("entry count", a.next_seq == b.next_seq),
        ("debt", a.debt == b.debt),
        ("grants", a.grants == b.grants),
        ("spent grants", a.spent().eq(b.spent())),
        ("holds", a.holds == b.holds),
        ("purchases", a.purchases == b.purchases),
        ("member usage", a.member_usage == b.member_usage),
        (
            "reversals",
            a.reversed == b.reversed && a.next_due == b.next_due,
        ),
    ];
    checks
        .into_iter()
        .filter(|(_, same)| !same)
        .map(|(field, _)| field)
        .collect()
}
