//! Recovery: a store replayed into ledgers. `serve` starts from it and
//! `verify` checks with it, so both rebuild the ledger the same way.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use purser_core::{Catalog, Ledger, Timestamp};

use crate::{
    Damage, DamageReport, JournalCheck, Store, StoreError, Witness, decode_entry, decode_snapshot,
};

/// Why the ledger could not be rebuilt from the store.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error("reading the journal: {0}")]
    Store(StoreError),
    #[error("the recovered ledger breaks an invariant: {0}")]
    Invariant(String),
    /// The store is damaged or lost acknowledged commits: nothing is served
    /// from it until an operator restores it or accepts the loss.
    #[error("the store is damaged; it is not served.\n{0}")]
    Damaged(DamageReport),
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
    // Settled objects may be out of memory: a replayed entry that touches
    // one reads back the version it was decided against.
    let mut ledgers: Vec<Ledger> = (0..partitions)
        .map(|p| {
            let mut ledger = Ledger::new(p, catalog.clone());
            ledger.set_settling(true);
            ledger
        })
        .collect();
    let (start, snapshots) = restore_snapshots(store, &mut ledgers, partitions)?;
    let boundaries = snapshots.iter().map(|(_, position)| *position).collect();
    let mut last_at: HashMap<u64, Timestamp> = HashMap::new();
    let mut replayed = 0;
    // The whole journal is read and checked (checksums, chain, positions,
    // sequence numbers); entries after the snapshots are decoded and
    // applied. Once anything is found nothing more is applied: the ledger
    // is refused whole.
    let mut check = JournalCheck::new(boundaries)
        .with_checkpoints(store.checkpoints().map_err(RecoveryError::Store)?);
    store
        .scan(&mut |row| {
            if !check.row(&row) || !check.is_clean() || row.pos <= start {
                return Ok(());
            }
            let entry = match decode_entry(row.body) {
                Ok(entry) => entry,
                Err(error) => {
                    check.found(Damage::Entry {
                        pos: row.pos,
                        detail: format!("the entry does not decode: {error}"),
                    });
                    return Ok(());
                }
            };
            let partition = usize::from(entry.account.partition());
            let Some(ledger) = ledgers.get_mut(partition) else {
                check.found(Damage::Entry {
                    pos: row.pos,
                    detail: format!("an entry of partition {partition}, beyond {partitions}"),
                });
                return Ok(());
            };
            if ledger.contains(&entry) {
                return Ok(());
            }
            let paged = ledger.page_in_for_entry(&entry, &mut |account, seq, as_of| {
                Ok(store
                    .settled(account, seq, as_of)?
                    .map(|record| record.object))
            });
            match paged {
                Ok(()) => {}
                Err(StoreError::Damaged(detail)) => {
                    check.found(Damage::Structure {
                        what: "the settled objects".into(),
                        detail,
                    });
                    return Ok(());
                }
                Err(StoreError::Corrupt {
                    account,
                    seq,
                    error,
                }) => {
                    check.found(Damage::Structure {
                        what: "the settled objects".into(),
                        detail: format!(
                            "settled object {seq} of account {account:?} does not decode: {error}"
                        ),
                    });
                    return Ok(());
                }
                Err(other) => return Err(other),
            }
            if let Err(error) = ledger.apply(&entry) {
                check.found(Damage::Entry {
                    pos: row.pos,
                    detail: format!(
                        "entry {} of account {:?} does not apply: {error}",
                        entry.seq, entry.account
                    ),
                });
                return Ok(());
            }
            last_at.insert(entry.account.raw(), entry.at);
            replayed += 1;
            Ok(())
        })
        .map_err(RecoveryError::Store)?;
    // A snapshot reflects the journal up to its position: one ahead of the
    // journal's end is evidence of lost commits.
    let mut witnesses: Vec<Witness> = snapshots
        .iter()
        .map(|(partition, position)| Witness {
            what: format!("the snapshot of partition {partition}"),
            position: *position,
            lost: Vec::new(),
            more: 0,
        })
        .collect();
    witnesses.extend(store.witnesses().map_err(RecoveryError::Store)?);
    // Every account must be in the partition its id hashes to under the
    // stored partition count: a changed count would hide accounts (and let
    // them be opened twice).
    let mut misplaced = 0;
    for ledger in &ledgers {
        for account in ledger.accounts() {
            let home = purser_core::partition_of(account.id().as_str(), partitions);
            if home != ledger.partition() {
                misplaced += 1;
                if misplaced <= 5 {
                    check.found(Damage::Structure {
                        what: "the stored partition count".into(),
                        detail: format!(
                            "with {partitions} partitions account {:?} belongs in partition {home}, but its journal puts it in {}: the count was changed",
                            account.id().as_str(),
                            ledger.partition()
                        ),
                    });
                }
            }
        }
    }
    let mut report = check.finish(witnesses);
    if !report.is_clean() {
        report.name_accounts(|raw| {
            let handle = purser_core::AccountHandle::from_raw(raw);
            let ledger = ledgers.get(usize::from(handle.partition()))?;
            Some(ledger.account_by_handle(handle)?.id().to_string())
        });
        return Err(RecoveryError::Damaged(report));
    }
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
/// position to replay after (0 if a partition has none) and every
/// snapshot's position (each must be a commit end).
fn restore_snapshots(
    store: &dyn Store,
    ledgers: &mut [Ledger],
    partitions: u16,
) -> Result<(u64, Vec<(u16, u64)>), RecoveryError> {
    let snapshots = store.snapshots().map_err(RecoveryError::Store)?;
    // Partitions without a snapshot need the journal from its start.
    let snapshotted: HashSet<u16> = snapshots.iter().map(|s| s.partition).collect();
    let mut start = if snapshotted.len() == usize::from(partitions) {
        u64::MAX
    } else {
        0
    };
    let positions = snapshots
        .iter()
        .map(|s| (s.partition, s.position))
        .collect();
    for snapshot in snapshots {
        let broken = |error: String| {
            RecoveryError::Damaged(DamageReport {
                end: 0,
                damage: vec![Damage::Structure {
                    what: format!("the snapshot of partition {}", snapshot.partition),
                    detail: error,
                }],
                names: Default::default(),
            })
        };
        let ledger = ledgers
            .get_mut(usize::from(snapshot.partition))
            .ok_or_else(|| {
                RecoveryError::Invariant(format!(
                    "snapshot of partition {} beyond {partitions}",
                    snapshot.partition
                ))
            })?;
        if crate::snapshot_sum(snapshot.partition, snapshot.position, &snapshot.body)
            != snapshot.sum
        {
            return Err(broken(
                "the stored bytes do not match their checksum".into(),
            ));
        }
        let accounts =
            decode_snapshot(&snapshot.body).map_err(|error| broken(error.to_string()))?;
        for account in accounts {
            ledger
                .restore(account)
                .map_err(|error| broken(error.to_string()))?;
        }
        start = start.min(snapshot.position);
    }
    Ok((start, positions))
}
