//! The send-message Lambda binary: configuration read and the AWS clients built
//! once per execution environment, then one handler call per
//! `sendMessage` frame.

use lambda_runtime::{Error, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    courier::edge::init_tracing();
    let app = courier::app::app_from_env(send_message::NEEDS)
        .await?
        .with_rate_limiter(courier::app::rate_limiter_from_env(
            &courier::config::process_env(),
        )?);
    lambda_runtime::run(service_fn(|event| send_message::handle(&app, event))).await
}
