//! The committer: merges the batches of every shard that is waiting, writes
//! them in one store transaction with one fsync, and only then sends their
//! answers, in order. If a commit fails, memory is ahead of disk: the engine
//! is poisoned and every answer of the failed batch (and every later
//! request) is "unavailable".

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use purser_core::Entry;
use purser_store::{Commit, IdempotencyRecord, PartitionSnapshot, Store};
use tokio::sync::oneshot;

use crate::shard::{Answer, Batch};

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
}

impl Committer {
    pub fn run(self) {
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
            let started = Instant::now();
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
            self.observer
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
