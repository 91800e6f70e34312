//! AWS wiring: from environment variables to a [`Ports`] of real adapters.
//!
//! Parsing and building are one job, so one file (~640 lines); its tests,
//! which check every `Needs` against the variables it requires, are in
//! `tests.rs` beside it.
//!
//! Two steps, kept apart so a test can check a set of variables without a
//! network:
//!
//! 1. [`PortsConfig`]: pure parsing. A function asks for the ports it uses,
//!    either with [`Needs`] or with explicit `with_*` steps, and a missing
//!    required variable is a [`ConfigError`] that names it. The authorizer
//!    needs nothing, `connect` needs no table, and so on.
//! 2. [`AwsClients`]: the SDK config is loaded once
//!    (`aws_config::load_defaults`), every client is built from it, and
//!    [`AwsClients::ports`] builds the adapters the config names. Nothing
//!    here connects: Redis connects on first use, SDK clients on first call.
//!
//! The registry is Redis (`REGISTRY_BACKEND` unset or `redis`: `REDIS_URL`)
//! or a DynamoDB table (`REGISTRY_BACKEND=dynamodb`: `REGISTRY_TABLE`, on
//! the store's DynamoDB client), each behind its feature (`redis`,
//! `dynamodb`). The send limiter lives in the registry's Redis; with the
//! DynamoDB registry there is none, and [`rate_limiter_from_env`] turns it
//! off (API Gateway's route throttling still applies).
//!
//! A port the function did not ask for is filled with [`Unwired`], whose
//! every call fails with an error naming the port: a handler that reaches for
//! it fails loudly on its first call instead of silently using a stand-in.
//!
//! Endpoint overrides (`DYNAMODB_ENDPOINT`, `SNS_ENDPOINT`, `LAMBDA_ENDPOINT`)
//! point one client at moto or the local gateway; `MANAGEMENT_ENDPOINT` is
//! required for the Management API, whose endpoint is per API and stage.
//!
//! Client settings, chosen for functions with short deadlines:
//! every client fails a connect after 3 s and an attempt after 10 s — 3 s
//! for DynamoDB, whose calls the store retries up to five times (the SDK
//! has no attempt timeout by default, and a hung call would otherwise eat
//! the whole invocation). The Management API and DynamoDB clients have the
//! SDK's retries off: [`ApiGatewayManagement`] and [`DynamoStore`] retry
//! themselves with a shorter, bounded backoff, and the two must not multiply.

#[cfg(any(feature = "sdk", feature = "redis"))]
use std::sync::Arc;
use std::time::Duration;

#[cfg(feature = "sdk")]
use aws_config::{BehaviorVersion, SdkConfig};
#[cfg(any(feature = "dynamodb", feature = "apigw"))]
use aws_smithy_types::retry::RetryConfig;
#[cfg(feature = "sdk")]
use aws_smithy_types::timeout::TimeoutConfig;

use courier_core::app::{App, Ports, Settings};
use courier_core::config::{ConfigError, Env, PushConfig, RegistryBackend, TableNames};

#[cfg(feature = "apigw")]
use crate::apigw::ApiGatewayManagement;
#[cfg(feature = "dynamodb")]
use crate::dynamo::{DynamoRegistry, DynamoStore};
#[cfg(feature = "lambda")]
use crate::lambda::LambdaTrigger;
#[cfg(feature = "redis")]
use crate::redis::RedisRegistry;
#[cfg(feature = "sns")]
use crate::sns::SnsNotifier;

/// An `http://` or `https://` URL from variable `name`.
fn url_var<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
    name: &'static str,
) -> Result<Option<String>, ConfigError> {
    match env.optional(name) {
        None => Ok(None),
        Some(v) => {
            let v = v.trim().trim_end_matches('/').to_owned();
            let rest = v
                .strip_prefix("https://")
                .or_else(|| v.strip_prefix("http://"));
            match rest {
                Some(host) if !host.is_empty() => Ok(Some(v)),
                _ => Err(ConfigError::Invalid {
                    name,
                    reason: "must be an http:// or https:// URL".into(),
                }),
            }
        }
    }
}

