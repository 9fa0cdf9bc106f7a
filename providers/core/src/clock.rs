//! Wall-clock time as the protocol carries it (milliseconds since the Unix
//! epoch), passed in rather than read from a global, so that tests can pause
//! or move it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where "now" comes from.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    fn now_ms(&self) -> i64;

    /// The same instant as a `SystemTime`.
    fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.now_ms().max(0) as u64)
    }
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    }
}

/// A clock that starts at a given wall time and advances with tokio's clock,
/// so that `tokio::time::pause()` and `advance()` move it too: the clock of
/// the in-process tests.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    start_ms: i64,
    start: tokio::time::Instant,
}

impl TokioClock {
    pub fn starting_at(start_ms: i64) -> Self {
        Self {
            start_ms,
            start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now_ms(&self) -> i64 {
        let elapsed: Duration = tokio::time::Instant::now().duration_since(self.start);
        self.start_ms.saturating_add(elapsed.as_millis() as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_tokio_clock_moves_with_paused_time() {
        let c = TokioClock::starting_at(1_700_000_000_000);
        assert_eq!(c.now_ms(), 1_700_000_000_000);
        tokio::time::advance(Duration::from_secs(90)).await;
        assert_eq!(c.now_ms(), 1_700_000_090_000);
        assert_eq!(c.now(), UNIX_EPOCH + Duration::from_millis(1_700_000_090_000));
    }
}
