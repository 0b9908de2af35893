//! The engine's handle: what the API and the portal call. Commands go to the
//! shard that owns their account, with their idempotency key claimed first;
//! reads go the same way; store queries run off the async threads.

use std::collections::BinaryHeap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crossbeam_channel::{Sender, TrySendError};
use purser_core::{
    AccountHandle, AccountId, Catalog, Command, Found, KeyHash, Ledger, Target, Timestamp,
    partition_of,
};
use purser_store::{Store, StoreError};
use tokio::sync::oneshot;

use crate::clock::Clock;
use crate::committer::{CommitObserver, Committer};
use crate::keys::{Claimed, IdempotencyKey, KeyTable, Stored};
use crate::open::TEST_CLOCK_SETTING;
use crate::protocol::{Actor, Read, Render, Rendered};
use crate::shard::{Answer, Batch, Job, Listing, Shard, Work};

/// Why work was not done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Busy {
    /// The shard's queue is full: retry with backoff.
    QueueFull,
    /// The engine stopped after a failed commit, or no answer came in time.
    Unavailable,
    /// Reads of this account's lists are over their pace, beyond the
    /// request's deadline: retry in a moment.
    Paced,
}

/// Why a store query failed.
#[derive(Debug)]
pub enum QueryError {
    Store(StoreError),
    /// The query panicked.
    Panicked,
}

/// Why the test clock did not move.
#[derive(Debug)]
pub enum AdvanceError {
    /// The clock cannot move that far.
    TooFar,
    Query(QueryError),
    Busy(Busy),
}

/// How a command ended, from its caller's view.
#[derive(Debug)]
pub enum Outcome {
    /// Its answer, fresh or remembered by its idempotency key.
    Answered {
        status: u16,
        body: Vec<u8>,
    },
    /// Its idempotency key was used with a different request.
    KeyReused,
    /// A request with its idempotency key is still running.
    KeyInUse,
    Busy(Busy),
    /// No answer within the request timeout: the command may still be
    /// applied. Its key stays claimed until the outcome is known; a retry
    /// with the same key then answers it.
    Pending,
    /// A remembered answer could not be given again (what went wrong).
    RecallFailed(String),
}

/// A command handed to the engine, or ended at once (a replay, a refused
/// key, a full queue): [`Engine::settle`] waits for its outcome.
#[derive(Debug)]
pub struct Submitted(Pending);

#[derive(Debug)]
enum Pending {
    Ended(Outcome),
    /// Its idempotency key remembered this answer.
    Replay {
        status: u16,
        remembered: Arc<[u8]>,
    },
    Waiting {
        receiver: oneshot::Receiver<Answer>,
    },
}

fn ended(outcome: Outcome) -> Submitted {
    Submitted(Pending::Ended(outcome))
}

fn replay(stored: Stored) -> Submitted {
    Submitted(Pending::Replay {
        status: stored.status,
        remembered: stored.body,
    })
}

/// Keys held in flight while the store is asked about them: let go unless
/// the answers came (a dropped request, a store that did not answer).
struct Lookups {
    keys: Arc<KeyTable>,
    pending: Vec<(usize, KeyHash)>,
}

impl Drop for Lookups {
    fn drop(&mut self) {
        for (_, key) in &self.pending {
            self.keys.abandon(key);
        }
    }
}

/// A page of accounts, newest first, each rendered.
#[derive(Debug)]
pub struct AccountsPage {
    pub accounts: Vec<Vec<u8>>,
    pub has_more: bool,
}

