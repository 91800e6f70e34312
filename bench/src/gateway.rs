//! The local gateway wired the way a figure needs it.
//!
//! `courier_local::wiring::start` covers the default shapes (everything in
//! memory; Redis + DynamoDB with posts and invokes through the gateway's own
//! HTTP APIs). The send-path figure needs one more: the functions' posts
//! going through the SDK to `@connections` *behind a latency proxy*, like
//! their DynamoDB and Redis calls, so every backend round trip of a send is
//! one RTT away. [`start`] builds that from the same parts `wiring` uses
//! (`Core`, `courier_routes`, `serve`), so the handlers are the real ones.

use std::sync::Arc;

use anyhow::Context as _;
use courier_aws::apigw::ApiGatewayManagement;
use courier_aws::auth::AuthConfig;
use courier_aws::dynamo::DynamoStore;
use courier_aws::lambda::LambdaTrigger;
use courier_aws::rate_limit::RedisRateLimiter;
use courier_aws::redis::RedisRegistry;
use courier_aws::wiring::{AwsClients, AwsEndpoints};
use courier_core::app::{App, Ports, Settings};
use courier_core::config::{RateLimitConfig, RegistryConfig, TableNames};
use courier_core::ports::ConnectionRegistry;
use courier_local::pushes::RecordingNotifier;
use courier_local::routes::Routes;
use courier_local::wiring::{LOCAL_JWT_SECRET, courier_routes, functions};
use courier_local::{Core, GatewayConfig, Inspect, RunningGateway};

use crate::backends::Latency;
use crate::trace::{self, Tape};

/// A gateway whose functions reach DynamoDB, Redis and `@connections`
/// through latency proxies.
pub struct ProxiedGateway {
    pub running: RunningGateway,
    pub registry: Arc<dyn ConnectionRegistry>,
    pub store: DynamoStore,
    pub dynamo: Latency,
    pub redis: Latency,
    pub management: Latency,
    /// Every port call of the gateway's functions.
    pub tape: Arc<Tape>,
}

impl ProxiedGateway {
    pub fn ws_url(&self) -> String {
        self.running.ws_url()
    }

    /// The proxies, to set their delay together.
    pub fn proxies(&self) -> [&Latency; 3] {
        [&self.dynamo, &self.redis, &self.management]
    }
}

/// Starts a gateway on a free loopback port running Courier's handlers over
/// DynamoDB (`tables` on `dynamodb_endpoint`), Redis and the SDK's
/// Management API client, each behind its own proxy (pass-through until
/// set). Catch-up is triggered in process: the trigger is not on any path
/// measured with it.
pub async fn start(
    dynamodb_endpoint: &str,
    redis_url: &str,
    tables: &TableNames,
) -> anyhow::Result<ProxiedGateway> {
    start_with(dynamodb_endpoint, redis_url, tables, |routes| routes).await
}

