//! `$connect`: register the connection, start the catch-up, answer 200 fast.
//!
//! The authorizer already ran; its `user_id` is in the request context. This
//! handler never posts to the connection (API Gateway answers 410 until
//! `$connect` has returned) — catch-up does, asynchronously.

use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use courier_aws::edge::{self, WsRequest};
use courier_core::app::App;
use lambda_runtime::{Error, LambdaEvent};

pub async fn handle(
    app: &App,
    event: LambdaEvent<ApiGatewayWebsocketProxyRequest>,
) -> Result<ApiGatewayProxyResponse, Error> {
    let request = WsRequest::from_event(&event.payload)?;
    let open_conversation = edge::open_conversation(&event.payload);
    courier_core::services::connect::connect(
        app,
        &request.user_id,
        &request.connection(),
        open_conversation,
    )
    .await;
    Ok(edge::status(200))
}

/// The ports this function uses.
pub const NEEDS: courier_aws::wiring::Needs = courier_aws::wiring::Needs::CONNECT;
