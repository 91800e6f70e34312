//! `ack` route: advance or clear the caller's pending rows, send receipts.
//!
//! An ack gets no reply unless something in it was refused; then the route
//! response carries one `error` frame.

use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use courier_aws::edge;
use courier_core::app::App;
use courier_core::protocol::ClientFrame;
use lambda_runtime::{Error, LambdaEvent};

pub async fn handle(
    app: &App,
    event: LambdaEvent<ApiGatewayWebsocketProxyRequest>,
) -> Result<ApiGatewayProxyResponse, Error> {
    edge::serve_frame(
        app,
        &event.payload,
        &event.context,
        |ws, request| async move {
            let ClientFrame::Ack { acks } = request.frame else {
                return Ok(edge::wrong_route("ack"));
            };
            courier_core::services::ack::ack(app, &ws.user_id, &ws.device_id, &acks).await
        },
    )
    .await
}

/// The ports this function uses.
pub const NEEDS: courier_aws::wiring::Needs = courier_aws::wiring::Needs::ACK;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use courier_core::protocol::{ErrorCode, ServerFrame};
    use lambda_runtime::Context;

    use super::*;

    const EVENT: &str = include_str!("../../../events/ack.json");

    #[tokio::test]
    async fn a_fault_is_err_and_the_client_gets_a_typed_internal_frame() {
        let (app, h) = App::in_memory();
        let event: ApiGatewayWebsocketProxyRequest = serde_json::from_str(EVENT).unwrap();
        let ws = edge::WsRequest::from_event(&event).unwrap();
        h.gateway.open(&ws.connection_id);
        h.store.set_down(true);
        let with_id = {
            let mut e = event.clone();
            e.body = Some(
                r#"{"action":"ack","request_id":"r-9","acks":[{"conversation_id":"c1","seq":1}]}"#
                    .into(),
            );
            e
        };
        assert!(
            handle(&app, LambdaEvent::new(with_id, Context::default()))
                .await
                .is_err(),
            "a store fault is a fault, for Lambda to count"
        );
        let posted = h.gateway.frames(&ws.connection_id);
        assert_eq!(posted.len(), 1);
        let f: ServerFrame = serde_json::from_str(&posted[0]).unwrap();
        assert!(
            matches!(
                &f,
                ServerFrame::Error {
                    code: ErrorCode::Internal,
                    request_id: Some(r),
                    ..
                } if r == "r-9"
            ),
            "{f:?}"
        );
    }

    #[tokio::test]
    async fn a_refused_ack_is_an_error_frame_not_a_fault() {
        let (app, h) = App::in_memory();
        let event: ApiGatewayWebsocketProxyRequest = serde_json::from_str(EVENT).unwrap();
        let ws = edge::WsRequest::from_event(&event).unwrap();
        h.gateway.open(&ws.connection_id);
        let r = handle(&app, LambdaEvent::new(event, Context::default()))
            .await
            .unwrap();
        let Some(aws_lambda_events::encodings::Body::Text(t)) = r.body else {
            panic!("no reply body")
        };
        let f: ServerFrame = serde_json::from_str(&t).unwrap();
        assert!(
            matches!(
                f,
                ServerFrame::Error {
                    code: ErrorCode::ConversationNotFound,
                    ..
                }
            ),
            "{f:?}"
        );
        assert!(h.gateway.frames(&ws.connection_id).is_empty());
    }
}
