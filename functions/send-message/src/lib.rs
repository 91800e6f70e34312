//! `sendMessage` route: store the message, deliver or push it, answer `sent`.
//!
//! The sender is the authorizer context's `user_id`; a `sender_id` or
//! `user_id` in the frame is never read. A client mistake (bad frame, not a
//! member, body too large, …) is an `error` frame in the route response and
//! `Ok`. A server fault is `Err`, so Lambda counts it; because API Gateway
//! then sends the client only an untyped "Internal server error", the
//! handler first posts an `internal` error frame naming the `client_msg_id`
//! (see `courier_core::services::fault`), and the client retries that send —
//! safely, since sends are idempotent.

use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use courier_aws::edge;
use courier_aws::wiring::Needs;
use courier_core::app::App;
use courier_core::protocol::ClientFrame;
use courier_core::services::send;
use lambda_runtime::{Error, LambdaEvent};

/// The ports this function uses.
pub const NEEDS: Needs = Needs::SEND;

pub async fn handle(
    app: &App,
    event: LambdaEvent<ApiGatewayWebsocketProxyRequest>,
) -> Result<ApiGatewayProxyResponse, Error> {
    edge::serve_frame(
        app,
        &event.payload,
        &event.context,
        |ws, request| async move {
            let ClientFrame::SendMessage {
                conversation_id,
                client_msg_id,
                body,
            } = request.frame
            else {
                return Ok(edge::wrong_route("sendMessage"));
            };
            send::send_message(
                app,
                &ws.user_id,
                &ws.device_id,
                &conversation_id,
                &client_msg_id,
                &body,
                request.request_id,
            )
            .await
        },
    )
    .await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use aws_lambda_events::encodings::Body;
    use courier_core::app::MemoryHandles;
    use courier_core::config::{ConfigError, Env};
    use courier_core::domain::{Conversation, ConversationId, Seq, UserId, now_millis};
    use courier_core::protocol::ServerFrame;
    use lambda_runtime::Context;

    use super::*;
    use courier_core::protocol::ErrorCode;

    const EVENT: &str = include_str!("../../../events/send-message.json");

    fn event_with_body(body: Option<&str>) -> LambdaEvent<ApiGatewayWebsocketProxyRequest> {
        let mut e: ApiGatewayWebsocketProxyRequest = serde_json::from_str(EVENT).unwrap();
        if let Some(b) = body {
            e.body = Some(b.to_owned());
        }
        LambdaEvent::new(e, Context::default())
    }

    async fn app() -> (App, MemoryHandles) {
        let (app, h) = App::in_memory();
        app.ports
            .conversations
            .create(&Conversation {
                conversation_id: ConversationId::parse("c1").unwrap(),
                members: vec![
                    UserId::parse("alice").unwrap(),
                    UserId::parse("bob").unwrap(),
                ],
                last_seq: Seq::ZERO,
                created_at: now_millis(),
            })
            .await
            .unwrap();
        (app, h)
    }

    fn frame(r: &ApiGatewayProxyResponse) -> ServerFrame {
        assert_eq!(r.status_code, 200);
        match &r.body {
            Some(Body::Text(t)) => serde_json::from_str(t).unwrap(),
            other => panic!("no text body: {other:?}"),
        }
    }

    #[tokio::test]
    async fn sample_event_sends_and_answers_sent() {
        let (app, _h) = app().await;
        let r = handle(&app, event_with_body(None)).await.unwrap();
        assert!(matches!(frame(&r), ServerFrame::Sent { seq: Seq(1), .. }));
    }

    #[tokio::test]
    async fn a_spoofed_sender_in_the_body_is_ignored() {
        let (app, _h) = app().await;
        let body = r#"{"action":"sendMessage","conversation_id":"c1","client_msg_id":"k1","body":"hi","sender_id":"mallory","user_id":"mallory"}"#;
        let r = handle(&app, event_with_body(Some(body))).await.unwrap();
        assert!(matches!(frame(&r), ServerFrame::Sent { .. }));
        let stored = app
            .ports
            .messages
            .range(&ConversationId::parse("c1").unwrap(), Seq(1), 10)
            .await
            .unwrap();
        assert_eq!(stored[0].sender_id.as_str(), "alice");
    }

    #[tokio::test]
    async fn malformed_or_foreign_frames_are_error_frames_not_errs() {
        let (app, _h) = app().await;
        for (body, code) in [
            ("not json", ErrorCode::BadRequest),
            (
                r#"{"action":"sendMessage","conversation_id":"c1","request_id":"r"}"#,
                ErrorCode::BadRequest,
            ),
            (
                r#"{"action":"sync","request_id":"r"}"#,
                ErrorCode::BadRequest,
            ),
            (
                r#"{"action":"sendMessage","conversation_id":"c1","client_msg_id":"k","body":""}"#,
                ErrorCode::BadRequest,
            ),
        ] {
            let r = handle(&app, event_with_body(Some(body))).await.unwrap();
            assert!(
                matches!(frame(&r), ServerFrame::Error { code: c, .. } if c == code),
                "{body}"
            );
        }
    }

    #[tokio::test]
    async fn a_fault_is_err_and_the_client_gets_an_internal_frame() {
        let (app, h) = app().await;
        let ws = edge::WsRequest::from_event(&event_with_body(None).payload).unwrap();
        h.gateway.open(&ws.connection_id);
        h.store.set_down(true);
        assert!(handle(&app, event_with_body(None)).await.is_err());
        let posted = h.gateway.frames(&ws.connection_id);
        assert_eq!(posted.len(), 1);
        let f: ServerFrame = serde_json::from_str(&posted[0]).unwrap();
        assert!(matches!(
            f,
            ServerFrame::Error {
                code: ErrorCode::Internal,
                client_msg_id: Some(_),
                ..
            }
        ));
    }

    #[test]
    fn check_env_names_what_is_missing() {
        let e = courier_aws::wiring::check_env(&Env(|_: &str| None), NEEDS).unwrap_err();
        assert!(matches!(e, ConfigError::Missing(_)));
        let full = |k: &str| -> Option<String> {
            Some(
                match k {
                    "REDIS_URL" => "redis://127.0.0.1:6379",
                    "MANAGEMENT_ENDPOINT" => {
                        "https://abc.execute-api.us-east-1.amazonaws.com/local"
                    }
                    k if k.ends_with("_TABLE") => "t",
                    _ => return None,
                }
                .to_owned(),
            )
        };
        courier_aws::wiring::check_env(&Env(full), NEEDS).unwrap();
        let bad = move |k: &str| {
            if k == "MAX_BODY_BYTES" {
                Some("lots".into())
            } else {
                full(k)
            }
        };
        assert!(matches!(
            courier_aws::wiring::check_env(&Env(bad), NEEDS),
            Err(ConfigError::Invalid {
                name: "MAX_BODY_BYTES",
                ..
            })
        ));
    }
}
