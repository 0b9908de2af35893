//! The engine: one single-writer thread per shard, one committer.
//!
//! A shard owns the ledgers of its partitions. It takes every job waiting in
//! its bounded queue (up to a batch limit), decides each against memory
//! (no IO), renders each answer, and hands the batch (entries, idempotency
//! records, answers) to the committer. The committer merges the batches of
//! all shards that are waiting, writes them in one store transaction with
//! one fsync, and only then sends the answers, in order. Reads and refusals
//! ride in the same batches, so no answer ever reveals state that is not yet
//! durable, and a refusal never overtakes an earlier acceptance.
//!
//! If a commit fails, memory is ahead of disk: the engine is poisoned, every
//! answer of the failed batch and every later request is a 503, and `/readyz`
//! says so. Restarting the process recovers from the store (nothing
//! unacknowledged was ever answered).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use purser_core::{AccountHandle, AccountId, Catalog, Command, Entry, Ledger, Target, Timestamp};
use purser_store::{Commit, IdempotencyRecord, PartitionSnapshot, Store};
use tokio::sync::oneshot;

use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::render::{self, Read};

/// What a shard answers: a rendered JSON response, or data for the edge.
#[derive(Debug)]
pub enum Answer {
    Json {
        status: u16,
        body: Vec<u8>,
    },
    /// A keyed debit's answer and the memo its key remembers (see `memo`).
    Remembered {
        status: u16,
        body: Vec<u8>,
        memo: Vec<u8>,
    },
    /// An account's handle and creation time.
    Handle(Option<(AccountHandle, Timestamp)>),
    /// Accounts of one shard for a list page: (created_at, handle, JSON).
    Accounts(Vec<(Timestamp, AccountId, Vec<u8>)>),
    /// The engine cannot take writes (a commit failed).
    Unavailable,
}

/// An idempotency key the edge claimed for this request.
#[derive(Debug)]
pub struct KeyClaim {
    pub key: String,
    pub fingerprint: [u8; 32],
}

#[derive(Debug)]
pub enum Work {
    Command {
        command: Command,
        claim: Option<KeyClaim>,
    },
    Read(Read),
    /// Apply everything due by now on every account of the shard.
    Tick,
}

#[derive(Debug)]
struct Job {
    work: Work,
    reply: oneshot::Sender<Answer>,
}

/// Why a job was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum Busy {
    /// The shard's queue is full: answer 429.
    QueueFull,
    /// The engine stopped after a failed commit: answer 503.
    Stopped,
}

/// Tunables of the engine.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub shards: usize,
    pub partitions: u16,
    pub queue_capacity: usize,
    pub batch_limit: usize,
    pub idempotency_retention_seconds: i64,
    /// A shard snapshots its partitions after writing this many entries.
    pub snapshot_every_entries: u64,
}

/// Handle to the running engine; cheap to clone.
#[derive(Clone, Debug)]
pub struct Engine {
    shards: Arc<[Sender<Job>]>,
    partitions: u16,
    poisoned: Arc<AtomicBool>,
    queue_depth: Arc<AtomicU64>,
}

/// The stable partition of an account id (FNV-1a): never changes across
/// restarts or versions, because handles and object ids embed it.
pub fn partition_of(id: &str, partitions: u16) -> u16 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in id.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % u64::from(partitions)) as u16
}

