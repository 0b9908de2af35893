//! Idempotency keys: one key space per server, in striped tables so that
//! requests with different keys do not contend. The core's pure
//! `IdempotencyTable` decides; records become durable with the commit batch
//! that carries their answer (see the shard and the committer).
//!
//! Memory is bounded by `idempotency.cache_keys`: beyond the most recent
//! keys (kept whole), a key costs 16 bytes of hash and expiry, and its
//! answer is read back from the store when the key comes again. Keys the
//! store held before this process started are learnt in the background
//! ([`KeyTable::learn`]); until then every key not known is looked up.

use std::sync::{Arc, Mutex};

use purser_core::{Claim, Fingerprint, Found, IdempotencyTable, KeyHash, Timestamp};
use purser_store::{IdempotencyRecord, StoredKey};

const STRIPES: usize = 64;

/// The largest answer kept in memory (a debit's memo is ~35 bytes, its
/// JSON ~750; a batch's record can be far larger).
const HOT_ANSWER_BYTES: usize = 4_096;

/// A request's idempotency key (by its hash: the text is not kept) and the
/// fingerprint of what it asks for (method, path, body): a key reused for
/// another request is refused.
#[derive(Clone, Debug)]
pub struct IdempotencyKey {
    pub key: KeyHash,
    pub fingerprint: Fingerprint,
}

impl IdempotencyKey {
    /// The key sent by a client, for a request of this fingerprint.
    pub fn new(key: &str, fingerprint: Fingerprint) -> IdempotencyKey {
        IdempotencyKey {
            key: purser_store::key_hash(key),
            fingerprint,
        }
    }
}

/// A remembered answer.
#[derive(Clone, Debug)]
pub(crate) struct Stored {
    pub status: u16,
    pub body: Arc<[u8]>,
}

#[derive(Debug)]
pub(crate) enum Claimed {
    New,
    Replay(Stored),
    Mismatch,
    InFlight,
    /// Held in flight until [`KeyTable::found`] says what the store has.
    Lookup,
    /// Another request with the key is asking the store: claim again soon.
    LookingUp,
}

#[derive(Debug)]
pub(crate) struct KeyTable {
    stripes: Vec<Mutex<IdempotencyTable<Stored>>>,
}

fn stripe(key: &KeyHash) -> usize {
    // The hash is uniform already; bytes the cold map does not use.
    usize::from(u16::from_le_bytes([key[8], key[9]])) % STRIPES
}

impl KeyTable {
    /// `cache_keys`: how many finished keys keep their answer in memory
    /// (spread over the stripes).
    pub fn new(retention_seconds: i64, cache_keys: usize) -> KeyTable {
        let per_stripe = cache_keys.div_ceil(STRIPES).max(1);
        KeyTable {
            stripes: (0..STRIPES)
                .map(|_| Mutex::new(IdempotencyTable::new(retention_seconds, per_stripe)))
                .collect(),
        }
    }

    fn table(&self, key: &KeyHash) -> std::sync::MutexGuard<'_, IdempotencyTable<Stored>> {
        self.stripes[stripe(key)]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn each(&self, mut work: impl FnMut(&mut IdempotencyTable<Stored>)) {
        for stripe in &self.stripes {
            work(&mut stripe.lock().unwrap_or_else(|p| p.into_inner()));
        }
    }

    pub fn claim(&self, key: &KeyHash, fingerprint: Fingerprint, now: Timestamp) -> Claimed {
        match self.table(key).claim(key, fingerprint, now) {
            Claim::New => Claimed::New,
            Claim::Replay(stored) => Claimed::Replay(stored.clone()),
            Claim::Mismatch => Claimed::Mismatch,
            Claim::InFlight => Claimed::InFlight,
            Claim::Lookup => Claimed::Lookup,
            Claim::LookingUp => Claimed::LookingUp,
        }
    }

    /// Ends a [`Claimed::Lookup`] with the key's record in the store.
    pub fn found(
        &self,
        key: &KeyHash,
        record: Option<IdempotencyRecord>,
        now: Timestamp,
    ) -> Found<Stored> {
        let large = record
            .as_ref()
            .filter(|record| record.body.len() > HOT_ANSWER_BYTES)
            .map(|record| record.expires_at);
        let stored = record.map(|record| {
            let stored = Stored {
                status: record.status,
                body: record.body.into(),
            };
            (record.fingerprint, stored, record.expires_at)
        });
        let mut table = self.table(key);
        let found = table.found(key, stored, now);
        // A large answer found is answered, not cached.
        if let (Some(expires_at), Found::Replay(_) | Found::Mismatch) = (large, &found) {
            table.finish_cold(key, expires_at);
        }
        found
    }

    /// Ends a key with its answer, kept in memory if small (a large one, a
    /// batch's say, is read back from the store: the cache holds a number
    /// of answers, so their size must be bounded too).
    pub fn finish(&self, key: &KeyHash, stored: Stored, now: Timestamp) {
        if stored.body.len() > HOT_ANSWER_BYTES {
            let mut table = self.table(key);
            let expires_at = table.expiry_from(now);
            table.finish_cold(key, expires_at);
        } else {
            self.table(key).finish(key, stored, now);
        }
    }

    /// Forgets every key whose retention has passed (claims do this for
    /// the hot keys of their own stripe; this reaches the rest).
    pub fn purge(&self, now: Timestamp) {
        self.each(|table| table.purge(now));
    }

    pub fn abandon(&self, key: &KeyHash) {
        self.table(key).abandon(key);
    }

    /// Learns keys the store held before this process started; returns how
    /// many records failed their checksum. Such a record's key is learnt as
    /// never expiring (its expiry is not to be believed): a claim of it
    /// looks it up, and the lookup refuses it.
    pub fn learn(&self, keys: &[StoredKey], now: Timestamp) -> usize {
        let mut damaged = 0;
        for stored in keys {
            if !stored.sound {
                damaged += 1;
                self.table(&stored.key).learn(&stored.key, Timestamp::NEVER);
            } else if stored.expires_at > now {
                self.table(&stored.key)
                    .learn(&stored.key, stored.expires_at);
            }
        }
        damaged
    }

    /// Whether every key the store holds is known here (see the module).
    pub fn set_complete(&self, complete: bool) {
        self.each(|table| table.set_complete(complete));
    }

    /// Keys known (hot and cold), and those of them whose answer is in
    /// memory.
    pub fn counts(&self) -> (usize, usize) {
        let (mut known, mut hot) = (0, 0);
        self.each(|table| {
            known += table.len();
            hot += table.hot_len();
        });
        (known, hot)
    }
}