/// Optional endpoint overrides for moto and the local gateway.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AwsEndpoints {
    pub dynamodb: Option<String>,
    pub sns: Option<String>,
    pub lambda: Option<String>,
}

impl AwsEndpoints {
    pub fn from_env<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<Self, ConfigError> {
        Ok(Self {
            dynamodb: url_var(env, "DYNAMODB_ENDPOINT")?,
            sns: url_var(env, "SNS_ENDPOINT")?,
            lambda: url_var(env, "LAMBDA_ENDPOINT")?,
        })
    }
}

/// The Management API endpoint of one API stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagementConfig {
    /// `https://{api}.execute-api.{region}.amazonaws.com/{stage}`.
    pub endpoint: String,
}

impl ManagementConfig {
    pub fn from_env<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<Self, ConfigError> {
        url_var(env, "MANAGEMENT_ENDPOINT")?
            .map(|endpoint| Self { endpoint })
            .ok_or(ConfigError::Missing("MANAGEMENT_ENDPOINT"))
    }
}

/// The function `connect` invokes for catch-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerConfig {
    /// Name or ARN (`CATCH_UP_FUNCTION`).
    pub function: String,
}

impl TriggerConfig {
    pub fn from_env<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<Self, ConfigError> {
        Ok(Self {
            function: env.required("CATCH_UP_FUNCTION")?,
        })
    }
}

/// Which ports a function uses. The constants are the functions of
/// docs/architecture.md as their services stand; a function may ask for more.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    /// Every DynamoDB table (messages, pending, conversations, idempotency,
    /// devices): one store serves them all.
    pub stores: bool,
    pub registry: bool,
    pub gateway: bool,
    pub trigger: bool,
    pub notifier: bool,
}

impl Needs {
    pub const NONE: Needs = Needs {
        stores: false,
        registry: false,
        gateway: false,
        trigger: false,
        notifier: false,
    };
    pub const ALL: Needs = Needs {
        stores: true,
        registry: true,
        gateway: true,
        trigger: true,
        notifier: true,
    };
    /// The device's link (stores), registry SET, then the async invoke of
    /// catch-up.
    pub const CONNECT: Needs = Needs {
        stores: true,
        registry: true,
        trigger: true,
        ..Needs::NONE
    };
    /// Compare-and-delete of the registry entry.
    pub const DISCONNECT: Needs = Needs {
        registry: true,
        ..Needs::NONE
    };
    /// Pending and range reads, posts, and the registry on a final 410.
    pub const CATCH_UP: Needs = Needs {
        stores: true,
        gateway: true,
        registry: true,
        ..Needs::NONE
    };
    /// Store, deliver live, push the unreachable.
    pub const SEND: Needs = Needs {
        stores: true,
        registry: true,
        gateway: true,
        notifier: true,
        ..Needs::NONE
    };
    /// Pending writes, and receipts to online members.
    pub const ACK: Needs = Needs {
        stores: true,
        registry: true,
        gateway: true,
        ..Needs::NONE
    };
    /// Push tokens, linked devices; unlinking closes the device's
    /// connection (registry, gateway) and deletes its endpoints.
    pub const DEVICES: Needs = Needs {
        stores: true,
        registry: true,
        gateway: true,
        notifier: true,
        ..Needs::NONE
    };
    /// `ping` re-asserts the connection's registry entry.
    pub const DEFAULT: Needs = Needs {
        registry: true,
        ..Needs::NONE
    };
    pub const CONVERSATIONS: Needs = Needs {
        stores: true,
        ..Needs::NONE
    };
}

/// What [`AwsClients::ports`] builds, parsed from the environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortsConfig {
    pub endpoints: AwsEndpoints,
    pub tables: Option<TableNames>,
    /// `DYNAMODB_ATTEMPT_TIMEOUT_MS`; `None`: [`DYNAMODB_ATTEMPT_TIMEOUT`].
    pub dynamodb_attempt_timeout: Option<Duration>,
    pub registry: Option<RegistryBackend>,
    pub management: Option<ManagementConfig>,
    pub trigger: Option<TriggerConfig>,
    pub push: Option<PushConfig>,
}

