//! purser-store: what purser needs from durable storage, as a trait.
//!
//! Owns the [`Store`] trait, its error enum, the binary journal [`codec`]
//! every backend writes, the usage rows reports are computed from, and the
//! [`conformance`] suite every backend runs. It must not know any backend:
//! no SQL, no files.
//!
//! The journal is the truth: a store keeps the entries (append-only, in
//! commit order), the idempotency records written with them, API keys and a
//! few settings, and indexes for history queries. Balances are never read
//! from a store; they are rebuilt by replaying the journal through the core.

pub mod codec;
pub mod conformance;
pub mod journal;
mod recovery;
mod usage;

use purser_core::{
    AccountHandle, CreditSum, Entry, EventId, EventType, Fingerprint, KeyHash, ObjectId, Settled,
    Timestamp,
};

pub use codec::{
    CodecError, decode_entry, decode_settled, decode_snapshot, encode_entry, encode_settled,
    encode_snapshot,
};
pub use journal::{
    ChainHash, DAMAGED_SUM, Damage, DamageReport, GENESIS, JournalCheck, Lost, StoredRow, Witness,
    chain_hash, entry_sum, event_sum, key_hash, legacy_record_sum, record_sum,
    record_sum_with_text, seal, settled_sum, snapshot_sum,
};
pub use recovery::{RecoveryError, recover};
pub use usage::{KIND_KEYS, Usage, UsageTotals, day_key, kind_index, usage_of};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend failed (IO, database error). Nothing of the operation may be assumed done.
    #[error("store backend: {0}")]
    Backend(String),
    /// Stored bytes could not be decoded.
    #[error("corrupt record at account {account:?} seq {seq}: {error}")]
    Corrupt {
        account: AccountHandle,
        seq: u64,
        error: CodecError,
    },
    /// The data was written by a newer purser.
    #[error("schema version {found} is newer than this purser ({supported})")]
    SchemaTooNew { found: i64, supported: i64 },
    /// A unique key already exists (an API key id).
    #[error("already exists")]
    Duplicate,
    /// Another process holds the writer lease of this database.
    #[error("another purser holds the writer lease")]
    LeaseHeld,
    /// This process lost its writer lease: it must never commit again.
    #[error("the writer lease was lost (fenced): another purser may be the writer now")]
    Fenced,
    /// Stored data failed a check (a checksum, a position): it is not served.
    #[error("damaged store: {0}")]
    Damaged(String),
    /// The store was opened read-only (`purser verify`).
    #[error("the store is open read-only")]
    ReadOnly,
}

/// A remembered answer to an idempotent request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyRecord {
    /// The key's hash ([`KeyHash`]): the key's text is not stored.
    pub key: KeyHash,
    pub fingerprint: Fingerprint,
    pub status: u16,
    pub body: Vec<u8>,
    /// A whole second: stores keep the expiry in seconds
    /// ([`IdempotencyRecord::expires_seconds`]).
    pub expires_at: Timestamp,
}

impl IdempotencyRecord {
    /// A record expiring at `expires_at` rounded up to the second (kept a
    /// fraction of a second longer, never shorter).
    pub fn new(
        key: KeyHash,
        fingerprint: Fingerprint,
        status: u16,
        body: Vec<u8>,
        expires_at: Timestamp,
    ) -> IdempotencyRecord {
        IdempotencyRecord {
            key,
            fingerprint,
            status,
            body,
            expires_at: from_seconds(ceil_seconds(expires_at)),
        }
    }

    /// The expiry as stored: whole seconds since the epoch, rounded up.
    pub fn expires_seconds(&self) -> i64 {
        ceil_seconds(self.expires_at)
    }
}

fn ceil_seconds(at: Timestamp) -> i64 {
    let micros = at.micros();
    micros.div_euclid(1_000_000) + i64::from(micros.rem_euclid(1_000_000) != 0)
}

