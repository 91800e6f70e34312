//! Courier itself behind the gateway: the backends and the real handlers.
//!
//! [`courier_routes`] puts each function crate's `handle` on the route and
//! function name the SAM template gives it, with the template's timeouts, so
//! the gateway runs exactly the code the Lambda binaries run.
//!
//! [`start`] builds the ports:
//!
//! - stores: in memory by default, DynamoDB (`--dynamodb-endpoint`, tables
//!   created if missing) otherwise;
//! - registry: in memory by default, Redis (`--redis-url`, a cluster with
//!   `--redis-cluster`), or a DynamoDB table on the stores' endpoint
//!   (`--registry dynamodb`, created if missing). With the DynamoDB
//!   registry the send limiter is off, as on a deploy without Redis;
//! - gateway and catch-up trigger: **in process** by default
//!   ([`crate::connections::LocalGateway`], [`crate::invoke::LocalTrigger`]):
//!   posts go straight to the sockets and catch-up runs as an `Event`
//!   invocation of the `catch-up` function. With `via_aws_apis`, the real
//!   `ApiGatewayManagement` and `LambdaTrigger` adapters are used instead,
//!   pointed at this gateway's own `@connections` and Invoke APIs, so the
//!   SDK path of production is exercised end to end;
//! - notifier: always the [`RecordingNotifier`] (no APNs/FCM here).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use aws_lambda_events::apigw::{
    ApiGatewayCustomAuthorizerRequestTypeRequest, ApiGatewayWebsocketProxyRequest,
};
use courier_aws::apigw::ApiGatewayManagement;
use courier_aws::auth::AuthConfig;
use courier_aws::dynamo::{DynamoRegistry, DynamoStore};
use courier_aws::lambda::LambdaTrigger;
use courier_aws::rate_limit::RedisRateLimiter;
use courier_aws::redis::RedisRegistry;
use courier_aws::wiring::{AwsClients, AwsEndpoints};
use courier_core::adapters::memory::{MemoryRegistry, MemoryStore};
use courier_core::adapters::rate_limit::{MemoryRateLimiter, Unlimited};
use courier_core::app::{App, Ports, Settings};
use courier_core::config::{
    DynamoRegistryConfig, Env, RateLimitConfig, RegistryConfig, TableNames,
};
use courier_core::ports::{CatchUpTrigger, ConnectionRegistry, Gateway, PendingStore, RateLimiter};
use lambda_runtime::LambdaEvent;
use serde_json::Value;

use crate::pushes::RecordingNotifier;
use crate::routes::{CONNECT, DEFAULT, DISCONNECT, Routes};
use crate::server::{Core, GatewayConfig, Inspect, RunningGateway, serve};

/// The HS256 secret of local runs when none is given: local tokens are
/// minted with it (`courier-local token`, the client's `--as`).
pub const LOCAL_JWT_SECRET: &str = "courier-local-dev-secret";

/// Table prefix of local runs on DynamoDB.
pub const LOCAL_TABLE_PREFIX: &str = "courier-local";

/// The function names (as the SAM template's `FunctionName`s would be
/// referred to by `CATCH_UP_FUNCTION` and the Invoke API).
pub mod functions {
    pub const AUTHORIZER: &str = "authorizer";
    pub const CONNECT: &str = "connect";
    pub const DISCONNECT: &str = "disconnect";
    pub const CATCH_UP: &str = "catch-up";
    pub const SEND_MESSAGE: &str = "send-message";
    pub const ACK: &str = "ack";
    pub const CONVERSATIONS: &str = "conversations";
    pub const DEVICES: &str = "devices";
    pub const DEFAULT: &str = "default";
}

/// Each function's `Timeout` in `template.yaml`, by function name.
///
/// Copied rather than read at run time so the gateway needs no template to
/// start; `local/tests/template.rs` fails when a value here and the
/// template's (the function's own `Timeout`, else `Globals`) differ, so the
/// copy cannot drift. They matter locally because a handler is cut off at
/// its timeout as on Lambda, and catch-up plans its work back from the
/// deadline its context carries.
pub const FUNCTION_TIMEOUTS: &[(&str, Duration)] = &[
    (functions::AUTHORIZER, Duration::from_secs(10)),
    (functions::CONNECT, Duration::from_secs(10)),
    (functions::DISCONNECT, Duration::from_secs(10)),
    (functions::CATCH_UP, Duration::from_secs(28)),
    (functions::SEND_MESSAGE, Duration::from_secs(20)),
    (functions::ACK, Duration::from_secs(15)),
    (functions::CONVERSATIONS, Duration::from_secs(10)),
    (functions::DEVICES, Duration::from_secs(10)),
    (functions::DEFAULT, Duration::from_secs(5)),
];