impl PortsConfig {
    /// The endpoint overrides only; add ports with the `with_*` steps.
    pub fn new<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<Self, ConfigError> {
        Ok(Self {
            endpoints: AwsEndpoints::from_env(env)?,
            ..Self::default()
        })
    }

    /// Everything `needs` asks for.
    pub fn from_env<F: Fn(&str) -> Option<String>>(
        env: &Env<F>,
        needs: Needs,
    ) -> Result<Self, ConfigError> {
        let mut c = Self::new(env)?;
        if needs.stores {
            c = c.with_stores(env)?;
        }
        if needs.registry {
            c = c.with_registry(env)?;
        }
        if needs.gateway {
            c = c.with_gateway(env)?;
        }
        if needs.trigger {
            c = c.with_trigger(env)?;
        }
        if needs.notifier {
            c = c.with_notifier(env)?;
        }
        Ok(c)
    }

    /// The DynamoDB store: every `*_TABLE` variable.
    pub fn with_stores<F: Fn(&str) -> Option<String>>(
        mut self,
        env: &Env<F>,
    ) -> Result<Self, ConfigError> {
        self.tables = Some(TableNames::from_env(env)?);
        if env.optional("DYNAMODB_ATTEMPT_TIMEOUT_MS").is_some() {
            let ms: u64 = env.parsed("DYNAMODB_ATTEMPT_TIMEOUT_MS", 0)?;
            if !(100..=60_000).contains(&ms) {
                return Err(ConfigError::Invalid {
                    name: "DYNAMODB_ATTEMPT_TIMEOUT_MS",
                    reason: "must be from 100 to 60000 milliseconds".into(),
                });
            }
            self.dynamodb_attempt_timeout = Some(Duration::from_millis(ms));
        }
        Ok(self)
    }

    /// The registry, by `REGISTRY_BACKEND`: Redis (unset or `redis`):
    /// `REDIS_URL` (checked, not connected), `REDIS_CLUSTER`,
    /// `REGISTRY_TTL_SECS`, `REDIS_TIMEOUT_MS`; DynamoDB (`dynamodb`):
    /// `REGISTRY_TABLE`, `REGISTRY_TTL_SECS`.
    pub fn with_registry<F: Fn(&str) -> Option<String>>(
        mut self,
        env: &Env<F>,
    ) -> Result<Self, ConfigError> {
        let backend = RegistryBackend::from_env(env)?;
        if let RegistryBackend::Redis(config) = &backend {
            #[cfg(feature = "redis")]
            RedisRegistry::check_url(&config.url, config.cluster).map_err(|e| {
                ConfigError::Invalid {
                    name: "REDIS_URL",
                    reason: e.0,
                }
            })?;
            if config.timeout.is_zero() {
                return Err(ConfigError::Invalid {
                    name: "REDIS_TIMEOUT_MS",
                    reason: "must be at least 1".into(),
                });
            }
        }
        self.registry = Some(backend);
        Ok(self)
    }

    /// The Management API: `MANAGEMENT_ENDPOINT`.
    pub fn with_gateway<F: Fn(&str) -> Option<String>>(
        mut self,
        env: &Env<F>,
    ) -> Result<Self, ConfigError> {
        self.management = Some(ManagementConfig::from_env(env)?);
        Ok(self)
    }

    /// The catch-up trigger: `CATCH_UP_FUNCTION`.
    pub fn with_trigger<F: Fn(&str) -> Option<String>>(
        mut self,
        env: &Env<F>,
    ) -> Result<Self, ConfigError> {
        self.trigger = Some(TriggerConfig::from_env(env)?);
        Ok(self)
    }

    /// SNS mobile push: `PUSH_PREVIEW` and the `SNS_*_APP_ARN`s (each
    /// optional: a platform without one answers `PlatformNotConfigured`).
    pub fn with_notifier<F: Fn(&str) -> Option<String>>(
        mut self,
        env: &Env<F>,
    ) -> Result<Self, ConfigError> {
        self.push = Some(PushConfig::from_env(env)?);
        Ok(self)
    }
}