/// The instant of a stored expiry ([`IdempotencyRecord::expires_seconds`]);
/// past the last representable instant, that one ([`Timestamp::NEVER`]).
pub fn from_seconds(seconds: i64) -> Timestamp {
    Timestamp::from_micros(seconds.saturating_mul(1_000_000))
}

/// An idempotency record as stores kept it before its size was cut (SQLite
/// schemas 7 to 9, PostgreSQL 5 to 7): a 16-byte fingerprint and the
/// expiry in microseconds. Only migrations read one, check it and store it anew.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LegacyRecord {
    pub key: KeyHash,
    pub fingerprint: [u8; 16],
    pub status: u16,
    pub body: Vec<u8>,
    pub expires_at: Timestamp,
}

impl LegacyRecord {
    /// A record from its stored columns, if they are well formed and match
    /// its checksum (`sum`, with the position `pos` of its commit).
    pub fn checked(
        key: &[u8],
        fingerprint: &[u8],
        status: i64,
        body: Vec<u8>,
        expires_at: Timestamp,
        pos: u64,
        sum: i64,
    ) -> Option<LegacyRecord> {
        let record = LegacyRecord {
            key: key.try_into().ok()?,
            fingerprint: fingerprint.try_into().ok()?,
            status: u16::try_from(status).ok()?,
            body,
            expires_at,
        };
        (journal::legacy_record_sum(&record, pos) == sum).then_some(record)
    }

    /// The record as it is stored now: the fingerprint's first 8 bytes
    /// (the same digest's, so a retry still matches) and the expiry in
    /// seconds, rounded up.
    pub fn upgraded(&self) -> IdempotencyRecord {
        let mut fingerprint = [0; 8];
        fingerprint.copy_from_slice(&self.fingerprint[..8]);
        IdempotencyRecord::new(
            self.key,
            fingerprint,
            self.status,
            self.body.clone(),
            self.expires_at,
        )
    }
}

/// An idempotency record's key, as [`Store::idempotency_keys`] lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoredKey {
    /// The record's number: the order it was stored in.
    pub id: u64,
    pub key: KeyHash,
    pub expires_at: Timestamp,
    /// Whether the record matches its checksum. One that does not is never
    /// answered from, nor taken for expired: its key is refused.
    pub sound: bool,
}

/// An event, as the outbox keeps it: written in the same commit as the
/// entries it derives from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventRecord {
    pub id: EventId,
    /// The account's id (what lists filter on).
    pub account: String,
    pub kind: EventType,
    pub at: Timestamp,
    /// The event as the API shows it (JSON).
    pub body: Vec<u8>,
}

/// A stored event and its place in the outbox (commit order, from 1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEvent {
    pub position: u64,
    pub event: EventRecord,
}

/// One webhook delivery attempt, as kept for `GET
/// /v1/webhook_endpoints/{id}/deliveries`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryRecord {
    /// The attempt's number (in the order kept; 0 until it is kept).
    pub id: u64,
    pub endpoint: String,
    /// The event's id (`evt_…`).
    pub event: String,
    /// When it was made (wall clock).
    pub at: Timestamp,
    /// The receiver's status code, if it answered.
    pub status: Option<u16>,
    /// What went wrong short of an answer (timeout, connection failed).
    pub error: Option<String>,
    pub duration_ms: u64,
    /// When it is tried again, if it will be.
    pub next_attempt: Option<Timestamp>,
}

/// The most delivery attempts a store keeps per endpoint (older ones go).
pub const KEPT_DELIVERIES: u64 = 1_000;

/// A page of the outbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventQuery {
    pub account: Option<String>,
    pub kind: Option<EventType>,
    /// Newest first, from before this position; `None`: from the newest.
    /// Ignored when `after` is set.
    pub before: Option<u64>,
    /// Oldest first, from after this position (what a dispatcher reads).
    pub after: Option<u64>,
    pub limit: usize,
}

