//! `$connect`: register the connection, start the catch-up, answer 200 fast.
//!
//! The authorizer already ran; its `user_id` is in the request context. This
//! handler never posts to the connection (API Gateway answers 410 until
//! `$connect` has returned) — catch-up does, asynchronously, logging under
//! this `$connect`'s correlation id (API Gateway's request id).

use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use courier_aws::edge::{self, WsRequest};
use courier_core::app::App;
use lambda_runtime::{Error, LambdaEvent};
use tracing::Instrument;

pub async fn handle(
    app: &App,
    event: LambdaEvent<ApiGatewayWebsocketProxyRequest>,
) -> Result<ApiGatewayProxyResponse, Error> {
    let correlation_id = edge::correlation_id(&event.payload);
    let span = courier_aws::telemetry::correlated(&correlation_id, &event.context);
    async {
        let request = WsRequest::from_event(&event.payload)?;
        let open_conversation = edge::open_conversation(&event.payload);
        courier_core::services::connect::connect(
            app,
            &request.user_id,
            &request.connection(),
            open_conversation,
            correlation_id,
        )
        .await;
        Ok(edge::status(200))
    }
    .instrument(span)
    .await
}

/// The ports this function uses.
pub const NEEDS: courier_aws::wiring::Needs = courier_aws::wiring::Needs::CONNECT;
