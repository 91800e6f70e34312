//! `$connect`: register the connection, start the catch-up, answer 200 fast.
//!
//! The authorizer already ran; its `user_id` is in the request context. This
//! handler never posts to the connection (API Gateway answers 410 until
//! `$connect` has returned) — catch-up does, asynchronously.

use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use courier::app::App;
use courier::domain::Connection;
use courier::edge::{self, WsRequest};
use lambda_runtime::{Error, LambdaEvent};

pub async fn handle(
    app: &App,
    event: LambdaEvent<ApiGatewayWebsocketProxyRequest>,
) -> Result<ApiGatewayProxyResponse, Error> {
    let request = WsRequest::from_event(&event.payload)?;
    let connection = Connection {
        connection_id: request.connection_id,
        connected_at: request.connected_at,
    };
    courier::services::connect::connect(&app.ports, &request.user_id, &connection).await;
    Ok(edge::status(200))
}

/// The ports this function uses.
pub const NEEDS: courier::adapters::aws::Needs = courier::adapters::aws::Needs::CONNECT;

/// Parses every variable this function reads at start-up (no network).
pub fn check_env<F: Fn(&str) -> Option<String>>(
    env: &courier::config::Env<F>,
) -> Result<(), courier::config::ConfigError> {
    courier::app::check_env(env, NEEDS)
}
