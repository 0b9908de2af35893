//! Idempotency keys: one key space per server, in striped tables so that
//! requests with different keys do not contend. The core's pure
//! `IdempotencyTable` decides; records become durable with the commit batch
//! that carries their answer (see the shard and the committer).

use std::sync::{Arc, Mutex};

use purser_core::{Claim, Fingerprint, IdempotencyTable, Timestamp};
use purser_store::IdempotencyRecord;

const STRIPES: usize = 64;

/// A request's idempotency key and the fingerprint of what it asks for
/// (method, path, body): a key reused for another request is refused.
#[derive(Clone, Debug)]
pub struct IdempotencyKey {
    pub key: String,
    pub fingerprint: Fingerprint,
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
}

#[derive(Debug)]
pub(crate) struct KeyTable {
    stripes: Vec<Mutex<IdempotencyTable<Stored>>>,
}

fn stripe(key: &str) -> usize {
    use std::hash::BuildHasher;
    // Any well-mixed hash will do: stripes only spread the lock.
    (foldhash::fast::FixedState::with_seed(0x7075_7273_6572).hash_one(key) as usize) % STRIPES
}

impl KeyTable {
    pub fn new(retention_seconds: i64) -> KeyTable {
        KeyTable {
            stripes: (0..STRIPES)
                .map(|_| Mutex::new(IdempotencyTable::new(retention_seconds)))
                .collect(),
        }
    }

    fn table(&self, key: &str) -> std::sync::MutexGuard<'_, IdempotencyTable<Stored>> {
        self.stripes[stripe(key)]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    pub fn claim(&self, key: &str, fingerprint: Fingerprint, now: Timestamp) -> Claimed {
        match self.table(key).claim(key, fingerprint, now) {
            Claim::New => Claimed::New,
            Claim::Replay(stored) => Claimed::Replay(stored.clone()),
            Claim::Mismatch => Claimed::Mismatch,
            Claim::InFlight => Claimed::InFlight,
        }
    }

    pub fn finish(&self, key: &str, stored: Stored, now: Timestamp) {
        self.table(key).finish(key, stored, now);
    }

    /// Forgets every key whose retention has passed (claims do this for
    /// their own stripe; this reaches the stripes nobody claims in).
    pub fn purge(&self, now: Timestamp) {
        for stripe in &self.stripes {
            stripe.lock().unwrap_or_else(|p| p.into_inner()).purge(now);
        }
    }

    pub fn abandon(&self, key: &str) {
        self.table(key).abandon(key);
    }

    pub fn restore(&self, records: Vec<IdempotencyRecord>) {
        for record in records {
            let stored = Stored {
                status: record.status,
                body: record.body.into(),
            };
            self.table(&record.key).restore(
                &record.key,
                record.fingerprint,
                stored,
                record.expires_at,
            );
        }
    }
}