/// What one group commit makes durable, all or nothing.
#[derive(Clone, Copy, Debug)]
pub struct Commit<'a> {
    /// In the order they were applied; per account, gapless by `seq`.
    pub entries: &'a [Entry],
    pub idempotency: &'a [IdempotencyRecord],
    /// The events of those entries, in order.
    pub events: &'a [EventRecord],
    /// Settled objects that left memory with these entries: each a new
    /// version (a version already stored is replaced).
    pub settled: &'a [SettledRecord],
    /// Partition snapshots ([`encode_snapshot`]) that reflect every entry
    /// committed before this commit and possibly some of its own; each
    /// replaces the partition's previous snapshot.
    pub snapshots: &'a [PartitionSnapshot],
}

/// One version of an object that left an account's memory (see
/// `purser_core::Settled`): its state from entry `as_of` of the account on,
/// until a newer version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SettledRecord {
    pub account: AccountHandle,
    pub as_of: u64,
    pub object: Settled,
}

/// The kinds of settled objects, as stores keep them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SettledKind {
    Purchase = 1,
    Grant = 2,
}

impl SettledRecord {
    pub fn seq(&self) -> u64 {
        self.object.seq()
    }

    pub fn kind(&self) -> SettledKind {
        match self.object {
            Settled::Purchase(_) => SettledKind::Purchase,
            Settled::Grant(_) => SettledKind::Grant,
        }
    }

    /// The stored bytes ([`encode_settled`]).
    pub fn body(&self) -> Vec<u8> {
        let mut body = Vec::new();
        encode_settled(&self.object, &mut body);
        body
    }

    /// A stored row read back: its checksum checked, then decoded.
    pub fn checked(
        account: AccountHandle,
        seq: u64,
        as_of: u64,
        body: &[u8],
        sum: i64,
    ) -> Result<SettledRecord, StoreError> {
        if settled_sum(account.raw(), seq, as_of, body) != sum {
            return Err(StoreError::Damaged(format!(
                "settled object {seq} of account {account:?} (version {as_of}) does not match its checksum"
            )));
        }
        let object = decode_settled(body).map_err(|error| StoreError::Corrupt {
            account,
            seq,
            error,
        })?;
        if object.seq() != seq {
            return Err(StoreError::Damaged(format!(
                "settled object {seq} of account {account:?} holds object {}",
                object.seq()
            )));
        }
        Ok(SettledRecord {
            account,
            as_of,
            object,
        })
    }
}

/// The encoded state of one partition's accounts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionSnapshot {
    pub partition: u16,
    pub body: Vec<u8>,
}

/// A stored snapshot and the journal position it is safe to replay after:
/// every entry at or before `position` is reflected in it; entries after it
/// may be too (recovery skips those by their sequence numbers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredSnapshot {
    pub partition: u16,
    pub position: u64,
    pub body: Vec<u8>,
    /// [`snapshot_sum`] as stored: recovery checks it before decoding.
    pub sum: i64,
}

/// An API key as stored: only a hash of the secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub id: String,
    pub secret_hash: [u8; 32],
    pub scopes: Vec<String>,
    pub created_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
}

/// A page of an account's journal, newest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryQuery {
    pub account: AccountHandle,
    /// Only entries of these types (API names); empty: all.
    pub types: Vec<&'static str>,
    /// Entries older than this sequence number.
    pub before_seq: Option<u64>,
    pub limit: usize,
}

/// How usage is grouped in a summary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupBy {
    Task,
    /// UTC calendar day of the charge, `YYYY-MM-DD`.
    Day,
    Member,
    /// Grant kind the credits came from, or `debt`.
    Kind,
    /// Day and kind together, `YYYY-MM-DD/kind`: the stacked daily chart.
    DayKind,
}

/// Usage of one account between two instants (charge time), net of reversals.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageQuery {
    pub account: AccountHandle,
    pub from: Option<Timestamp>,
    pub to: Option<Timestamp>,
    pub group_by: GroupBy,
}

