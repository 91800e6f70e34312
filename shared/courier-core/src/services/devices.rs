//! A user's devices: registering a push token (`registerDevice`), listing
//! the linked devices (`listDevices`) and unlinking one (`unlinkDevice`).
//!
//! Linking happens at `$connect` (services::connect); here a user sees and
//! manages their own devices and nobody else's: the user always comes from
//! the authorizer context, never from the frame.
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
use crate::domain::{Device, DeviceId, Platform, UserId, now_millis};
use crate::ports::{PushError, StoreError};
use crate::protocol::{DeviceView, ErrorCode, FrameError, ServerFrame};
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
    device: &DeviceId,
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
            device_id: device.clone(),
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

/// `listDevices`: the user's linked devices, with when each was last seen,
/// whether it is connected, and which one is asking.
#[instrument(skip_all, fields(user_id = %user, device_id = %device))]
pub async fn list_devices(
    app: &App,
    user: &UserId,
    device: &DeviceId,
    request_id: Option<String>,
) -> Result<Answer, StoreError> {
    let ports = &app.ports;
    let (linked, connected) = futures::join!(ports.links.list(user), ports.registry.lookup(user));
    let connected = connected.unwrap_or_else(|e| {
        warn!(error = %e, "registry unavailable; listing devices as not connected");
        Vec::new()
    });
    let devices = linked?
        .into_iter()
        .map(|l| DeviceView {
            connected: connected.iter().any(|c| c.device_id == l.device_id),
            this_device: &l.device_id == device,
            device_id: l.device_id,
            linked_at: l.linked_at,
            last_seen_at: l.last_seen_at,
        })
        .collect();
    Ok(Answer::Done(ServerFrame::Devices {
        devices,
        request_id,
    }))
}

