//! `registerDevice` route: register or refresh an APNs/FCM token as an SNS
//! platform endpoint for the caller, answer `device_registered`.
//!
//! The owner is the authorizer context's `user_id`; a token registered by
//! another user moves to the caller. A platform this deployment has no
//! platform application for is a `bad_request` frame. A store or SNS fault is
//! `Err` (Lambda counts it), after an `internal` error frame naming the
//! `request_id` is posted to the caller; registering again is safe.

use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use courier_aws::edge;
use courier_aws::wiring::Needs;
use courier_core::app::App;
use courier_core::protocol::ClientFrame;
use courier_core::services::devices;
use lambda_runtime::{Error, LambdaEvent};

/// The ports this function uses.
pub const NEEDS: Needs = Needs::DEVICES;

pub async fn handle(
    app: &App,
    event: LambdaEvent<ApiGatewayWebsocketProxyRequest>,
) -> Result<ApiGatewayProxyResponse, Error> {
    edge::serve_frame(
        app,
        &event.payload,
        &event.context,
        |ws, request| async move {
            let (user, device, request_id) = (&ws.user_id, &ws.device_id, request.request_id);
            match request.frame {
                ClientFrame::RegisterDevice { platform, token } => {
                    devices::register_device(app, user, device, platform, &token, request_id).await
                }
                ClientFrame::ListDevices => {
                    Ok(devices::list_devices(app, user, device, request_id).await?)
                }
                ClientFrame::UnlinkDevice { device_id } => {
                    Ok(devices::unlink_device(app, user, device, &device_id, request_id).await?)
                }
                _ => Ok(edge::wrong_route(
                    "registerDevice, listDevices or unlinkDevice",
                )),
            }
        },
    )
    .await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use aws_lambda_events::encodings::Body;
    use courier_core::domain::{Platform, UserId};
    use courier_core::protocol::ServerFrame;
    use lambda_runtime::Context;

    use super::*;
    use courier_core::protocol::ErrorCode;

    const EVENT: &str = include_str!("../../../events/devices.json");

    fn event(user: &str, body: Option<&str>) -> LambdaEvent<ApiGatewayWebsocketProxyRequest> {
        let mut e: ApiGatewayWebsocketProxyRequest = serde_json::from_str(EVENT).unwrap();
        if let Some(b) = body {
            e.body = Some(b.to_owned());
        }
        e.request_context
            .authorizer
            .fields
            .insert("user_id".into(), serde_json::Value::String(user.into()));
        LambdaEvent::new(e, Context::default())
    }

    fn frame(r: &ApiGatewayProxyResponse) -> ServerFrame {
        assert_eq!(r.status_code, 200);
        match &r.body {
            Some(Body::Text(t)) => serde_json::from_str(t).unwrap(),
            other => panic!("no text body: {other:?}"),
        }
    }

    #[tokio::test]
    async fn sample_event_registers_the_callers_device() {
        let (app, _h) = App::in_memory();
        let r = handle(&app, event("alice", None)).await.unwrap();
        assert!(matches!(
            frame(&r),
            ServerFrame::DeviceRegistered {
                platform: Platform::Fcm,
                ..
            }
        ));
        let alice = UserId::parse("alice").unwrap();
        assert_eq!(app.ports.devices.for_user(&alice).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_spoofed_user_in_the_body_is_ignored() {
        let (app, _h) = App::in_memory();
        let body =
            r#"{"action":"registerDevice","platform":"apns","token":"t1","user_id":"mallory"}"#;
        handle(&app, event("alice", Some(body))).await.unwrap();
        let owner = app
            .ports
            .devices
            .by_token("t1")
            .await
            .unwrap()
            .unwrap()
            .user_id;
        assert_eq!(owner.as_str(), "alice");
    }

    #[tokio::test]
    async fn bad_platform_or_token_is_an_error_frame() {
        let (app, _h) = App::in_memory();
        for body in [
            r#"{"action":"registerDevice","platform":"webpush","token":"t"}"#,
            r#"{"action":"registerDevice","platform":"fcm","token":""}"#,
            r#"{"action":"registerDevice","platform":"fcm","token":"a b"}"#,
        ] {
            let r = handle(&app, event("alice", Some(body))).await.unwrap();
            assert!(
                matches!(
                    frame(&r),
                    ServerFrame::Error {
                        code: ErrorCode::BadRequest,
                        ..
                    }
                ),
                "{body}"
            );
        }
    }
}
