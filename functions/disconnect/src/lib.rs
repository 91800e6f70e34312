//! `$disconnect`: forget the connection, unless a newer one replaced it.
//!
//! API Gateway delivers `$disconnect` best effort and possibly late, after
//! the same user connected again; the registry's compare-and-delete keeps the
//! newer entry.

use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use courier_aws::edge::{self, WsRequest};
use courier_core::app::App;
use lambda_runtime::{Error, LambdaEvent};
use tracing::Instrument;

pub async fn handle(
    app: &App,
    event: LambdaEvent<ApiGatewayWebsocketProxyRequest>,
) -> Result<ApiGatewayProxyResponse, Error> {
    async {
        let request = WsRequest::from_event(&event.payload)?;
        courier_core::services::connect::disconnect(
            &app.ports,
            &request.user_id,
            &request.device_id,
            &request.connection_id,
        )
        .await;
        Ok(edge::status(200))
    }
    .instrument(edge::span(&event.payload, &event.context))
    .await
}

/// The ports this function uses.
pub const NEEDS: courier_aws::wiring::Needs = courier_aws::wiring::Needs::DISCONNECT;
