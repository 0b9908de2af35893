//! `purser verify`, `backup` and `restore`: checking a store without
//! changing it, and copying it in and out.
//!
//! `verify` opens the store read-only (no migration, no indexer, no lease)
//! and streams it: the journal is read once for its checks and the full
//! replay (entries are never all in memory: only the ledgers are), once
//! more by recovery (snapshots, then the journal after them, which must give
//! the same ledger), and the other structures once.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use purser_core::verify::{Problem, Replayer};
use purser_core::{Catalog, Ledger};
use purser_store::{
    Damage, DamageReport, JournalCheck, RecoveryError, Store, Witness, decode_entry,
};

/// Progress on stderr, at most every two seconds.
struct Progress {
    what: &'static str,
    done: u64,
    started: Instant,
    shown: Instant,
}

impl Progress {
    fn new(what: &'static str) -> Progress {
        let now = Instant::now();
        Progress {
            what,
            done: 0,
            started: now,
            shown: now,
        }
    }

    fn add(&mut self, count: u64) {
        self.done += count;
        if self.shown.elapsed() >= Duration::from_secs(2) {
            self.shown = Instant::now();
            eprintln!(
                "verify: {} {} ({} s)",
                self.done,
                self.what,
                self.started.elapsed().as_secs()
            );
        }
    }
}

/// What a verification found.
#[derive(Debug, Default)]
pub struct Findings {
    pub problems: Vec<String>,
    pub accounts: usize,
    pub entries: u64,
    pub end: u64,
    pub snapshots: usize,
    /// Which account ids the handles in the problems are.
    pub names: Option<String>,
}

/// Verifies the embedded store in `data_dir`, or the PostgreSQL store at
/// `database_url`; prints a report; fails on any finding.
pub fn verify(
    data_dir: &Path,
    database_url: Option<&str>,
    catalog: Catalog,
) -> anyhow::Result<ExitCode> {
    let store: Box<dyn Store> = match database_url {
        Some(url) => Box::new(
            purser_store_postgres::PostgresStore::open_read_only(url)
                .context("opening the PostgreSQL store read-only")?,
        ),
        None => Box::new(
            purser_store_sqlite::SqliteStore::open_read_only(data_dir)
                .with_context(|| format!("opening {} read-only", data_dir.display()))?,
        ),
    };
    let findings = check(&*store, Arc::new(catalog))?;
    Ok(report(&findings))
}

fn report(findings: &Findings) -> ExitCode {
    if findings.problems.is_empty() {
        println!(
            "ok: {} accounts, {} journal entries (checksums and the commit chain hold through position {}), {} partition snapshots; every entry applies, every invariant holds, recovery from the snapshots gives the same ledger, and the idempotency records and indexes match the journal",
            findings.accounts, findings.entries, findings.end, findings.snapshots
        );
        ExitCode::SUCCESS
    } else {
        for problem in &findings.problems {
            println!("problem: {problem}");
        }
        if let Some(names) = &findings.names {
            println!("{names}");
        }
        println!(
            "{} problems in {} accounts, {} journal entries; the store should not be served as it is: restore a backup (`purser restore`), or, for lost commits at the journal's end only, `purser serve --accept-loss`",
            findings.problems.len(),
            findings.accounts,
            findings.entries
        );
        ExitCode::FAILURE
    }
}

