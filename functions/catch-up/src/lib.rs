//! catch-up: invoked asynchronously by `$connect` with
//! `{user_id, connection_id, connected_at}`, and synchronously by the `sync`
//! route (a full catch-up, or a range of one conversation).
//!
//! One crate serves both because they are the same work; the payload says
//! which: a route event has a `requestContext`. Direct invocations are
//! retried by Lambda on error, which is safe because catch-up is idempotent.
//!
//! A direct invocation logs under the correlation id `$connect` put in the
//! request (a fresh one if it has none), so one id finds both functions'
//! lines; a `sync` logs under its own frame's, like every route.

use std::time::{Duration, Instant};

use aws_lambda_events::apigw::ApiGatewayWebsocketProxyRequest;
use courier_aws::{edge, telemetry};
use courier_core::app::App;
use courier_core::domain::{CorrelationId, now_millis};
use courier_core::ports::{CatchUpOrigin, CatchUpRequest};
use courier_core::protocol::{ClientFrame, SyncRequest};
use courier_core::services::Answer;
use courier_core::services::catch_up::{self, Ending, Report};
use lambda_runtime::{Error, LambdaEvent};
use serde_json::{Value, json};
use tracing::Instrument;

pub async fn handle(app: &App, event: LambdaEvent<Value>) -> Result<Value, Error> {
    let deadline = deadline_of(&event.context);
    if event.payload.get("requestContext").is_some() {
        let route: ApiGatewayWebsocketProxyRequest = serde_json::from_value(event.payload)?;
        let response = sync_route(app, &route, &event.context, deadline).await?;
        return Ok(serde_json::to_value(response)?);
    }
    let request: CatchUpRequest = serde_json::from_value(event.payload)?;
    let correlation_id = request
        .correlation_id
        .clone()
        .unwrap_or_else(CorrelationId::new);
    let report = catch_up::catch_up(app, &request, deadline, None)
        .instrument(telemetry::correlated(&correlation_id, &event.context))
        .await?;
    Ok(report_json(&report))
}

/// Lambda's deadline (epoch ms) as an `Instant`; none when the context has
/// none (a local invoke without one).
///
/// A deadline already past when the invocation starts is not Lambda's (it
/// never invokes a function out of time): it is a local emulator's clock or
/// a first invocation that waited on a build (`cargo lambda watch`). Taken
/// at its word it would refuse all work, so it counts as none.
fn deadline_of(context: &lambda_runtime::Context) -> Option<Instant> {
    let deadline = i64::try_from(context.deadline).ok().filter(|d| *d > 0)?;
    let Ok(left @ 1..) = u64::try_from(deadline - now_millis()) else {
        tracing::warn!(
            deadline_ms = deadline,
            "the invocation's deadline had passed before it began; running without one"
        );
        return None;
    };
    Some(Instant::now() + Duration::from_millis(left))
}

async fn sync_route(
    app: &App,
    route: &ApiGatewayWebsocketProxyRequest,
    context: &lambda_runtime::Context,
    deadline: Option<Instant>,
) -> Result<aws_lambda_events::apigw::ApiGatewayProxyResponse, Error> {
    edge::serve_frame(app, route, context, |ws, request| async move {
        let ClientFrame::Sync(sync) = request.frame else {
            return Ok(edge::wrong_route("sync"));
        };
        match sync {
            SyncRequest::Full => {
                let req = CatchUpRequest {
                    user_id: ws.user_id,
                    connection_id: ws.connection_id,
                    connected_at: ws.connected_at,
                    device_id: ws.device_id,
                    open_conversation: None,
                    device_limit: None,
                    origin: CatchUpOrigin::Sync,
                    // The frame's span (serve_frame) carries its id.
                    correlation_id: None,
                };
                let report = catch_up::catch_up(app, &req, deadline, request.request_id).await?;
                Ok(Answer::Done(report))
            }
            SyncRequest::Range {
                conversation_id,
                after_seq,
                limit,
            } => {
                let connection = ws.connection();
                catch_up::sync_range(
                    app,
                    &ws.user_id,
                    &connection,
                    &conversation_id,
                    after_seq,
                    limit,
                    request.request_id,
                )
                .await
            }
        }
    })
    .await
}

