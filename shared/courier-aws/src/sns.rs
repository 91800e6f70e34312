//! The [`Notifier`] over SNS mobile push (APNs and FCM).
//!
//! **Endpoints.** A device token becomes an SNS platform endpoint under the
//! platform application configured for its platform (`SNS_APNS_APP_ARN`,
//! `SNS_APNS_SANDBOX_APP_ARN`, `SNS_FCM_APP_ARN`; none configured →
//! [`PushError::PlatformNotConfigured`]). `CustomUserData` holds the user id.
//! [`SnsNotifier::create_endpoint`] follows SNS's documented token-management
//! flow, so registering is idempotent and heals stale state:
//!
//! 1. `CreatePlatformEndpoint`. If SNS answers that an endpoint with this
//!    token "already exists with the same Token, but different attributes"
//!    (another user, or disabled), the error message names its ARN: reuse it.
//! 2. `GetEndpointAttributes`; if the endpoint is disabled (APNs/FCM rejected
//!    the token once), holds another token, or another user, then
//!    `SetEndpointAttributes` with the token, `Enabled=true` and the user.
//! 3. If the endpoint vanished between 1 and 2, start over once.
//!
//! **Payloads.** `MessageStructure=json` with one payload per platform key
//! (`APNS`, `APNS_SANDBOX`, `GCM`) so SNS picks the endpoint's own, and a
//! `default` for completeness. See [`PushPayload::build`] for the keys. One
//! banner per conversation: on iOS the message attribute
//! `AWS.SNS.MOBILE.APNS.COLLAPSE_ID` (APNs' `apns-collapse-id`) = conversation
//! id and `thread-id` groups; on Android `android.collapse_key` collapses
//! queued pushes and `android.notification.tag` replaces the shown one.
//! Under `PUSH_PREVIEW=none` the service passes no preview, and no message
//! text appears anywhere: the banner says "New message".
//!
//! **Errors.** `EndpointDisabled`, `NotFound` (or "no endpoint found") →
//! [`PushError::EndpointDisabled`]: the caller forgets the device rather than
//! retrying forever. Everything else → [`PushError::Unavailable`]; the SDK's
//! standard retry already covered throttling and 5xx.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_sns::Client;
use aws_sdk_sns::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sns::types::MessageAttributeValue;
use serde_json::json;

use courier_core::config::PushConfig;
use courier_core::domain::{Platform, UserId};
use courier_core::ports::{Notifier, PushError, PushMessage};

/// Shown when the preview is off (or empty).
pub const GENERIC_ALERT: &str = "New message";

/// Longest preview put in a payload, in bytes. APNs and FCM refuse payloads
/// over 4 KB, and the FCM payload carries the preview twice.
pub const MAX_PREVIEW_BYTES: usize = 512;

pub const APNS_COLLAPSE_ID: &str = "AWS.SNS.MOBILE.APNS.COLLAPSE_ID";
pub const APNS_PUSH_TYPE: &str = "AWS.SNS.MOBILE.APNS.PUSH_TYPE";

/// What is handed to SNS `Publish` for one push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushPayload {
    /// The `Message` parameter (`MessageStructure=json`).
    pub message: String,
    /// `MessageAttributes` (all of type String).
    pub attributes: Vec<(&'static str, String)>,
}

/// Cuts `s` to at most `max` bytes on a character boundary, marking the cut.
fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