/// Every check of `verify`, on a store opened read-only.
pub fn check(store: &dyn Store, catalog: Arc<Catalog>) -> anyhow::Result<Findings> {
    let mut findings = Findings::default();
    let partitions = match store.setting("partitions")? {
        Some(text) => text.parse::<u16>().context("the stored partition count")?,
        None => 0,
    };
    for (at, incident) in store.incidents()? {
        eprintln!(
            "verify: note: at {at:?} an operator accepted lost commits; the report then:\n{incident}"
        );
    }
    let snapshots = store.snapshots()?;
    findings.snapshots = snapshots.len();

    // 1. The journal, streamed: checksums, chain, positions, sequence
    // numbers, every witness; each entry decoded and replayed in full.
    let mut check = JournalCheck::new(snapshots.iter().map(|s| s.position).collect())
        .with_checkpoints(store.checkpoints()?);
    let mut replayers: BTreeMap<u16, Replayer> = BTreeMap::new();
    let mut progress = Progress::new("journal entries checked");
    store.scan(&mut |row| {
        progress.add(1);
        if !check.row(&row) {
            // The row is damaged (reported): its account is not replayed on.
            let account = purser_core::AccountHandle::from_raw(row.account);
            replayers
                .entry(account.partition())
                .or_insert_with(|| Replayer::new(account.partition(), catalog.clone()).settling())
                .skip(account);
            return Ok(());
        }
        match decode_entry(row.body) {
            Ok(entry) => replayers
                .entry(entry.account.partition())
                .or_insert_with(|| {
                    Replayer::new(entry.account.partition(), catalog.clone()).settling()
                })
                .feed(&entry),
            Err(error) => check.found(Damage::Entry {
                pos: row.pos,
                detail: format!("the entry does not decode: {error}"),
            }),
        }
        Ok(())
    })?;
    let mut witnesses: Vec<Witness> = snapshots
        .iter()
        .map(|s| Witness {
            what: format!("the snapshot of partition {}", s.partition),
            position: s.position,
            lost: Vec::new(),
            more: 0,
        })
        .collect();
    witnesses.extend(store.witnesses()?);
    let mut journal: DamageReport = check.finish(witnesses);
    findings.end = journal.end;
    findings
        .problems
        .extend(journal.damage.iter().map(ToString::to_string));
    let mut replayed = BTreeMap::new();
    for (partition, replayer) in replayers {
        let (ledger, report) = replayer.finish();
        findings.accounts += report.accounts;
        findings.entries += report.entries;
        findings
            .problems
            .extend(report.problems.iter().map(ToString::to_string));
        replayed.insert(partition, ledger);
    }
    journal.name_accounts(|raw| {
        let handle = purser_core::AccountHandle::from_raw(raw);
        let ledger: &Ledger = replayed.get(&handle.partition())?;
        Some(ledger.account_by_handle(handle)?.id().to_string())
    });
    findings.names = journal.names_line();

    // 2. What a restart would load (snapshots, then the journal after them)
    // must be exactly what the whole journal gives.
    if journal.is_clean() && partitions > 0 {
        eprintln!("verify: checking recovery from the snapshots");
        match purser_store::recover(store, catalog.clone(), partitions) {
            Ok((mut recovered, _)) => {
                for ledger in &mut recovered {
                    let empty = Ledger::new(ledger.partition(), catalog.clone());
                    let full = replayed.get(&ledger.partition()).unwrap_or(&empty);
                    // Settled objects are in the store, not in memory: each
                    // must be stored as the whole journal leaves it.
                    let mut unreadable = Vec::new();
                    ledger.page_in_like(full, &mut |account, seq, as_of| match store
                        .settled(account, seq, as_of)
                    {
                        Ok(found) => Ok(found.map(|record| record.object)),
                        Err(
                            error @ (purser_store::StoreError::Damaged(_)
                            | purser_store::StoreError::Corrupt { .. }),
                        ) => {
                            unreadable.push(error.to_string());
                            Ok(None)
                        }
                        Err(error) => Err(error),
                    })?;
                    findings.problems.extend(unreadable);
                    findings.problems.extend(
                        purser_core::verify::compare(full, ledger)
                            .iter()
                            .map(Problem::to_string),
                    );
                }
            }
            Err(RecoveryError::Damaged(report)) => findings
                .problems
                .extend(report.damage.iter().map(ToString::to_string)),
            Err(error) => findings.problems.push(error.to_string()),
        }
    }

    // 3. Everything else the store holds.
    let mut progress = Progress::new("index rows checked");
    store.check_structures(
        &mut |damage| findings.problems.push(damage.to_string()),
        &mut |count| progress.add(count),
    )?;
    Ok(findings)
}

/// `purser backup`: an online copy of the embedded store, then verified.
pub fn backup(data_dir: &Path, target: &Path, catalog: Catalog) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let copy = purser_store_sqlite::backup(data_dir, target)
        .with_context(|| format!("backing up {}", data_dir.display()))?;
    eprintln!(
        "backup: copied to {} in {} ms; verifying the copy",
        copy.display(),
        started.elapsed().as_millis()
    );
    let store = purser_store_sqlite::SqliteStore::open_read_only(target)?;
    let findings = check(&store, Arc::new(catalog))?;
    Ok(report(&findings))
}

/// `purser restore`: verify a backup, then put it in place.
pub fn restore(backup: &Path, data_dir: &Path, catalog: Catalog) -> anyhow::Result<ExitCode> {
    let findings = {
        let store = purser_store_sqlite::SqliteStore::open_read_only(backup)
            .with_context(|| format!("opening the backup in {}", backup.display()))?;
        check(&store, Arc::new(catalog))?
    };
    if !findings.problems.is_empty() {
        let code = report(&findings);
        eprintln!("restore: the backup is damaged; nothing was changed");
        return Ok(code);
    }
    purser_store_sqlite::restore(backup, data_dir)
        .with_context(|| format!("restoring into {}", data_dir.display()))?;
    println!(
        "restored {} into {} (journal through position {}); the history index is rebuilt when the server starts",
        backup.display(),
        data_dir.display(),
        findings.end
    );
    Ok(ExitCode::SUCCESS)
}