/// How long one DynamoDB attempt may take. DynamoDB answers in milliseconds
/// (a 100-action transaction in well under a second); an attempt still
/// silent after this is hung. Five of them (the store's retry budget) plus
/// backoff stay under send-message's 20 s Lambda timeout.
pub const DYNAMODB_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);

/// The AWS SDK config, loaded once, and every client built from it.
#[cfg(feature = "sdk")]
#[derive(Debug, Clone)]
pub struct AwsClients {
    sdk: SdkConfig,
    endpoints: AwsEndpoints,
    dynamodb_attempt_timeout: Duration,
}

#[cfg(feature = "sdk")]
impl AwsClients {
    /// Loads region and credentials the standard way (environment, profile,
    /// Lambda's role).
    pub async fn load(endpoints: AwsEndpoints) -> Self {
        let sdk = aws_config::load_defaults(BehaviorVersion::latest()).await;
        Self::from_sdk_config(sdk, endpoints)
    }

    /// From an SDK config built elsewhere (tests: fixed region and
    /// credentials, nothing read from the machine).
    pub fn from_sdk_config(sdk: SdkConfig, endpoints: AwsEndpoints) -> Self {
        Self {
            sdk,
            endpoints,
            dynamodb_attempt_timeout: DYNAMODB_ATTEMPT_TIMEOUT,
        }
    }

    /// Another attempt timeout for the DynamoDB client than
    /// [`DYNAMODB_ATTEMPT_TIMEOUT`]: a slower DynamoDB-compatible server
    /// (DynamoDB Local, an emulator serving one request at a time).
    pub fn with_dynamodb_attempt_timeout(mut self, timeout: Duration) -> Self {
        self.dynamodb_attempt_timeout = timeout;
        self
    }

    pub fn sdk_config(&self) -> &SdkConfig {
        &self.sdk
    }

