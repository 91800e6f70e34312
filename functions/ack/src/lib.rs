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
    edge::serve_frame(app, &event.payload, |ws, request| async move {
        let ClientFrame::Ack { acks } = request.frame else {
            return Ok(edge::wrong_route("ack"));
        };
        courier_core::services::ack::ack(app, &ws.user_id, &acks).await
    })
    .await
}

/// The ports this function uses.
pub const NEEDS: courier_aws::wiring::Needs = courier_aws::wiring::Needs::ACK;

/// Parses every variable this function reads at start-up (no network).
pub fn check_env<F: Fn(&str) -> Option<String>>(
    env: &courier_core::config::Env<F>,
) -> Result<(), courier_core::config::ConfigError> {
    courier_aws::wiring::check_env(env, NEEDS)
}
