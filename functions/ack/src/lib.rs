//! `ack` route: advance or clear the caller's pending rows, send receipts.
//!
//! An ack gets no reply unless something in it was refused; then the route
//! response carries one `error` frame.

use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use courier::app::App;
use courier::edge::{self, WsRequest};
use courier::protocol::{ClientFrame, ErrorCode, FrameError, Request};
use lambda_runtime::{Error, LambdaEvent};

pub async fn handle(
    app: &App,
    event: LambdaEvent<ApiGatewayWebsocketProxyRequest>,
) -> Result<ApiGatewayProxyResponse, Error> {
    let ws = WsRequest::from_event(&event.payload)?;
    let request = match Request::parse(ws.body.as_deref().unwrap_or_default()) {
        Ok(r) => r,
        Err(e) => return Ok(edge::reply(Some(&e.to_frame()))),
    };
    let ClientFrame::Ack { acks } = request.frame else {
        let e = FrameError::new(ErrorCode::BadRequest, "this route takes ack frames only")
            .with_request_id(request.request_id);
        return Ok(edge::reply(Some(&e.to_frame())));
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