/// [`start`], with Courier's routes passed through `wrap` before they are
/// served (the cost figure counts every invocation this way).
pub async fn start_with(
    dynamodb_endpoint: &str,
    redis_url: &str,
    tables: &TableNames,
    wrap: impl FnOnce(courier_local::routes::Routes) -> courier_local::routes::Routes,
) -> anyhow::Result<ProxiedGateway> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let dynamo = Latency::in_front_of(dynamodb_endpoint).await?;
    let redis = Latency::in_front_of(redis_url).await?;
    let config = GatewayConfig::default();
    let management = Latency::in_front_of(&format!("http://{addr}/{}", config.api.stage)).await?;

    let clients: AwsClients = crate::backends::Backends::clients(&dynamo.url);
    let store = DynamoStore::new(clients.dynamodb(), tables.clone());
    let registry: Arc<dyn ConnectionRegistry> = Arc::new(
        RedisRegistry::new(RegistryConfig::new(redis.url.clone()))
            .map_err(|e| anyhow::anyhow!("redis registry: {e}"))?,
    );
    let core = Core::new(config);
    let pushes = RecordingNotifier::new();
    let ports = Ports::unwired()
        .with_store(Arc::new(store.clone()))
        .with_registry(registry.clone())
        .with_gateway(Arc::new(ApiGatewayManagement::new(
            clients.management(&management.url),
        )))
        .with_trigger(Arc::new(core.trigger(functions::CATCH_UP)))
        .with_notifier(Arc::new(pushes.clone()));
    let pending = ports.pending.clone();
    let tape = Tape::new();
    // As the send-message binary wires it: a token bucket in Redis, asked
    // before any store call. Limits far above the benchmark's rates, so it
    // costs its round trip and never refuses.
    let limiter = RedisRateLimiter::new(
        &RegistryConfig::new(redis.url.clone()),
        RateLimitConfig {
            per_sec: 1e6,
            burst: 1_000_000,
        },
    )
    .map_err(|e| anyhow::anyhow!("rate limiter: {e}"))?;
    let app = App::new(trace::traced(ports, &tape), Settings::default())
        .with_rate_limiter(trace::traced_limiter(Arc::new(limiter), &tape));
    let routes = wrap(local_routes(app)?);
    let inspect = Inspect {
        pushes: Some(pushes),
        pending: Some(pending),
        registry: Some(registry.clone()),
    };
    let running = courier_local::serve(core, routes, inspect, listener)
        .await
        .context("serving the local gateway")?;
    Ok(ProxiedGateway {
        running,
        registry,
        store,
        dynamo,
        redis,
        management,
        tape,
    })
}

/// A gateway on `stores` and Redis whose functions post through the SDK to
/// its own `@connections` and invoke catch-up through the SDK on its own
/// Invoke API (production's path, as `courier-local --via-aws-apis`), with
/// no proxy: for the storm, where the stores may be in memory so that the
/// figure is the gateway's, the functions' and Redis's, not moto's.
/// `wrap` may replace functions of the route table (the storm records its
/// catch-ups).
pub async fn start_sdk(
    stores: Ports,
    redis_url: &str,
    wrap: impl FnOnce(Routes) -> Routes,
) -> anyhow::Result<RunningGateway> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let config = GatewayConfig::default();
    let clients = AwsClients::from_sdk_config(
        courier_local::wiring::local_sdk_config(),
        AwsEndpoints {
            lambda: Some(format!("http://{addr}")),
            ..AwsEndpoints::default()
        },
    );
    let registry: Arc<dyn ConnectionRegistry> = Arc::new(
        RedisRegistry::new(RegistryConfig::new(redis_url.to_owned()))
            .map_err(|e| anyhow::anyhow!("redis registry: {e}"))?,
    );
    let core = Core::new(config.clone());
    let pushes = RecordingNotifier::new();
    let management = clients.management(&format!("http://{addr}/{}", config.api.stage));
    let ports = stores
        .with_registry(registry.clone())
        .with_gateway(Arc::new(ApiGatewayManagement::new(management)))
        .with_trigger(Arc::new(LambdaTrigger::new(
            clients.lambda(),
            functions::CATCH_UP,
        )))
        .with_notifier(Arc::new(pushes.clone()));
    let pending = ports.pending.clone();
    let app = App::new(ports, Settings::default());
    let routes = wrap(local_routes(app)?);
    let inspect = Inspect {
        pushes: Some(pushes),
        pending: Some(pending),
        registry: Some(registry),
    };
    courier_local::serve(core, routes, inspect, listener)
        .await
        .context("serving the local gateway")
}

/// Courier's routes on `app`, with the authorizer the local gateway uses
/// (HS256 with the local secret).
fn local_routes(app: App) -> anyhow::Result<Routes> {
    let auth = authorizer::AuthorizerState::new(&AuthConfig::hs256(LOCAL_JWT_SECRET))
        .map_err(|e| anyhow::anyhow!("authorizer: {e}"))?;
    Ok(courier_routes(app, Arc::new(auth)))
}
