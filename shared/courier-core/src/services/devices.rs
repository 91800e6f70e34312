//! Registering a push device (`registerDevice`).
//!
//! A device token is the phone's address at APNs/FCM; SNS wraps it in a
//! platform endpoint. The device table is keyed by token, so a token belongs
//! to exactly one user: when a phone changes hands (log out, log in as
//! someone else) the token moves with it, and the previous user stops
//! getting that phone's pushes. `Notifier::create_endpoint` is idempotent per
//! token and is handed the new owner (the SNS adapter keeps it in the
//! endpoint's `CustomUserData` and re-enables an endpoint disabled earlier),
//! so a refresh is the same call as a first registration.

use tracing::{info, instrument, warn};

use crate::app::App;
use crate::domain::{Device, Platform, UserId, now_millis};
use crate::ports::{PushError, StoreError};
use crate::protocol::{ErrorCode, FrameError, ServerFrame};
use crate::services::Answer;

/// A server fault while registering; the client may retry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("push service: {0}")]
    Push(#[from] PushError),
}

/// Registers (or refreshes) `token` for `user`; answers `device_registered`,
/// or `bad_request` when this deployment has no platform application for
/// `platform`.
#[instrument(skip_all, fields(user_id = %user, platform = platform.as_str()))]
pub async fn register_device(
    app: &App,
    user: &UserId,
    platform: Platform,
    token: &str,
    request_id: Option<String>,
) -> Result<Answer, DeviceError> {
    let ports = &app.ports;
    let previous = ports.devices.by_token(token).await?;
    let endpoint_arn = match ports.notifier.create_endpoint(platform, token, user).await {
        Ok(arn) => arn,
        Err(PushError::PlatformNotConfigured(p)) => {
            return Ok(Answer::Refused(
                FrameError::new(
                    ErrorCode::BadRequest,
                    format!("push platform {p} is not enabled on this server"),
                )
                .with_request_id(request_id),
            ));
        }
        Err(e) => return Err(e.into()),
    };
    ports
        .devices
        .put(&Device {
            user_id: user.clone(),
            platform,
            token: token.to_owned(),
            endpoint_arn: endpoint_arn.clone(),
            updated_at: now_millis(),
        })
        .await?;
    if let Some(prev) = previous {
        if prev.user_id != *user {
            info!(from_user = %prev.user_id, "device token moved to another user");
        }
        // Same token under another platform application (e.g. a sandbox
        // build replaced by a store build): the old endpoint is dead weight.
        if prev.endpoint_arn != endpoint_arn
            && let Err(e) = ports.notifier.delete_endpoint(&prev.endpoint_arn).await
        {
            warn!(error = %e, "could not delete the replaced endpoint");
        }
    }
    info!("device registered");
    Ok(Answer::Done(ServerFrame::DeviceRegistered {
        platform,
        request_id,
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::ports::DeviceStore;

    fn user(s: &str) -> UserId {
        UserId::parse(s).unwrap()
    }

    #[tokio::test]
    async fn registers_and_refreshes_without_duplicates() {
        let (app, h) = App::in_memory();
        for _ in 0..2 {
            let f = register_device(&app, &user("bob"), Platform::Fcm, "tok", Some("r".into()))
                .await
                .unwrap()
                .into_frame();
            assert_eq!(
                f,
                ServerFrame::DeviceRegistered {
                    platform: Platform::Fcm,
                    request_id: Some("r".into())
                }
            );
        }
        let devices = h.store.for_user(&user("bob")).await.unwrap();
        assert_eq!(devices.len(), 1);
        assert!(h.notifier.endpoint_exists(&devices[0].endpoint_arn));
    }

    #[tokio::test]
    async fn a_token_moves_to_its_new_user() {
        let (app, h) = App::in_memory();
        register_device(&app, &user("bob"), Platform::Apns, "tok", None)
            .await
            .unwrap()
            .into_frame();
        register_device(&app, &user("carol"), Platform::Apns, "tok", None)
            .await
            .unwrap()
            .into_frame();
        assert!(h.store.for_user(&user("bob")).await.unwrap().is_empty());
        let carol = h.store.for_user(&user("carol")).await.unwrap();
        assert_eq!(carol.len(), 1);
        assert_eq!(carol[0].token, "tok");
    }

    #[tokio::test]
    async fn a_platform_change_drops_the_old_endpoint() {
        let (app, h) = App::in_memory();
        register_device(&app, &user("bob"), Platform::ApnsSandbox, "tok", None)
            .await
            .unwrap()
            .into_frame();
        let old = h.store.by_token("tok").await.unwrap().unwrap().endpoint_arn;
        register_device(&app, &user("bob"), Platform::Apns, "tok", None)
            .await
            .unwrap()
            .into_frame();
        let new = h.store.by_token("tok").await.unwrap().unwrap();
        assert_eq!(new.platform, Platform::Apns);
        assert_ne!(new.endpoint_arn, old);
        assert!(!h.notifier.endpoint_exists(&old));
        assert!(h.notifier.endpoint_exists(&new.endpoint_arn));
    }

    #[tokio::test]
    async fn notifier_down_is_a_fault_and_stores_nothing() {
        let (app, h) = App::in_memory();
        h.notifier.set_down(true);
        let r = register_device(&app, &user("bob"), Platform::Fcm, "tok", None).await;
        assert!(matches!(
            r,
            Err(DeviceError::Push(PushError::Unavailable(_)))
        ));
        assert_eq!(h.store.by_token("tok").await.unwrap(), None);
    }
}
