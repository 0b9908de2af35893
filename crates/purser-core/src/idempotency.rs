//! Idempotency keys: the same key with the same request returns the first
//! outcome and changes nothing; the same key with another request is refused.
//!
//! The table is pure: callers pass `now`, the key's hash ([`KeyHash`]), a
//! fingerprint of the request (a hash of method, path and body), and the
//! outcome to remember. Only accepted requests are remembered: a refused one
//! is [`IdempotencyTable::abandon`]ed and can be retried with the same key.
//!
//! Memory is bounded by a setting, not by the number of keys remembered:
//! - keys in flight, and the `cache` most recently finished keys with their
//!   outcomes, are *hot*;
//! - older finished keys are *cold*: only 64 bits of their hash and their
//!   expiry stay in memory (16 bytes in the map). Their outcome is in the
//!   store, which the caller reads when told to ([`Claim::Lookup`]);
//! - keys the store held before this process started are learnt in the
//!   background ([`IdempotencyTable::learn`]); until the caller says they
//!   all are ([`IdempotencyTable::set_complete`]), every key not known here
//!   is looked up in the store too.
//!
//! A cold key is only ever one whose outcome is durable in the store: the
//! caller finishes a key once its record is committed.

use std::collections::VecDeque;

use hashbrown::HashMap;

use crate::time::{MICROS_PER_SECOND, Timestamp};

/// A digest of a request, e.g. the first 8 bytes of SHA-256 of its method,
/// path and canonical body: what tells a key reused for another request
/// (its key's own, so 64 bits, not a collision-resistant 128).
pub type Fingerprint = [u8; 8];

/// A digest of an idempotency key (the first 16 bytes of its SHA-256): the
/// key as stored and looked up; the key's text is never kept.
pub type KeyHash = [u8; 16];

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
    /// The key may have a record in the store: the caller reads it and
    /// calls [`IdempotencyTable::found`] (the key is held meanwhile;
    /// [`IdempotencyTable::abandon`] lets it go).
    Lookup,
    /// Another claim of the key is reading the store: claim again in a
    /// moment (the key is neither known to be running nor to be free).
    LookingUp,
}

/// What the store said of a key claimed with [`Claim::Lookup`].
#[derive(Debug, PartialEq, Eq)]
pub enum Found<T> {
    /// No record: the request is new, and the key stays claimed for it.
    New,
    Replay(T),
    Mismatch,
}

#[derive(Debug)]
enum State<T> {
    InFlight,
    /// Claimed with [`Claim::Lookup`]: the store is being read.
    LookingUp,
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
    hot: HashMap<KeyHash, Record<T>, foldhash::quality::RandomState>,
    /// Hot finished keys in the order they finished (their expiry order
    /// while the retention does not change).
    finished: VecDeque<(Timestamp, KeyHash)>,
    /// How many finished keys stay hot.
    cache: usize,
    /// Finished keys that are no longer hot: 64 bits of the hash, expiry.
    cold: HashMap<u64, Timestamp, foldhash::quality::RandomState>,
    /// Whether every key the store holds is hot or cold here.
    complete: bool,
    retention_seconds: i64,
}

fn short(hash: &KeyHash) -> u64 {
    u64::from_le_bytes(hash[..8].try_into().expect("8 bytes"))
}

impl<T> IdempotencyTable<T> {
    /// An empty table over a store with no records: complete.
    pub fn new(retention_seconds: i64, cache: usize) -> IdempotencyTable<T> {
        IdempotencyTable {
            hot: HashMap::with_hasher(foldhash::quality::RandomState::default()),
            finished: VecDeque::new(),
            cache,
            cold: HashMap::with_hasher(foldhash::quality::RandomState::default()),
            complete: true,
            retention_seconds,
        }
    }

    /// Keys known here: hot (in flight or finished) and cold.
    pub fn len(&self) -> usize {
        self.hot.len() + self.cold.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hot.is_empty() && self.cold.is_empty()
    }

    /// Finished keys whose outcome is in memory.
    pub fn hot_len(&self) -> usize {
        self.finished.len()
    }

