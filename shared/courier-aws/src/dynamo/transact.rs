//! `TransactWriteItems` for the writes that are not an append (links,
//! conversation creation): one place that sorts a cancellation into "a
//! condition said no" (returned, with the reasons by position) and "try
//! again" (conflicts, throttling), and keeps the request token across
//! attempts whose outcome is unknown.

use std::sync::Mutex;

use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{CancellationReason, TransactWriteItem};

use courier_core::ports::StoreError;

use super::DynamoStore;
use super::retry::{Failure, failure};

/// Actions one `TransactWriteItems` may hold.
pub(super) const MAX_TRANSACT_ACTIONS: usize = 100;

/// Reason codes that mean "the transaction lost a race or was throttled":
/// nothing was written and the same transaction may be tried again.
const RETRYABLE_REASONS: [&str; 4] = [
    "TransactionConflict",
    "ThrottlingError",
    "ProvisionedThroughputExceeded",
    "RequestLimitExceeded",
];

/// Which actions of a cancelled transaction failed their condition, by
/// position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Refused(Vec<bool>);

impl Refused {
    fn from_reasons(reasons: &[CancellationReason]) -> Self {
        Refused(
            reasons
                .iter()
                .map(|r| r.code() == Some("ConditionalCheckFailed"))
                .collect(),
        )
    }

    /// Whether action `i` failed its condition.
    pub(super) fn failed(&self, i: usize) -> bool {
        self.0.get(i).copied().unwrap_or(false)
    }
}

impl DynamoStore {
    /// Runs one transaction: `Ok(None)` if it committed, `Ok(Some(refused))`
    /// if a condition cancelled it (nothing was written).
    pub(super) async fn transact(
        &self,
        op: &'static str,
        actions: Vec<TransactWriteItem>,
    ) -> Result<Option<Refused>, StoreError> {
        if actions.len() > MAX_TRANSACT_ACTIONS {
            return Err(StoreError::Unavailable(format!(
                "{op}: {} actions, DynamoDB allows {MAX_TRANSACT_ACTIONS}",
                actions.len()
            )));
        }
        // The same token while the outcome is unknown (timeout, 5xx): an
        // attempt that did commit answers its retry with success rather than
        // with a cancellation by its own writes. A cancelled attempt wrote
        // nothing, so its retry gets a fresh token.
        let token = Mutex::new(uuid::Uuid::new_v4().to_string());
        let current = || token.lock().unwrap_or_else(|e| e.into_inner()).clone();
        self.retrying(op, || {
            let req = self
                .client
                .transact_write_items()
                .set_transact_items(Some(actions.clone()))
                .client_request_token(current());
            let token = &token;
            async move {
                let e = match req.send().await {
                    Ok(_) => return Ok(None),
                    Err(e) => e,
                };
                let reasons = match &e {
                    SdkError::ServiceError(se) => match se.err() {
                        TransactWriteItemsError::TransactionCanceledException(c) => {
                            Some(c.cancellation_reasons().to_vec())
                        }
                        _ => None,
                    },
                    _ => None,
                };
                let Some(reasons) = reasons else {
                    return Err(failure(op, e));
                };
                if let Some(r) = reasons
                    .iter()
                    .find(|r| r.code().is_some_and(|c| RETRYABLE_REASONS.contains(&c)))
                {
                    *token.lock().unwrap_or_else(|p| p.into_inner()) =
                        uuid::Uuid::new_v4().to_string();
                    return Err(Failure::Retry(StoreError::Throttled(format!(
                        "{op} cancelled: {}",
                        r.code().unwrap_or("?")
                    ))));
                }
                let refused = Refused::from_reasons(&reasons);
                if refused.0.iter().any(|f| *f) {
                    return Ok(Some(refused));
                }
                let codes: Vec<&str> = reasons.iter().map(|r| r.code().unwrap_or("None")).collect();
                Err(Failure::Fatal(StoreError::Unavailable(format!(
                    "{op} cancelled: [{}]",
                    codes.join(", ")
                ))))
            }
        })
        .await
    }
}
