//! Push notifications, recorded instead of sent.
//!
//! No APNs or FCM is reachable from a laptop or a test, so the local gateway
//! wires this `Notifier`: each publish is logged (conversation, sender, seq;
//! the preview only at debug, since it is message text) and kept for
//! `GET /_local/pushes`. Endpoint ARNs encode platform and token, so an
//! endpoint stored in DynamoDB by an earlier run still publishes after a
//! restart.

use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use courier_core::domain::{Platform, UserId, now_millis};
use courier_core::ports::{Notifier, PushError, PushMessage};
use serde::Serialize;

/// One push the gateway would have sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordedPush {
    pub endpoint_arn: String,
    pub platform: String,
    pub token: String,
    pub message: PushMessage,
    pub at: i64,
}

const ARN_PREFIX: &str = "arn:local:sns:endpoint/";

/// The recording notifier; clones share one record.
#[derive(Clone, Default)]
pub struct RecordingNotifier {
    sent: Arc<Mutex<Vec<RecordedPush>>>,
}

impl RecordingNotifier {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<RecordedPush>> {
        self.sent.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every push so far, oldest first.
    pub fn sent(&self) -> Vec<RecordedPush> {
        self.lock().clone()
    }
}

#[async_trait]
impl Notifier for RecordingNotifier {
    async fn create_endpoint(
        &self,
        platform: Platform,
        token: &str,
        _user: &UserId,
    ) -> Result<String, PushError> {
        Ok(format!("{ARN_PREFIX}{}/{token}", platform.as_str()))
    }

    async fn publish(&self, endpoint_arn: &str, message: &PushMessage) -> Result<(), PushError> {
        let Some((platform, token)) = endpoint_arn
            .strip_prefix(ARN_PREFIX)
            .and_then(|rest| rest.split_once('/'))
        else {
            return Err(PushError::EndpointDisabled);
        };
        tracing::info!(
            platform,
            conversation_id = %message.conversation_id,
            sender_id = %message.sender_id,
            seq = %message.seq,
            "push recorded"
        );
        tracing::debug!(preview = ?message.preview, "push preview");
        self.lock().push(RecordedPush {
            endpoint_arn: endpoint_arn.to_owned(),
            platform: platform.to_owned(),
            token: token.to_owned(),
            message: message.clone(),
            at: now_millis(),
        });
        Ok(())
    }

    async fn delete_endpoint(&self, _endpoint_arn: &str) -> Result<(), PushError> {
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use courier_core::domain::{ConversationId, Seq};

    #[tokio::test]
    async fn publishes_to_its_own_endpoints_are_recorded() {
        let n = RecordingNotifier::new();
        let bob = UserId::parse("bob").unwrap();
        let arn = n
            .create_endpoint(Platform::Fcm, "tok-1", &bob)
            .await
            .unwrap();
        let msg = PushMessage {
            conversation_id: ConversationId::parse("c1").unwrap(),
            sender_id: UserId::parse("alice").unwrap(),
            seq: Seq(1),
            preview: Some("alice: hi".into()),
        };
        n.publish(&arn, &msg).await.unwrap();
        assert_eq!(
            n.publish("arn:aws:sns:other", &msg).await,
            Err(PushError::EndpointDisabled)
        );
        let sent = n.sent();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].platform, "fcm");
        assert_eq!(sent[0].token, "tok-1");
    }
}
