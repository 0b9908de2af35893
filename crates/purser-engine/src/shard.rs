//! A shard: the single writer of its partitions' ledgers.
//!
//! It takes every job waiting in its bounded queue (up to a batch limit),
//! decides each against memory (no IO), renders each answer, and hands the
//! batch (entries, idempotency records, answers) to the committer. Reads and
//! refusals ride in the same batches, so no answer ever reveals state that
//! is not yet durable, and a refusal never overtakes an earlier acceptance.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use purser_core::{
    Account, AccountHandle, AccountId, Command, Entry, Event, KeyHash, Ledger, Settled,
    SettledBatch, Target, Timestamp, partition_of,
};
use purser_store::{EventRecord, IdempotencyRecord, PartitionSnapshot, SettledRecord, Store};
use tokio::sync::oneshot;

use crate::clock::Clock;
use crate::keys::IdempotencyKey;
use crate::protocol::{
    Accepted, AccountRef, Actor, EventContext, Read, Render, Rendered, Shape, shape_of,
};

/// What a shard answers.
#[derive(Debug)]
pub(crate) enum Answer {
    Rendered(Rendered),
    /// An account's handle and creation time.
    Handle(Option<(AccountHandle, Timestamp)>),
    /// Accounts of one shard for a list page: (created_at, id, rendered).
    Accounts(Vec<(Timestamp, AccountId, Vec<u8>)>),
    /// Time-driven work is applied (and durable).
    Ticked,
    /// The engine cannot take work (it stopped before this job ran).
    Unavailable,
    /// The job ran but its batch's commit failed: whether it is stored is
    /// not known until the store is read back.
    Unknown,
}

#[derive(Debug)]
pub(crate) enum Work {
    Command {
        command: Command,
        claim: Option<IdempotencyKey>,
        /// Shared by the commands of one request (a batch's).
        actor: Arc<Actor>,
    },
    Read(Read),
    /// The handle and creation time of an account id.
    Handle(AccountId),
    /// Up to `limit` accounts of the shard created before the cursor, newest first.
    Accounts {
        before: Option<(Timestamp, AccountId)>,
        limit: usize,
    },
    /// Apply everything due by now on every account of the shard.
    Tick,
    /// Make an idempotency record durable (the answer of work that is not a
    /// ledger command: an API key, a portal session, a clock move).
    Remember {
        key: IdempotencyKey,
        status: u16,
        body: Vec<u8>,
    },
}

#[derive(Debug)]
pub(crate) struct Job {
    pub work: Work,
    pub reply: oneshot::Sender<Answer>,
}

/// An answer on its way to its request, sent once its batch is durable.
#[derive(Debug)]
pub(crate) struct Reply {
    pub to: oneshot::Sender<Answer>,
    pub answer: Answer,
    /// The idempotency key the request claimed: ended by the committer
    /// with the outcome (remembered, or released), never by the request.
    pub key: Option<KeyHash>,
}

/// What a shard hands the committer.
#[derive(Debug)]
pub(crate) struct Batch {
    /// The shard's index and the batch's number (from 1, in order).
    pub shard: usize,
    pub number: u64,
    pub entries: Vec<Entry>,
    pub idempotency: Vec<IdempotencyRecord>,
    pub events: Vec<EventRecord>,
    /// Settled objects that left memory with this batch.
    pub settled: Vec<SettledRecord>,
    pub snapshots: Vec<PartitionSnapshot>,
    pub answers: Vec<Reply>,
}

pub(crate) struct Shard {
    pub index: usize,
    pub shards: usize,
    pub partitions: u16,
    /// The partitions this shard owns, in partition order.
    pub ledgers: Vec<Ledger>,
    pub rx: Receiver<Job>,
    pub commit: Sender<Batch>,
    pub clock: Clock,
    pub render: Arc<dyn Render>,
    pub batch_limit: usize,
    pub retention_seconds: i64,
    /// Accounts by the instant their time-driven work is next due (lazily
    /// deleted: an entry is acted on only if it still matches the account).
    pub due: BinaryHeap<Reverse<(Timestamp, u64)>>,
    /// Entries written since the last snapshot, and how many call for one.
    pub since_snapshot: u64,
    pub snapshot_every: u64,
    pub poisoned: Arc<AtomicBool>,
    pub queue_depth: Arc<AtomicU64>,
    /// The shard's accounts ordered for `GET /v1/accounts`, built on the
    /// first list and kept up as accounts are created.
    pub listing: Listing,
    /// The events of the command at hand (reused).
    pub events: Vec<Event>,
    /// Settled objects are read back from here (a page-in, rare).
    pub store: Arc<dyn Store>,
    /// Batches handed to the committer so far.
    pub batches: u64,
    /// The number of this shard's last batch known durable (the committer's).
    pub durable: Arc<[AtomicU64]>,
    /// Settled objects of batches not yet known durable, oldest first: read
    /// back from here, the store may not have them yet.
    pub leaving: std::collections::VecDeque<(u64, SettledRecord)>,
}