impl PushPayload {
    /// The per-platform payloads of `m`:
    ///
    /// - `APNS` / `APNS_SANDBOX`: `aps.alert` (the preview or
    ///   [`GENERIC_ALERT`]), `aps.thread-id` = conversation id,
    ///   `aps.sound`, and the custom keys `conversation_id`, `sender_id`,
    ///   `seq` beside `aps`.
    /// - `GCM` (FCM HTTP v1 via `fcmV1Message`): `notification.body`,
    ///   `data` {`conversation_id`, `sender_id`, `seq`, and `preview` only
    ///   when there is one} (FCM data values are strings), and
    ///   `android.collapse_key` / `android.notification.tag` = conversation id.
    pub fn build(m: &PushMessage) -> PushPayload {
        let preview = m
            .preview
            .as_deref()
            .filter(|p| !p.trim().is_empty())
            .map(|p| truncate(p, MAX_PREVIEW_BYTES));
        let alert = preview.clone().unwrap_or_else(|| GENERIC_ALERT.to_owned());
        let conversation = m.conversation_id.as_str();

        let apns = json!({
            "aps": {
                "alert": alert,
                "thread-id": conversation,
                "sound": "default",
            },
            "conversation_id": conversation,
            "sender_id": m.sender_id.as_str(),
            "seq": m.seq.get(),
        })
        .to_string();

        let mut data = serde_json::Map::new();
        data.insert("conversation_id".into(), json!(conversation));
        data.insert("sender_id".into(), json!(m.sender_id.as_str()));
        data.insert("seq".into(), json!(m.seq.get().to_string()));
        if let Some(p) = &preview {
            data.insert("preview".into(), json!(p));
        }
        let gcm = json!({
            "fcmV1Message": {
                "message": {
                    "notification": { "body": alert },
                    "data": data,
                    "android": {
                        "collapse_key": conversation,
                        "priority": "HIGH",
                        "notification": { "tag": conversation },
                    },
                },
            },
        })
        .to_string();

        let message = json!({
            "default": alert,
            "APNS": apns,
            "APNS_SANDBOX": apns,
            "GCM": gcm,
        })
        .to_string();

        PushPayload {
            message,
            attributes: vec![
                (APNS_COLLAPSE_ID, conversation.to_owned()),
                (APNS_PUSH_TYPE, "alert".to_owned()),
            ],
        }
    }
}

/// The endpoint ARN named by SNS's "Endpoint … already exists with the same
/// Token, but different attributes" error.
fn existing_endpoint_arn(message: &str) -> Option<String> {
    if !message.contains("already exists") {
        return None;
    }
    message
        .split_whitespace()
        .find(|w| w.starts_with("arn:") && w.contains(":endpoint/"))
        .map(|w| w.trim_end_matches(['.', ',']).to_owned())
}

/// True if the error says the endpoint is disabled or gone.
fn endpoint_dead<E: ProvideErrorMetadata>(err: &E) -> bool {
    match err.code() {
        Some("EndpointDisabled") | Some("NotFound") => true,
        Some("InvalidParameter") => err
            .message()
            .is_some_and(|m| m.contains("No endpoint found") || m.contains("does not exist")),
        _ => false,
    }
}

fn unavailable<E>(op: &str, err: &SdkError<E>) -> PushError
where
    E: std::error::Error + 'static,
{
    PushError::Unavailable(format!("sns {op}: {}", DisplayErrorContext(err)))
}

/// Why [`SnsNotifier::refresh`] did not succeed.
enum Refresh {
    /// The endpoint was deleted in the meantime.
    Vanished,
    Failed(PushError),
}

/// [`Notifier`] over SNS mobile push.
#[derive(Debug, Clone)]
pub struct SnsNotifier {
    client: Client,
    config: PushConfig,
}

impl SnsNotifier {
    pub fn new(client: Client, config: PushConfig) -> Self {
        Self { client, config }
    }

    fn application(&self, platform: Platform) -> Result<&str, PushError> {
        let arn = match platform {
            Platform::Apns => &self.config.apns_app_arn,
            Platform::ApnsSandbox => &self.config.apns_sandbox_app_arn,
            Platform::Fcm => &self.config.fcm_app_arn,
        };
        arn.as_deref()
            .ok_or(PushError::PlatformNotConfigured(platform.as_str()))
    }

    /// Step 1: create, or find the endpoint SNS says already holds the token.
    async fn create_or_find(
        &self,
        application: &str,
        token: &str,
        user: &UserId,
    ) -> Result<String, PushError> {
        let result = self
            .client
            .create_platform_endpoint()
            .platform_application_arn(application)
            .token(token)
            .custom_user_data(user.as_str())
            .send()
            .await;
        match result {
            Ok(out) => out
                .endpoint_arn()
                .map(str::to_owned)
                .ok_or_else(|| PushError::Unavailable("sns returned no EndpointArn".into())),
            Err(e) => match e.message().and_then(existing_endpoint_arn) {
                Some(arn) => Ok(arn),
                None => Err(unavailable("CreatePlatformEndpoint", &e)),
            },
        }
    }

