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

/// A Redis-only build (`--no-default-features`) refuses the DynamoDB
/// registry at start-up, naming the variable and the feature (the default
/// build's wiring is tested in courier-aws).
#[cfg(all(test, not(feature = "registry-dynamodb")))]
#[allow(clippy::unwrap_used)]
mod tests {
    use courier_core::config::{ConfigError, Env};

    use super::NEEDS;

    #[tokio::test]
    async fn a_redis_only_build_refuses_the_dynamodb_registry_by_name() {
        let env = Env(|k: &str| match k {
            "REGISTRY_BACKEND" => Some("dynamodb".to_owned()),
            "REGISTRY_TABLE" => Some("registry".to_owned()),
            _ => None,
        });
        let Err(e) = courier_aws::wiring::ports_from_env(&env, NEEDS).await else {
            panic!("a Redis-only build wired the DynamoDB registry");
        };
        assert!(
            matches!(
                e,
                ConfigError::Invalid {
                    name: "REGISTRY_BACKEND",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("`dynamodb` feature"), "{e}");
    }
}