/// `unlinkDevice`: removes another of the user's devices — its link (it no
/// longer holds pending rows back), its registry entry, its push tokens —
/// tells its connection (`device_unlinked`, on which the reference clients
/// stop and forget their device id) and closes it. A client that ignores
/// that may link again by connecting with a valid token: to keep it out,
/// revoke its credentials.
#[instrument(skip_all, fields(user_id = %user, device_id = %device, unlink = %target))]
pub async fn unlink_device(
    app: &App,
    user: &UserId,
    device: &DeviceId,
    target: &DeviceId,
    request_id: Option<String>,
) -> Result<Answer, StoreError> {
    if target == device {
        return Ok(Answer::Refused(
            FrameError::new(
                ErrorCode::BadRequest,
                "a device cannot unlink itself; unlink it from another device",
            )
            .with_request_id(request_id),
        ));
    }
    let ports = &app.ports;
    if !ports.links.unlink(user, target).await? {
        return Ok(Answer::Refused(
            FrameError::new(
                ErrorCode::DeviceNotFound,
                format!("no linked device {target}"),
            )
            .with_request_id(request_id),
        ));
    }
    // Its push tokens: an unlinked phone stops getting banners.
    for d in ports.devices.for_user(user).await? {
        if &d.device_id == target {
            ports.devices.delete(&d.token).await?;
            if let Err(e) = ports.notifier.delete_endpoint(&d.endpoint_arn).await {
                warn!(error = %e, "could not delete the unlinked device's endpoint");
            }
        }
    }
    match ports.registry.lookup(user).await {
        Ok(connections) => {
            let told = FrameError::new(
                ErrorCode::DeviceUnlinked,
                format!(
                    "device {target} was unlinked by another of your devices; \
                     connect again as a new device to use it"
                ),
            )
            .to_frame()
            .to_json();
            for c in connections.iter().filter(|c| &c.device_id == target) {
                // Told first, so a client stops instead of reconnecting (and
                // linking again); best effort, the close follows anyway.
                if let Err(e) = ports.gateway.post(&c.connection_id, told.as_bytes()).await {
                    warn!(error = %e, "could not tell the unlinked device");
                }
                if let Err(e) = ports.gateway.delete(&c.connection_id).await {
                    warn!(error = %e, "could not close the unlinked device's connection");
                }
                if let Err(e) = ports
                    .registry
                    .remove_if(user, target, &c.connection_id)
                    .await
                {
                    warn!(error = %e, "could not remove the unlinked device's registry entry");
                }
            }
        }
        // Its connection then lives on until it closes; with no link it holds
        // nothing back, and its next connect links it again only if its
        // credentials still allow it.
        Err(e) => {
            warn!(error = %e, "registry unavailable; the unlinked device's connection stays open")
        }
    }
    info!("device unlinked");
    Ok(Answer::Done(ServerFrame::DeviceUnlinked {
        device_id: target.clone(),
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
            let f = register_device(
                &app,
                &user("bob"),
                &Default::default(),
                Platform::Fcm,
                "tok",
                Some("r".into()),
            )
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
        register_device(
            &app,
            &user("bob"),
            &Default::default(),
            Platform::Apns,
            "tok",
            None,
        )
        .await
        .unwrap()
        .into_frame();
        register_device(
            &app,
            &user("carol"),
            &Default::default(),
            Platform::Apns,
            "tok",
            None,
        )
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
        register_device(
            &app,
            &user("bob"),
            &Default::default(),
            Platform::ApnsSandbox,
            "tok",
            None,
        )
        .await
        .unwrap()
        .into_frame();
        let old = h.store.by_token("tok").await.unwrap().unwrap().endpoint_arn;
        register_device(
            &app,
            &user("bob"),
            &Default::default(),
            Platform::Apns,
            "tok",
            None,
        )
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
        let r = register_device(
            &app,
            &user("bob"),
            &Default::default(),
            Platform::Fcm,
            "tok",
            None,
        )
        .await;
        assert!(matches!(
            r,
            Err(DeviceError::Push(PushError::Unavailable(_)))
        ));
        assert_eq!(h.store.by_token("tok").await.unwrap(), None);
    }

    mod linked {
        use super::*;
        use crate::domain::{Connection, ConnectionId};
        use crate::ports::{ConnectionRegistry, LinkStore};

        fn dev(s: &str) -> DeviceId {
            DeviceId::parse(s).unwrap()
        }

        async fn link_and_connect(
            app: &App,
            h: &crate::app::MemoryHandles,
            u: &str,
            d: &str,
        ) -> ConnectionId {
            let c = ConnectionId::parse(&format!("{u}-{d}")).unwrap();
            h.gateway.open(&c);
            let connection = Connection {
                device_id: dev(d),
                connection_id: c.clone(),
                connected_at: Some(now_millis()),
            };
            crate::services::connect::connect(
                app,
                &user(u),
                &connection,
                None,
                crate::domain::CorrelationId::new(),
            )
            .await;
            c
        }

        #[tokio::test]
        async fn list_shows_own_devices_connected_and_which_asks() {
            let (app, h) = App::in_memory();
            link_and_connect(&app, &h, "bob", "phone").await;
            link_and_connect(&app, &h, "bob", "laptop").await;
            link_and_connect(&app, &h, "carol", "tablet").await;
            h.registry
                .remove_if(
                    &user("bob"),
                    &dev("laptop"),
                    &ConnectionId::parse("bob-laptop").unwrap(),
                )
                .await
                .unwrap();
            let f = list_devices(&app, &user("bob"), &dev("phone"), Some("d1".into()))
                .await
                .unwrap()
                .into_frame();
            let ServerFrame::Devices {
                devices,
                request_id,
            } = f
            else {
                panic!("not a devices frame: {f:?}");
            };
            assert_eq!(request_id.as_deref(), Some("d1"));
            let seen: Vec<_> = devices
                .iter()
                .map(|d| (d.device_id.as_str(), d.connected, d.this_device))
                .collect();
            assert_eq!(seen, vec![("laptop", false, false), ("phone", true, true)]);
        }

        #[tokio::test]
        async fn unlink_removes_another_device_and_closes_it_never_itself_or_a_strangers() {
            let (app, h) = App::in_memory();
            let phone = link_and_connect(&app, &h, "bob", "phone").await;
            link_and_connect(&app, &h, "bob", "laptop").await;
            link_and_connect(&app, &h, "carol", "tablet").await;
            // Itself: refused.
            let r = unlink_device(&app, &user("bob"), &dev("laptop"), &dev("laptop"), None)
                .await
                .unwrap();
            assert_eq!(r.refused().unwrap().code, ErrorCode::BadRequest);
            // Another user's device: not bob's, so not found, and untouched.
            let r = unlink_device(&app, &user("bob"), &dev("laptop"), &dev("tablet"), None)
                .await
                .unwrap();
            assert_eq!(r.refused().unwrap().code, ErrorCode::DeviceNotFound);
            assert_eq!(h.store.list(&user("carol")).await.unwrap().len(), 1);
            // The phone: unlinked, its registry entry gone, its socket closed.
            let f = unlink_device(&app, &user("bob"), &dev("laptop"), &dev("phone"), None)
                .await
                .unwrap()
                .into_frame();
            assert!(matches!(f, ServerFrame::DeviceUnlinked { .. }), "{f:?}");
            let left: Vec<_> = LinkStore::list(&h.store, &user("bob"))
                .await
                .unwrap()
                .into_iter()
                .map(|l| l.device_id)
                .collect();
            assert_eq!(left, vec![dev("laptop")]);
            let connected = h.registry.lookup(&user("bob")).await.unwrap();
            assert_eq!(connected.len(), 1);
            assert_eq!(connected[0].device_id, dev("laptop"));
            let told = h.gateway.frames(&phone);
            assert_eq!(told.len(), 1);
            assert!(told[0].contains(r#""code":"device_unlinked""#), "{told:?}");
            assert!(app.ports.gateway.post(&phone, b"x").await.is_err());
            // Twice: not found.
            let r = unlink_device(&app, &user("bob"), &dev("laptop"), &dev("phone"), None)
                .await
                .unwrap();
            assert_eq!(r.refused().unwrap().code, ErrorCode::DeviceNotFound);
        }
    }
}
