//! The devices Lambda binary: configuration read and the AWS clients built
//! once per execution environment, then one handler call per
//! `registerDevice` frame.

use lambda_runtime::{Error, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let telemetry = courier_aws::telemetry::Telemetry::init(env!("CARGO_PKG_NAME"))?;
    let app = courier_aws::wiring::app_from_env(devices::NEEDS).await?;
    lambda_runtime::run(service_fn(|event| {
        telemetry.flushed(devices::handle(&app, event))
    }))
    .await
}