    /// Step 2: make the endpoint enabled, with this token and this user.
    async fn refresh(&self, arn: &str, token: &str, user: &UserId) -> Result<(), Refresh> {
        let attrs = match self
            .client
            .get_endpoint_attributes()
            .endpoint_arn(arn)
            .send()
            .await
        {
            Ok(out) => out.attributes().cloned().unwrap_or_default(),
            Err(e) if endpoint_dead(&e) => return Err(Refresh::Vanished),
            Err(e) => return Err(Refresh::Failed(unavailable("GetEndpointAttributes", &e))),
        };
        let is = |k: &str, v: &str| attrs.get(k).is_some_and(|a| a.eq_ignore_ascii_case(v));
        if is("Enabled", "true") && is("Token", token) && is("CustomUserData", user.as_str()) {
            return Ok(());
        }
        tracing::info!(
            endpoint_arn = arn,
            "re-enabling push endpoint with current token and user"
        );
        match self
            .client
            .set_endpoint_attributes()
            .endpoint_arn(arn)
            .attributes("Token", token)
            .attributes("Enabled", "true")
            .attributes("CustomUserData", user.as_str())
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if endpoint_dead(&e) => Err(Refresh::Vanished),
            Err(e) => Err(Refresh::Failed(unavailable("SetEndpointAttributes", &e))),
        }
    }
}

#[async_trait]
impl Notifier for SnsNotifier {
    async fn create_endpoint(
        &self,
        platform: Platform,
        token: &str,
        user: &UserId,
    ) -> Result<String, PushError> {
        let application = self.application(platform)?;
        if token.trim().is_empty() {
            return Err(PushError::Unavailable("empty device token".into()));
        }
        // Twice at most: a concurrent delete between create and refresh.
        let mut last = PushError::Unavailable("endpoint vanished while registering".into());
        for _ in 0..2 {
            let arn = self.create_or_find(application, token, user).await?;
            match self.refresh(&arn, token, user).await {
                Ok(()) => return Ok(arn),
                Err(Refresh::Vanished) => continue,
                Err(Refresh::Failed(e)) => {
                    last = e;
                    break;
                }
            }
        }
        Err(last)
    }

