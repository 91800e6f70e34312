//! The [`Gateway`] over API Gateway's Management API (`@connections`).
//!
//! `POST/GET/DELETE {MANAGEMENT_ENDPOINT}/@connections/{id}`, through
//! `aws-sdk-apigatewaymanagement`. The client must be built with the stage's
//! endpoint (`https://{api}.execute-api.{region}.amazonaws.com/{stage}`, or
//! the local gateway's); `wiring` does that.
//!
//! Outcomes are mapped here, once, to [`PostError`]:
//!
//! - 410 (`GoneException`) → [`PostError::Gone`]: unknown, closed, or (right
//!   after `$connect`) not open yet. What that means is the delivery
//!   service's call (the open window of a new connection, `docs/protocol.md`
//!   on delivery), not this adapter's, so a 410 is never retried here.
//! - 413 (`PayloadTooLargeException`) → [`PostError::PayloadTooLarge`], never
//!   retried.
//! - 429 (`LimitExceededException`, the account-wide 10,000 rps shared with
//!   new connections) and 5xx → retried a few times with full-jitter backoff,
//!   then [`PostError::Unavailable`]. Bounded so one slow post never eats the
//!   caller's deadline; the client built by `wiring` has the SDK's own
//!   retries turned off so the two never multiply.
//! - Anything else (403 from a wrong stage or missing IAM permission, a
//!   transport failure, a timeout) → [`PostError::Unavailable`] at once. A
//!   timed-out post may have arrived; resending it is the caller's choice
//!   (clients drop duplicates by seq).

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_apigatewaymanagement::Client;
use aws_sdk_apigatewaymanagement::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_apigatewaymanagement::primitives::{Blob, DateTime};

use courier_core::backoff::Backoff;
use courier_core::domain::{ConnectionId, Millis};
use courier_core::ports::{ConnectionInfo, Gateway, PostError};

/// How a 429 or 5xx is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Calls in all, the first included.
    pub attempts: u32,
    /// Upper bound of the first delay; doubles each time.
    pub base: Duration,
    /// Upper bound of any one delay.
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        // At most ~50 + 100 ms of waiting: throttling is short-lived, and a
        // catch-up posting to many conversations must not stall on one.
        Self {
            attempts: 3,
            base: Duration::from_millis(50),
            cap: Duration::from_millis(400),
        }
    }
}

impl RetryPolicy {
    /// Full jitter: posters throttled together by the account-wide limit
    /// come back spread over the whole window.
    fn backoff(&self) -> Backoff {
        Backoff::full(self.base, self.cap)
    }
}

/// What one failed call means.
#[derive(Debug, PartialEq, Eq)]
enum Failure {
    Gone,
    TooLarge,
    /// 429 or 5xx: worth another try.
    Retryable(String),
    Fatal(String),
}

impl From<Failure> for PostError {
    fn from(f: Failure) -> Self {
        match f {
            Failure::Gone => PostError::Gone,
            Failure::TooLarge => PostError::PayloadTooLarge,
            Failure::Retryable(m) | Failure::Fatal(m) => PostError::Unavailable(m),
        }
    }
}

/// Maps by error code first and HTTP status second: API Gateway sends
/// `x-amzn-ErrorType`, but a proxy (or the local gateway) may send only the
/// status.
fn classify<E>(err: &SdkError<E>) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let status = err.raw_response().map(|r| r.status().as_u16());
    let code = err.code();
    let text = || match status {
        Some(s) => format!("{s}: {}", DisplayErrorContext(err)),
        None => DisplayErrorContext(err).to_string(),
    };
    match (code, status) {
        (Some("GoneException"), _) | (_, Some(410)) => Failure::Gone,
        (Some("PayloadTooLargeException"), _) | (_, Some(413)) => Failure::TooLarge,
        (Some("LimitExceededException"), _) | (_, Some(429)) => Failure::Retryable(text()),
        (_, Some(s)) if (500..600).contains(&s) => Failure::Retryable(text()),
        _ => Failure::Fatal(text()),
    }
}

fn millis(t: Option<&DateTime>) -> Option<Millis> {
    t.and_then(|t| t.to_millis().ok())
}

/// [`Gateway`] over the API Gateway Management API.
#[derive(Debug, Clone)]
pub struct ApiGatewayManagement {
    client: Client,
    retry: RetryPolicy,
}

impl ApiGatewayManagement {
    pub fn new(client: Client) -> Self {
        Self {
            client,
            retry: RetryPolicy::default(),
        }
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Calls `op` until it succeeds, fails for good, or runs out of attempts.
    async fn call<T, E, F, Fut>(&self, op: &'static str, mut f: F) -> Result<T, Failure>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, SdkError<E>>>,
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let attempts = self.retry.attempts.max(1);
        let mut retry = 0;
        loop {
            let failure = match f().await {
                Ok(v) => return Ok(v),
                Err(e) => classify(&e),
            };
            match failure {
                Failure::Retryable(reason) if retry + 1 < attempts => {
                    let delay = self.retry.backoff().delay(retry);
                    tracing::debug!(op, %reason, retry, delay_ms = delay.as_millis() as u64, "retrying @connections call");
                    tokio::time::sleep(delay).await;
                    retry += 1;
                }
                other => return Err(other),
            }
        }
    }
}

#[async_trait]
impl Gateway for ApiGatewayManagement {
    async fn post(&self, connection: &ConnectionId, data: &[u8]) -> Result<(), PostError> {
        self.call("post", || {
            self.client
                .post_to_connection()
                .connection_id(connection.as_str())
                .data(Blob::new(data))
                .send()
        })
        .await
        .map(|_| ())
        .map_err(PostError::from)
    }

    async fn get(&self, connection: &ConnectionId) -> Result<Option<ConnectionInfo>, PostError> {
        let result = self
            .call("get", || {
                self.client
                    .get_connection()
                    .connection_id(connection.as_str())
                    .send()
            })
            .await;
        match result {
            Ok(out) => Ok(Some(ConnectionInfo {
                connected_at: millis(out.connected_at()),
                last_active_at: millis(out.last_active_at()),
                source_ip: out
                    .identity()
                    .and_then(|i| i.source_ip())
                    .map(str::to_owned),
            })),
            Err(Failure::Gone) => Ok(None),
            Err(other) => Err(other.into()),
        }
    }

    async fn delete(&self, connection: &ConnectionId) -> Result<(), PostError> {
        self.call("delete", || {
            self.client
                .delete_connection()
                .connection_id(connection.as_str())
                .send()
        })
        .await
        .map(|_| ())
        .map_err(PostError::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jittered_delay_stays_under_its_ceiling() {
        let p = RetryPolicy::default();
        assert_eq!(p.backoff(), Backoff::full(p.base, p.cap));
        for retry in 0..40 {
            let ceiling = (p.base * 2u32.saturating_pow(retry.min(20))).min(p.cap);
            for _ in 0..20 {
                assert!(p.backoff().delay(retry) <= ceiling);
            }
        }
    }
}
