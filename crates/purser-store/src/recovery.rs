//! Recovery: a store replayed into ledgers. `serve` starts from it and
//! `verify` checks with it, so both rebuild the ledger the same way.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use purser_core::{Catalog, Ledger, Timestamp};

use crate::{Store, StoreError, decode_snapshot};

/// Why the ledger could not be rebuilt from the store.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error("reading the journal: {0}")]
    Store(StoreError),
    #[error("the recovered ledger breaks an invariant: {0}")]
    Invariant(String),
}

/// Rebuilds every partition from the store: the latest snapshots, then the
/// journal after them replayed through the core, each entry checked against
/// the balances it recorded. Returns the ledgers (one per partition, index =
/// partition) and the entries replayed.
pub fn recover(
    store: &dyn Store,
    catalog: Arc<Catalog>,
    partitions: u16,
) -> Result<(Vec<Ledger>, u64), RecoveryError> {
    let mut ledgers: Vec<Ledger> = (0..partitions)
        .map(|p| Ledger::new(p, catalog.clone()))
        .collect();
    let start = restore_snapshots(store, &mut ledgers, partitions)?;
    let mut last_at: HashMap<u64, Timestamp> = HashMap::new();
    let mut replayed = 0;
    store
        .replay_after(start, &mut |_, entry| {
            let partition = usize::from(entry.account.partition());
            let ledger = ledgers.get_mut(partition).ok_or_else(|| {
                StoreError::Backend(format!(
                    "entry of partition {partition} beyond {partitions}"
                ))
            })?;
            if ledger.contains(&entry) {
                return Ok(());
            }
            ledger.apply(&entry).map_err(|error| {
                StoreError::Backend(format!(
                    "journal entry {} of account {:?} does not apply: {error}",
                    entry.seq, entry.account
                ))
            })?;
            last_at.insert(entry.account.raw(), entry.at);
            replayed += 1;
            Ok(())
        })
        .map_err(RecoveryError::Store)?;
    for ledger in &mut ledgers {
        ledger.shrink_to_fit();
    }
    for ledger in &ledgers {
        for account in ledger.accounts() {
            // As of the account's last entry: work that fell due while the
            // server was down is applied by its shard right after start.
            let Some(at) = last_at.get(&account.handle().raw()) else {
                continue;
            };
            account
                .check_invariants(*at)
                .map_err(|violation| RecoveryError::Invariant(violation.to_string()))?;
        }
    }
    for ledger in &mut ledgers {
        ledger.share_catalog_ids();
    }
    Ok((ledgers, replayed))
}

/// Loads the latest snapshot of each partition; returns the journal
/// position to replay after (0 if a partition has none).
fn restore_snapshots(
    store: &dyn Store,
    ledgers: &mut [Ledger],
    partitions: u16,
) -> Result<u64, RecoveryError> {
    let snapshots = store.snapshots().map_err(RecoveryError::Store)?;
    // Partitions without a snapshot need the journal from its start.
    let snapshotted: HashSet<u16> = snapshots.iter().map(|s| s.partition).collect();
    let mut start = if snapshotted.len() == usize::from(partitions) {
        u64::MAX
    } else {
        0
    };
    for snapshot in snapshots {
        let broken = |error: String| {
            RecoveryError::Invariant(format!(
                "snapshot of partition {}: {error}",
                snapshot.partition
            ))
        };
        let ledger = ledgers
            .get_mut(usize::from(snapshot.partition))
            .ok_or_else(|| {
                RecoveryError::Invariant(format!(
                    "snapshot of partition {} beyond {partitions}",
                    snapshot.partition
                ))
            })?;
        let accounts =
            decode_snapshot(&snapshot.body).map_err(|error| broken(error.to_string()))?;
        for account in accounts {
            ledger
                .restore(account)
                .map_err(|error| broken(error.to_string()))?;
        }
        start = start.min(snapshot.position);
    }
    Ok(start)
}