    #[cfg(any(feature = "sns", feature = "lambda", feature = "apigw"))]
    fn timeouts() -> TimeoutConfig {
        TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(3))
            .operation_attempt_timeout(Duration::from_secs(10))
            .build()
    }

    /// SDK retries off: [`DynamoStore`] retries throttling and transient
    /// faults itself (bounded, jittered, with a fresh transaction token after
    /// a cancellation); with the SDK's three attempts under each of its own
    /// five, one throttled call made fifteen requests and a dead endpoint
    /// held a send for seconds (`tests/tests/faults.rs`).
    ///
    /// Attempts time out after [`DYNAMODB_ATTEMPT_TIMEOUT`], not the 10 s of
    /// the other clients: the store makes up to five attempts per call, and
    /// five 10 s attempts held a send on a hung DynamoDB for 50 s, long after
    /// Lambda had killed it.
    #[cfg(feature = "dynamodb")]
    pub fn dynamodb(&self) -> aws_sdk_dynamodb::Client {
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(3))
            .operation_attempt_timeout(self.dynamodb_attempt_timeout)
            .build();
        let mut b = aws_sdk_dynamodb::config::Builder::from(&self.sdk)
            .timeout_config(timeouts)
            .retry_config(RetryConfig::disabled());
        if let Some(url) = &self.endpoints.dynamodb {
            b = b.endpoint_url(url);
        }
        aws_sdk_dynamodb::Client::from_conf(b.build())
    }

    #[cfg(feature = "sns")]
    pub fn sns(&self) -> aws_sdk_sns::Client {
        let mut b = aws_sdk_sns::config::Builder::from(&self.sdk).timeout_config(Self::timeouts());
        if let Some(url) = &self.endpoints.sns {
            b = b.endpoint_url(url);
        }
        aws_sdk_sns::Client::from_conf(b.build())
    }

    #[cfg(feature = "lambda")]
    pub fn lambda(&self) -> aws_sdk_lambda::Client {
        let mut b =
            aws_sdk_lambda::config::Builder::from(&self.sdk).timeout_config(Self::timeouts());
        if let Some(url) = &self.endpoints.lambda {
            b = b.endpoint_url(url);
        }
        aws_sdk_lambda::Client::from_conf(b.build())
    }

    /// The Management API client of one stage; SDK retries off (see the
    /// module doc).
    #[cfg(feature = "apigw")]
    pub fn management(&self, endpoint: &str) -> aws_sdk_apigatewaymanagement::Client {
        let conf = aws_sdk_apigatewaymanagement::config::Builder::from(&self.sdk)
            .endpoint_url(endpoint)
            .timeout_config(Self::timeouts())
            .retry_config(RetryConfig::disabled())
            .build();
        aws_sdk_apigatewaymanagement::Client::from_conf(conf)
    }

    /// The adapters `config` names; [`Unwired`] for the rest.
    pub fn ports(&self, config: &PortsConfig) -> Result<Ports, ConfigError> {
        let mut ports = sdk_free_ports(config)?;
        #[cfg(feature = "dynamodb")]
        let mut store = None;
        if let Some(tables) = &config.tables {
            #[cfg(feature = "dynamodb")]
            {
                let built = Arc::new(DynamoStore::new(self.dynamodb(), tables.clone()));
                ports = ports.with_store(built.clone());
                store = Some(built);
            }
            #[cfg(not(feature = "dynamodb"))]
            return Err(not_built(
                tables.messages.clone(),
                "MESSAGES_TABLE",
                "dynamodb",
            ));
        }
        if let Some(RegistryBackend::DynamoDb(registry)) = &config.registry {
            // On the store's client when there is one: one connection pool.
            #[cfg(feature = "dynamodb")]
            {
                let registry = match &store {
                    Some(store) => DynamoRegistry::beside(store, registry.clone()),
                    None => DynamoRegistry::new(self.dynamodb(), registry.clone()),
                };
                ports = ports.with_registry(Arc::new(registry));
            }
            #[cfg(not(feature = "dynamodb"))]
            return Err(not_built(registry, "REGISTRY_BACKEND", "dynamodb"));
        }
        if let Some(management) = &config.management {
            #[cfg(feature = "apigw")]
            {
                let gateway = ApiGatewayManagement::new(self.management(&management.endpoint));
                ports = ports.with_gateway(Arc::new(gateway));
            }
            #[cfg(not(feature = "apigw"))]
            return Err(not_built(management, "MANAGEMENT_ENDPOINT", "apigw"));
        }
        if let Some(trigger) = &config.trigger {
            #[cfg(feature = "lambda")]
            {
                let trigger = LambdaTrigger::new(self.lambda(), trigger.function.clone());
                ports = ports.with_trigger(Arc::new(trigger));
            }
            #[cfg(not(feature = "lambda"))]
            return Err(not_built(trigger, "CATCH_UP_FUNCTION", "lambda"));
        }
        if let Some(push) = &config.push {
            #[cfg(feature = "sns")]
            {
                ports = ports.with_notifier(Arc::new(SnsNotifier::new(self.sns(), push.clone())));
            }
            #[cfg(not(feature = "sns"))]
            return Err(not_built(push, "PUSH_PREVIEW", "sns"));
        }
        Ok(ports)
    }
}

/// The refusal for a port this build of `courier-aws` left out: a function
/// whose `Cargo.toml` features and [`Needs`] disagree fails at start-up,
/// naming both. Takes the config value the missing adapter would have used,
/// so a build without the feature leaves no binding unused.
#[allow(dead_code)]
fn not_built<T>(_: T, variable: &'static str, feature: &str) -> ConfigError {
    ConfigError::Invalid {
        name: variable,
        reason: format!("this function was built without courier-aws's `{feature}` feature"),
    }
}

/// The ports that need no AWS SDK client (the Redis registry); [`Unwired`]
/// for every other.
fn sdk_free_ports(config: &PortsConfig) -> Result<Ports, ConfigError> {
    let ports = Ports::unwired();
    let Some(RegistryBackend::Redis(registry)) = &config.registry else {
        return Ok(ports);
    };
    #[cfg(feature = "redis")]
    {
        let registry = RedisRegistry::new(registry.clone()).map_err(|e| ConfigError::Invalid {
            name: "REDIS_URL",
            reason: e.0,
        })?;
        Ok(ports.with_registry(Arc::new(registry)))
    }
    #[cfg(not(feature = "redis"))]
    Err(not_built(registry, "REDIS_URL", "redis"))
}