/// One group of a usage summary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageRow {
    /// `None` groups charges without a task (credits given directly) or
    /// without a member.
    pub key: Option<String>,
    pub credits: CreditSum,
    /// Charges in the group.
    pub count: u64,
}

/// Durable storage. One committer calls [`Store::commit`]; readers may call
/// the query methods concurrently from other threads.
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Makes a batch durable (fsync'd) atomically; returns only once it is.
    /// On error nothing of the batch may be assumed stored or not stored
    /// until the store is reopened and read back. An empty batch (reads and
    /// refusals only) still confirms that this writer may commit: a shared
    /// store checks its lease, so nothing is answered from a fenced writer.
    fn commit(&self, commit: Commit<'_>) -> Result<(), StoreError>;

    /// Every entry, in commit order, for recovery and `verify`.
    fn replay(
        &self,
        visit: &mut dyn FnMut(Entry) -> Result<(), StoreError>,
    ) -> Result<u64, StoreError> {
        self.replay_after(0, &mut |_, entry| visit(entry))
    }

    /// Entries after a journal position, in commit order, with their positions.
    fn replay_after(
        &self,
        position: u64,
        visit: &mut dyn FnMut(u64, Entry) -> Result<(), StoreError>,
    ) -> Result<u64, StoreError>;

    /// Every journal row as stored (not decoded), in commit order, for the
    /// checks of [`JournalCheck`]: recovery and `verify` read the whole
    /// journal through it.
    fn scan(
        &self,
        visit: &mut dyn FnMut(StoredRow<'_>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError>;

    /// What this store holds, besides the journal, of how far the journal
    /// once reached (see [`Witness`]): snapshots are checked by recovery
    /// itself; a backend adds the rest (idempotency records' positions, a
    /// derived index).
    fn witnesses(&self) -> Result<Vec<Witness>, StoreError>;

    /// Commit ends whose chain hash the store recorded outside the journal
    /// (the embedded store's `purser.end`), for [`JournalCheck::with_checkpoints`].
    fn checkpoints(&self) -> Result<Vec<(u64, ChainHash)>, StoreError> {
        Ok(Vec::new())
    }

    /// Accepts the loss found in `report` (loss at the journal's end only):
    /// drops what is ahead of `report.end` (rows of a commit cut short,
    /// snapshots, idempotency records, derived indexes, which are rebuilt)
    /// and records the incident, with the report, in the same transaction.
    fn accept_loss(&self, report: &DamageReport, at: Timestamp) -> Result<(), StoreError>;

    /// Checks what the store holds besides the journal, for `verify`: every
    /// idempotency record against its checksum, derived indexes against the
    /// journal, the backend's own integrity check. Each problem goes to
    /// `found`; `progress` is told of rows checked.
    fn check_structures(
        &self,
        found: &mut dyn FnMut(Damage),
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), StoreError>;

    /// Incidents recorded by [`Store::accept_loss`]: when, and the report.
    fn incidents(&self) -> Result<Vec<(Timestamp, String)>, StoreError>;

    /// The latest snapshot of every partition that has one.
    fn snapshots(&self) -> Result<Vec<StoredSnapshot>, StoreError>;

    /// One entry of an account.
    fn entry(&self, account: AccountHandle, seq: u64) -> Result<Option<Entry>, StoreError>;

    /// A page of an account's entries, newest first.
    fn entries(&self, query: &EntryQuery) -> Result<Vec<Entry>, StoreError>;

    /// The newest stored version, at or before `as_of`, of the settled
    /// object `seq` of an account (checked against its checksum).
    fn settled(
        &self,
        account: AccountHandle,
        seq: u64,
        as_of: u64,
    ) -> Result<Option<SettledRecord>, StoreError>;

    /// Settled objects of one kind of an account, the newest version of
    /// each, newest object first, from below `before_seq`.
    fn settled_page(
        &self,
        account: AccountHandle,
        kind: SettledKind,
        before_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<SettledRecord>, StoreError>;

    /// The entry that ended a hold (its capture, release or expiry), if any:
    /// the account's settling entries searched newest first, back to the hold.
    fn hold_end(&self, hold: ObjectId) -> Result<Option<Entry>, StoreError> {
        let mut before_seq = None;
        loop {
            let page = self.entries(&EntryQuery {
                account: hold.account,
                types: vec!["capture", "release", "hold_expired"],
                before_seq,
                limit: 100,
            })?;
            let Some(last) = page.last() else {
                return Ok(None);
            };
            before_seq = Some(last.seq);
            let found = page
                .into_iter()
                .find(|entry| entry.body.ends_hold(hold.seq).is_some());
            if found.is_some() || before_seq.is_some_and(|seq| seq <= hold.seq) {
                return Ok(found);
            }
        }
    }

    /// Usage grouped as asked, net of reversals, ordered by key.
    fn usage(&self, query: &UsageQuery) -> Result<Vec<UsageRow>, StoreError>;

    /// The newest idempotency record of a key (expired or not), checked
    /// against its checksum ([`StoreError::Damaged`] if it fails).
    fn idempotency_record(&self, key: &KeyHash) -> Result<Option<IdempotencyRecord>, StoreError>;

    /// Up to `limit` idempotency records after the one numbered `after` (0:
    /// from the first), in the order they were stored, each checked against
    /// its checksum. The engine learns the keys stored before it started
    /// through this, in the background.
    fn idempotency_keys(&self, after: u64, limit: usize) -> Result<Vec<StoredKey>, StoreError>;

    /// Forgets idempotency records expired at `now`, oldest stored first,
    /// stopping at the first one still remembered (a record stored later
    /// with an earlier expiry, after the retention was shortened, waits for
    /// those before it); returns how many.
    fn purge_idempotency(&self, now: Timestamp) -> Result<u64, StoreError>;

    /// A page of the outbox, each event checked against its checksum
    /// ([`StoreError::Damaged`] if one fails).
    fn events(&self, query: &EventQuery) -> Result<Vec<StoredEvent>, StoreError>;

    /// One event, checked.
    fn event(&self, id: EventId) -> Result<Option<StoredEvent>, StoreError>;

    /// The outbox's last position (0: empty).
    fn last_event(&self) -> Result<u64, StoreError>;

    /// Forgets events made before `before`, oldest stored first, stopping
    /// at the first one that is not (a chunk at a time); returns how many.
    fn purge_events(&self, before: Timestamp) -> Result<u64, StoreError>;

    /// Keeps a delivery attempt; an endpoint's attempts beyond the newest
    /// [`KEPT_DELIVERIES`] are forgotten (now and then, not on every call).
    fn record_delivery(&self, delivery: &DeliveryRecord) -> Result<(), StoreError>;

    /// An endpoint's delivery attempts, newest first, from before the one
    /// numbered `before` (`None`: from the newest).
    fn deliveries(
        &self,
        endpoint: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<DeliveryRecord>, StoreError>;

    fn insert_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError>;
    fn revoke_api_key(&self, id: &str, at: Timestamp) -> Result<bool, StoreError>;
    fn api_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError>;

    /// Small settings (the test clock, the partition count).
    fn setting(&self, name: &str) -> Result<Option<String>, StoreError>;
    fn set_setting(&self, name: &str, value: &str) -> Result<(), StoreError>;

    /// Cheap reachability check for `/readyz`.
    fn ping(&self) -> Result<(), StoreError>;

    /// Gives up this writer's right to commit, at a clean shutdown: a
    /// shared store hands its lease back so a standby takes over at once.
    /// Every later commit fails.
    fn hand_back(&self) {}

    /// Whether this store lost its right to commit (a shared database's
    /// writer lease ran out): its holder must stop serving at once.
    fn is_fenced(&self) -> bool {
        false
    }
}