/// Accounts by creation instant, for list pages that read only what they
/// show (never a scan of every account). Built lazily: a server whose
/// account list is never read spends nothing on it. A ledger's accounts
/// only ever grow at the end (a handle's index is its position), so
/// `listed` says where each ledger's unlisted accounts start.
#[derive(Debug, Default)]
pub(crate) struct Listing {
    /// (creation instant, account handle).
    by_created: std::collections::BTreeSet<(Timestamp, u64)>,
    /// Per ledger (in the shard's order): accounts already in `by_created`.
    listed: Vec<usize>,
}

impl Listing {
    /// Adds the accounts created since the last call.
    fn catch_up(&mut self, ledgers: &[Ledger]) {
        self.listed.resize(ledgers.len(), 0);
        for (ledger, listed) in ledgers.iter().zip(&mut self.listed) {
            for account in ledger.accounts().skip(*listed) {
                self.by_created
                    .insert((account.created_at(), account.handle().raw()));
                *listed += 1;
            }
        }
    }
}

impl Shard {
    pub fn run(mut self) {
        let due: Vec<_> = self
            .ledgers
            .iter()
            .flat_map(|ledger| ledger.accounts())
            .map(|account| Reverse((account.next_due(), account.handle().raw())))
            .collect();
        self.due = BinaryHeap::from(due);
        // What recovery read back goes out again before any work.
        let settled: Vec<SettledRecord> = self
            .ledgers
            .iter_mut()
            .flat_map(Ledger::settle_all)
            .flat_map(records)
            .collect();
        if !settled.is_empty() {
            let mut batch = self.new_batch();
            batch.settled = settled;
            self.hand_over(&batch);
            if self.commit.send(batch).is_err() {
                return;
            }
        }
        loop {
            let first = match self.rx.recv_timeout(self.idle_wait()) {
                Ok(job) => Some(job),
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => None,
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
            };
            let now = self.clock.now();
            let mut batch = self.new_batch();
            if let Some(job) = first {
                self.process(job, now, &mut batch);
                while batch.answers.len() < self.batch_limit {
                    match self.rx.try_recv() {
                        Ok(job) => self.process(job, now, &mut batch),
                        Err(_) => break,
                    }
                }
            }
            self.advance_due(now, &mut batch);
            if batch.answers.is_empty() && batch.entries.is_empty() && batch.settled.is_empty() {
                self.batches -= 1;
                continue;
            }
            self.since_snapshot += batch.entries.len() as u64;
            if self.since_snapshot >= self.snapshot_every {
                batch.snapshots = self.snapshot();
                self.since_snapshot = 0;
            }
            self.hand_over(&batch);
            if self.commit.send(batch).is_err() {
                return;
            }
        }
    }

    /// The next batch (numbered: the committer tells which are durable).
    fn new_batch(&mut self) -> Batch {
        self.batches += 1;
        Batch {
            shard: self.index,
            number: self.batches,
            entries: Vec::new(),
            idempotency: Vec::new(),
            events: Vec::new(),
            settled: Vec::new(),
            snapshots: Vec::new(),
            answers: Vec::new(),
        }
    }

    /// Keeps the batch's settled objects at hand until it is durable.
    fn hand_over(&mut self, batch: &Batch) {
        self.forget_durable();
        self.leaving.extend(
            batch
                .settled
                .iter()
                .map(|record| (batch.number, record.clone())),
        );
    }

    fn forget_durable(&mut self) {
        let durable = self.durable[self.index].load(Ordering::Acquire);
        while self
            .leaving
            .front()
            .is_some_and(|(number, _)| *number <= durable)
        {
            self.leaving.pop_front();
        }
    }

