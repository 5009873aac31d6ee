//! Time is an input: the engine asks a [`Clock`] for "now" and never reads the
//! system time itself, so tests drive it by hand.

use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of wall-clock time in unix nanoseconds.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Now, in nanoseconds since the unix epoch.
    fn now_nanos(&self) -> i64;
}

/// The system's real-time clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_nanos(&self) -> i64 {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(since) => i64::try_from(since.as_nanos()).unwrap_or(i64::MAX),
            Err(before) => -i64::try_from(before.duration().as_nanos()).unwrap_or(i64::MAX),
        }
    }
}

/// A clock that moves only when told to.
#[derive(Debug, Default)]
pub struct ManualClock {
    now: AtomicI64,
}

impl ManualClock {
    /// A clock reading `now_nanos`.
    pub fn new(now_nanos: i64) -> Self {
        Self { now: AtomicI64::new(now_nanos) }
    }

    /// Sets the time.
    pub fn set(&self, now_nanos: i64) {
        self.now.store(now_nanos, Ordering::SeqCst);
    }

    /// Moves the time forward by `nanos`.
    pub fn advance(&self, nanos: i64) {
        self.now.fetch_add(nanos, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_nanos(&self) -> i64 {
        self.now.load(Ordering::SeqCst)
    }
}