fn report_json(report: &Report) -> Value {
    json!({
        "ending": match report.ending { Ending::CaughtUp => "caught_up", Ending::Gone => "gone", Ending::DeviceRefused => "device_refused" },
        "conversations": report.conversations,
        "messages": report.messages,
        "frames": report.frames,
        "more": report.more,
        "unreached": report.unreached,
    })
}

/// The ports this function uses.
pub const NEEDS: courier_aws::wiring::Needs = courier_aws::wiring::Needs::CATCH_UP;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use courier_core::protocol::{ErrorCode, ServerFrame};
    use lambda_runtime::Context;

    use super::*;

    #[test]
    fn a_deadline_already_past_counts_as_none_a_future_one_is_kept() {
        let mut context = Context::default();
        context.deadline = u64::try_from(now_millis() - 1_000).unwrap();
        assert!(deadline_of(&context).is_none());
        context.deadline = u64::try_from(now_millis() + 60_000).unwrap();
        let left = deadline_of(&context).unwrap() - Instant::now();
        assert!(left > Duration::from_secs(50) && left <= Duration::from_secs(60));
        context.deadline = 0;
        assert!(deadline_of(&context).is_none());
    }

    /// A store fault on either kind of `sync` is `Err` for Lambda, and the
    /// caller gets the typed `internal` frame echoing its `request_id`, not
    /// API Gateway's untyped one.
    #[tokio::test]
    async fn sync_faults_are_err_and_the_client_gets_a_typed_internal_frame() {
        for (event, request_id) in [
            (include_str!("../../../events/catch-up-sync.json"), "r-1"),
            (
                include_str!("../../../events/catch-up-sync-range.json"),
                "r-2",
            ),
        ] {
            let (app, h) = App::in_memory();
            let route: ApiGatewayWebsocketProxyRequest = serde_json::from_str(event).unwrap();
            let ws = courier_aws::edge::WsRequest::from_event(&route).unwrap();
            h.gateway.open(&ws.connection_id);
            h.store.set_down(true);
            let payload = serde_json::to_value(&route).unwrap();
            assert!(
                handle(&app, LambdaEvent::new(payload, Context::default()))
                    .await
                    .is_err(),
                "{request_id}"
            );
            let posted = h.gateway.frames(&ws.connection_id);
            assert_eq!(posted.len(), 1, "{request_id}: {posted:?}");
            let f: ServerFrame = serde_json::from_str(&posted[0]).unwrap();
            assert!(
                matches!(
                    &f,
                    ServerFrame::Error {
                        code: ErrorCode::Internal,
                        request_id: Some(r),
                        ..
                    } if r == request_id
                ),
                "{f:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_range_sync_of_an_unknown_conversation_is_refused_not_a_fault() {
        let (app, h) = App::in_memory();
        let route: ApiGatewayWebsocketProxyRequest =
            serde_json::from_str(include_str!("../../../events/catch-up-sync-range.json")).unwrap();
        let ws = courier_aws::edge::WsRequest::from_event(&route).unwrap();
        h.gateway.open(&ws.connection_id);
        let payload = serde_json::to_value(&route).unwrap();
        let r = handle(&app, LambdaEvent::new(payload, Context::default()))
            .await
            .unwrap();
        let f = r.get("body").and_then(Value::as_str).unwrap();
        let f: ServerFrame = serde_json::from_str(f).unwrap();
        assert!(
            matches!(
                &f,
                ServerFrame::Error {
                    code: ErrorCode::ConversationNotFound,
                    request_id: Some(r),
                    ..
                } if r == "r-2"
            ),
            "{f:?}"
        );
        assert!(h.gateway.frames(&ws.connection_id).is_empty());
    }
}