/// Tunables of the engine.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub shards: usize,
    pub partitions: u16,
    pub queue_capacity: usize,
    pub batch_limit: usize,
    pub idempotency_retention_seconds: i64,
    /// How often the janitor purges expired idempotency records from the
    /// store and from memory.
    pub idempotency_purge_interval: Duration,
    /// How many finished idempotency keys keep their answer in memory;
    /// older ones cost 16 bytes each and are answered from the store.
    pub idempotency_cache_keys: usize,
    /// Events older than this leave the outbox (at least 30 days).
    pub event_retention_seconds: i64,
    /// A shard snapshots its partitions after writing this many entries.
    pub snapshot_every_entries: u64,
    /// How long a request waits for its answer before "unavailable" (the
    /// command may still commit: clients retry with the same key).
    pub request_timeout: Duration,
    /// Pages of one account's lists served a second (0: unpaced); more
    /// wait their turn (see [`crate::pacer`]).
    pub list_reads_per_second: u32,
    /// Pages of one account's lists served at once before the pace applies.
    pub list_reads_burst: u32,
    /// Portal actions (form posts: buy, pay, cancel, change the plan, set
    /// auto-recharge) of one account a minute (0: unpaced); more wait
    /// their turn, up to half the request timeout, then are refused.
    pub portal_actions_per_minute: u32,
    /// Portal actions of one account at once before that pace.
    pub portal_actions_burst: u32,
}

/// The pacer of portal actions (the others: API lists, portal pages,
/// exports).
const PORTAL_ACTIONS: usize = 3;

/// Handle to the running engine; cheap to clone.
#[derive(Clone, Debug)]
pub struct Engine(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    shards: Box<[Sender<Job>]>,
    partitions: u16,
    poisoned: Arc<AtomicBool>,
    queue_depth: Arc<AtomicU64>,
    store: Arc<dyn Store>,
    clock: Clock,
    catalog: Arc<Catalog>,
    keys: Arc<KeyTable>,
    render: Arc<dyn Render>,
    request_timeout: Duration,
    events_ready: Arc<tokio::sync::watch::Sender<u64>>,
    /// List-read buckets by who reads: the API, the portal's pages, the
    /// portal's exports (a customer's reading only ever shares a bucket
    /// with other customers').
    pacers: [crate::pacer::Pacer; 4],
    /// The pacer's clock: µs are counted from here.
    started: std::time::Instant,
}

/// What [`Engine::launch`] runs on.
#[derive(Debug)]
pub(crate) struct Parts {
    pub ledgers: Vec<Ledger>,
    pub store: Arc<dyn Store>,
    pub clock: Clock,
    pub catalog: Arc<Catalog>,
    pub keys: KeyTable,
    pub render: Arc<dyn Render>,
    pub observer: Arc<dyn CommitObserver>,
}

