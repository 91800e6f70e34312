//! Push notifications to a user's devices (docs/architecture.md: the reconnect flow, phase 1).
//!
//! A recipient the send path could not reach live gets one push per
//! registered device. The payload is what the phone's OS needs to show a
//! banner and what the app needs to open the right conversation:
//! `conversation_id`, `sender_id`, `seq` and a preview. The notifier adapter
//! turns it into APNs/FCM payloads with collapse id = conversation id, so a
//! burst of messages leaves one banner showing the latest.
//!
//! Push is best effort by contract: the message is already stored with its
//! pending rows, so nothing here can fail a send. Errors are logged; a
//! disabled endpoint (uninstalled app, expired token) is forgotten — device
//! record and SNS endpoint both — so it is not retried on every message.

use futures::future::join_all;
use tracing::{debug, info, instrument, warn};

use crate::app::Ports;
use crate::config::{PushConfig, PushPreview};
use crate::domain::{Device, DeviceId, Message, UserId};
use crate::ports::{PushError, PushMessage};
use crate::telemetry;

/// Longest preview, in characters (not bytes), ellipsis included. Banners
/// show about two lines; a longer text only costs payload bytes (APNs allows
/// 4 KB in all) and reveals more of the message on a lock screen.
pub const PREVIEW_CHARS: usize = 100;

/// "alice: hello??", cut to [`PREVIEW_CHARS`] characters on a char
/// boundary; `None` under `PUSH_PREVIEW=none`, so no message text leaves
/// the backend at all.
pub fn preview(config: &PushConfig, sender: &UserId, body: &str) -> Option<String> {
    match config.preview {
        PushPreview::None => None,
        PushPreview::Full => Some(truncate_chars(&format!("{sender}: {body}"), PREVIEW_CHARS)),
    }
}

/// At most `max` characters; a cut text ends with "…" (counted in `max`).
fn truncate_chars(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// The push for `message`, as its recipients get it.
pub fn push_message(config: &PushConfig, message: &Message) -> PushMessage {
    PushMessage {
        conversation_id: message.conversation_id.clone(),
        sender_id: message.sender_id.clone(),
        seq: message.seq,
        preview: preview(config, &message.sender_id, &message.body),
    }
}

/// What pushing to one user did, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PushReport {
    /// Devices the notifier accepted the push for.
    pub sent: usize,
    /// Disabled endpoints removed (device record and endpoint).
    pub cleaned: usize,
    /// Devices whose push failed for another reason (logged, not retried).
    pub failed: usize,
}

/// Pushes `message` to every push-registered device of `user` but those
/// in `reached` (they got it live), concurrently. `None` when no device
/// needed one (all reached, or none registered). Never fails: see the
/// module doc.
#[instrument(skip_all, fields(user_id = %user, conversation_id = %message.conversation_id, seq = %message.seq))]
pub async fn push_to_user(
    ports: &Ports,
    user: &UserId,
    message: &PushMessage,
    reached: &[DeviceId],
) -> Option<PushReport> {
    let devices = match ports.devices.for_user(user).await {
        Ok(d) => d,
        Err(e) => {
            telemetry::count_outcome(telemetry::PUSHES_FAILED, "devices_unreadable");
            warn!(error = %e, "could not list devices; no push");
            return Some(PushReport {
                failed: 1,
                ..PushReport::default()
            });
        }
    };
    let devices: Vec<Device> = devices
        .into_iter()
        .filter(|d| !reached.contains(&d.device_id))
        .collect();
    if devices.is_empty() {
        debug!("no registered device left to push to");
        return None;
    }
    let outcomes = join_all(devices.iter().map(|d| push_to_device(ports, d, message))).await;
    let mut report = PushReport::default();
    for outcome in outcomes {
        match outcome {
            DeviceOutcome::Sent => report.sent += 1,
            DeviceOutcome::Cleaned => report.cleaned += 1,
            DeviceOutcome::Failed => report.failed += 1,
        }
    }
    Some(report)
}

enum DeviceOutcome {
    Sent,
    Cleaned,
    Failed,
}

async fn push_to_device(ports: &Ports, device: &Device, message: &PushMessage) -> DeviceOutcome {
    match ports.notifier.publish(&device.endpoint_arn, message).await {
        Ok(()) => {
            telemetry::count(telemetry::PUSHES_SENT, 1);
            debug!(platform = device.platform.as_str(), "pushed");
            DeviceOutcome::Sent
        }
        Err(PushError::EndpointDisabled) => {
            telemetry::count_outcome(telemetry::PUSHES_FAILED, "endpoint_disabled");
            forget_device(ports, device).await;
            DeviceOutcome::Cleaned
        }
        Err(e @ PushError::PlatformNotConfigured(_)) => {
            // A deployment without that platform application: nothing to
            // clean up, the device can start working once it is configured.
            telemetry::count_outcome(telemetry::PUSHES_FAILED, "not_configured");
            debug!(platform = device.platform.as_str(), error = %e, "push skipped");
            DeviceOutcome::Failed
        }
        Err(e) => {
            telemetry::count_outcome(telemetry::PUSHES_FAILED, "unavailable");
            warn!(platform = device.platform.as_str(), error = %e, "push failed");
            DeviceOutcome::Failed
        }
    }
}