impl Engine {
    /// Starts the shard threads and the committer over recovered ledgers
    /// (one per partition, index = partition).
    pub fn start(
        config: &EngineConfig,
        ledgers: Vec<Ledger>,
        store: Arc<dyn Store>,
        clock: Clock,
        metrics: Arc<Metrics>,
    ) -> Engine {
        assert_eq!(ledgers.len(), usize::from(config.partitions));
        let poisoned = Arc::new(AtomicBool::new(false));
        let queue_depth = Arc::new(AtomicU64::new(0));
        let (commit_tx, commit_rx) = crossbeam_channel::bounded::<Batch>(config.shards * 2);
        let mut owned: Vec<Vec<Ledger>> = (0..config.shards).map(|_| Vec::new()).collect();
        for ledger in ledgers {
            owned[usize::from(ledger.partition()) % config.shards].push(ledger);
        }
        let mut senders = Vec::new();
        for (index, ledgers) in owned.into_iter().enumerate() {
            let (tx, rx) = crossbeam_channel::bounded(config.queue_capacity);
            senders.push(tx);
            let shard = Shard {
                index,
                shards: config.shards,
                partitions: config.partitions,
                ledgers,
                rx,
                commit: commit_tx.clone(),
                clock: clock.clone(),
                batch_limit: config.batch_limit,
                retention_seconds: config.idempotency_retention_seconds,
                due: BinaryHeap::new(),
                since_snapshot: 0,
                snapshot_every: config.snapshot_every_entries.max(1),
                poisoned: poisoned.clone(),
                queue_depth: queue_depth.clone(),
            };
            let stopped = poisoned.clone();
            std::thread::Builder::new()
                .name(format!("purser-shard-{index}"))
                .spawn(move || {
                    // A panic is a bug (a broken invariant): the shard's
                    // memory can no longer be trusted, so the engine stops.
                    let outcome =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || shard.run()));
                    if outcome.is_err() {
                        stopped.store(true, Ordering::Relaxed);
                        tracing::error!(
                            shard = index,
                            "a shard panicked: the engine stops taking requests"
                        );
                    }
                })
                .expect("spawn shard thread");
        }
        drop(commit_tx);
        let committer = Committer {
            store,
            rx: commit_rx,
            poisoned: poisoned.clone(),
            metrics,
        };
        std::thread::Builder::new()
            .name("purser-committer".into())
            .spawn(move || committer.run())
            .expect("spawn committer thread");
        Engine {
            shards: senders.into(),
            partitions: config.partitions,
            poisoned,
            queue_depth,
        }
    }

    pub fn partitions(&self) -> u16 {
        self.partitions
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Relaxed)
    }

    pub fn queue_depth(&self) -> u64 {
        self.queue_depth.load(Ordering::Relaxed)
    }

    /// The shard that owns an account id.
    pub fn shard_of_id(&self, id: &str) -> usize {
        usize::from(partition_of(id, self.partitions)) % self.shards.len()
    }

    /// The shard that owns an account handle (from an object id).
    pub fn shard_of_handle(&self, handle: AccountHandle) -> usize {
        usize::from(handle.partition()) % self.shards.len()
    }

    fn shard_of_command(&self, command: &Command) -> usize {
        match command.target() {
            Target::New(id) | Target::Id(id) => self.shard_of_id(id.as_str()),
            Target::Handle(handle) => self.shard_of_handle(handle),
        }
    }

    /// Queues work on a shard; the answer arrives once its batch is durable.
    pub fn submit(&self, shard: usize, work: Work) -> Result<oneshot::Receiver<Answer>, Busy> {
        if self.is_poisoned() {
            return Err(Busy::Stopped);
        }
        let (reply, answer) = oneshot::channel();
        match self.shards[shard].try_send(Job { work, reply }) {
            Ok(()) => {
                self.queue_depth.fetch_add(1, Ordering::Relaxed);
                Ok(answer)
            }
            Err(TrySendError::Full(_)) => Err(Busy::QueueFull),
            Err(TrySendError::Disconnected(_)) => Err(Busy::Stopped),
        }
    }

    /// Queues a command on the shard that owns its account.
    pub fn submit_command(
        &self,
        command: Command,
        claim: Option<KeyClaim>,
    ) -> Result<oneshot::Receiver<Answer>, Busy> {
        let shard = self.shard_of_command(&command);
        self.submit(shard, Work::Command { command, claim })
    }
}

/// What a shard hands the committer.
#[derive(Debug)]
struct Batch {
    entries: Vec<Entry>,
    idempotency: Vec<IdempotencyRecord>,
    snapshots: Vec<PartitionSnapshot>,
    answers: Vec<(oneshot::Sender<Answer>, Answer)>,
}

struct Shard {
    index: usize,
    shards: usize,
    partitions: u16,
    /// The partitions this shard owns, in partition order.
    ledgers: Vec<Ledger>,
    rx: Receiver<Job>,
    commit: Sender<Batch>,
    clock: Clock,
    batch_limit: usize,
    retention_seconds: i64,
    /// Accounts by the instant their time-driven work is next due (lazily
    /// deleted: an entry is acted on only if it still matches the account).
    due: BinaryHeap<Reverse<(Timestamp, u64)>>,
    /// Entries written since the last snapshot, and how many call for one.
    since_snapshot: u64,
    snapshot_every: u64,
    poisoned: Arc<AtomicBool>,
    queue_depth: Arc<AtomicU64>,
}

