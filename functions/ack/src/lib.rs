//! `ack` route: advance or clear the caller's pending rows, send receipts.
//!
//! An ack gets no reply unless something in it was refused; then the route
//! response carries one `error` frame.

use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use courier::app::App;
use courier::edge::{self, WsRequest};
use courier::protocol::ClientFrame;
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
    let report = courier::services::ack::ack(app, &ws.user_id, &acks).await?;
    Ok(edge::reply(report.reply(request.request_id).as_ref()))
}

/// The ports this function uses.
pub const NEEDS: courier::adapters::aws::Needs = courier::adapters::aws::Needs::ACK;

/// Parses every variable this function reads at start-up (no network).
pub fn check_env<F: Fn(&str) -> Option<String>>(
    env: &courier::config::Env<F>,
) -> Result<(), courier::config::ConfigError> {
    courier::app::check_env(env, NEEDS)
}
