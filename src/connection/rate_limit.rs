//! Inbound protections for one connection: a token bucket for the frame rate, and a sliding
//! window of strikes that turns sustained abuse into a close.

use std::time::{Duration, Instant};

/// Frames per second with a burst allowance.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    capacity: f64,
    per_second: f64,
    tokens: f64,
    refilled_at: Instant,
}

impl TokenBucket {
    pub(crate) fn new(per_second: u32, burst: u32, now: Instant) -> Self {
        let capacity = f64::from(burst.max(1));
        Self {
            capacity,
            per_second: f64::from(per_second),
            tokens: capacity,
            refilled_at: now,
        }
    }

    /// Whether the bucket would be full at `now` (nothing taken lately: safe to forget).
    pub(crate) fn is_full(&self, now: Instant) -> bool {
        let elapsed = now
            .saturating_duration_since(self.refilled_at)
            .as_secs_f64();
        self.tokens + elapsed * self.per_second >= self.capacity
    }

    /// Takes one token if there is one.
    pub(crate) fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now
            .saturating_duration_since(self.refilled_at)
            .as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        self.refilled_at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Counts strikes within a fixed window; `strike` says when the limit is passed.
#[derive(Debug)]
pub(crate) struct StrikeWindow {
    window: Duration,
    limit: u32,
    started_at: Instant,
    strikes: u32,
}

impl StrikeWindow {
    pub(crate) fn new(window: Duration, limit: u32, now: Instant) -> Self {
        Self {
            window,
            limit,
            started_at: now,
            strikes: 0,
        }
    }

    /// Records one strike; `true` when more than `limit` strikes fell within the window.
    pub(crate) fn strike(&mut self, now: Instant) -> bool {
        if now.saturating_duration_since(self.started_at) > self.window {
            self.started_at = now;
            self.strikes = 0;
        }
        self.strikes += 1;
        self.strikes > self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_the_burst_then_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10, 5, start);
        assert_eq!((0..10).filter(|_| bucket.try_take(start)).count(), 5);
        let later = start + Duration::from_millis(500);
        assert_eq!((0..10).filter(|_| bucket.try_take(later)).count(), 5);
    }

    #[test]
    fn strikes_reset_after_the_window() {
        let start = Instant::now();
        let mut window = StrikeWindow::new(Duration::from_secs(10), 2, start);
        assert!(!window.strike(start));
        assert!(!window.strike(start));
        assert!(window.strike(start));
        assert!(!window.strike(start + Duration::from_secs(11)));
    }
}