impl Shard {
    fn run(mut self) {
        let due: Vec<_> = self
            .ledgers
            .iter()
            .flat_map(|ledger| ledger.accounts())
            .map(|account| Reverse((account.next_due(), account.handle().raw())))
            .collect();
        self.due = BinaryHeap::from(due);
        loop {
            let first = match self.rx.recv_timeout(self.idle_wait()) {
                Ok(job) => Some(job),
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => None,
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
            };
            let now = self.clock.now();
            let mut batch = Batch {
                entries: Vec::new(),
                idempotency: Vec::new(),
                snapshots: Vec::new(),
                answers: Vec::new(),
            };
            if let Some(job) = first {
                self.process(job, now, &mut batch);
                while batch.answers.len() < self.batch_limit {
                    match self.rx.try_recv() {
                        Ok(job) => self.process(job, now, &mut batch),
                        Err(_) => break,
                    }
                }
            }
            self.advance_due(now, &mut batch.entries);
            if batch.answers.is_empty() && batch.entries.is_empty() {
                continue;
            }
            self.since_snapshot += batch.entries.len() as u64;
            if self.since_snapshot >= self.snapshot_every {
                batch.snapshots = self.snapshot();
                self.since_snapshot = 0;
            }
            if self.commit.send(batch).is_err() {
                return;
            }
        }
    }

    /// Every partition of the shard, as it is after the batch at hand: written
    /// with that batch, so it reflects everything committed before it.
    fn snapshot(&self) -> Vec<PartitionSnapshot> {
        self.ledgers
            .iter()
            .map(|ledger| {
                let mut body = Vec::new();
                purser_store::encode_snapshot(&ledger.snapshot(), &mut body);
                PartitionSnapshot {
                    partition: ledger.partition(),
                    body,
                }
            })
            .collect()
    }

    /// How long to wait for work before time-driven work falls due. The test
    /// clock only moves by explicit ticks, so then there is nothing to wait for.
    fn idle_wait(&self) -> Duration {
        let cap = Duration::from_secs(1);
        if self.clock.is_test() {
            return cap;
        }
        match self.due.peek() {
            None => cap,
            Some(Reverse((due, _))) => {
                let micros = due.micros_since(self.clock.now()).max(0) as u64;
                Duration::from_micros(micros).min(cap)
            }
        }
    }

    fn ledger_index(&self, partition: u16) -> Option<usize> {
        (usize::from(partition) % self.shards == self.index)
            .then(|| usize::from(partition) / self.shards)
    }

    fn ledger_of_id(&self, id: &AccountId) -> usize {
        self.ledger_index(partition_of(id.as_str(), self.partitions))
            .expect("routed to its shard")
    }

    fn process(&mut self, job: Job, now: Timestamp, batch: &mut Batch) {
        self.queue_depth.fetch_sub(1, Ordering::Relaxed);
        let answer = if self.poisoned.load(Ordering::Relaxed) {
            Answer::Unavailable
        } else {
            match job.work {
                Work::Command { command, claim } => self.command(command, claim, now, batch),
                Work::Read(read) => self.read(read, now),
                Work::Tick => {
                    self.tick(now, &mut batch.entries);
                    Answer::Json {
                        status: 200,
                        body: Vec::new(),
                    }
                }
            }
        };
        batch.answers.push((job.reply, answer));
    }

