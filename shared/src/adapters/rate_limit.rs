//! Per-user rate limiting of sends: [`RateLimiter`] on Redis, in memory, and
//! switched off.
//!
//! The bucket is the classic token bucket: it holds at most `burst` tokens,
//! refills at `per_sec` tokens a second, and a send takes one. On Redis the
//! whole read-refill-take-write is one Lua script on one key
//! (`rl:{user_id}`), so concurrent sends of one user in many Lambda
//! environments can never take more tokens than the bucket had, and the
//! script is safe on a clustered (serverless) cache. The clock is Redis's own
//! (`TIME`), so execution environments with skewed clocks share one notion
//! of "now". The key expires once a full bucket would have refilled: an idle
//! user costs no memory.
//!
//! Like the registry, the limiter is bounded by `REDIS_TIMEOUT_MS` and never
//! touches the network at construction. A failure is an `Err`; the send
//! service decides to fail open (`services::send`).
//!
//! [`MemoryRateLimiter`] has the same semantics in one process (the local
//! gateway's embedded default, unit tests), and the conformance suite in
//! `tests/tests/rate_limit.rs` holds both to the same cases. [`Unlimited`]
//! is what an [`App`](crate::app::App) has until it is given a limiter.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::config::{RateLimitConfig, RegistryConfig};
use crate::domain::UserId;
use crate::ports::{RateDecision, RateLimiter, RegistryError};

/// KEYS[1] = bucket; ARGV = per_sec, burst. Returns {allowed, retry_after_ms}.
const TAKE_SCRIPT: &str = r"
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local v = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(v[1])
local at = tonumber(v[2])
if tokens == nil or at == nil then
  tokens = burst
  at = now
end
if now > at then
  tokens = math.min(burst, tokens + (now - at) * rate / 1000)
end
local allowed = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = math.ceil((1 - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(math.max(now, at)))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return {allowed, wait}
";

/// The token bucket on Redis.
pub struct RedisRateLimiter {
    client: redis::Client,
    timeout: Duration,
    limits: RateLimitConfig,
    manager: Mutex<Option<ConnectionManager>>,
    script: redis::Script,
}

impl std::fmt::Debug for RedisRateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: never print it.
        f.debug_struct("RedisRateLimiter")
            .field("limits", &self.limits)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisRateLimiter {
    /// Parses the URL; connects on first use.
    pub fn new(redis: &RegistryConfig, limits: RateLimitConfig) -> Result<Self, RegistryError> {
        let client = redis::Client::open(redis.url.as_str())
            .map_err(|e| RegistryError(format!("invalid redis url: {e}")))?;
        Ok(Self {
            client,
            timeout: redis.timeout,
            limits,
            manager: Mutex::new(None),
            script: redis::Script::new(TAKE_SCRIPT),
        })
    }

    pub fn key(user: &UserId) -> String {
        format!("rl:{user}")
    }

    fn slot(&self) -> MutexGuard<'_, Option<ConnectionManager>> {
        self.manager.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn manager(&self) -> Result<ConnectionManager, RegistryError> {
        let mut slot = self.slot();
        if let Some(m) = slot.as_ref() {
            return Ok(m.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(0);
        let m = ConnectionManager::new_lazy_with_config(self.client.clone(), config)
            .map_err(|e| RegistryError(format!("redis client: {e}")))?;
        *slot = Some(m.clone());
        Ok(m)
    }
}

#[async_trait]
impl RateLimiter for RedisRateLimiter {
    async fn acquire(&self, user: &UserId) -> Result<RateDecision, RegistryError> {
        if !self.limits.enabled() {
            return Ok(RateDecision::Allowed);
        }
        let mut conn = self.manager()?;
        let mut call = self.script.key(Self::key(user));
        call.arg(self.limits.per_sec).arg(self.limits.burst);
        let answer =
            tokio::time::timeout(self.timeout, call.invoke_async::<(i64, i64)>(&mut conn)).await;
        let (allowed, wait_ms) = match answer {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                // A wedged manager is rebuilt on the next call.
                *self.slot() = None;
                return Err(RegistryError(format!("redis rate limit: {e}")));
            }
            Err(_) => {
                *self.slot() = None;
                return Err(RegistryError(format!(
                    "redis rate limit: no answer within {} ms",
                    self.timeout.as_millis()
                )));
            }
        };
        Ok(if allowed == 1 {
            RateDecision::Allowed
        } else {
            RateDecision::Limited {
                retry_after: Duration::from_millis(u64::try_from(wait_ms).unwrap_or(0)),
            }
        })
    }
}

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

/// Allows everything: an [`App`](crate::app::App) that was not given a
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

    #[test]
    fn construction_needs_no_server() {
        let r = RedisRateLimiter::new(
            &RegistryConfig::new("redis://127.0.0.1:1"),
            RateLimitConfig::default(),
        );
        assert!(r.is_ok());
        assert_eq!(
            RedisRateLimiter::key(&UserId::parse("bob").unwrap()),
            "rl:bob"
        );
    }
}
