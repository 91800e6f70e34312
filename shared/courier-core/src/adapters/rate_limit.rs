//! Per-user rate limiting of sends: the token bucket in one process, and
//! switched off.
//!
//! The bucket is the classic token bucket: it holds at most `burst` tokens,
//! refills at `per_sec` tokens a second, and a send takes one.
//! [`MemoryRateLimiter`] is the local gateway's embedded default and the unit
//! tests' double; the Redis limiter (`courier_aws::rate_limit`) has the same
//! semantics across execution environments, and the conformance suite in
//! `tests/tests/rate_limit.rs` holds both to the same cases. A failure is an
//! `Err`; the send service decides to fail open (`services::send`).
//! [`Unlimited`] is what an `App` has until it is given a
//! limiter.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::config::RateLimitConfig;
use crate::domain::UserId;
use crate::ports::{RateDecision, RateLimiter, RegistryError};

/// The token bucket in one process.
#[derive(Debug)]
pub struct MemoryRateLimiter {
    limits: RateLimitConfig,
    buckets: Mutex<HashMap<UserId, (f64, Instant)>>,
    down: AtomicBool,
}

impl MemoryRateLimiter {
    pub fn new(limits: RateLimitConfig) -> Self {
        Self {
            limits,
            buckets: Mutex::new(HashMap::new()),
            down: AtomicBool::new(false),
        }
    }

    /// While down, every call fails, like an unreachable Redis.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }
}

#[async_trait]
impl RateLimiter for MemoryRateLimiter {
    async fn acquire(&self, user: &UserId) -> Result<RateDecision, RegistryError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(RegistryError(
                "memory rate limiter is down (injected)".into(),
            ));
        }
        if !self.limits.enabled() {
            return Ok(RateDecision::Allowed);
        }
        let burst = f64::from(self.limits.burst);
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let (tokens, at) = buckets.entry(user.clone()).or_insert((burst, now));
        let elapsed = now.saturating_duration_since(*at).as_secs_f64();
        *tokens = (*tokens + elapsed * self.limits.per_sec).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            return Ok(RateDecision::Allowed);
        }
        let wait = (1.0 - *tokens) / self.limits.per_sec;
        Ok(RateDecision::Limited {
            retry_after: Duration::from_secs_f64(wait.clamp(0.0, 3600.0)),
        })
    }
}

/// Allows everything: an `App` that was not given a
/// limiter (tests, tools).
#[derive(Debug, Default, Clone, Copy)]
pub struct Unlimited;

#[async_trait]
impl RateLimiter for Unlimited {
    async fn acquire(&self, _user: &UserId) -> Result<RateDecision, RegistryError> {
        Ok(RateDecision::Allowed)
    }
}
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_bucket_holds_burst_then_refills_at_the_rate() {
        let l = MemoryRateLimiter::new(RateLimitConfig {
            per_sec: 50.0,
            burst: 3,
        });
        let bob = UserId::parse("bob").unwrap();
        for _ in 0..3 {
            assert_eq!(l.acquire(&bob).await.unwrap(), RateDecision::Allowed);
        }
        let RateDecision::Limited { retry_after } = l.acquire(&bob).await.unwrap() else {
            panic!("a fourth send within the burst window must be limited")
        };
        assert!(retry_after <= Duration::from_millis(20), "{retry_after:?}");
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(l.acquire(&bob).await.unwrap(), RateDecision::Allowed);
    }

    #[tokio::test]
    async fn zero_rate_means_off() {
        let l = MemoryRateLimiter::new(RateLimitConfig {
            per_sec: 0.0,
            burst: 1,
        });
        let bob = UserId::parse("bob").unwrap();
        for _ in 0..100 {
            assert_eq!(l.acquire(&bob).await.unwrap(), RateDecision::Allowed);
        }
    }
}
