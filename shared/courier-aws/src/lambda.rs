//! The [`CatchUpTrigger`] over Lambda's asynchronous invoke.
//!
//! `connect` must answer API Gateway quickly and must not post to its own
//! connection (410 until `$connect` returns), so it hands the catch-up to
//! another function with `InvocationType=Event`: Lambda queues the event,
//! answers 202 and runs catch-up on its own. The payload is the
//! [`CatchUpRequest`] JSON, exactly what the catch-up handler parses.
//!
//! Lambda may deliver an `Event` invocation more than once; catch-up is
//! idempotent (docs/architecture.md, delivery rules), so this side does nothing about it. Errors are the
//! caller's to log: a failed trigger leaves the client to ask with `sync`.

use async_trait::async_trait;
use aws_sdk_lambda::Client;
use aws_sdk_lambda::error::DisplayErrorContext;
use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::InvocationType;

use courier_core::ports::{CatchUpRequest, CatchUpTrigger, TriggerError};

/// [`CatchUpTrigger`] that invokes the catch-up function asynchronously.
#[derive(Debug, Clone)]
pub struct LambdaTrigger {
    client: Client,
    /// Name, ARN or partial ARN of the catch-up function (`CATCH_UP_FUNCTION`).
    function: String,
}

impl LambdaTrigger {
    pub fn new(client: Client, function: impl Into<String>) -> Self {
        Self {
            client,
            function: function.into(),
        }
    }
}

#[async_trait]
impl CatchUpTrigger for LambdaTrigger {
    async fn trigger(&self, request: &CatchUpRequest) -> Result<(), TriggerError> {
        let payload = serde_json::to_vec(request)
            .map_err(|e| TriggerError(format!("encoding the request: {e}")))?;
        let out = self
            .client
            .invoke()
            .function_name(&self.function)
            .invocation_type(InvocationType::Event)
            .payload(Blob::new(payload))
            .send()
            .await
            .map_err(|e| TriggerError(DisplayErrorContext(&e).to_string()))?;
        // An Event invoke answers 202; anything else means it was not queued.
        if out.status_code() != 202 {
            return Err(TriggerError(format!(
                "invoke answered {} instead of 202",
                out.status_code()
            )));
        }
        if let Some(error) = out.function_error() {
            return Err(TriggerError(format!("function error: {error}")));
        }
        Ok(())
    }
}
