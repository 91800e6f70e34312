//! The send-message Lambda binary: configuration read and the AWS clients built
//! once per execution environment, then one handler call per
//! `sendMessage` frame.

use lambda_runtime::{Error, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let telemetry = courier_aws::telemetry::Telemetry::init(env!("CARGO_PKG_NAME"))?;
    let app = courier_aws::wiring::app_from_env(send_message::NEEDS)
        .await?
        .with_rate_limiter(courier_aws::wiring::rate_limiter_from_env(
            &courier_core::config::process_env(),
        )?);
    lambda_runtime::run(service_fn(|event| {
        telemetry.flushed(send_message::handle(&app, event))
    }))
    .await
}
