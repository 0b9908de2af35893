//! Idempotency keys: the same key with the same request returns the first
//! outcome and changes nothing; the same key with another request is refused.
//!
//! The table is pure: callers pass `now`, a fingerprint of the request (a
//! hash of method, path and body), and the outcome to remember. Only accepted
//! requests are remembered: a refused one is [`IdempotencyTable::abandon`]ed
//! and can be retried with the same key.

use std::collections::VecDeque;

use hashbrown::HashMap;

use crate::time::{MICROS_PER_SECOND, Timestamp};

/// A digest of a request, e.g. SHA-256 of its method, path and canonical body.
pub type Fingerprint = [u8; 32];

/// What a key says about a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim<'a, T> {
    /// First use of the key: the caller runs the request, then calls
    /// [`IdempotencyTable::finish`] or [`IdempotencyTable::abandon`].
    New,
    /// The same request was accepted before: answer with its outcome.
    Replay(&'a T),
    /// The key was used for another request.
    Mismatch,
    /// The same request is still running.
    InFlight,
}

#[derive(Debug)]
enum State<T> {
    InFlight,
    Done(T),
}

#[derive(Debug)]
struct Record<T> {
    fingerprint: Fingerprint,
    state: State<T>,
    expires_at: Timestamp,
}

/// Keys and their outcomes, forgotten `retention_seconds` after they finish.
#[derive(Debug)]
pub struct IdempotencyTable<T> {
    records: HashMap<Box<str>, Record<T>, foldhash::quality::RandomState>,
    /// Finished keys in the order they expire.
    expiry: VecDeque<(Timestamp, Box<str>)>,
    retention_seconds: i64,
}

impl<T> IdempotencyTable<T> {
    pub fn new(retention_seconds: i64) -> IdempotencyTable<T> {
        IdempotencyTable {
            records: HashMap::with_hasher(foldhash::quality::RandomState::default()),
            expiry: VecDeque::new(),
            retention_seconds,
        }
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Looks the key up; a new key is marked in flight.
    pub fn claim(&mut self, key: &str, fingerprint: Fingerprint, now: Timestamp) -> Claim<'_, T> {
        self.purge(now);
        // One lookup; the key is copied first (new keys are the common case).
        let record = match self.records.entry(Box::from(key)) {
            hashbrown::hash_map::Entry::Vacant(vacant) => {
                vacant.insert(Record {
                    fingerprint,
                    state: State::InFlight,
                    expires_at: Timestamp::NEVER,
                });
                return Claim::New;
            }
            hashbrown::hash_map::Entry::Occupied(occupied) => occupied.into_mut(),
        };
        match &record.state {
            _ if record.fingerprint != fingerprint => Claim::Mismatch,
            State::InFlight => Claim::InFlight,
            State::Done(outcome) => Claim::Replay(outcome),
        }
    }

    /// Remembers the outcome of an accepted request.
    pub fn finish(&mut self, key: &str, outcome: T, now: Timestamp) {
        let expires_at = self.expiry_from(now);
        if let Some(record) = self.records.get_mut(key) {
            record.state = State::Done(outcome);
            record.expires_at = expires_at;
            self.expiry.push_back((expires_at, key.into()));
        }
    }

    /// Forgets a key whose request was refused (or failed before it ran).
    pub fn abandon(&mut self, key: &str) {
        if matches!(
            self.records.get(key),
            Some(Record {
                state: State::InFlight,
                ..
            })
        ) {
            self.records.remove(key);
        }
    }

    /// Restores a finished key (recovery): remembered until `expires_at`.
    pub fn restore(
        &mut self,
        key: &str,
        fingerprint: Fingerprint,
        outcome: T,
        expires_at: Timestamp,
    ) {
        let record = Record {
            fingerprint,
            state: State::Done(outcome),
            expires_at,
        };
        self.records.insert(key.into(), record);
        self.expiry.push_back((expires_at, key.into()));
    }

    /// When a key finished at `now` is forgotten.
    pub fn expiry_from(&self, now: Timestamp) -> Timestamp {
        Timestamp::from_micros(
            now.micros()
                .saturating_add(self.retention_seconds.saturating_mul(MICROS_PER_SECOND)),
        )
    }

    /// Forgets finished keys whose retention has passed.
    pub fn purge(&mut self, now: Timestamp) {
        while let Some((expires_at, _)) = self.expiry.front() {
            if *expires_at > now {
                break;
            }
            let (expires_at, key) = self.expiry.pop_front().expect("front exists");
            if self
                .records
                .get(&key)
                .is_some_and(|r| r.expires_at == expires_at)
            {
                self.records.remove(&key);
            }
        }
        // After a busy day has expired, give the tables' room back: the
        // memory a burst of keys took is not kept for ever.
        if self.records.capacity() > 4 * self.records.len() + 1024 {
            self.records.shrink_to(2 * self.records.len());
        }
        if self.expiry.capacity() > 4 * self.expiry.len() + 1024 {
            self.expiry.shrink_to(2 * self.expiry.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: i64 = MICROS_PER_SECOND;

    #[test]
    fn same_key_same_request_replays_and_other_request_mismatches() {
        let mut table = IdempotencyTable::new(86_400);
        let t0 = Timestamp::from_micros(0);
        assert_eq!(table.claim("k", [1; 32], t0), Claim::New);
        assert_eq!(table.claim("k", [1; 32], t0), Claim::InFlight);
        assert_eq!(table.claim("k", [2; 32], t0), Claim::Mismatch);
        table.finish("k", "first", t0);
        assert_eq!(table.claim("k", [1; 32], t0), Claim::Replay(&"first"));
        assert_eq!(table.claim("k", [2; 32], t0), Claim::Mismatch);
        // Kept for the whole retention, forgotten after it.
        let almost = Timestamp::from_micros(86_400 * SECOND - 1);
        assert_eq!(table.claim("k", [1; 32], almost), Claim::Replay(&"first"));
        let after = Timestamp::from_micros(86_400 * SECOND);
        assert_eq!(table.claim("k", [2; 32], after), Claim::New);
    }

    #[test]
    fn refused_requests_are_not_remembered() {
        let mut table: IdempotencyTable<u8> = IdempotencyTable::new(60);
        let t0 = Timestamp::from_micros(0);
        assert_eq!(table.claim("k", [1; 32], t0), Claim::New);
        table.abandon("k");
        assert!(table.is_empty());
        assert_eq!(table.claim("k", [2; 32], t0), Claim::New);
    }
}