/// Deletes the device record and its endpoint — unless the token was
/// re-registered since we read it (a fresh registration re-enables the
/// endpoint, and deleting it then would silence a working device).
async fn forget_device(ports: &Ports, device: &Device) {
    match ports.devices.by_token(&device.token).await {
        Ok(Some(current)) if current == *device => {}
        Ok(_) => {
            debug!("disabled endpoint was re-registered meanwhile; kept");
            return;
        }
        Err(e) => {
            warn!(error = %e, "could not re-read disabled device; will retry on the next push");
            return;
        }
    }
    if let Err(e) = ports.devices.delete(&device.token).await {
        warn!(error = %e, "could not delete disabled device");
        return;
    }
    if let Err(e) = ports.notifier.delete_endpoint(&device.endpoint_arn).await {
        // The record is gone, so the endpoint is never published to again;
        // an orphaned disabled endpoint costs nothing.
        warn!(error = %e, "could not delete disabled endpoint");
    }
    info!(
        platform = device.platform.as_str(),
        "disabled push endpoint cleaned up"
    );
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::app::MemoryHandles;
    use crate::domain::{ConversationId, Platform, Seq, now_millis};
    use crate::ports::{DeviceStore, Notifier};

    fn user(s: &str) -> UserId {
        UserId::parse(s).unwrap()
    }

    async fn register(h: &MemoryHandles, u: &UserId, platform: Platform, token: &str) -> Device {
        let arn = h
            .notifier
            .create_endpoint(platform, token, u)
            .await
            .unwrap();
        let d = Device {
            user_id: u.clone(),
            platform,
            token: token.into(),
            endpoint_arn: arn,
            updated_at: now_millis(),
            device_id: Default::default(),
        };
        h.store.put(&d).await.unwrap();
        d
    }

    fn msg() -> PushMessage {
        PushMessage {
            conversation_id: ConversationId::parse("c1").unwrap(),
            sender_id: user("alice"),
            seq: Seq(7),
            preview: Some("alice: hello??".into()),
        }
    }

    #[test]
    fn preview_is_sender_and_text_cut_on_a_char_boundary() {
        let full = PushConfig::default();
        assert_eq!(
            preview(&full, &user("alice"), "hello??").as_deref(),
            Some("alice: hello??")
        );
        // Multi-byte characters: a byte cut would split one and panic.
        let long = "é🎉".repeat(200);
        let p = preview(&full, &user("alice"), &long).unwrap();
        assert_eq!(p.chars().count(), PREVIEW_CHARS);
        assert!(p.starts_with("alice: é🎉"));
        assert!(p.ends_with('…'));
        let exact = "x".repeat(PREVIEW_CHARS - "alice: ".len());
        assert_eq!(
            preview(&full, &user("alice"), &exact).unwrap(),
            format!("alice: {exact}")
        );
    }

    #[test]
    fn preview_none_carries_no_text() {
        let none = PushConfig {
            preview: PushPreview::None,
            ..PushConfig::default()
        };
        assert_eq!(preview(&none, &user("alice"), "secret"), None);
    }

    #[tokio::test]
    async fn pushes_every_device_of_the_user_only() {
        let h = MemoryHandles::new();
        let ports = h.ports();
        let bob = user("bob");
        register(&h, &bob, Platform::Fcm, "tok-bob-1").await;
        register(&h, &bob, Platform::Apns, "tok-bob-2").await;
        register(&h, &user("carol"), Platform::Fcm, "tok-carol").await;
        let report = push_to_user(&ports, &bob, &msg(), &[])
            .await
            .unwrap_or_default();
        assert_eq!(
            report,
            PushReport {
                sent: 2,
                cleaned: 0,
                failed: 0
            }
        );
        let mut tokens: Vec<String> = h.notifier.sent().into_iter().map(|p| p.token).collect();
        tokens.sort();
        assert_eq!(tokens, vec!["tok-bob-1", "tok-bob-2"]);
        assert!(h.notifier.sent().iter().all(|p| p.message == msg()));
    }

    #[tokio::test]
    async fn disabled_endpoint_is_forgotten_not_retried() {
        let h = MemoryHandles::new();
        let ports = h.ports();
        let bob = user("bob");
        let dead = register(&h, &bob, Platform::Fcm, "tok-dead").await;
        register(&h, &bob, Platform::Fcm, "tok-live").await;
        h.notifier.disable(&dead.endpoint_arn);

        let report = push_to_user(&ports, &bob, &msg(), &[])
            .await
            .unwrap_or_default();
        assert_eq!((report.sent, report.cleaned), (1, 1));
        assert_eq!(h.store.by_token("tok-dead").await.unwrap(), None);
        assert!(!h.notifier.endpoint_exists(&dead.endpoint_arn));

        // The next push does not try the dead device again.
        let report = push_to_user(&ports, &bob, &msg(), &[])
            .await
            .unwrap_or_default();
        assert_eq!(
            report,
            PushReport {
                sent: 1,
                cleaned: 0,
                failed: 0
            }
        );
    }

    #[tokio::test]
    async fn notifier_down_is_reported_not_raised() {
        let h = MemoryHandles::new();
        let ports = h.ports();
        let bob = user("bob");
        register(&h, &bob, Platform::Fcm, "tok").await;
        h.notifier.set_down(true);
        let report = push_to_user(&ports, &bob, &msg(), &[])
            .await
            .unwrap_or_default();
        assert_eq!(report.failed, 1);
        // Not a disabled endpoint: the device stays.
        assert!(h.store.by_token("tok").await.unwrap().is_some());
    }
}