impl Engine {
    /// Starts one thread per shard and the committer over recovered ledgers
    /// (one per partition, index = partition).
    pub(crate) fn launch(config: &EngineConfig, parts: Parts) -> Engine {
        assert_eq!(parts.ledgers.len(), usize::from(config.partitions));
        let poisoned = Arc::new(AtomicBool::new(false));
        let queue_depth = Arc::new(AtomicU64::new(0));
        let events_ready = Arc::new(tokio::sync::watch::Sender::new(0));
        let (commit_tx, commit_rx) = crossbeam_channel::bounded::<Batch>(config.shards * 2);
        let mut owned: Vec<Vec<Ledger>> = (0..config.shards).map(|_| Vec::new()).collect();
        for ledger in parts.ledgers {
            owned[usize::from(ledger.partition()) % config.shards].push(ledger);
        }
        let mut senders = Vec::new();
        let durable: Arc<[AtomicU64]> = (0..config.shards).map(|_| AtomicU64::new(0)).collect();
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
                clock: parts.clock.clone(),
                render: parts.render.clone(),
                batch_limit: config.batch_limit,
                retention_seconds: config.idempotency_retention_seconds,
                due: BinaryHeap::new(),
                since_snapshot: 0,
                snapshot_every: config.snapshot_every_entries.max(1),
                poisoned: poisoned.clone(),
                queue_depth: queue_depth.clone(),
                listing: Listing::default(),
                events: Vec::new(),
                store: parts.store.clone(),
                batches: 0,
                durable: durable.clone(),
                leaving: Default::default(),
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
        let keys = Arc::new(parts.keys);
        let committer = Committer {
            store: parts.store.clone(),
            rx: commit_rx,
            poisoned: poisoned.clone(),
            observer: parts.observer,
            keys: keys.clone(),
            clock: parts.clock.clone(),
            events_ready: events_ready.clone(),
            durable,
        };
        let stopped = poisoned.clone();
        std::thread::Builder::new()
            .name("purser-committer".into())
            .spawn(move || {
                // A panic is a bug: what was committed is no longer known,
                // so the engine stops, as after a failed commit.
                let outcome =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || committer.run()));
                if outcome.is_err() {
                    stopped.store(true, Ordering::Relaxed);
                    tracing::error!("the committer panicked: the engine stops taking requests");
                }
            })
            .expect("spawn committer thread");
        let engine = Engine(Arc::new(Inner {
            shards: senders.into(),
            partitions: config.partitions,
            poisoned,
            queue_depth,
            store: parts.store,
            clock: parts.clock,
            catalog: parts.catalog,
            keys,
            render: parts.render,
            request_timeout: config.request_timeout,
            pacers: std::array::from_fn(|class| {
                if class == PORTAL_ACTIONS {
                    crate::pacer::Pacer::per_minute(
                        config.portal_actions_per_minute,
                        config.portal_actions_burst,
                    )
                } else {
                    crate::pacer::Pacer::new(config.list_reads_per_second, config.list_reads_burst)
                }
            }),
            started: std::time::Instant::now(),
            events_ready,
        }));
        engine.start_janitor(
            config.idempotency_purge_interval,
            config.event_retention_seconds,
        );
        engine.start_learning();
        engine
    }

    /// Learns, in the background, the idempotency keys the store held when
    /// this process started (a page at a time; 16 bytes each in memory).
    /// Until it is done, every key not known is looked up in the store, so
    /// nothing is answered wrong meanwhile, only a little slower.
    fn start_learning(&self) {
        const PAGE: usize = 10_000;
        let engine = Arc::downgrade(&self.0);
        let spawned = std::thread::Builder::new()
            .name("purser-keys".into())
            .spawn(move || {
                let started = std::time::Instant::now();
                let (mut after, mut learnt) = (0, 0usize);
                loop {
                    let Some(inner) = engine.upgrade() else {
                        return;
                    };
                    if inner.poisoned.load(Ordering::Relaxed) {
                        return;
                    }
                    match inner.store.idempotency_keys(after, PAGE) {
                        Ok(keys) => {
                            let damaged = inner.keys.learn(&keys, inner.clock.now());
                            if damaged > 0 {
                                tracing::error!(damaged, "idempotency records do not match their checksums: their keys are refused; run `purser verify`, restore a backup");
                            }
                            learnt += keys.len();
                            match keys.last() {
                                Some(last) if keys.len() == PAGE => after = last.id,
                                _ => {
                                    inner.keys.set_complete(true);
                                    tracing::info!(
                                        keys = learnt,
                                        elapsed_ms = started.elapsed().as_millis() as u64,
                                        "idempotency keys learnt from the store"
                                    );
                                    return;
                                }
                            }
                        }
                        Err(error) => {
                            tracing::warn!(%error, "learning the stored idempotency keys failed; retrying (keys not known meanwhile are looked up in the store)");
                            drop(inner);
                            std::thread::sleep(Duration::from_secs(5));
                        }
                    }
                }
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, "no thread to learn the stored idempotency keys: every new key is looked up in the store");
        }
    }

    /// Purges expired idempotency records while serving, every `interval`:
    /// from the store (in small chunks, so commits wait at most one chunk)
    /// and from the key table's memory. It holds the engine only weakly: a
    /// dropped engine (and its store) is never kept alive by it.
    fn start_janitor(&self, interval: Duration, event_retention: i64) {
        let engine = Arc::downgrade(&self.0);
        let spawned = std::thread::Builder::new()
            .name("purser-janitor".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(interval);
                    let Some(inner) = engine.upgrade() else {
                        return;
                    };
                    if inner.poisoned.load(Ordering::Relaxed) || inner.store.is_fenced() {
                        return;
                    }
                    let now = inner.clock.now();
                    inner.keys.purge(now);
                    match inner.store.purge_idempotency(now) {
                        Ok(0) => {}
                        Ok(purged) => tracing::debug!(purged, "expired idempotency records purged"),
                        Err(error) => {
                            tracing::warn!(%error, "purging expired idempotency records failed");
                        }
                    }
                    let before = now
                        .checked_add_seconds(-event_retention)
                        .unwrap_or(Timestamp::from_micros(0));
                    match inner.store.purge_events(before) {
                        Ok(0) => {}
                        Ok(purged) => tracing::debug!(purged, "events past retention purged"),
                        Err(error) => tracing::warn!(%error, "purging old events failed"),
                    }
                }
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, "no janitor thread: expired idempotency records stay in the store");
        }
    }

    pub fn partitions(&self) -> u16 {
        self.0.partitions
    }

    pub fn shard_count(&self) -> usize {
        self.0.shards.len()
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.0.store
    }

    pub fn clock(&self) -> &Clock {
        &self.0.clock
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.0.catalog
    }

    pub fn is_poisoned(&self) -> bool {
        self.0.poisoned.load(Ordering::Relaxed)
    }

    /// Idempotency keys remembered (by their hash), and those of them whose
    /// answer is in memory.
    pub fn idempotency_keys(&self) -> (usize, usize) {
        self.0.keys.counts()
    }

    pub fn queue_depth(&self) -> u64 {
        self.0.queue_depth.load(Ordering::Relaxed)
    }

    /// The shard that owns an account id.
    fn shard_of_id(&self, id: &AccountId) -> usize {
        usize::from(partition_of(id.as_str(), self.0.partitions)) % self.shard_count()
    }

    /// The shard that owns an account handle (from an object id).
    fn shard_of_handle(&self, handle: AccountHandle) -> usize {
        usize::from(handle.partition()) % self.shard_count()
    }

    fn shard_of_command(&self, command: &Command) -> usize {
        match command.target() {
            Target::New(id) | Target::Id(id) => self.shard_of_id(id),
            Target::Handle(handle) => self.shard_of_handle(handle),
        }
    }

    /// Queues work on a shard; the answer arrives once its batch is durable.
    fn submit(&self, shard: usize, work: Work) -> Result<oneshot::Receiver<Answer>, Busy> {
        if self.is_poisoned() {
            return Err(Busy::Unavailable);
        }
        let (reply, answer) = oneshot::channel();
        match self.0.shards[shard].try_send(Job { work, reply }) {
            Ok(()) => {
                self.0.queue_depth.fetch_add(1, Ordering::Relaxed);
                Ok(answer)
            }
            Err(TrySendError::Full(_)) => Err(Busy::QueueFull),
            Err(TrySendError::Disconnected(_)) => Err(Busy::Unavailable),
        }
    }

    /// Waits (until `deadline`) for a shard's answer; `None` if none came in
    /// time.
    async fn wait(
        &self,
        receiver: oneshot::Receiver<Answer>,
        deadline: tokio::time::Instant,
    ) -> Option<Answer> {
        match tokio::time::timeout_at(deadline, receiver).await {
            Ok(Ok(answer)) => Some(answer),
            // The engine stopped (a panic) with the job taken but not
            // answered: it may have been committed.
            Ok(Err(_)) => Some(Answer::Unknown),
            Err(_) => None,
        }
    }

    /// When a request that starts now stops waiting.
    pub fn deadline(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + self.0.request_timeout
    }

    async fn ask(&self, shard: usize, work: Work) -> Result<Answer, Busy> {
        let receiver = self.submit(shard, work)?;
        match self.wait(receiver, self.deadline()).await {
            None | Some(Answer::Unavailable | Answer::Unknown) => Err(Busy::Unavailable),
            Some(answer) => Ok(answer),
        }
    }

    // ----- commands and their keys -----

    /// Claims an idempotency key: `Ok` for a key not seen before (claimed
    /// for the caller, who ends it with [`Engine::finish`] or
    /// [`Engine::release`]), `Err` with what to answer instead (a replay,
    /// or the refusal of a key in use or reused).
    pub async fn claim(&self, key: &IdempotencyKey) -> Result<(), Submitted> {
        self.claim_all(&[Some(key)])
            .await
            .pop()
            .expect("one answer a key")
    }

    /// Claims keys at once (a batch's): the ones that need the store are
    /// looked up together, one after another in one task off the async
    /// threads. A key another request is looking up in the store is claimed
    /// again once the store has answered it (a replay then, or a request in
    /// flight), after this call's own lookups are done, so two calls never
    /// wait for each other.
    async fn claim_all(&self, keys: &[Option<&IdempotencyKey>]) -> Vec<Result<(), Submitted>> {
        let deadline = self.deadline();
        // Keys this call claimed for its requests: let go if it is dropped
        // before it returns (a client that went away while it waited).
        let mut held = Lookups {
            keys: self.0.keys.clone(),
            pending: Vec::new(),
        };
        let mut claims = self.claim_pass(keys, &mut held.pending).await;
        for (index, claim) in claims.iter_mut().enumerate() {
            while claim.is_none() {
                if tokio::time::Instant::now() >= deadline {
                    *claim = Some(Err(ended(Outcome::Busy(Busy::Unavailable))));
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
                *claim = self
                    .claim_pass(&keys[index..=index], &mut held.pending)
                    .await
                    .pop()
                    .flatten();
            }
        }
        held.pending.clear();
        claims
            .into_iter()
            .map(|claim| claim.expect("every key claimed"))
            .collect()
    }

    /// One pass of [`Engine::claim_all`]: `None` for a key another request
    /// is looking up in the store (one this pass looks up, a batch's item
    /// twice, is in use).
    async fn claim_pass(
        &self,
        keys: &[Option<&IdempotencyKey>],
        held: &mut Vec<(usize, KeyHash)>,
    ) -> Vec<Option<Result<(), Submitted>>> {
        let mut claims: Vec<Option<Result<(), Submitted>>> = Vec::with_capacity(keys.len());
        let mut pending = Vec::new();
        for (index, key) in keys.iter().enumerate() {
            let Some(key) = key else {
                claims.push(Some(Ok(())));
                continue;
            };
            let claimed = self
                .0
                .keys
                .claim(&key.key, key.fingerprint, self.0.clock.now());
            claims.push(match claimed {
                Claimed::New => {
                    held.push((index, key.key));
                    Some(Ok(()))
                }
                Claimed::Replay(stored) => Some(Err(replay(stored))),
                Claimed::Mismatch => Some(Err(ended(Outcome::KeyReused))),
                Claimed::InFlight => Some(Err(ended(Outcome::KeyInUse))),
                Claimed::LookingUp if pending.iter().any(|(_, p)| *p == key.key) => {
                    Some(Err(ended(Outcome::KeyInUse)))
                }
                Claimed::LookingUp => None,
                Claimed::Lookup => {
                    pending.push((index, key.key));
                    Some(Ok(()))
                }
            });
        }
        if pending.is_empty() {
            return claims;
        }
        let mut lookups = Lookups {
            keys: self.0.keys.clone(),
            pending,
        };
        // Held in flight while the store is asked; let go if this future
        // is dropped (the client went away) or the store does not answer.
        let wanted: Vec<KeyHash> = lookups.pending.iter().map(|(_, key)| *key).collect();
        let store = self.0.store.clone();
        let asked = tokio::task::spawn_blocking(move || {
            wanted
                .iter()
                .map(|key| store.idempotency_record(key))
                .collect::<Vec<_>>()
        });
        let answers = match tokio::time::timeout_at(self.deadline(), asked).await {
            Ok(Ok(answers)) => answers,
            Ok(Err(_)) | Err(_) => {
                for (index, _) in &lookups.pending {
                    claims[*index] = Some(Err(ended(Outcome::Busy(Busy::Unavailable))));
                }
                return claims; // `lookups` lets the keys go
            }
        };
        let now = self.0.clock.now();
        for ((index, key), answer) in std::mem::take(&mut lookups.pending)
            .into_iter()
            .zip(answers)
        {
            claims[index] = Some(match answer {
                Ok(record) => match self.0.keys.found(&key, record, now) {
                    Found::New => {
                        held.push((index, key));
                        Ok(())
                    }
                    Found::Replay(stored) => Err(replay(stored)),
                    Found::Mismatch => Err(ended(Outcome::KeyReused)),
                },
                Err(error) => {
                    self.0.keys.abandon(&key);
                    Err(ended(match error {
                        StoreError::Damaged(message) => {
                            tracing::error!(%message, "looking up an idempotency key");
                            Outcome::RecallFailed(message)
                        }
                        error => {
                            tracing::warn!(%error, "looking up an idempotency key");
                            Outcome::Busy(Busy::Unavailable)
                        }
                    }))
                }
            });
        }
        claims
    }

    /// Ends a claimed key with its request's answer: remembered if accepted
    /// (2xx), released otherwise (refusals are judged afresh on retry). The
    /// answer is made durable first (with the next group commit of the
    /// key's shard), as a command's is: the key may leave memory, and its
    /// answer must then be in the store.
    pub async fn finish(&self, key: &IdempotencyKey, status: u16, body: &[u8]) {
        if !(200..300).contains(&status) {
            self.0.keys.abandon(&key.key);
            return;
        }
        let shard = usize::from(u16::from_le_bytes([key.key[0], key.key[1]])) % self.shard_count();
        // Once queued, the key belongs to the committer (remembered once
        // durable), whatever becomes of this wait. A full queue is waited
        // out: the work is done, its answer must be kept.
        let deadline = self.deadline();
        let receiver = loop {
            let work = Work::Remember {
                key: key.clone(),
                status,
                body: body.to_vec(),
            };
            match self.submit(shard, work) {
                Ok(receiver) => break receiver,
                Err(Busy::QueueFull) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(_) => {
                    tracing::warn!("an idempotency record could not be queued: its key is let go");
                    self.0.keys.abandon(&key.key);
                    return;
                }
            }
        };
        let _ = self.wait(receiver, deadline).await;
    }

    /// Changes after every commit that stored events: what a webhook
    /// dispatcher waits on.
    pub fn events_committed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.0.events_ready.subscribe()
    }

    /// Releases a claimed key whose work never finished: a retry runs afresh.
    pub fn release(&self, key: &KeyHash) {
        self.0.keys.abandon(key);
    }

    /// Claims the key (if any) and queues the command; does not wait for
    /// the command. From here the key belongs to the engine: it ends with
    /// the command's outcome (see the committer), whatever becomes of the
    /// request.
    pub async fn start(
        &self,
        command: Command,
        key: Option<IdempotencyKey>,
        actor: Actor,
    ) -> Submitted {
        self.start_all(vec![(command, key)], actor)
            .await
            .pop()
            .expect("one answer a command")
    }

    /// [`Engine::start`] for several commands, queued in order (a batch's):
    /// their keys are claimed together first.
    pub async fn start_all(
        &self,
        commands: Vec<(Command, Option<IdempotencyKey>)>,
        actor: Actor,
    ) -> Vec<Submitted> {
        if self.is_poisoned() {
            return commands
                .iter()
                .map(|_| ended(Outcome::Busy(Busy::Unavailable)))
                .collect();
        }
        let keys: Vec<Option<&IdempotencyKey>> =
            commands.iter().map(|(_, key)| key.as_ref()).collect();
        let claims = self.claim_all(&keys).await;
        let actor = Arc::new(actor);
        // No await from here: every claimed key is handed to a shard (or
        // let go) before this returns.
        let mut submitted = Vec::with_capacity(commands.len());
        for ((command, key), claim) in commands.into_iter().zip(claims) {
            if let Err(answered) = claim {
                submitted.push(answered);
                continue;
            }
            let name = key.as_ref().map(|key| key.key);
            let shard = self.shard_of_command(&command);
            submitted.push(
                match self.submit(
                    shard,
                    Work::Command {
                        command,
                        claim: key,
                        actor: actor.clone(),
                    },
                ) {
                    Ok(receiver) => Submitted(Pending::Waiting { receiver }),
                    Err(busy) => {
                        // Never queued: the command will not run.
                        if let Some(name) = name {
                            self.0.keys.abandon(&name);
                        }
                        ended(Outcome::Busy(busy))
                    }
                },
            );
        }
        submitted
    }

    /// Waits (at most the request timeout) for a queued command's answer,
    /// sent once durable; its key was ended before it was sent.
    pub async fn settle(&self, submitted: Submitted) -> Outcome {
        self.settle_by(submitted, self.deadline()).await
    }

    /// [`Engine::settle`] with a deadline of the caller's (a batch of
    /// commands shares one).
    pub async fn settle_by(&self, submitted: Submitted, deadline: tokio::time::Instant) -> Outcome {
        let receiver = match submitted.0 {
            Pending::Ended(outcome) => return outcome,
            Pending::Replay { status, remembered } => {
                return self.recall(status, remembered).await;
            }
            Pending::Waiting { receiver } => receiver,
        };
        match self.wait(receiver, deadline).await {
            Some(Answer::Rendered(Rendered { status, body, .. })) => {
                Outcome::Answered { status, body }
            }
            // Not run: the engine had stopped.
            Some(Answer::Unavailable) => Outcome::Busy(Busy::Unavailable),
            // Run, and maybe stored: only a retry (after recovery) can tell.
            Some(_) | None => Outcome::Pending,
        }
    }

    /// Runs a command with an optional idempotency key.
    pub async fn run(
        &self,
        command: Command,
        key: Option<IdempotencyKey>,
        actor: Actor,
    ) -> Outcome {
        let submitted = self.start(command, key, actor).await;
        self.settle(submitted).await
    }

    /// A remembered answer as the client first got it.
    async fn recall(&self, status: u16, remembered: Arc<[u8]>) -> Outcome {
        let render = self.0.render.clone();
        let recalled = if render.recall_reads_store(&remembered) {
            let store = self.0.store.clone();
            tokio::task::spawn_blocking(move || render.recall(&remembered, &*store))
                .await
                .unwrap_or_else(|_| Err("a store query panicked".into()))
        } else {
            render.recall(&remembered, &*self.0.store)
        };
        match recalled {
            Ok(body) => Outcome::Answered { status, body },
            Err(message) => {
                tracing::error!(%message, "replaying an idempotency key");
                Outcome::RecallFailed(message)
            }
        }
    }

    // ----- reads -----

    /// A read, answered from its shard's memory once everything before it
    /// is durable.
    pub async fn read(&self, read: Read) -> Result<Rendered, Busy> {
        let shard = match read.account() {
            crate::AccountRef::Id(id) => self.shard_of_id(id),
            crate::AccountRef::Handle(handle) => self.shard_of_handle(handle),
        };
        match self.ask(shard, Work::Read(read)).await? {
            Answer::Rendered(rendered) => Ok(rendered),
            _ => Err(Busy::Unavailable),
        }
    }

    /// Waits for the turn of an API read of a page of `key`'s lists (an
    /// account id; or a name for a list of all accounts, events… and the
    /// API key): at once within the burst, then at the configured pace.
    /// Refused ([`Busy::Paced`]) when the turn is further away than half
    /// the request timeout.
    pub async fn pace_list(&self, key: &str) -> Result<(), Busy> {
        self.pace_turns(0, key, 1, self.pace_deadline()).await
    }

    /// As [`Engine::pace_list`], for a portal page of `account`.
    pub async fn pace_portal(&self, account: &str) -> Result<(), Busy> {
        self.pace_turns(1, account, 1, self.pace_deadline()).await
    }

    /// Waits for the turn of a portal action (a form post) of `account`:
    /// each is a write, and may call the payment provider, whose rate
    /// limits every customer shares; refused ([`Busy::Paced`]) when the
    /// turn is further away than half the request timeout.
    pub async fn pace_portal_action(&self, account: &str) -> Result<(), Busy> {
        self.pace_turns(PORTAL_ACTIONS, account, 1, self.pace_deadline())
            .await
    }

    /// Waits for `cost` turns of `account`'s export bucket, however far
    /// away: a running CSV export's next step (it holds one of a bounded
    /// number of export slots, so its waiting is bounded too).
    pub async fn pace_export(&self, account: &str, cost: u32) {
        let _ = self.pace_turns(2, account, cost, i64::MAX / 4).await;
    }

    fn pace_deadline(&self) -> i64 {
        i64::try_from((self.0.request_timeout / 2).as_micros()).unwrap_or(0)
    }

    async fn pace_turns(
        &self,
        class: usize,
        key: &str,
        cost: u32,
        deadline: i64,
    ) -> Result<(), Busy> {
        let now = i64::try_from(self.0.started.elapsed().as_micros()).unwrap_or(i64::MAX / 4);
        match self.0.pacers[class].turns(&key, now, deadline, cost) {
            crate::pacer::Turn::After(0) => Ok(()),
            crate::pacer::Turn::After(wait) => {
                tokio::time::sleep(Duration::from_micros(wait.unsigned_abs())).await;
                Ok(())
            }
            crate::pacer::Turn::Refused => Err(Busy::Paced),
        }
    }

    /// The handle and creation time of an account id; `None` if there is no
    /// such account.
    pub async fn handle(&self, id: &AccountId) -> Result<Option<(AccountHandle, Timestamp)>, Busy> {
        let shard = self.shard_of_id(id);
        match self.ask(shard, Work::Handle(id.clone())).await? {
            Answer::Handle(found) => Ok(found),
            _ => Err(Busy::Unavailable),
        }
    }

    /// Up to `limit` accounts created before the cursor, newest first.
    pub async fn accounts(
        &self,
        before: Option<(Timestamp, AccountId)>,
        limit: usize,
    ) -> Result<AccountsPage, Busy> {
        let mut page = Vec::new();
        for shard in 0..self.shard_count() {
            let work = Work::Accounts {
                before: before.clone(),
                limit: limit + 1,
            };
            if let Answer::Accounts(accounts) = self.ask(shard, work).await? {
                page.extend(accounts);
            }
        }
        page.sort_unstable_by(|a, b| (&b.0, &b.1).cmp(&(&a.0, &a.1)));
        let has_more = page.len() > limit;
        page.truncate(limit);
        Ok(AccountsPage {
            accounts: page.into_iter().map(|(_, _, body)| body).collect(),
            has_more,
        })
    }

    /// Runs a store query off the async threads.
    pub async fn query<T: Send + 'static>(
        &self,
        work: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, QueryError> {
        let store = self.0.store.clone();
        tokio::task::spawn_blocking(move || work(&*store))
            .await
            .map_err(|_| QueryError::Panicked)?
            .map_err(QueryError::Store)
    }

    // ----- time -----

    /// Moves the test clock forward, keeps its time in the store, and
    /// returns once every shard applied (and made durable) what fell due.
    pub async fn advance_test_clock(&self, seconds: i64) -> Result<Timestamp, AdvanceError> {
        let now = self.0.clock.advance(seconds).ok_or(AdvanceError::TooFar)?;
        let text = now.micros().to_string();
        self.query(move |store| store.set_setting(TEST_CLOCK_SETTING, &text))
            .await
            .map_err(AdvanceError::Query)?;
        let mut receivers = Vec::new();
        for shard in 0..self.shard_count() {
            receivers.push(self.submit(shard, Work::Tick).map_err(AdvanceError::Busy)?);
        }
        for receiver in receivers {
            match receiver.await {
                Ok(Answer::Ticked) => {}
                _ => return Err(AdvanceError::Busy(Busy::Unavailable)),
            }
        }
        Ok(now)
    }
}