/// The service settings `template.yaml` gives the functions' environments
/// (literal values and the defaults of the parameters they refer to).
///
/// Where the code's own default differs (catch-up's deadline margin), a
/// local run would otherwise behave unlike a deploy. The process
/// environment still wins ([`template_env`]); `local/tests/template.rs`
/// checks this table against the template.
pub const TEMPLATE_ENV: &[(&str, &str)] = &[
    ("OPEN_WINDOW_MS", "3000"),
    ("CATCH_UP_DEADLINE_MARGIN_MS", "5000"),
    ("RATE_LIMIT_PER_SEC", "10"),
    ("RATE_LIMIT_BURST", "30"),
    ("PENDING_CLEAR", "ack"),
    ("PUSH_PREVIEW", "full"),
    ("MESSAGE_RETENTION_DAYS", "0"),
];

/// `lookup` (the process environment, say), falling back to
/// [`TEMPLATE_ENV`] for what it does not set.
pub fn template_env<F>(lookup: F) -> Env<impl Fn(&str) -> Option<String>>
where
    F: Fn(&str) -> Option<String>,
{
    Env(move |name: &str| {
        lookup(name).or_else(|| {
            TEMPLATE_ENV
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        })
    })
}

/// Every function on its route, with the SAM template's timeouts.
pub fn courier_routes(app: App, auth: Arc<authorizer::AuthorizerState>) -> Routes {
    use functions as f;
    let app = Arc::new(app);
    macro_rules! ws {
        ($handler:path) => {{
            let app = app.clone();
            move |e: LambdaEvent<ApiGatewayWebsocketProxyRequest>| {
                let app = app.clone();
                async move { $handler(&app, e).await }
            }
        }};
    }
    let catch_up_app = app.clone();
    Routes::new()
        .authorizer(
            f::AUTHORIZER,
            move |e: LambdaEvent<ApiGatewayCustomAuthorizerRequestTypeRequest>| {
                let auth = auth.clone();
                async move { authorizer::handle(&auth, e).await }
            },
        )
        .route(CONNECT, f::CONNECT, ws!(connect::handle))
        .route(DISCONNECT, f::DISCONNECT, ws!(disconnect::handle))
        .route("sendMessage", f::SEND_MESSAGE, ws!(send_message::handle))
        .route("ack", f::ACK, ws!(ack::handle))
        .route(
            "createConversation",
            f::CONVERSATIONS,
            ws!(conversations::handle),
        )
        .route(
            "listConversations",
            f::CONVERSATIONS,
            ws!(conversations::handle),
        )
        .route("registerDevice", f::DEVICES, ws!(devices::handle))
        .route("listDevices", f::DEVICES, ws!(devices::handle))
        .route("unlinkDevice", f::DEVICES, ws!(devices::handle))
        .route(DEFAULT, f::DEFAULT, ws!(default::handle))
        .route("ping", f::DEFAULT, ws!(default::handle))
        .function(f::CATCH_UP, move |e: LambdaEvent<Value>| {
            let app = catch_up_app.clone();
            async move { catch_up::handle(&app, e).await }
        })
        .route_to_function("sync", f::CATCH_UP)
        .timeouts(FUNCTION_TIMEOUTS)
}

/// How to run Courier locally.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    pub gateway: GatewayConfig,
    /// Redis for the registry; in memory without.
    pub redis_url: Option<String>,
    /// `redis_url` seeds a Redis Cluster client (`REDIS_CLUSTER`, as the
    /// template's ElastiCache Serverless cache needs) instead of a
    /// single-node one.
    pub redis_cluster: bool,
    /// DynamoDB (moto, DynamoDB Local) for the stores; in memory without.
    pub dynamodb_endpoint: Option<String>,
    pub tables: TableNames,
    /// The registry in this DynamoDB table on `dynamodb_endpoint` (created
    /// if missing) instead of Redis or memory: `REGISTRY_BACKEND=dynamodb`.
    /// The send limiter is then off, as on such a deploy.
    pub registry_table: Option<String>,
    pub auth: AuthConfig,
    pub settings: Settings,
    /// Per-user send limit, as send-message applies it: a token bucket in
    /// the Redis of `redis_url`, in memory without. `per_sec: 0.0` turns it
    /// off.
    pub rate_limit: RateLimitConfig,
    /// Post and trigger through this gateway's own HTTP APIs with the real
    /// AWS adapters instead of in process.
    pub via_aws_apis: bool,
}

