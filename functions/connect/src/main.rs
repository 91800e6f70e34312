use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let telemetry = courier_aws::telemetry::Telemetry::init(env!("CARGO_PKG_NAME"))?;
    let app = courier_aws::wiring::app_from_env(connect::NEEDS).await?;
    lambda_runtime::run(service_fn(
        |event: LambdaEvent<aws_lambda_events::apigw::ApiGatewayWebsocketProxyRequest>| {
            telemetry.flushed(connect::handle(&app, event))
        },
    ))
    .await
}
