//! `$default` and `ping`: what API Gateway routes when no other route
//! matches, and the heartbeat.
//!
//! `ping` answers `pong` (clients send it inside API Gateway's 10-minute idle
//! timeout; any frame would do, a reply lets them measure the round trip).
//! Everything else answers an `error` frame: `unknown_action` for an action
//! Courier does not have — or one that reached `$default` because its route
//! is not deployed — and `bad_request` for a frame that is not a JSON object
//! with an `action`. Never `Err`: nothing here can fault, and a bad frame
//! must never cost the client its socket.

use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use courier_aws::edge::{self, WsRequest};
use courier_aws::wiring::Needs;
use courier_core::app::App;
use courier_core::protocol::{ClientFrame, ErrorCode, FrameError, Request, ServerFrame, action_of};
use lambda_runtime::{Error, LambdaEvent};
use tracing::Instrument;

/// The ports this function uses: the registry, which `ping` re-asserts.
pub const NEEDS: Needs = Needs::DEFAULT;

pub async fn handle(
    app: &App,
    event: LambdaEvent<ApiGatewayWebsocketProxyRequest>,
) -> Result<ApiGatewayProxyResponse, Error> {
    let ws = WsRequest::from_event(&event.payload)?;
    let raw = ws.body.as_deref().unwrap_or_default();
    let reply = answer(raw);
    if matches!(reply, ServerFrame::Pong { .. }) {
        // A lost registry write (Redis timed out at `$connect`) heals here,
        // within one heartbeat; a newer connection of the device is kept.
        courier_core::services::connect::reassert(&app.ports, &ws.user_id, &ws.connection())
            .instrument(edge::span(&event.payload, &event.context))
            .await;
    }
    Ok(edge::reply(Some(&reply)))
}

/// The reply to a frame that reached `$default` or `ping`.
pub fn answer(raw: &str) -> ServerFrame {
    match Request::parse(raw) {
        Ok(Request {
            frame: ClientFrame::Ping,
            request_id,
        }) => ServerFrame::Pong { request_id },
        Ok(Request { request_id, .. }) => {
            let action = action_of(raw).unwrap_or_default();
            FrameError::new(
                ErrorCode::UnknownAction,
                format!("action {action:?} is not routed on this API"),
            )
            .with_request_id(request_id)
            .to_frame()
        }
        Err(e) => e.to_frame(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use aws_lambda_events::encodings::Body;
    use lambda_runtime::Context;

    use super::*;

    fn event(json: &str) -> LambdaEvent<ApiGatewayWebsocketProxyRequest> {
        LambdaEvent::new(serde_json::from_str(json).unwrap(), Context::default())
    }

    fn frame(r: &ApiGatewayProxyResponse) -> ServerFrame {
        assert_eq!(r.status_code, 200);
        match &r.body {
            Some(Body::Text(t)) => serde_json::from_str(t).unwrap(),
            other => panic!("no text body: {other:?}"),
        }
    }

    #[tokio::test]
    async fn sample_events_answer_unknown_action_and_pong() {
        let (app, _h) = App::in_memory();
        let r = handle(&app, event(include_str!("../../../events/default.json")))
            .await
            .unwrap();
        assert!(matches!(
            frame(&r),
            ServerFrame::Error {
                code: ErrorCode::UnknownAction,
                ..
            }
        ));
        let r = handle(
            &app,
            event(include_str!("../../../events/default-ping.json")),
        )
        .await
        .unwrap();
        assert!(matches!(
            frame(&r),
            ServerFrame::Pong {
                request_id: Some(_)
            }
        ));
    }

    #[test]
    fn every_other_frame_gets_an_error_code() {
        let code = |raw: &str| match answer(raw) {
            ServerFrame::Error { code, .. } => code,
            other => panic!("{raw}: {other:?}"),
        };
        assert_eq!(code(r#"{"action":"fly"}"#), ErrorCode::UnknownAction);
        assert_eq!(code(r#"{"action":"sync"}"#), ErrorCode::UnknownAction);
        assert_eq!(code("hello"), ErrorCode::BadRequest);
        assert_eq!(code(""), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"no":"action"}"#), ErrorCode::BadRequest);
        assert_eq!(
            answer(r#"{"action":"ping"}"#),
            ServerFrame::Pong { request_id: None }
        );
    }
}
