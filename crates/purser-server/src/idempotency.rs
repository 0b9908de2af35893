//! The edge's idempotency keys: one key space per server, in striped tables
//! so that requests with different keys do not contend. The core's pure
//! `IdempotencyTable` decides; records become durable with the commit batch
//! that carries their answer (see the engine).

use std::sync::{Arc, Mutex};

use purser_core::{Claim, Fingerprint, IdempotencyTable, Timestamp};
use purser_store::IdempotencyRecord;
use sha2::{Digest, Sha256};

const STRIPES: usize = 64;

/// A remembered answer.
#[derive(Clone, Debug)]
pub struct Stored {
    pub status: u16,
    pub body: Arc<[u8]>,
}

#[derive(Debug)]
pub enum Claimed {
    New,
    Replay(Stored),
    Mismatch,
    InFlight,
}

#[derive(Debug)]
pub struct EdgeIdempotency {
    stripes: Vec<Mutex<IdempotencyTable<Stored>>>,
}

fn stripe(key: &str) -> usize {
    use std::hash::BuildHasher;
    // Any well-mixed hash will do: stripes only spread the lock.
    (foldhash::fast::FixedState::with_seed(0x7075_7273_6572).hash_one(key) as usize) % STRIPES
}

/// The fingerprint of a request: method, path and the body as a JSON value
/// (keys sorted, so the same object written differently matches).
pub fn fingerprint(method: &str, path: &str, body: &[u8]) -> Fingerprint {
    let canonical = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}".to_vec()
    } else {
        serde_json::from_slice::<serde_json::Value>(body)
            .map(|value| serde_json::to_vec(&value).unwrap_or_default())
            .unwrap_or_else(|_| body.to_vec())
    };
    fingerprint_canonical(method, path, &canonical)
}

/// [`fingerprint`] of a body already in canonical form (keys sorted, as
/// `serde_json` writes a parsed object).
pub fn fingerprint_canonical(method: &str, path: &str, canonical: &[u8]) -> Fingerprint {
    let mut hasher = Sha256::new();
    hasher.update(method.as_bytes());
    hasher.update(b"\n");
    hasher.update(path.as_bytes());
    hasher.update(b"\n");
    hasher.update(canonical);
    hasher.finalize().into()
}

impl EdgeIdempotency {
    pub fn new(retention_seconds: i64) -> EdgeIdempotency {
        EdgeIdempotency {
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