impl Default for LocalOptions {
    fn default() -> Self {
        Self {
            gateway: GatewayConfig::default(),
            redis_url: None,
            redis_cluster: false,
            dynamodb_endpoint: None,
            tables: TableNames::with_prefix(LOCAL_TABLE_PREFIX),
            registry_table: None,
            auth: AuthConfig::hs256(LOCAL_JWT_SECRET),
            settings: template_settings(),
            rate_limit: template_rate_limit(),
            via_aws_apis: false,
        }
    }
}

/// The service settings of a deploy with the template's defaults.
fn template_settings() -> Settings {
    // Every value in TEMPLATE_ENV parses (the template test builds these
    // same settings from the template); the fallback only keeps this total.
    Settings::from_env(&template_env(|_| None)).unwrap_or_default()
}

fn template_rate_limit() -> RateLimitConfig {
    RateLimitConfig::from_env(&template_env(|_| None)).unwrap_or_default()
}

/// A running local Courier and what tests reach into.
pub struct Started {
    pub gateway: RunningGateway,
    pub pushes: RecordingNotifier,
    pub pending: Arc<dyn PendingStore>,
    pub registry: Arc<dyn ConnectionRegistry>,
}

/// An SDK config for local endpoints: region and keys from the environment
/// if set, else fixed fakes (moto and this gateway accept any).
pub fn local_sdk_config() -> aws_config::SdkConfig {
    use aws_sdk_dynamodb::config::{Credentials, SharedCredentialsProvider};
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let region = var("AWS_REGION").unwrap_or_else(|| "us-east-1".into());
    let key = var("AWS_ACCESS_KEY_ID").unwrap_or_else(|| "local".into());
    let secret = var("AWS_SECRET_ACCESS_KEY").unwrap_or_else(|| "local".into());
    aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(region))
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            key,
            secret,
            None,
            None,
            "courier-local",
        )))
        .build()
}

/// Creates Courier's tables on `endpoint` (existing ones are kept).
pub async fn create_tables(endpoint: &str, tables: &TableNames) -> anyhow::Result<()> {
    let clients = AwsClients::from_sdk_config(
        local_sdk_config(),
        AwsEndpoints {
            dynamodb: Some(endpoint.to_owned()),
            ..AwsEndpoints::default()
        },
    );
    courier_aws::dynamo::create_tables(&clients.dynamodb(), tables)
        .await
        .with_context(|| format!("creating tables on {endpoint}"))
}

/// Writes the membership items of conversations created before the
/// memberships index (`DynamoStore::backfill_memberships`), on `endpoint`
/// (moto, DynamoDB Local) or, without one, the AWS account of the default
/// credential chain.
pub async fn backfill_memberships(
    endpoint: Option<&str>,
    tables: &TableNames,
) -> anyhow::Result<courier_aws::dynamo::Backfilled> {
    let endpoints = AwsEndpoints {
        dynamodb: endpoint.map(str::to_owned),
        ..AwsEndpoints::default()
    };
    let clients = match endpoint {
        Some(_) => AwsClients::from_sdk_config(local_sdk_config(), endpoints),
        None => AwsClients::load(endpoints).await,
    };
    DynamoStore::new(clients.dynamodb(), tables.clone())
        .backfill_memberships()
        .await
        .with_context(|| {
            format!(
                "backfilling memberships from {} into {}",
                tables.conversations, tables.pending
            )
        })
}

/// The registry table of a local run with `--registry dynamodb`: beside the
/// other tables, `{prefix}-registry`.
pub fn registry_table(prefix: &str) -> String {
    format!("{prefix}-registry")
}

/// Creates the registry table on `endpoint`, TTL on (kept if it exists).
pub async fn create_registry_table(endpoint: &str, table: &str) -> anyhow::Result<()> {
    let clients = AwsClients::from_sdk_config(
        local_sdk_config(),
        AwsEndpoints {
            dynamodb: Some(endpoint.to_owned()),
            ..AwsEndpoints::default()
        },
    );
    courier_aws::dynamo::create_registry_table(&clients.dynamodb(), table)
        .await
        .with_context(|| format!("creating the registry table {table} on {endpoint}"))
}

/// Binds `listener`, builds the ports and the handlers, and serves.
pub async fn start(
    options: LocalOptions,
    listener: tokio::net::TcpListener,
) -> anyhow::Result<Started> {
    start_with(options, listener, |_, routes| routes).await
}

