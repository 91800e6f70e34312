//! The authorizer's Lambda binary: configuration and the JWKS client built
//! once per execution environment, then one handler call per `$connect`.

use authorizer::{AuthorizerState, handle};
use courier_aws::auth::AuthConfig;
use lambda_runtime::{Error, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let telemetry = courier_aws::telemetry::Telemetry::init(env!("CARGO_PKG_NAME"))?;
    let config = AuthConfig::from_env(&courier_core::config::process_env())?;
    let state = AuthorizerState::new(&config)?;
    // In the init phase, so the first `$connect` does not wait for the IdP.
    state.warm_up().await;
    lambda_runtime::run(service_fn(|event| telemetry.flushed(handle(&state, event)))).await
}
