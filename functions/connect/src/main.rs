use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    courier_aws::edge::init_tracing();
    let app = courier_aws::wiring::app_from_env(connect::NEEDS).await?;
    lambda_runtime::run(service_fn(
        |event: LambdaEvent<aws_lambda_events::apigw::ApiGatewayWebsocketProxyRequest>| {
            connect::handle(&app, event)
        },
    ))
    .await
}