/// [`start`], with a last word on the routes (tests wrap a handler to
/// slow it down or watch it; the handlers themselves stay Courier's).
pub async fn start_with(
    options: LocalOptions,
    listener: tokio::net::TcpListener,
    customize: impl FnOnce(App, Routes) -> Routes,
) -> anyhow::Result<Started> {
    let addr = listener.local_addr()?;
    let mut config = options.gateway.clone();
    if config.local_tokens.is_none() {
        config.local_tokens = crate::page::LocalTokens::from_auth(&options.auth);
    }
    let core = Core::new(config);
    let clients = AwsClients::from_sdk_config(
        local_sdk_config(),
        AwsEndpoints {
            dynamodb: options.dynamodb_endpoint.clone(),
            sns: None,
            lambda: Some(format!("http://{addr}")),
        },
    );

    let redis = options.redis_url.as_ref().map(|url| {
        let mut config = RegistryConfig::new(url.clone());
        config.cluster = options.redis_cluster;
        config
    });
    let registry: Arc<dyn ConnectionRegistry> = match (&options.registry_table, &redis) {
        (Some(table), _) => {
            let endpoint = options.dynamodb_endpoint.as_deref().ok_or_else(|| {
                anyhow::anyhow!(
                    "the DynamoDB registry needs a DynamoDB endpoint (--dynamodb-endpoint)"
                )
            })?;
            create_registry_table(endpoint, table).await?;
            tracing::info!(%endpoint, %table, "registry: dynamodb");
            Arc::new(DynamoRegistry::new(
                clients.dynamodb(),
                DynamoRegistryConfig::new(table.clone()),
            ))
        }
        (None, Some(config)) => {
            let r = RedisRegistry::new(config.clone())
                .map_err(|e| anyhow::anyhow!("REDIS_URL: {}", e.0))?;
            tracing::info!("registry: redis");
            Arc::new(r)
        }
        (None, None) => Arc::new(MemoryRegistry::with_ttl(RegistryConfig::DEFAULT_TTL)),
    };

    let stores = match &options.dynamodb_endpoint {
        Some(endpoint) => {
            create_tables(endpoint, &options.tables).await?;
            tracing::info!(%endpoint, prefix = %options.tables.messages, "stores: dynamodb");
            let store = DynamoStore::new(clients.dynamodb(), options.tables.clone());
            Ports::unwired().with_store(Arc::new(store))
        }
        None => Ports::unwired().with_store(Arc::new(MemoryStore::new())),
    };

    let (gateway, trigger): (Arc<dyn Gateway>, Arc<dyn CatchUpTrigger>) = if options.via_aws_apis {
        let management = format!("http://{addr}/{}", options.gateway.api.stage);
        (
            Arc::new(ApiGatewayManagement::new(clients.management(&management))),
            Arc::new(LambdaTrigger::new(clients.lambda(), functions::CATCH_UP)),
        )
    } else {
        (
            Arc::new(core.gateway()),
            Arc::new(core.trigger(functions::CATCH_UP)),
        )
    };

    let pushes = RecordingNotifier::new();
    let ports = stores
        .with_registry(registry.clone())
        .with_gateway(gateway)
        .with_trigger(trigger)
        .with_notifier(Arc::new(pushes.clone()));
    let pending = ports.pending.clone();
    let limiter: Arc<dyn RateLimiter> = match (&redis, options.rate_limit) {
        (_, limits) if !limits.enabled() => Arc::new(Unlimited),
        (_, _) if options.registry_table.is_some() => {
            tracing::warn!(
                "rate limiter off: the DynamoDB registry has no Redis to keep the buckets in \
                 (as on a deploy with REGISTRY_BACKEND=dynamodb)"
            );
            Arc::new(Unlimited)
        }
        (Some(config), limits) => Arc::new(
            RedisRateLimiter::new(config, limits)
                .map_err(|e| anyhow::anyhow!("REDIS_URL: {}", e.0))?,
        ),
        (None, limits) => Arc::new(MemoryRateLimiter::new(limits)),
    };
    let app = App::new(ports, options.settings.clone()).with_rate_limiter(limiter);
    let auth = authorizer::AuthorizerState::new(&options.auth)
        .map_err(|e| anyhow::anyhow!("authorizer configuration: {e}"))?;
    let routes = customize(app.clone(), courier_routes(app, Arc::new(auth)));
    let inspect = Inspect {
        pushes: Some(pushes.clone()),
        pending: Some(pending.clone()),
        registry: Some(registry.clone()),
    };
    let gateway = serve(core, routes, inspect, listener).await?;
    Ok(Started {
        gateway,
        pushes,
        pending,
        registry,
    })
}