    /// The settled objects of one account that left after its entry
    /// `as_of - 1`, as records for the store (and for `leaving`).
    fn settle(
        &mut self,
        index: usize,
        account: AccountHandle,
        paged: &[u64],
        first: usize,
        batch: &mut Batch,
    ) {
        if let Some(settled) = self.ledgers[index].settle(account, paged, &batch.entries[first..]) {
            batch.settled.extend(records(settled));
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

    /// When an idempotency record stored now is forgotten.
    fn expiry(&self, now: Timestamp) -> Timestamp {
        now.checked_add_seconds(self.retention_seconds)
            .unwrap_or(Timestamp::NEVER)
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
        let key = match &job.work {
            Work::Command {
                claim: Some(claim), ..
            } => Some(claim.key),
            Work::Remember { key, .. } => Some(key.key),
            _ => None,
        };
        let answer = if self.poisoned.load(Ordering::Relaxed) {
            Answer::Unavailable
        } else {
            match job.work {
                Work::Command {
                    command,
                    claim,
                    actor,
                } => self.command(command, claim, actor, now, batch),
                Work::Read(read) => {
                    let account = self.account(read.account());
                    Answer::Rendered(self.render.read(read, account, now))
                }
                Work::Handle(id) => Answer::Handle(
                    self.account(AccountRef::Id(&id))
                        .map(|account| (account.handle(), account.created_at())),
                ),
                Work::Accounts { before, limit } => self.accounts(before, limit, now),
                Work::Tick => {
                    self.advance_due(now, batch);
                    Answer::Ticked
                }
                Work::Remember { key, status, body } => {
                    batch.idempotency.push(IdempotencyRecord::new(
                        key.key,
                        key.fingerprint,
                        status,
                        body.clone(),
                        self.expiry(now),
                    ));
                    // The committer ends the key with it, as a command's.
                    Answer::Rendered(Rendered {
                        status,
                        body: Vec::new(),
                        remember: Some(body),
                    })
                }
            }
        };
        batch.answers.push(Reply {
            to: job.reply,
            answer,
            key,
        });
    }

    fn command(
        &mut self,
        command: Command,
        claim: Option<IdempotencyKey>,
        actor: Arc<Actor>,
        now: Timestamp,
        batch: &mut Batch,
    ) -> Answer {
        let mut shape = shape_of(&command);
        let index = match command.target() {
            Target::New(id) | Target::Id(id) => self.ledger_of_id(id),
            Target::Handle(handle) => match self.ledger_index(handle.partition()) {
                Some(index) if index < self.ledgers.len() => index,
                _ => return Answer::Rendered(self.render.refused(&command.not_found())),
            },
        };
        // Settled objects the command may touch come back first (rare: a
        // refund of an old purchase, a reversal onto a spent grant).
        self.forget_durable();
        let paged = {
            let Shard {
                ledgers,
                leaving,
                store,
                ..
            } = self;
            ledgers[index].page_in_for(&command, &mut |account, seq, as_of| {
                page_in(leaving, &**store, account, seq, as_of)
            })
        };
        let (paged_account, paged) = match paged {
            Ok(Some((account, paged))) => (Some(account), paged),
            Ok(None) => (None, Vec::new()),
            Err(error) => {
                tracing::error!(%error, "reading a settled object back from the store");
                return Answer::Unavailable;
            }
        };
        let ledger = &mut self.ledgers[index];
        if let Command::ReleaseHold { hold } = &command {
            let active = ledger
                .account_by_handle(hold.account)
                .and_then(|a| a.hold(hold.seq));
            shape = Shape::Released(active.cloned().map(Box::new));
        }
        let before = batch.entries.len();
        let mut events = std::mem::take(&mut self.events);
        let result = ledger.execute_as(
            now,
            command,
            Some(&actor),
            &mut batch.entries,
            Some(&mut events),
        );
        render_events(
            &*self.render,
            ledger,
            &batch.entries[before..],
            &mut events,
            &actor,
            now,
            &mut batch.events,
        );
        self.events = events;
        let ledger = &self.ledgers[index];
        // The heap holds an entry for each account's current due instant: a
        // new one only when a command moved it (a refusal moved it only if
        // time-driven work ran before it).
        let settled_account;
        let (rendered, moved) = match result {
            Ok(receipt) => {
                let account = ledger
                    .account_by_handle(receipt.account)
                    .expect("receipt names an account");
                let rendered = self.render.accepted(&Accepted {
                    shape,
                    receipt: &receipt,
                    account,
                    entries: &batch.entries,
                    now,
                    keyed: claim.is_some(),
                });
                settled_account = Some(receipt.account);
                (rendered, receipt.due_moved.then_some(receipt.account))
            }
            Err(rejection) => {
                settled_account = batch.entries.get(before).map(|e| e.account);
                (self.render.refused(&rejection), settled_account)
            }
        };
        if let Some(handle) = moved {
            let account = ledger.account_by_handle(handle).expect("known account");
            self.due.push(Reverse((account.next_due(), handle.raw())));
        }
        // Answer and events are rendered: what is settled now leaves.
        let settling = paged_account.or(settled_account);
        if let Some(account) = settling {
            self.settle(index, account, &paged, before, batch);
        }
        if let (Some(claim), Some(remember)) = (claim, &rendered.remember) {
            batch.idempotency.push(IdempotencyRecord::new(
                claim.key,
                claim.fingerprint,
                rendered.status,
                remember.clone(),
                self.expiry(now),
            ));
        }
        Answer::Rendered(rendered)
    }

    /// A page of the shard's accounts, newest first; accounts created at the
    /// same instant by id, highest first.
    /// Walks the listing index from the cursor: the accounts it reads are
    /// the page's, plus the rest of the last creation instant it reaches
    /// (accounts created at one instant are ordered by id).
    fn accounts(
        &mut self,
        before: Option<(Timestamp, AccountId)>,
        limit: usize,
        now: Timestamp,
    ) -> Answer {
        self.listing.catch_up(&self.ledgers);
        let upper = before
            .as_ref()
            .map_or((Timestamp::NEVER, u64::MAX), |(at, _)| (*at, u64::MAX));
        let mut page: Vec<(Timestamp, AccountId, AccountHandle)> = Vec::new();
        let mut group: Vec<(Timestamp, AccountId, AccountHandle)> = Vec::new();
        let mut range = self.listing.by_created.range(..=upper).rev().peekable();
        while page.len() < limit {
            let Some(&&(at, _)) = range.peek() else {
                break;
            };
            // Every account of this instant, highest id first.
            group.clear();
            while let Some(&&(next, raw)) = range.peek() {
                if next != at {
                    break;
                }
                range.next();
                let handle = AccountHandle::from_raw(raw);
                let Some(account) = self.account(AccountRef::Handle(handle)) else {
                    continue;
                };
                let id = account.id();
                if before
                    .as_ref()
                    .is_none_or(|(cursor, after)| (at, id) < (*cursor, after))
                {
                    group.push((at, id.clone(), handle));
                }
            }
            group.sort_unstable_by(|a, b| b.1.cmp(&a.1));
            page.extend(group.drain(..).take(limit - page.len()));
        }
        let rendered = page
            .into_iter()
            .map(|(created, id, handle)| {
                let account = self.account(AccountRef::Handle(handle)).expect("listed");
                (created, id, self.render.account(account, now))
            })
            .collect();
        Answer::Accounts(rendered)
    }

    fn account(&self, account: AccountRef<'_>) -> Option<&Account> {
        match account {
            AccountRef::Id(id) => {
                let index = self.ledger_index(partition_of(id.as_str(), self.partitions))?;
                self.ledgers[index].account(id.as_str())
            }
            AccountRef::Handle(handle) => {
                let index = self.ledger_index(handle.partition())?;
                self.ledgers.get(index)?.account_by_handle(handle)
            }
        }
    }

    /// Time-driven work for the accounts whose due instant has come.
    fn advance_due(&mut self, now: Timestamp, batch: &mut Batch) {
        let mut events = std::mem::take(&mut self.events);
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
            let first = batch.entries.len();
            ledger
                .execute_as(
                    now,
                    Command::Advance { account: handle },
                    Some(&Actor::system()),
                    &mut batch.entries,
                    Some(&mut events),
                )
                .expect("advancing a known account is always accepted");
            render_events(
                &*self.render,
                ledger,
                &batch.entries[first..],
                &mut events,
                &Actor::System,
                now,
                &mut batch.events,
            );
            let next = ledger.account_by_handle(handle).expect("known").next_due();
            self.due.push(Reverse((next, raw)));
            self.settle(index, handle, &[], first, batch);
        }
        self.events = events;
    }
}

/// Settled objects as the store keeps them.
fn records(settled: SettledBatch) -> impl Iterator<Item = SettledRecord> {
    let (account, as_of) = (settled.account, settled.as_of);
    settled
        .objects
        .into_iter()
        .map(move |object| SettledRecord {
            account,
            as_of,
            object,
        })
}

/// The newest version, at or before `as_of`, of a settled object: from the
/// batches not yet durable (newest first), else from the store.
fn page_in(
    leaving: &std::collections::VecDeque<(u64, SettledRecord)>,
    store: &dyn Store,
    account: AccountHandle,
    seq: u64,
    as_of: u64,
) -> Result<Option<Settled>, purser_store::StoreError> {
    let pending = leaving.iter().rev().find(|(_, record)| {
        record.account == account && record.seq() == seq && record.as_of <= as_of
    });
    if let Some((_, record)) = pending {
        return Ok(Some(record.object.clone()));
    }
    Ok(store
        .settled(account, seq, as_of)?
        .map(|record| record.object))
}

/// Renders a command's events (taken from `events`) into outbox records.
fn render_events(
    render: &dyn Render,
    ledger: &Ledger,
    entries: &[Entry],
    events: &mut Vec<Event>,
    actor: &Actor,
    now: Timestamp,
    out: &mut Vec<EventRecord>,
) {
    for event in events.drain(..) {
        let account = ledger
            .account_by_handle(event.id.account)
            .expect("an event names a known account");
        // Renewals and expiries are purser's, whoever's command ran them.
        let actor = if event.time_driven {
            &Actor::System
        } else {
            actor
        };
        let body = render.event(&EventContext {
            event: &event,
            account,
            entries,
            actor,
            now,
        });
        out.push(EventRecord {
            id: event.id,
            account: account.id().to_string(),
            kind: event.kind,
            at: event.at,
            body,
        });
    }
}