    async fn publish(&self, endpoint_arn: &str, message: &PushMessage) -> Result<(), PushError> {
        let payload = PushPayload::build(message);
        let mut attributes = HashMap::new();
        for (name, value) in payload.attributes {
            let value = MessageAttributeValue::builder()
                .data_type("String")
                .string_value(value)
                .build()
                .map_err(|e| PushError::Unavailable(format!("message attribute: {e}")))?;
            attributes.insert(name.to_owned(), value);
        }
        match self
            .client
            .publish()
            .target_arn(endpoint_arn)
            .message_structure("json")
            .message(payload.message)
            .set_message_attributes(Some(attributes))
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if endpoint_dead(&e) => Err(PushError::EndpointDisabled),
            Err(e) => Err(unavailable("Publish", &e)),
        }
    }

    async fn delete_endpoint(&self, endpoint_arn: &str) -> Result<(), PushError> {
        match self
            .client
            .delete_endpoint()
            .endpoint_arn(endpoint_arn)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            // Already gone is what we wanted.
            Err(e) if endpoint_dead(&e) => Ok(()),
            Err(e) => Err(unavailable("DeleteEndpoint", &e)),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use courier_core::domain::{ConversationId, Seq};
    use serde_json::Value;

    fn message(preview: Option<&str>) -> PushMessage {
        PushMessage {
            conversation_id: ConversationId::parse("conv_abc123").unwrap(),
            sender_id: UserId::parse("alice").unwrap(),
            seq: Seq(44),
            preview: preview.map(str::to_owned),
        }
    }

    fn platforms(p: &PushPayload) -> (Value, Value, Value) {
        let outer: Value = serde_json::from_str(&p.message).unwrap();
        let apns: Value = serde_json::from_str(outer["APNS"].as_str().unwrap()).unwrap();
        let gcm: Value = serde_json::from_str(outer["GCM"].as_str().unwrap()).unwrap();
        (outer, apns, gcm)
    }

    #[test]
    fn apns_payload_carries_alert_thread_and_custom_keys() {
        let p = PushPayload::build(&message(Some("alice: hello??")));
        let (outer, apns, _) = platforms(&p);
        assert_eq!(outer["APNS"], outer["APNS_SANDBOX"]);
        assert_eq!(outer["default"], "alice: hello??");
        assert_eq!(apns["aps"]["alert"], "alice: hello??");
        assert_eq!(apns["aps"]["thread-id"], "conv_abc123");
        assert_eq!(apns["conversation_id"], "conv_abc123");
        assert_eq!(apns["sender_id"], "alice");
        assert_eq!(apns["seq"], 44);
        assert!(
            p.attributes
                .contains(&(APNS_COLLAPSE_ID, "conv_abc123".into()))
        );
        assert!(p.attributes.contains(&(APNS_PUSH_TYPE, "alert".into())));
    }

    #[test]
    fn fcm_payload_collapses_per_conversation_with_string_data() {
        let p = PushPayload::build(&message(Some("alice: hello??")));
        let (_, _, gcm) = platforms(&p);
        let m = &gcm["fcmV1Message"]["message"];
        assert_eq!(m["android"]["collapse_key"], "conv_abc123");
        assert_eq!(m["android"]["notification"]["tag"], "conv_abc123");
        assert_eq!(m["data"]["conversation_id"], "conv_abc123");
        assert_eq!(m["data"]["sender_id"], "alice");
        assert_eq!(m["data"]["seq"], "44");
        assert_eq!(m["data"]["preview"], "alice: hello??");
        assert_eq!(m["notification"]["body"], "alice: hello??");
    }

    #[test]
    fn preview_none_puts_no_text_anywhere() {
        let p = PushPayload::build(&message(None));
        assert!(!p.message.contains("hello"));
        let (outer, apns, gcm) = platforms(&p);
        assert_eq!(outer["default"], GENERIC_ALERT);
        assert_eq!(apns["aps"]["alert"], GENERIC_ALERT);
        let m = &gcm["fcmV1Message"]["message"];
        assert_eq!(m["notification"]["body"], GENERIC_ALERT);
        assert!(m["data"].get("preview").is_none());
        assert_eq!(m["data"]["seq"], "44");
    }

    #[test]
    fn long_previews_are_cut_on_a_char_boundary() {
        let long = "é".repeat(2000);
        let p = PushPayload::build(&message(Some(&long)));
        let (_, apns, _) = platforms(&p);
        let alert = apns["aps"]["alert"].as_str().unwrap();
        assert!(alert.len() <= MAX_PREVIEW_BYTES);
        assert!(alert.ends_with('…'));
    }

    #[test]
    fn existing_endpoint_is_read_from_the_error() {
        let msg = "Invalid parameter: Token Reason: Endpoint arn:aws:sns:us-east-1:123456789012:endpoint/GCM/app/1a2b already exists with the same Token, but different attributes.";
        assert_eq!(
            existing_endpoint_arn(msg).as_deref(),
            Some("arn:aws:sns:us-east-1:123456789012:endpoint/GCM/app/1a2b")
        );
        assert_eq!(existing_endpoint_arn("Invalid parameter: Token"), None);
    }

    #[test]
    fn unconfigured_platform_is_named() {
        let conf = aws_sdk_sns::Config::builder()
            .behavior_version(aws_sdk_sns::config::BehaviorVersion::latest())
            .build();
        let n = SnsNotifier::new(Client::from_conf(conf), PushConfig::default());
        assert_eq!(
            n.application(Platform::Fcm),
            Err(PushError::PlatformNotConfigured("fcm"))
        );
    }
}
