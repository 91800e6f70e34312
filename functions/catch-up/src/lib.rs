//! catch-up: invoked asynchronously by `$connect` with
//! `{user_id, connection_id, connected_at}`, and synchronously by the `sync`
//! route (a full catch-up, or a range of one conversation).
//!
//! One crate serves both because they are the same work; the payload says
//! which: a route event has a `requestContext`. Direct invocations are
//! retried by Lambda on error, which is safe because catch-up is idempotent.

use std::time::{Duration, Instant};

use aws_lambda_events::apigw::ApiGatewayWebsocketProxyRequest;
use courier_aws::edge;
use courier_core::app::App;
use courier_core::domain::{Connection, now_millis};
use courier_core::ports::CatchUpRequest;
use courier_core::protocol::{ClientFrame, SyncRequest};
use courier_core::services::Answer;
use courier_core::services::catch_up::{self, Ending, Report};
use lambda_runtime::{Error, LambdaEvent};
use serde_json::{Value, json};

pub async fn handle(app: &App, event: LambdaEvent<Value>) -> Result<Value, Error> {
    let deadline = deadline_of(&event.context);
    if event.payload.get("requestContext").is_some() {
        let route: ApiGatewayWebsocketProxyRequest = serde_json::from_value(event.payload)?;
        let response = sync_route(app, &route, deadline).await?;
        return Ok(serde_json::to_value(response)?);
    }
    let request: CatchUpRequest = serde_json::from_value(event.payload)?;
    let report = catch_up::catch_up(app, &request, deadline, None).await?;
    Ok(report_json(&report))
}

/// Lambda's deadline (epoch ms) as an `Instant`; none when the context has
/// none (a local invoke without one).
fn deadline_of(context: &lambda_runtime::Context) -> Option<Instant> {
    let deadline = i64::try_from(context.deadline).ok().filter(|d| *d > 0)?;
    let left = u64::try_from(deadline - now_millis()).unwrap_or(0);
    Some(Instant::now() + Duration::from_millis(left))
}

async fn sync_route(
    app: &App,
    route: &ApiGatewayWebsocketProxyRequest,
    deadline: Option<Instant>,
) -> Result<aws_lambda_events::apigw::ApiGatewayProxyResponse, Error> {
    edge::serve_frame(app, route, |ws, request| async move {
        let ClientFrame::Sync(sync) = request.frame else {
            return Ok(edge::wrong_route("sync"));
        };
        match sync {
            SyncRequest::Full => {
                let req = CatchUpRequest {
                    user_id: ws.user_id,
                    connection_id: ws.connection_id,
                    connected_at: ws.connected_at,
                };
                let report = catch_up::catch_up(app, &req, deadline, request.request_id).await?;
                Ok(Answer::Done(report))
            }
            SyncRequest::Range {
                conversation_id,
                after_seq,
                limit,
            } => {
                let connection = Connection {
                    connection_id: ws.connection_id,
                    connected_at: ws.connected_at,
                };
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
        "ending": match report.ending { Ending::CaughtUp => "caught_up", Ending::Gone => "gone" },
        "conversations": report.conversations,
        "messages": report.messages,
        "frames": report.frames,
        "more": report.more,
    })
}

/// The ports this function uses.
pub const NEEDS: courier_aws::wiring::Needs = courier_aws::wiring::Needs::CATCH_UP;

/// Parses every variable this function reads at start-up (no network).
pub fn check_env<F: Fn(&str) -> Option<String>>(
    env: &courier_core::config::Env<F>,
) -> Result<(), courier_core::config::ConfigError> {
    courier_aws::wiring::check_env(env, NEEDS)
}