    fn command(
        &mut self,
        command: Command,
        claim: Option<KeyClaim>,
        now: Timestamp,
        batch: &mut Batch,
    ) -> Answer {
        let mut shape = render::shape_of(&command);
        let index = match command.target() {
            Target::New(id) | Target::Id(id) => self.ledger_of_id(id),
            Target::Handle(handle) => match self.ledger_index(handle.partition()) {
                Some(index) if index < self.ledgers.len() => index,
                _ => return render::rejection(&command.not_found()),
            },
        };
        let ledger = &mut self.ledgers[index];
        if let Command::ReleaseHold { hold } = &command {
            let active = ledger
                .account_by_handle(hold.account)
                .and_then(|a| a.hold(hold.seq));
            shape = render::Shape::Released(active.cloned().map(Box::new));
        }
        let before = batch.entries.len();
        let debit_status = match &shape {
            render::Shape::Debit { status } => Some(*status),
            _ => None,
        };
        let result = ledger.execute(now, command, &mut batch.entries);
        // The heap holds an entry for each account's current due instant: a
        // new one only when a command moved it (a refusal moved it only if
        // time-driven work ran before it).
        let (answer, moved, memo) = match result {
            Ok(receipt) => {
                let account = ledger
                    .account_by_handle(receipt.account)
                    .expect("receipt names an account");
                let moved = receipt.due_moved.then_some(receipt.account);
                // A keyed debit's key remembers a memo, not the answer; the
                // answer is rendered from that memo, as a replay will be.
                match debit_status
                    .filter(|_| claim.is_some())
                    .zip(receipt.primary)
                {
                    Some((status, index)) => {
                        let entry = &batch.entries[index];
                        let memo = render::debit_memo(account, entry, now);
                        let body = render::debit_from_memo(&memo, entry);
                        (Answer::Json { status, body }, moved, Some(memo.encode()))
                    }
                    None => (
                        render::accepted(shape, &receipt, account, &batch.entries, now),
                        moved,
                        None,
                    ),
                }
            }
            Err(rejection) => (
                render::rejection(&rejection),
                batch.entries.get(before).map(|e| e.account),
                None,
            ),
        };
        if let Some(handle) = moved {
            let account = ledger.account_by_handle(handle).expect("known account");
            self.due.push(Reverse((account.next_due(), handle.raw())));
        }
        let Some(claim) = claim else {
            return answer;
        };
        let Answer::Json { status, body } = answer else {
            return answer;
        };
        if !(200..300).contains(&status) {
            return Answer::Json { status, body };
        }
        let expires_at = now
            .checked_add_seconds(self.retention_seconds)
            .unwrap_or(Timestamp::NEVER);
        let record = |body| IdempotencyRecord {
            key: claim.key,
            fingerprint: claim.fingerprint,
            status,
            body,
            expires_at,
        };
        match memo {
            Some(memo) => {
                batch.idempotency.push(record(memo.clone()));
                Answer::Remembered { status, body, memo }
            }
            None => {
                batch.idempotency.push(record(body.clone()));
                Answer::Json { status, body }
            }
        }
    }

    fn read(&mut self, read: Read, now: Timestamp) -> Answer {
        if let Read::Accounts { before, limit } = read {
            // Newest first; accounts created at the same instant by id, highest first.
            let mut page: Vec<_> = self
                .ledgers
                .iter()
                .flat_map(|ledger| ledger.accounts())
                .filter(|account| {
                    before
                        .as_ref()
                        .is_none_or(|(at, id)| (account.created_at(), account.id()) < (*at, id))
                })
                .map(|account| (account.created_at(), account.id().clone(), account.handle()))
                .collect();
            if page.len() > limit {
                page.select_nth_unstable_by(limit, |a, b| b.cmp(a));
                page.truncate(limit);
            }
            page.sort_unstable_by(|a, b| b.cmp(a));
            let rendered = page
                .into_iter()
                .map(|(created, id, handle)| {
                    let account = self.account_by_handle(handle).expect("listed");
                    (created, id, render::account_body(account, now))
                })
                .collect();
            return Answer::Accounts(rendered);
        }
        let account = match read.account() {
            render::AccountRef::Id(id) => {
                let partition = partition_of(id.as_str(), self.partitions);
                self.ledger_index(partition)
                    .and_then(|index| self.ledgers[index].account(id.as_str()))
            }
            render::AccountRef::Handle(handle) => self.account_by_handle(handle),
        };
        render::read(read, account, now)
    }

    fn account_by_handle(&self, handle: AccountHandle) -> Option<&purser_core::Account> {
        let index = self.ledger_index(handle.partition())?;
        self.ledgers.get(index)?.account_by_handle(handle)
    }

    /// Time-driven work for the accounts whose due instant has come.
    fn advance_due(&mut self, now: Timestamp, out: &mut Vec<Entry>) {
        while let Some(Reverse((due, raw))) = self.due.peek().copied() {
            if due > now {
                break;
            }
            self.due.pop();
            let handle = AccountHandle::from_raw(raw);
            let Some(index) = self.ledger_index(handle.partition()) else {
                continue;
            };
            let ledger = &mut self.ledgers[index];
            let Some(account) = ledger.account_by_handle(handle) else {
                continue;
            };
            if account.next_due() != due {
                continue; // stale: a newer heap entry stands for this account
            }
            ledger
                .execute(now, Command::Advance { account: handle }, out)
                .expect("advancing a known account is always accepted");
            let next = ledger.account_by_handle(handle).expect("known").next_due();
            self.due.push(Reverse((next, raw)));
        }
    }

