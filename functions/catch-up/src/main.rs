use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let telemetry = courier_aws::telemetry::Telemetry::init(env!("CARGO_PKG_NAME"))?;
    let app = courier_aws::wiring::app_from_env(catch_up::NEEDS).await?;
    lambda_runtime::run(service_fn(|event: LambdaEvent<serde_json::Value>| {
        telemetry.flushed(catch_up::handle(&app, event))
    }))
    .await
}
