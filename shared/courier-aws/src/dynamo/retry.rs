//! Errors and retries: which SDK failures are worth another try, and the
//! loop that tries again.
//!
//! Throttling, transaction conflicts, 5xx answers, timeouts and dropped
//! connections are transient; anything else (a validation error, a missing
//! table, a refused permission) fails at once, since retrying cannot fix it.
//! The retry runs here rather than in the SDK because some of what it
//! retries the SDK never sees as an error of its own: a transaction
//! cancelled for `TransactionConflict` (read from its cancellation reasons,
//! with a fresh request token each time), and `BatchGetItem` keys left
//! unprocessed.

use std::future::Future;
use std::time::Duration;

use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{BuildError, ProvideErrorMetadata, SdkError};
use aws_smithy_types::error::display::DisplayErrorContext;
use tracing::{debug, warn};

use courier_core::backoff::Backoff;
use courier_core::ports::StoreError;

use super::DynamoStore;

/// How hard the adapter retries throttling and transient faults before it
/// gives up with `Throttled` or `Unavailable`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Backoff before the second attempt; doubles each time.
    pub base_delay: Duration,
    /// Longest single backoff.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// Five attempts over at most ~1.5 s: long enough to ride out a burst of
    /// throttling, short enough to stay well inside API Gateway's 29 s.
    fn default() -> Self {
        Self {
            max_attempts: 5,
            base_delay: Duration::from_millis(25),
            max_delay: Duration::from_millis(800),
        }
    }
}

impl RetryPolicy {
    /// Full jitter: callers that were throttled together do not come back
    /// together.
    pub(super) fn backoff(&self) -> Backoff {
        Backoff::full(self.base_delay, self.max_delay)
    }
}

/// Why one attempt failed: worth another try, or not.
#[derive(Debug)]
pub(super) enum Failure {
    Retry(StoreError),
    Fatal(StoreError),
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Fatal(e)
    }
}

impl DynamoStore {
    /// Runs `attempt` until it succeeds, fails for good, or the retry budget
    /// is spent.
    pub(super) async fn retrying<T, F, Fut>(
        &self,
        op: &'static str,
        attempt: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        self.retry.run(op, attempt).await
    }
}

impl RetryPolicy {
    /// Runs `attempt` until it succeeds, fails for good, or this policy's
    /// attempts are spent (the store's calls and the registry's share it).
    pub(super) async fn run<T, F, Fut>(
        &self,
        op: &'static str,
        mut attempt: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let mut n = 0;
        loop {
            match attempt().await {
                Ok(v) => return Ok(v),
                Err(Failure::Retry(e)) if n + 1 < self.max_attempts => {
                    let delay = self.backoff().delay(n);
                    debug!(op, attempt = n + 1, ?delay, error = %e, "dynamodb: retrying");
                    tokio::time::sleep(delay).await;
                    n += 1;
                }
                Err(Failure::Retry(e)) => {
                    warn!(op, attempts = n + 1, error = %e, "dynamodb: giving up after retries");
                    return Err(e);
                }
                Err(Failure::Fatal(e)) => return Err(e),
            }
        }
    }
}

pub(super) fn build_err(e: BuildError) -> StoreError {
    StoreError::Unavailable(format!("request could not be built: {e}"))
}

pub(super) fn is_condition_failure<E: ProvideErrorMetadata>(e: &SdkError<E, HttpResponse>) -> bool {
    e.code() == Some("ConditionalCheckFailedException")
}

/// Sorts an SDK error into "try again" (throttling, conflicts, 5xx, network)
/// and "give up".
pub(super) fn failure<E>(op: &'static str, e: SdkError<E, HttpResponse>) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match &e {
        SdkError::ConstructionFailure(_) => Failure::Fatal(StoreError::Unavailable(format!(
            "{op}: {}",
            DisplayErrorContext(&e)
        ))),
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            Failure::Retry(StoreError::Unavailable(format!(
                "{op}: {}",
                DisplayErrorContext(&e)
            )))
        }
        _ => {
            let code = e.code().unwrap_or("Unknown");
            let text = format!("{op}: {code}: {}", e.message().unwrap_or(""));
            let status = e.raw_response().map(|r| r.status().as_u16()).unwrap_or(0);
            match code {
                "ProvisionedThroughputExceededException"
                | "ThrottlingException"
                | "RequestLimitExceeded"
                | "TransactionConflictException"
                | "TransactionInProgressException" => Failure::Retry(StoreError::Throttled(text)),
                "InternalServerError" | "ServiceUnavailable" => {
                    Failure::Retry(StoreError::Unavailable(text))
                }
                _ if status >= 500 => Failure::Retry(StoreError::Unavailable(text)),
                _ => Failure::Fatal(StoreError::Unavailable(text)),
            }
        }
    }
}

/// An SDK error of a one-off call (table creation) as a store error.
pub(super) fn sdk_err<E>(op: &'static str, e: SdkError<E, HttpResponse>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match failure(op, e) {
        Failure::Retry(e) | Failure::Fatal(e) => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded_and_jittered() {
        let p = RetryPolicy::default();
        assert_eq!(p.backoff(), Backoff::full(p.base_delay, p.max_delay));
        for attempt in 0..40 {
            assert!(p.backoff().delay(attempt) <= p.max_delay);
        }
        let mut seen: Vec<Duration> = (0..50).map(|_| p.backoff().delay(3)).collect();
        seen.sort();
        seen.dedup();
        assert!(seen.len() > 1, "no jitter: {seen:?}");
    }
}
