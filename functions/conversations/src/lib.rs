//! `createConversation` route: create a conversation of the caller and the
//! members named, answer `conversation`.
//!
//! The creator is the authorizer context's `user_id`. A refused member list
//! is a `bad_request` frame and `Ok`; a store fault is `Err` (Lambda counts
//! it), after an `internal` error frame naming the `request_id` is posted to
//! the caller (see `courier_core::services::fault`). Retrying a create that
//! faulted may create a second conversation; the orphan is harmless (nobody
//! learnt its id).

use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use courier_aws::edge;
use courier_aws::wiring::Needs;
use courier_core::app::App;
use courier_core::protocol::ClientFrame;
use courier_core::services::conversations;
use lambda_runtime::{Error, LambdaEvent};

/// The ports this function uses.
pub const NEEDS: Needs = Needs::CONVERSATIONS;

pub async fn handle(
    app: &App,
    event: LambdaEvent<ApiGatewayWebsocketProxyRequest>,
) -> Result<ApiGatewayProxyResponse, Error> {
    edge::serve_frame(
        app,
        &event.payload,
        &event.context,
        |ws, request| async move {
            match request.frame {
                ClientFrame::CreateConversation { members } => {
                    conversations::create_conversation(
                        app,
                        &ws.user_id,
                        &members,
                        request.request_id,
                    )
                    .await
                }
                ClientFrame::ListConversations { after, limit } => {
                    conversations::list_conversations(
                        app,
                        &ws.user_id,
                        &ws.device_id,
                        after.as_ref(),
                        limit,
                        request.request_id,
                    )
                    .await
                }
                _ => Ok(edge::wrong_route("createConversation or listConversations")),
            }
        },
    )
    .await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use aws_lambda_events::encodings::Body;
    use courier_core::config::{ConfigError, Env};
    use courier_core::protocol::ServerFrame;
    use lambda_runtime::Context;

    use super::*;
    use courier_core::protocol::ErrorCode;

    const EVENT: &str = include_str!("../../../events/conversations.json");

    fn event(body: Option<&str>) -> LambdaEvent<ApiGatewayWebsocketProxyRequest> {
        let mut e: ApiGatewayWebsocketProxyRequest = serde_json::from_str(EVENT).unwrap();
        if let Some(b) = body {
            e.body = Some(b.to_owned());
        }
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
    async fn sample_event_creates_a_conversation_with_the_caller_first() {
        let (app, _h) = App::in_memory();
        let r = handle(&app, event(None)).await.unwrap();
        let ServerFrame::Conversation {
            conversation_id,
            members,
            ..
        } = frame(&r)
        else {
            panic!("not a conversation frame")
        };
        assert_eq!(members[0].as_str(), "alice");
        let stored = app
            .ports
            .conversations
            .get(&conversation_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.members, members);
    }

    #[tokio::test]
    async fn bad_member_lists_are_error_frames() {
        let (app, _h) = App::in_memory();
        for body in [
            r#"{"action":"createConversation","members":[]}"#,
            r#"{"action":"createConversation","members":["alice"]}"#,
            r#"{"action":"createConversation","members":["b o b"]}"#,
            r#"{"action":"createConversation","members":"bob"}"#,
            r#"{"action":"ping"}"#,
        ] {
            let r = handle(&app, event(Some(body))).await.unwrap();
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

    #[test]
    fn check_env_needs_the_tables() {
        let e = courier_aws::wiring::check_env(&Env(|_: &str| None), NEEDS).unwrap_err();
        assert!(matches!(e, ConfigError::Missing(name) if name.ends_with("_TABLE")));
    }
}
