//! The server's one clock: the system clock, or a test clock that stands
//! still until `POST /v1/test_clock/advance` moves it. Every command gets
//! `now` from here; the core never reads a clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use purser_core::Timestamp;

#[derive(Clone, Debug)]
pub struct Clock(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    test: bool,
    /// The test clock's time; for the system clock, the latest time handed
    /// out, so `now` never goes backwards even if the system clock does.
    micros: AtomicI64,
}

pub fn system_now() -> Timestamp {
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    Timestamp::from_micros(micros)
}

impl Clock {
    pub fn system() -> Clock {
        Clock(Arc::new(Inner {
            test: false,
            micros: AtomicI64::new(system_now().micros()),
        }))
    }

    pub fn test(start: Timestamp) -> Clock {
        Clock(Arc::new(Inner {
            test: true,
            micros: AtomicI64::new(start.micros()),
        }))
    }

    pub fn is_test(&self) -> bool {
        self.0.test
    }

    pub fn now(&self) -> Timestamp {
        if self.0.test {
            return Timestamp::from_micros(self.0.micros.load(Ordering::Acquire));
        }
        let system = system_now().micros();
        let previous = self.0.micros.fetch_max(system, Ordering::AcqRel);
        Timestamp::from_micros(previous.max(system))
    }

    /// Moves a test clock forward; `None` for the system clock or on overflow.
    pub fn advance(&self, seconds: i64) -> Option<Timestamp> {
        if !self.0.test || seconds < 0 {
            return None;
        }
        let delta = seconds.checked_mul(1_000_000)?;
        let mut current = self.0.micros.load(Ordering::Acquire);
        loop {
            let next = current.checked_add(delta)?;
            match self
                .0
                .micros
                .compare_exchange(current, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(Timestamp::from_micros(next)),
                Err(actual) => current = actual,
            }
        }
    }
}
