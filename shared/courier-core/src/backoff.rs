//! Exponential backoff with jitter: the one wait between two tries, for every
//! retry loop in Courier (seq conflicts, a connection not open yet, DynamoDB
//! and API Gateway throttling).
//!
//! The window starts at `base`, doubles with each attempt and stops at `cap`;
//! the wait is drawn from it at random, so callers that failed together do not
//! come back together and fail again. Two draws:
//!
//! - [`Jitter::Full`], uniform in `0..=window`: spreads callers the most. For
//!   contention and throttling, where trying again at once is as good a bet as
//!   any.
//! - [`Jitter::Equal`], uniform in `window/2..=window`: keeps a floor. For
//!   waiting on something that takes time to happen (a WebSocket whose
//!   `$connect` has not returned), where an immediate retry is a wasted call.
//!
//! Nothing here sleeps or counts attempts: each caller owns its loop, its
//! attempt budget and its deadline.

use std::time::Duration;

use rand::Rng;

/// How a wait is drawn from the current window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    /// Uniform in `0..=window`.
    Full,
    /// Uniform in `window/2..=window`.
    Equal,
}

/// A doubling, capped, jittered wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The window of attempt 0.
    pub base: Duration,
    /// No window (so no wait) is longer.
    pub cap: Duration,
    pub jitter: Jitter,
}

impl Backoff {
    pub const fn full(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            jitter: Jitter::Full,
        }
    }

    pub const fn equal(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            jitter: Jitter::Equal,
        }
    }

    /// The longest wait after `attempt`: `min(cap, base * 2^attempt)`, which
    /// saturates instead of overflowing however large `attempt` gets.
    pub fn window(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// A wait drawn from the window of `attempt`.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_with(attempt, &mut rand::rng())
    }

    /// [`Backoff::delay`] with the caller's random source (tests seed one).
    pub fn delay_with<R: Rng + ?Sized>(&self, attempt: u32, rng: &mut R) -> Duration {
        let window = nanos(self.window(attempt));
        let floor = match self.jitter {
            Jitter::Full => 0,
            Jitter::Equal => window / 2,
        };
        Duration::from_nanos(rng.random_range(floor..=window))
    }
}

/// Nanoseconds, saturating: a window past ~584 years is a bug in the
/// caller's cap, not a reason to panic.
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    const MS: Duration = Duration::from_millis(1);

    fn draws(b: &Backoff, attempt: u32, rng: &mut StdRng) -> Vec<Duration> {
        (0..200).map(|_| b.delay_with(attempt, rng)).collect()
    }

    #[test]
    fn bounded_by_the_window_and_the_cap() {
        let mut rng = StdRng::seed_from_u64(1);
        for b in [
            Backoff::full(2 * MS, 100 * MS),
            Backoff::equal(25 * MS, 400 * MS),
        ] {
            for attempt in [0, 1, 5, 9, 31, 32, 64, u32::MAX] {
                let window = b.window(attempt);
                assert!(window <= b.cap, "{b:?} attempt {attempt}");
                for d in draws(&b, attempt, &mut rng) {
                    assert!(d <= window, "{b:?} attempt {attempt}: {d:?} > {window:?}");
                    if b.jitter == Jitter::Equal {
                        assert!(
                            d >= window / 2,
                            "{b:?} attempt {attempt}: {d:?} under the floor"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn jittered_not_constant() {
        let mut rng = StdRng::seed_from_u64(2);
        for b in [
            Backoff::full(50 * MS, 400 * MS),
            Backoff::equal(50 * MS, 400 * MS),
        ] {
            let mut seen = draws(&b, 2, &mut rng);
            seen.sort();
            seen.dedup();
            assert!(
                seen.len() > 100,
                "{b:?}: only {} distinct waits",
                seen.len()
            );
            // Full jitter reaches down near zero; equal jitter never does.
            let low = seen[0];
            match b.jitter {
                Jitter::Full => assert!(low < 20 * MS, "{low:?}"),
                Jitter::Equal => assert!(low >= 100 * MS, "{low:?}"),
            }
        }
    }

    #[test]
    fn window_doubles_until_the_cap() {
        let b = Backoff::full(25 * MS, 800 * MS);
        let windows: Vec<Duration> = (0..8).map(|a| b.window(a)).collect();
        assert_eq!(
            windows,
            [25, 50, 100, 200, 400, 800, 800, 800].map(|ms| ms * MS)
        );
        for attempt in 0..200 {
            assert!(b.window(attempt) <= b.window(attempt + 1));
        }
    }

    #[test]
    fn waits_grow_with_the_attempt() {
        let mut rng = StdRng::seed_from_u64(3);
        for b in [Backoff::full(MS, 1000 * MS), Backoff::equal(MS, 1000 * MS)] {
            let mean =
                |attempt, rng: &mut StdRng| draws(&b, attempt, rng).iter().sum::<Duration>() / 200;
            let (early, late) = (mean(1, &mut rng), mean(6, &mut rng));
            assert!(late > early * 8, "{b:?}: mean {early:?} then {late:?}");
        }
    }

    #[test]
    fn zero_base_never_waits() {
        let mut rng = StdRng::seed_from_u64(4);
        for b in [
            Backoff::full(Duration::ZERO, MS),
            Backoff::equal(Duration::ZERO, MS),
        ] {
            assert!(draws(&b, 7, &mut rng).iter().all(|d| d.is_zero()));
        }
    }
}
