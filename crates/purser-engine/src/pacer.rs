//! Paces list reads per account, so that clients looping over one
//! account's lists (its purchases, grants, transactions…) cannot take the
//! server's CPU from everyone else's charges.
//!
//! A read of a page costs one turn of its account's bucket: a burst of
//! `burst` pages at once, then one every `1 / per_second` (the generic
//! cell-rate algorithm: each bucket is the instant its next turn is free).
//! A read over the rate waits for its turn, asleep (no thread, no CPU); one
//! whose turn is further away than its deadline is refused at once
//! (429), without taking a turn. Buckets are a fixed array of atomics
//! indexed by a keyed hash of the account id: memory does not grow with
//! accounts, and two accounts sharing a bucket share its rate (rare with
//! 16,384 buckets; a hash key chosen at start keeps it from being aimed).
//! The engine keeps one pacer per kind of reader (the API, the portal's
//! pages, its exports), so a customer's reading only ever shares a bucket
//! with other customers'.

use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicI64, Ordering};

/// How many buckets (128 KB): accounts reading their lists at once share a
/// bucket rarely.
const BUCKETS: usize = 16_384;

/// The list-read buckets.
#[derive(Debug)]
pub struct Pacer {
    /// Microseconds between turns; 0: no pacing.
    interval: i64,
    /// How far a bucket's next turn may lag behind now: `burst - 1`
    /// intervals (so `burst` reads go at once).
    burst: i64,
    /// Per bucket: when its next turn is free (µs on the caller's clock).
    next: Box<[AtomicI64]>,
    hasher: std::collections::hash_map::RandomState,
}

/// A read's turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Turn {
    /// Now, or after this many microseconds.
    After(i64),
    /// Not within the deadline: refused, no turn taken.
    Refused,
}

impl Pacer {
    /// `per_second` pages per account (0: unpaced), `burst` at once.
    pub fn new(per_second: u32, burst: u32) -> Pacer {
        let interval = if per_second == 0 {
            0
        } else {
            (1_000_000 / i64::from(per_second)).max(1)
        };
        Pacer::with_interval(interval, burst)
    }

    /// `per_minute` turns per account (0: unpaced), `burst` at once.
    pub fn per_minute(per_minute: u32, burst: u32) -> Pacer {
        let interval = if per_minute == 0 {
            0
        } else {
            (60_000_000 / i64::from(per_minute)).max(1)
        };
        Pacer::with_interval(interval, burst)
    }

    fn with_interval(interval: i64, burst: u32) -> Pacer {
        Pacer {
            interval,
            burst: interval.saturating_mul(i64::from(burst.max(1) - 1)),
            next: (0..BUCKETS).map(|_| AtomicI64::new(i64::MIN / 2)).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    fn bucket(&self, account: &impl Hash) -> &AtomicI64 {
        let index = (self.hasher.hash_one(account) as usize) % BUCKETS;
        &self.next[index]
    }

    /// The turn of a read of `account`'s lists at `now` (µs) that may wait
    /// at most `deadline` µs.
    pub fn turn(&self, account: &impl Hash, now: i64, deadline: i64) -> Turn {
        self.turns(account, now, deadline, 1)
    }

    /// The turn of a read worth `cost` pages (a step of an export).
    pub fn turns(&self, account: &impl Hash, now: i64, deadline: i64, cost: u32) -> Turn {
        if self.interval == 0 {
            return Turn::After(0);
        }
        let bucket = self.bucket(account);
        let mut next = bucket.load(Ordering::Relaxed);
        loop {
            let at = next.max(now - self.burst);
            let wait = (at - now).max(0);
            if wait > deadline {
                return Turn::Refused;
            }
            match bucket.compare_exchange_weak(
                next,
                at + self.interval.saturating_mul(i64::from(cost.max(1))),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Turn::After(wait),
                Err(current) => next = current,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_one_turn_per_interval() {
        // 100 a second (10 ms apart), 5 at once.
        let pacer = Pacer::new(100, 5);
        let now = 1_000_000_000;
        for _ in 0..5 {
            assert_eq!(pacer.turn(&"long", now, 1_000_000), Turn::After(0));
        }
        assert_eq!(pacer.turn(&"long", now, 1_000_000), Turn::After(10_000));
        assert_eq!(pacer.turn(&"long", now, 1_000_000), Turn::After(20_000));
        // Another account has its own bucket (and its burst).
        assert_eq!(pacer.turn(&"other", now, 1_000_000), Turn::After(0));
        // Past the deadline: refused, and no turn is taken.
        assert_eq!(pacer.turn(&"long", now, 25_000), Turn::Refused);
        assert_eq!(pacer.turn(&"long", now, 1_000_000), Turn::After(30_000));
        // Time passing frees turns again, up to the burst.
        let later = now + 10_000_000;
        for _ in 0..5 {
            assert_eq!(pacer.turn(&"long", later, 0), Turn::After(0));
        }
        assert_eq!(pacer.turn(&"long", later, 0), Turn::Refused);
    }

    #[test]
    fn a_costly_read_takes_its_cost_in_turns() {
        let pacer = Pacer::new(100, 1);
        assert_eq!(pacer.turns(&"long", 0, i64::MAX / 4, 20), Turn::After(0));
        assert_eq!(pacer.turn(&"long", 0, i64::MAX / 4), Turn::After(200_000));
    }

    #[test]
    fn zero_is_unpaced() {
        let pacer = Pacer::new(0, 0);
        for _ in 0..10_000 {
            assert_eq!(pacer.turn(&"long", 0, 0), Turn::After(0));
        }
    }

    #[test]
    fn many_readers_at_once_get_distinct_turns() {
        let pacer = std::sync::Arc::new(Pacer::new(1_000, 1));
        let turns: Vec<i64> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let pacer = pacer.clone();
                    scope.spawn(move || {
                        (0..100)
                            .map(|_| match pacer.turn(&"long", 0, i64::MAX / 4) {
                                Turn::After(wait) => wait,
                                Turn::Refused => panic!("no deadline"),
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        let mut sorted = turns;
        sorted.sort_unstable();
        sorted.dedup();
        // 800 reads at 1 ms apart, the first at once: 800 distinct turns.
        assert_eq!(sorted.len(), 800);
        assert_eq!(sorted[0], 0);
        assert_eq!(*sorted.last().unwrap(), 799_000);
    }
}
