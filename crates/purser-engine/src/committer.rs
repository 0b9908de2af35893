//! The committer: merges the batches of every shard that is waiting, writes
//! them in one store transaction with one fsync, and only then ends their
//! idempotency keys (an accepted answer is remembered, any other released)
//! and sends their answers, in order. If a commit fails, memory is ahead of
//! disk: the engine is poisoned and every answer of the failed batch (and
//! every later request) is "unavailable". A request that stopped waiting
//! (a timeout, a dropped connection) changes none of this: its key ends
//! with its command's outcome all the same.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use purser_core::Entry;
use purser_store::{
    Commit, EventRecord, IdempotencyRecord, PartitionSnapshot, SettledRecord, Store, StoreError,
};

use crate::keys::{KeyTable, Stored};
use crate::shard::{Answer, Batch, Reply};

/// Told of every group commit (metrics).
pub trait CommitObserver: Send + Sync + std::fmt::Debug {
    /// A commit of `entries` journal entries that answered `commands`.
    fn observe_commit(&self, entries: usize, commands: usize, elapsed: Duration);
}

pub(crate) struct Committer {
    pub store: Arc<dyn Store>,
    pub rx: Receiver<Batch>,
    pub poisoned: Arc<AtomicBool>,
    pub observer: Arc<dyn CommitObserver>,
    pub keys: Arc<KeyTable>,
    pub clock: crate::Clock,
    /// Counts commits that stored events (webhook dispatchers wait on it).
    pub events_ready: Arc<tokio::sync::watch::Sender<u64>>,
    /// Per shard, the number of its last batch known durable (a shard
    /// reads settled objects back from the store only once their batch is).
    pub durable: Arc<[AtomicU64]>,
}

impl Committer {
    pub fn run(self) {
        let mut entries: Vec<Entry> = Vec::new();
        let mut idempotency: Vec<IdempotencyRecord> = Vec::new();
        let mut events: Vec<EventRecord> = Vec::new();
        let mut snapshots: Vec<PartitionSnapshot> = Vec::new();
        let mut settled: Vec<SettledRecord> = Vec::new();
        let mut numbers: Vec<(usize, u64)> = Vec::new();
        let mut answers: Vec<Reply> = Vec::new();
        while let Ok(first) = self.rx.recv() {
            let mut batches = vec![first];
            while let Ok(more) = self.rx.try_recv() {
                batches.push(more);
            }
            for batch in batches {
                entries.extend(batch.entries);
                idempotency.extend(batch.idempotency);
                events.extend(batch.events);
                snapshots.extend(batch.snapshots);
                settled.extend(batch.settled);
                numbers.push((batch.shard, batch.number));
                answers.extend(batch.answers);
            }
            let started = Instant::now();
            let writes = !(entries.is_empty()
                && idempotency.is_empty()
                && snapshots.is_empty()
                && settled.is_empty());
            let outcome = if self.poisoned.load(Ordering::Relaxed) {
                Err(StoreError::Backend(
                    "engine stopped after an earlier failed commit".into(),
                ))
            } else {
                self.store.commit(Commit {
                    entries: &entries,
                    idempotency: &idempotency,
                    events: &events,
                    settled: &settled,
                    snapshots: &snapshots,
                })
            };
            self.observer
                .observe_commit(entries.len(), answers.len(), started.elapsed());
            match outcome {
                Ok(()) => {
                    for (shard, number) in numbers.drain(..) {
                        if let Some(durable) = self.durable.get(shard) {
                            durable.fetch_max(number, Ordering::Release);
                        }
                    }
                    if !events.is_empty() {
                        self.events_ready.send_modify(|n| *n = n.wrapping_add(1));
                    }
                    let now = self.clock.now();
                    for reply in answers.drain(..) {
                        self.end_key(&reply, now);
                        let _ = reply.to.send(reply.answer);
                    }
                }
                // Reads and refusals only, and the writer still holds its
                // lease: memory is not ahead of the store, so the engine
                // goes on; these answers are just not given.
                Err(error) if !writes && !matches!(error, StoreError::Fenced) => {
                    tracing::warn!(%error, "confirming a batch of reads failed");
                    for reply in answers.drain(..) {
                        if let Some(key) = &reply.key {
                            self.keys.abandon(key);
                        }
                        let _ = reply.to.send(Answer::Unavailable);
                    }
                }
                Err(error) => {
                    if !self.poisoned.swap(true, Ordering::Relaxed) {
                        tracing::error!(%error, "commit failed: memory is ahead of the store; refusing writes until restart");
                    }
                    // Nothing of the batch may be assumed stored or not: its
                    // commands' outcome is unknown (a restart or a new writer
                    // reads it back; their keys answer then).
                    for reply in answers.drain(..) {
                        if let Some(key) = &reply.key {
                            self.keys.abandon(key);
                        }
                        let _ = reply.to.send(Answer::Unknown);
                    }
                }
            }
            entries.clear();
            idempotency.clear();
            events.clear();
            snapshots.clear();
            settled.clear();
            numbers.clear();
        }
    }

    /// Ends a committed command's key: its answer remembered if it has one
    /// to remember (accepted), released otherwise (refusals are judged
    /// afresh on retry).
    fn end_key(&self, reply: &Reply, now: purser_core::Timestamp) {
        let Some(key) = &reply.key else {
            return;
        };
        match &reply.answer {
            Answer::Rendered(rendered) => match &rendered.remember {
                Some(remembered) => {
                    let stored = Stored {
                        status: rendered.status,
                        body: remembered.as_slice().into(),
                    };
                    self.keys.finish(key, stored, now);
                }
                None => self.keys.abandon(key),
            },
            _ => self.keys.abandon(key),
        }
    }
}