    /// A test-clock tick: everything due by `now`, on every account.
    fn tick(&mut self, now: Timestamp, out: &mut Vec<Entry>) {
        self.advance_due(now, out);
    }
}

struct Committer {
    store: Arc<dyn Store>,
    rx: Receiver<Batch>,
    poisoned: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
}

impl Committer {
    fn run(self) {
        let mut entries: Vec<Entry> = Vec::new();
        let mut idempotency: Vec<IdempotencyRecord> = Vec::new();
        let mut snapshots: Vec<PartitionSnapshot> = Vec::new();
        let mut answers: Vec<(oneshot::Sender<Answer>, Answer)> = Vec::new();
        while let Ok(first) = self.rx.recv() {
            let mut batches = vec![first];
            while let Ok(more) = self.rx.try_recv() {
                batches.push(more);
            }
            for batch in batches {
                entries.extend(batch.entries);
                idempotency.extend(batch.idempotency);
                snapshots.extend(batch.snapshots);
                answers.extend(batch.answers);
            }
            let started = std::time::Instant::now();
            let outcome = if self.poisoned.load(Ordering::Relaxed) {
                Err("engine stopped after an earlier failed commit".to_string())
            } else {
                self.store
                    .commit(Commit {
                        entries: &entries,
                        idempotency: &idempotency,
                        snapshots: &snapshots,
                    })
                    .map_err(|error| error.to_string())
            };
            self.metrics
                .observe_commit(entries.len(), answers.len(), started.elapsed());
            match outcome {
                Ok(()) => {
                    for (reply, answer) in answers.drain(..) {
                        let _ = reply.send(answer);
                    }
                }
                Err(error) => {
                    if !self.poisoned.swap(true, Ordering::Relaxed) {
                        tracing::error!(%error, "commit failed: memory is ahead of the store; refusing writes until restart");
                    }
                    for (reply, _) in answers.drain(..) {
                        let _ = reply.send(Answer::Unavailable);
                    }
                }
            }
            entries.clear();
            idempotency.clear();
            snapshots.clear();
        }
    }
}

/// Rebuilds every partition from the store: the latest snapshots, then the
/// journal after them replayed through the core, each entry checked against
/// the balances it recorded. Returns the ledgers and the entries replayed.
pub fn recover(
    store: &dyn Store,
    catalog: Arc<Catalog>,
    partitions: u16,
) -> Result<(Vec<Ledger>, u64), RecoveryError> {
    let mut ledgers: Vec<Ledger> = (0..partitions)
        .map(|p| Ledger::new(p, catalog.clone()))
        .collect();
    let snapshots = store.snapshots().map_err(RecoveryError::Store)?;
    // Partitions without a snapshot need the journal from its start.
    let snapshotted: std::collections::HashSet<u16> =
        snapshots.iter().map(|s| s.partition).collect();
    let mut start = if snapshotted.len() == usize::from(partitions) {
        u64::MAX
    } else {
        0
    };
    for snapshot in snapshots {
        let ledger = ledgers
            .get_mut(usize::from(snapshot.partition))
            .ok_or_else(|| {
                RecoveryError::Invariant(format!(
                    "snapshot of partition {} beyond {partitions}",
                    snapshot.partition
                ))
            })?;
        let accounts = purser_store::decode_snapshot(&snapshot.body).map_err(|error| {
            RecoveryError::Invariant(format!(
                "snapshot of partition {}: {error}",
                snapshot.partition
            ))
        })?;
        for account in accounts {
            ledger.restore(account).map_err(|error| {
                RecoveryError::Invariant(format!(
                    "snapshot of partition {}: {error}",
                    snapshot.partition
                ))
            })?;
        }
        start = start.min(snapshot.position);
    }
    let mut last_at: std::collections::HashMap<u64, Timestamp> = std::collections::HashMap::new();
    let mut replayed = 0;
    store
        .replay_after(start, &mut |_, entry| {
            let partition = usize::from(entry.account.partition());
            let ledger = ledgers.get_mut(partition).ok_or_else(|| {
                purser_store::StoreError::Backend(format!(
                    "entry of partition {partition} beyond {partitions}"
                ))
            })?;
            if ledger.contains(&entry) {
                return Ok(());
            }
            ledger.apply(&entry).map_err(|error| {
                purser_store::StoreError::Backend(format!(
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

/// Why the engine could not be rebuilt from the store.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error("reading the journal: {0}")]
    Store(purser_store::StoreError),
    #[error("the recovered ledger breaks an invariant: {0}")]
    Invariant(String),
}