impl PortsConfig {
    /// True when a port needs an AWS SDK client (so the SDK config must be
    /// loaded at start-up).
    pub fn needs_sdk(&self) -> bool {
        self.tables.is_some()
            || matches!(self.registry, Some(RegistryBackend::DynamoDb(_)))
            || self.management.is_some()
            || self.trigger.is_some()
            || self.push.is_some()
    }
}

/// The whole wiring of a Lambda `main`: parse what `needs` asks for, load
/// the SDK config once (only if a port needs it), build the adapters.
pub async fn ports_from_env<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
    needs: Needs,
) -> Result<Ports, ConfigError> {
    let config = PortsConfig::from_env(env, needs)?;
    if !config.needs_sdk() {
        return sdk_free_ports(&config);
    }
    #[cfg(feature = "sdk")]
    {
        let mut clients = AwsClients::load(config.endpoints.clone()).await;
        if let Some(timeout) = config.dynamodb_attempt_timeout {
            clients = clients.with_dynamodb_attempt_timeout(timeout);
        }
        clients.ports(&config)
    }
    #[cfg(not(feature = "sdk"))]
    match &config.registry {
        Some(RegistryBackend::DynamoDb(registry)) => {
            Err(not_built(registry, "REGISTRY_BACKEND", "dynamodb"))
        }
        _ => Err(not_built((), "AWS_REGION", "sdk")),
    }
}

/// A Lambda function's start-up: settings and the ports `needs` asks for,
/// from the process environment, clients built once.
pub async fn app_from_env(needs: Needs) -> Result<App, ConfigError> {
    let env = courier_core::config::process_env();
    let settings = Settings::from_env(&env)?;
    let ports = ports_from_env(&env, needs).await?;
    Ok(App::new(ports, settings))
}

/// The per-user send limiter of a Lambda function: a token bucket in the
/// Redis of `REDIS_URL`, limits from `RATE_LIMIT_PER_SEC`/`RATE_LIMIT_BURST`.
/// Nothing connects until the first send.
///
/// With `REGISTRY_BACKEND=dynamodb` there is no Redis: the limiter is off,
/// as with `RATE_LIMIT_PER_SEC=0`, and the start-up log says so. API
/// Gateway's route throttling still bounds the stage.
#[cfg(feature = "redis")]
pub fn rate_limiter_from_env<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
) -> Result<Arc<dyn courier_core::ports::RateLimiter>, ConfigError> {
    let limits = courier_core::config::RateLimitConfig::from_env(env)?;
    let redis = match RegistryBackend::from_env(env)? {
        RegistryBackend::Redis(redis) => redis,
        RegistryBackend::DynamoDb(_) => {
            if limits.enabled() {
                tracing::warn!(
                    per_sec = limits.per_sec,
                    burst = limits.burst,
                    "rate limiter off: REGISTRY_BACKEND=dynamodb has no Redis to keep the \
                     buckets in (API Gateway's route throttling still applies)"
                );
            } else {
                tracing::info!("rate limiter off (RATE_LIMIT_PER_SEC=0)");
            }
            return Ok(Arc::new(courier_core::adapters::rate_limit::Unlimited));
        }
    };
    let limiter = crate::rate_limit::RedisRateLimiter::new(&redis, limits).map_err(|e| {
        ConfigError::Invalid {
            name: "REDIS_URL",
            reason: e.0,
        }
    })?;
    Ok(Arc::new(limiter))
}

/// Parses every variable a function with `needs` reads at start-up, without
/// touching the network (the SAM template test calls this with the
/// template's variables).
pub fn check_env<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
    needs: Needs,
) -> Result<(), ConfigError> {
    Settings::from_env(env)?;
    PortsConfig::from_env(env, needs)?;
    Ok(())
}

#[cfg(test)]
mod tests;