    /// Says whether every key the store holds is known here (`false` while
    /// the keys stored before this process started are being learnt).
    pub fn set_complete(&mut self, complete: bool) {
        self.complete = complete;
    }

    /// Looks the key up; a new key (and one to look up) is marked in flight.
    pub fn claim(
        &mut self,
        key: &KeyHash,
        fingerprint: Fingerprint,
        now: Timestamp,
    ) -> Claim<'_, T> {
        self.purge_hot(now);
        let lookup = !self.complete || self.cold.get(&short(key)).is_some_and(|e| *e > now);
        let record = match self.hot.entry(*key) {
            hashbrown::hash_map::Entry::Vacant(vacant) => {
                vacant.insert(Record {
                    fingerprint,
                    state: if lookup {
                        State::LookingUp
                    } else {
                        State::InFlight
                    },
                    expires_at: Timestamp::NEVER,
                });
                return if lookup { Claim::Lookup } else { Claim::New };
            }
            hashbrown::hash_map::Entry::Occupied(occupied) => occupied.into_mut(),
        };
        // A finished key is kept past its expiry only until a purge reaches
        // it (one `found` out of expiry order): it is new again.
        if matches!(record.state, State::Done(_)) && record.expires_at <= now {
            *record = Record {
                fingerprint,
                state: State::InFlight,
                expires_at: Timestamp::NEVER,
            };
            return Claim::New;
        }
        match &record.state {
            // Whether it matches is the stored record's to say.
            State::LookingUp => Claim::LookingUp,
            _ if record.fingerprint != fingerprint => Claim::Mismatch,
            State::InFlight => Claim::InFlight,
            State::Done(outcome) => Claim::Replay(outcome),
        }
    }

    /// Ends a [`Claim::Lookup`] with the key's record in the store (its
    /// fingerprint, outcome and expiry; `None` if there is none). The
    /// record becomes hot.
    pub fn found(
        &mut self,
        key: &KeyHash,
        stored: Option<(Fingerprint, T, Timestamp)>,
        now: Timestamp,
    ) -> Found<T>
    where
        T: Clone,
    {
        let Some((fingerprint, outcome, expires_at)) = stored.filter(|s| s.2 > now) else {
            // The key stays claimed, by the request that looked it up.
            if let Some(record) = self.hot.get_mut(key)
                && matches!(record.state, State::LookingUp)
            {
                record.state = State::InFlight;
            }
            return Found::New;
        };
        let claimed = self.hot.get(key).map(|r| r.fingerprint);
        let found = if claimed == Some(fingerprint) {
            Found::Replay(outcome.clone())
        } else {
            Found::Mismatch
        };
        self.hot.insert(
            *key,
            Record {
                fingerprint,
                state: State::Done(outcome),
                expires_at,
            },
        );
        self.finished.push_back((expires_at, *key));
        self.cool(now);
        found
    }

    /// Remembers the outcome of an accepted request (durable in the store
    /// by now).
    pub fn finish(&mut self, key: &KeyHash, outcome: T, now: Timestamp) {
        let expires_at = self.expiry_from(now);
        if let Some(record) = self.hot.get_mut(key) {
            record.state = State::Done(outcome);
            record.expires_at = expires_at;
            self.finished.push_back((expires_at, *key));
            self.cool(now);
        }
    }

    /// Keeps only the hash of a key, finished or found, expiring at
    /// `expires_at`: its outcome (a large one) is read back from the store
    /// when the key comes again.
    pub fn finish_cold(&mut self, key: &KeyHash, expires_at: Timestamp) {
        if self.hot.remove(key).is_some() {
            self.learn(key, expires_at);
        }
    }

    /// Forgets a key whose request was refused (or failed before it ran).
    pub fn abandon(&mut self, key: &KeyHash) {
        if matches!(
            self.hot.get(key),
            Some(Record {
                state: State::InFlight | State::LookingUp,
                ..
            })
        ) {
            self.hot.remove(key);
        }
    }

    /// Learns a key the store holds (finished before this process
    /// started): cold, until `expires_at`. Recorded even while the key is
    /// hot (being looked up, say): if that claim lets it go, the key must
    /// still be known.
    pub fn learn(&mut self, key: &KeyHash, expires_at: Timestamp) {
        let known = self.cold.entry(short(key)).or_insert(expires_at);
        *known = (*known).max(expires_at);
    }

    /// When a key finished at `now` is forgotten: rounded up to the second,
    /// as the store keeps a record's expiry, so memory and store agree.
    pub fn expiry_from(&self, now: Timestamp) -> Timestamp {
        let micros = now
            .micros()
            .saturating_add(self.retention_seconds.saturating_mul(MICROS_PER_SECOND));
        let fraction = micros.rem_euclid(MICROS_PER_SECOND);
        Timestamp::from_micros(if fraction == 0 {
            micros
        } else {
            micros.saturating_add(MICROS_PER_SECOND - fraction)
        })
    }

    /// Moves the oldest finished keys out of the cache: their outcome stays
    /// in the store, their hash here.
    fn cool(&mut self, now: Timestamp) {
        while self.finished.len() > self.cache {
            let (expires_at, key) = self.finished.pop_front().expect("over the cache");
            if let Some(record) = self.hot.get(&key)
                && record.expires_at == expires_at
                && matches!(record.state, State::Done(_))
            {
                self.hot.remove(&key);
                if expires_at > now {
                    let known = self.cold.entry(short(&key)).or_insert(expires_at);
                    *known = (*known).max(expires_at);
                }
            }
        }
    }

    /// Forgets hot finished keys whose retention has passed (cheap: the
    /// oldest first).
    fn purge_hot(&mut self, now: Timestamp) {
        while let Some((expires_at, _)) = self.finished.front() {
            if *expires_at > now {
                break;
            }
            let (expires_at, key) = self.finished.pop_front().expect("front exists");
            if self
                .hot
                .get(&key)
                .is_some_and(|r| r.expires_at == expires_at && matches!(r.state, State::Done(_)))
            {
                self.hot.remove(&key);
            }
        }
    }

    /// Forgets every key whose retention has passed, hot and cold (the cold
    /// ones by a walk over them all: the janitor's job, not a request's).
    pub fn purge(&mut self, now: Timestamp) {
        self.purge_hot(now);
        self.cold.retain(|_, expires_at| *expires_at > now);
        // After a busy day has expired, give the tables' room back: the
        // memory a burst of keys took is not kept for ever.
        if self.hot.capacity() > 4 * self.hot.len() + 1024 {
            self.hot.shrink_to(2 * self.hot.len());
        }
        if self.finished.capacity() > 4 * self.finished.len() + 1024 {
            self.finished.shrink_to(2 * self.finished.len());
        }
        if self.cold.capacity() > 4 * self.cold.len() + 1024 {
            self.cold.shrink_to(2 * self.cold.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: i64 = MICROS_PER_SECOND;

    fn k(n: u8) -> KeyHash {
        [n; 16]
    }

    #[test]
    fn same_key_same_request_replays_and_other_request_mismatches() {
        let mut table = IdempotencyTable::new(86_400, 10);
        let t0 = Timestamp::from_micros(0);
        assert_eq!(table.claim(&k(1), [1; 8], t0), Claim::New);
        assert_eq!(table.claim(&k(1), [1; 8], t0), Claim::InFlight);
        assert_eq!(table.claim(&k(1), [2; 8], t0), Claim::Mismatch);
        table.finish(&k(1), "first", t0);
        assert_eq!(table.claim(&k(1), [1; 8], t0), Claim::Replay(&"first"));
        assert_eq!(table.claim(&k(1), [2; 8], t0), Claim::Mismatch);
        // Kept for the whole retention, forgotten after it.
        let almost = Timestamp::from_micros(86_400 * SECOND - 1);
        assert_eq!(table.claim(&k(1), [1; 8], almost), Claim::Replay(&"first"));
        let after = Timestamp::from_micros(86_400 * SECOND);
        assert_eq!(table.claim(&k(1), [2; 8], after), Claim::New);
    }

    #[test]
    fn refused_requests_are_not_remembered() {
        let mut table: IdempotencyTable<u8> = IdempotencyTable::new(60, 10);
        let t0 = Timestamp::from_micros(0);
        assert_eq!(table.claim(&k(1), [1; 8], t0), Claim::New);
        table.abandon(&k(1));
        assert!(table.is_empty());
        assert_eq!(table.claim(&k(1), [2; 8], t0), Claim::New);
    }

    #[test]
    fn keys_beyond_the_cache_are_looked_up_and_come_back_hot() {
        let mut table: IdempotencyTable<u32> = IdempotencyTable::new(60, 2);
        let t0 = Timestamp::from_micros(0);
        for n in 1..=5 {
            assert_eq!(table.claim(&k(n), [n; 8], t0), Claim::New);
            table.finish(&k(n), u32::from(n), t0);
        }
        assert_eq!(table.hot_len(), 2);
        assert_eq!(table.len(), 5);
        // Hot: answered from memory; cold: the store is asked.
        assert_eq!(table.claim(&k(5), [5; 8], t0), Claim::Replay(&5));
        assert_eq!(table.claim(&k(1), [1; 8], t0), Claim::Lookup);
        // Claims meanwhile wait for the store's answer (whatever their
        // fingerprint): not "in flight", which would be a 409.
        assert_eq!(table.claim(&k(1), [1; 8], t0), Claim::LookingUp);
        assert_eq!(table.claim(&k(1), [7; 8], t0), Claim::LookingUp);
        let expiry = table.expiry_from(t0);
        assert_eq!(
            table.found(&k(1), Some(([1; 8], 1, expiry)), t0),
            Found::Replay(1)
        );
        assert_eq!(table.claim(&k(1), [1; 8], t0), Claim::Replay(&1));
        // Another request under a cold key is refused after the lookup.
        assert_eq!(table.claim(&k(2), [9; 8], t0), Claim::Lookup);
        assert_eq!(
            table.found(&k(2), Some(([2; 8], 2, expiry)), t0),
            Found::Mismatch
        );
        assert_eq!(table.claim(&k(2), [9; 8], t0), Claim::Mismatch);
        // Never seen: new at once, no lookup.
        assert_eq!(table.claim(&k(9), [9; 8], t0), Claim::New);
        table.abandon(&k(9));
        // After the retention, cold keys are gone too.
        let later = Timestamp::from_micros(61 * SECOND);
        table.purge(later);
        assert!(table.is_empty());
        assert_eq!(table.claim(&k(3), [3; 8], later), Claim::New);
    }

    #[test]
    fn until_complete_every_unknown_key_is_looked_up() {
        let mut table: IdempotencyTable<u8> = IdempotencyTable::new(60, 10);
        table.set_complete(false);
        let t0 = Timestamp::from_micros(0);
        assert_eq!(table.claim(&k(1), [1; 8], t0), Claim::Lookup);
        assert_eq!(table.claim(&k(1), [1; 8], t0), Claim::LookingUp);
        // No record: the key is the looking-up request's, running.
        assert_eq!(table.found(&k(1), None, t0), Found::New);
        assert_eq!(table.claim(&k(1), [1; 8], t0), Claim::InFlight);
        assert_eq!(table.claim(&k(1), [2; 8], t0), Claim::Mismatch);
        table.learn(&k(2), table.expiry_from(t0));
        // A stored key learnt while a claim looks it up, which then lets
        // it go: still known, still looked up.
        assert_eq!(table.claim(&k(4), [4; 8], t0), Claim::Lookup);
        table.learn(&k(4), table.expiry_from(t0));
        table.abandon(&k(4));
        table.set_complete(true);
        assert_eq!(table.claim(&k(4), [4; 8], t0), Claim::Lookup);
        assert_eq!(table.claim(&k(2), [2; 8], t0), Claim::Lookup);
        assert_eq!(table.claim(&k(3), [3; 8], t0), Claim::New);
        // An expired record in the store is no record.
        table.abandon(&k(2));
        assert_eq!(table.claim(&k(2), [2; 8], t0), Claim::Lookup);
        assert_eq!(table.found(&k(2), Some(([2; 8], 7, t0)), t0), Found::New);
    }
}
