//! `$disconnect`: forget the connection, unless a newer one replaced it.
//!
//! API Gateway delivers `$disconnect` best effort and possibly late, after
//! the same user connected again; the registry's compare-and-delete keeps the
//! newer entry.

use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use courier::app::App;
use courier::edge::{self, WsRequest};
use lambda_runtime::{Error, LambdaEvent};

pub async fn handle(
    app: &App,
    event: LambdaEvent<ApiGatewayWebsocketProxyRequest>,
) -> Result<ApiGatewayProxyResponse, Error> {
    let request = WsRequest::from_event(&event.payload)?;
    courier::services::connect::disconnect(&app.ports, &request.user_id, &request.connection_id)
        .await;
    Ok(edge::status(200))
}

/// The ports this function uses.
pub const NEEDS: courier::adapters::aws::Needs = courier::adapters::aws::Needs::DISCONNECT;

/// Parses every variable this function reads at start-up (no network).
pub fn check_env<F: Fn(&str) -> Option<String>>(
    env: &courier::config::Env<F>,
) -> Result<(), courier::config::ConfigError> {
    courier::app::check_env(env, NEEDS)
}
