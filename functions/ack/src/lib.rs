//! `ack` route: advance or clear the caller's pending rows, send receipts.
//!
//! An ack gets no reply unless something in it was refused; then the route
//! response carries one `error` frame.

use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use courier_aws::edge::{self, WsRequest};
use courier_core::app::App;
use courier_core::protocol::ClientFrame;
use lambda_runtime::{Error, LambdaEvent};

pub async fn handle(
    app: &App,
    event: LambdaEvent<ApiGatewayWebsocketProxyRequest>,
) -> Result<ApiGatewayProxyResponse, Error> {
    let ws = WsRequest::from_event(&event.payload)?;
    let request = match edge::frame(&ws) {
        Ok(r) => r,
        Err(reply) => return Ok(*reply),
    };
    let ClientFrame::Ack { acks } = request.frame else {
        return Ok(edge::wrong_route("ack", request.request_id));
    };
    let report = courier_core::services::ack::ack(app, &ws.user_id, &acks).await?;
    Ok(edge::reply(report.reply(request.request_id).as_ref()))
}

/// The ports this function uses.
pub const NEEDS: courier_aws::wiring::Needs = courier_aws::wiring::Needs::ACK;

/// Parses every variable this function reads at start-up (no network).
pub fn check_env<F: Fn(&str) -> Option<String>>(
    env: &courier_core::config::Env<F>,
) -> Result<(), courier_core::config::ConfigError> {
    courier_aws::wiring::check_env(env, NEEDS)
}
