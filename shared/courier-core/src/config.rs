//! Configuration, read once at start-up into typed values.
//!
//! Each section has a `from_env` that reads only its own variables, so a
//! function asks for exactly what it uses (the authorizer never needs a table
//! name) and a missing required variable is an error that names it. Tests
//! build the structs directly; `Default` gives the documented defaults.

use std::time::Duration;

use crate::protocol::{DEFAULT_FRAME_BYTES, MAX_POST_BYTES};

/// A variable that is missing or does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("environment variable {0} is required but not set")]
    Missing(&'static str),
    #[error("environment variable {name} is invalid: {reason}")]
    Invalid { name: &'static str, reason: String },
}

/// Reads variables from a lookup function, so tests need not touch the
/// process environment.
pub struct Env<F: Fn(&str) -> Option<String>>(pub F);

/// The process environment.
pub fn process_env() -> Env<impl Fn(&str) -> Option<String>> {
    Env(|k: &str| std::env::var(k).ok().filter(|v| !v.is_empty()))
}

impl<F: Fn(&str) -> Option<String>> Env<F> {
    pub fn optional(&self, name: &'static str) -> Option<String> {
        (self.0)(name)
    }

    pub fn required(&self, name: &'static str) -> Result<String, ConfigError> {
        self.optional(name).ok_or(ConfigError::Missing(name))
    }

    pub fn parsed<T: std::str::FromStr>(
        &self,
        name: &'static str,
        default: T,
    ) -> Result<T, ConfigError>
    where
        T::Err: std::fmt::Display,
    {
        match self.optional(name) {
            None => Ok(default),
            Some(v) => v.trim().parse().map_err(|e: T::Err| ConfigError::Invalid {
                name,
                reason: e.to_string(),
            }),
        }
    }
}

/// DynamoDB table names (docs/architecture.md, data model).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableNames {
    pub messages: String,
    pub pending: String,
    pub conversations: String,
    pub idempotency: String,
    pub devices: String,
}

impl TableNames {
    pub fn from_env<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<Self, ConfigError> {
        Ok(Self {
            messages: env.required("MESSAGES_TABLE")?,
            pending: env.required("PENDING_TABLE")?,
            conversations: env.required("CONVERSATIONS_TABLE")?,
            idempotency: env.required("IDEMPOTENCY_TABLE")?,
            devices: env.required("DEVICES_TABLE")?,
        })
    }

    /// `{prefix}-messages`, … — what the test harness and the local gateway
    /// create.
    pub fn with_prefix(prefix: &str) -> Self {
        Self {
            messages: format!("{prefix}-messages"),
            pending: format!("{prefix}-pending-deliveries"),
            conversations: format!("{prefix}-conversations"),
            idempotency: format!("{prefix}-idempotency"),
            devices: format!("{prefix}-devices"),
        }
    }
}

/// When pending rows are cleared (docs/architecture.md, delivery rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PendingClear {
    /// Rows for every recipient, cleared by the client's ack. The default:
    /// a 200 from `postToConnection` is not proof of delivery.
    #[default]
    Ack,
    /// Rows only for recipients not reached live; catch-up clears a row after
    /// posting it. One write fewer per online recipient, but a message
    /// swallowed by a half-open connection is lost.
    Post,
}

impl std::str::FromStr for PendingClear {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ack" => Ok(PendingClear::Ack),
            "post" => Ok(PendingClear::Post),
            other => Err(format!("expected ack or post, got {other:?}")),
        }
    }
}

/// Delivery settings shared by catch-up, send and ack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryConfig {
    pub pending_clear: PendingClear,
    /// Largest frame posted; API Gateway bills per 32 KB, allows 128 KB.
    pub max_frame_bytes: usize,
    /// How long after `$connect` a 410 means "not open yet" rather than gone.
    pub open_window: Duration,
    /// First retry delay for such a 410; doubles, with jitter, up to 400 ms.
    pub open_retry_base: Duration,
}

/// `OPEN_WINDOW_MS`'s default.
pub const DEFAULT_OPEN_WINDOW: Duration = Duration::from_millis(3000);

/// One post to API Gateway once the open window is over: the call and its
/// own 429/5xx retries (at most ~150 ms of waiting, `courier-aws` apigw).
/// Catch-up's deadline margin holds at least the open window plus this, so
/// its closing `more`/`caught_up` frames can still get through a
/// connection that is not open yet.
pub const POST_ATTEMPT: Duration = Duration::from_millis(1000);

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            pending_clear: PendingClear::Ack,
            max_frame_bytes: DEFAULT_FRAME_BYTES,
            open_window: DEFAULT_OPEN_WINDOW,
            open_retry_base: Duration::from_millis(25),
        }
    }
}

impl DeliveryConfig {
    pub fn from_env<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<Self, ConfigError> {
        let d = Self::default();
        let max_frame_bytes = env.parsed("FRAME_BYTES", d.max_frame_bytes)?;
        if !(1024..=MAX_POST_BYTES).contains(&max_frame_bytes) {
            return Err(ConfigError::Invalid {
                name: "FRAME_BYTES",
                reason: format!("must be between 1024 and {MAX_POST_BYTES}"),
            });
        }
        Ok(Self {
            pending_clear: env.parsed("PENDING_CLEAR", d.pending_clear)?,
            max_frame_bytes,
            open_window: open_window_from_env(env)?,
            open_retry_base: Duration::from_millis(env.parsed("OPEN_RETRY_BASE_MS", 25u64)?),
        })
    }
}

fn open_window_from_env<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
) -> Result<Duration, ConfigError> {
    Ok(Duration::from_millis(env.parsed(
        "OPEN_WINDOW_MS",
        u64::try_from(DEFAULT_OPEN_WINDOW.as_millis()).unwrap_or(3000),
    )?))
}

/// A user's linked devices (docs/architecture.md, devices).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceConfig {
    /// `MAX_DEVICES`: linked devices per user; one more is refused with an
    /// error naming the limit.
    pub max_devices: usize,
    /// `DEVICE_TTL_DAYS`: a device unseen this long stops holding pending
    /// rows back, and no longer counts towards the limit.
    pub ttl: Duration,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        Self {
            max_devices: 8,
            ttl: Duration::from_secs(30 * 86_400),
        }
    }
}

impl DeviceConfig {
    pub fn from_env<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<Self, ConfigError> {
        let max_devices: usize = env.parsed("MAX_DEVICES", 8)?;
        if !(1..=64).contains(&max_devices) {
            return Err(ConfigError::Invalid {
                name: "MAX_DEVICES",
                reason: "must be between 1 and 64".into(),
            });
        }
        let days: u64 = env.parsed("DEVICE_TTL_DAYS", 30)?;
        if !(1..=3650).contains(&days) {
            return Err(ConfigError::Invalid {
                name: "DEVICE_TTL_DAYS",
                reason: "must be between 1 and 3650".into(),
            });
        }
        Ok(Self {
            max_devices,
            ttl: Duration::from_secs(days * 86_400),
        })
    }

    /// Devices last seen before this (epoch ms) no longer count.
    pub fn stale_before(&self, now: crate::domain::Millis) -> crate::domain::Millis {
        now.saturating_sub(i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX))
    }
}

/// `CATCH_UP_MAX_BYTES_IN_FLIGHT`'s default: 256 MiB.
///
/// The catch-up function has 1024 MB (template.yaml). What is counted is
/// the messages held between their read and their post, raw and encoded
/// (catch_up.rs). The rest stays well under the other 768 MiB: the runtime
/// and binary (~30 MB), up to `CATCH_UP_CONCURRENCY` (128) HTTP requests
/// and responses in flight (a frame is at most 128 KB: 128 × 2 × 128 KB =
/// 32 MiB), allocator slack (up to 2× the peak: another 256 MiB). One full
/// conversation at the worst case (501 messages of 16 KB bodies, every byte
/// escaped: ~58 MB) fits four times.
pub const DEFAULT_MAX_BYTES_IN_FLIGHT: usize = 256 * 1024 * 1024;

/// Catch-up's own bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatchUpConfig {
    /// Most messages of one conversation delivered per catch-up; the rest is
    /// announced with a `more` frame.
    pub per_conversation_cap: usize,
    /// Conversations read and posted at once.
    pub concurrency: usize,
    /// Work (reads, posts of messages, settles) stops this long before the
    /// invocation's deadline: a call still running then is cut off, its
    /// conversation announced with `more`. The margin is left for those
    /// `more` frames and `caught_up`, so it is at least `OPEN_WINDOW_MS` +
    /// [`POST_ATTEMPT`].
    pub deadline_margin: Duration,
    /// Most bytes of messages one catch-up holds at once, weighed by what
    /// was read (catch_up.rs).
    pub max_bytes_in_flight: usize,
}

impl Default for CatchUpConfig {
    fn default() -> Self {
        Self {
            per_conversation_cap: 500,
            // One round of reads and posts for up to 128 conversations
            // (courier-bench: at 32, 100 conversations took 10.6 round
            // trips instead of 4); memory is bounded apart, by
            // `max_bytes_in_flight`.
            concurrency: 128,
            // Derived: the least margin allowed (template.yaml sets 5 s).
            deadline_margin: DEFAULT_OPEN_WINDOW + POST_ATTEMPT,
            max_bytes_in_flight: DEFAULT_MAX_BYTES_IN_FLIGHT,
        }
    }
}

impl CatchUpConfig {
    pub fn from_env<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<Self, ConfigError> {
        let d = Self::default();
        let cap = env.parsed("CATCH_UP_CAP", d.per_conversation_cap)?;
        let concurrency = env.parsed("CATCH_UP_CONCURRENCY", d.concurrency)?;
        if cap == 0 {
            return Err(ConfigError::Invalid {
                name: "CATCH_UP_CAP",
                reason: "must be at least 1".into(),
            });
        }
        if concurrency == 0 {
            return Err(ConfigError::Invalid {
                name: "CATCH_UP_CONCURRENCY",
                reason: "must be at least 1".into(),
            });
        }
        // The margin follows OPEN_WINDOW_MS when it is not set, and may
        // never be less than it plus one post.
        let least = open_window_from_env(env)? + POST_ATTEMPT;
        let deadline_margin = Duration::from_millis(env.parsed(
            "CATCH_UP_DEADLINE_MARGIN_MS",
            u64::try_from(least.as_millis()).unwrap_or(u64::MAX),
        )?);
        if deadline_margin < least {
            return Err(ConfigError::Invalid {
                name: "CATCH_UP_DEADLINE_MARGIN_MS",
                reason: format!(
                    "{} ms is below OPEN_WINDOW_MS + {} ms ({} ms): the closing frames may have to wait out a 410 for the open window",
                    deadline_margin.as_millis(),
                    POST_ATTEMPT.as_millis(),
                    least.as_millis()
                ),
            });
        }
        let max_bytes_in_flight =
            env.parsed("CATCH_UP_MAX_BYTES_IN_FLIGHT", d.max_bytes_in_flight)?;
        // Counted with a semaphore of u32 permits; under 1 MiB not even one
        // conversation of a few large messages fits.
        if !(1024 * 1024..=u32::MAX as usize).contains(&max_bytes_in_flight) {
            return Err(ConfigError::Invalid {
                name: "CATCH_UP_MAX_BYTES_IN_FLIGHT",
                reason: format!("must be between 1048576 and {}", u32::MAX),
            });
        }
        Ok(Self {
            per_conversation_cap: cap,
            concurrency,
            deadline_margin,
            max_bytes_in_flight,
        })
    }
}

/// Redis registry settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryConfig {
    /// `redis://` or `rediss://` (TLS, required by ElastiCache Serverless).
    /// In cluster mode, any one node of the cluster (the client discovers
    /// the rest with `CLUSTER SLOTS`).
    pub url: String,
    /// Speak the cluster protocol (`REDIS_CLUSTER=true`): slot map, `MOVED`
    /// and `ASK` followed. ElastiCache Serverless is cluster-mode only, so
    /// the SAM template sets it; off for a plain redis-server.
    pub cluster: bool,
    /// A little over API Gateway's 2-hour connection limit.
    pub ttl: Duration,
    /// Per-command timeout: the registry is a hint, never worth a stall.
    pub timeout: Duration,
}

impl RegistryConfig {
    pub const DEFAULT_TTL: Duration = Duration::from_secs(2 * 3600 + 300);

    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            cluster: false,
            ttl: Self::DEFAULT_TTL,
            timeout: Duration::from_millis(500),
        }
    }

    pub fn from_env<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<Self, ConfigError> {
        Ok(Self {
            url: env.required("REDIS_URL")?,
            cluster: env.parsed("REDIS_CLUSTER", false)?,
            ttl: registry_ttl(env)?,
            timeout: Duration::from_millis(env.parsed("REDIS_TIMEOUT_MS", 500u64)?),
        })
    }
}

/// The connection registry on DynamoDB (`REGISTRY_BACKEND=dynamodb`): a
/// stage with nothing running at rest, no VPC and no cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamoRegistryConfig {
    /// `REGISTRY_TABLE`: key `user_id` (S), sort key `device_id` (S), TTL on
    /// `expires_at`.
    pub table: String,
    /// `REGISTRY_TTL_SECS`, as for Redis: how long an entry outlives its
    /// last write (the `expires_at` TTL attribute, and the reads' filter).
    pub ttl: Duration,
    /// Bound on one whole registry call, retries included: the registry is
    /// a hint, and a stalled DynamoDB must cost a send no more than a
    /// stalled Redis does.
    pub timeout: Duration,
}

impl DynamoRegistryConfig {
    /// A DynamoDB call answers in milliseconds; the first one of an
    /// execution environment also opens a TLS connection. One second covers
    /// both and a retry or two, and stays a small part of any handler's
    /// timeout.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

    pub fn new(table: impl Into<String>) -> Self {
        Self {
            table: table.into(),
            ttl: RegistryConfig::DEFAULT_TTL,
            timeout: Self::DEFAULT_TIMEOUT,
        }
    }

    pub fn from_env<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<Self, ConfigError> {
        Ok(Self {
            ttl: registry_ttl(env)?,
            ..Self::new(env.required("REGISTRY_TABLE")?)
        })
    }
}

/// `REGISTRY_TTL_SECS`, at least one second.
fn registry_ttl<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<Duration, ConfigError> {
    let secs = env.parsed("REGISTRY_TTL_SECS", RegistryConfig::DEFAULT_TTL.as_secs())?;
    if secs == 0 {
        return Err(ConfigError::Invalid {
            name: "REGISTRY_TTL_SECS",
            reason: "must be at least 1".into(),
        });
    }
    Ok(Duration::from_secs(secs))
}

/// Where the connection registry lives (`REGISTRY_BACKEND`), with that
/// backend's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryBackend {
    /// `redis`, the default: ElastiCache (or any Redis), `REDIS_URL`. The
    /// send limiter shares it.
    Redis(RegistryConfig),
    /// `dynamodb`: a table, `REGISTRY_TABLE`. There is no Redis then, so the
    /// send limiter is off.
    DynamoDb(DynamoRegistryConfig),
}

impl RegistryBackend {
    pub fn from_env<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<Self, ConfigError> {
        match env.optional("REGISTRY_BACKEND").as_deref().map(str::trim) {
            None | Some("redis") => Ok(Self::Redis(RegistryConfig::from_env(env)?)),
            Some("dynamodb") => Ok(Self::DynamoDb(DynamoRegistryConfig::from_env(env)?)),
            Some(other) => Err(ConfigError::Invalid {
                name: "REGISTRY_BACKEND",
                reason: format!("{other:?}: must be redis or dynamodb"),
            }),
        }
    }
}

/// Send-path limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendConfig {
    /// Largest message body in bytes (UTF-8).
    pub max_body_bytes: usize,
    /// How long a `client_msg_id` is remembered: far longer than any client
    /// retries, not just DynamoDB's 10-minute transaction token.
    pub idempotency_ttl: Duration,
    /// How long messages are kept before DynamoDB's TTL deletes them; `None`
    /// keeps them for ever. A client away longer than this finds the
    /// expired messages gone (catch-up delivers what is left).
    pub message_retention: Option<Duration>,
    /// Most members of a conversation, creator included. The append
    /// transaction writes one pending row per recipient plus three items, and
    /// DynamoDB allows 100 actions per transaction.
    pub max_members: usize,
}

/// Members one append transaction can carry: 100 actions less the counter,
/// the message and the idempotency record; every member has a row (the
/// sender's is for their other devices). Devices add nothing: their cursors
/// live on the rows, outside the transaction.
pub const MAX_MEMBERS_LIMIT: usize = 97;

impl Default for SendConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 16 * 1024,
            idempotency_ttl: Duration::from_secs(7 * 24 * 3600),
            message_retention: None,
            max_members: 50,
        }
    }
}

impl SendConfig {
    pub fn from_env<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<Self, ConfigError> {
        let d = Self::default();
        let max_body_bytes = env.parsed("MAX_BODY_BYTES", d.max_body_bytes)?;
        // A message travels alone in the worst case; leave room for its frame.
        if max_body_bytes == 0 || max_body_bytes > MAX_POST_BYTES - 4096 {
            return Err(ConfigError::Invalid {
                name: "MAX_BODY_BYTES",
                reason: format!("must be between 1 and {}", MAX_POST_BYTES - 4096),
            });
        }
        let max_members = env.parsed("MAX_MEMBERS", d.max_members)?;
        if !(2..=MAX_MEMBERS_LIMIT).contains(&max_members) {
            return Err(ConfigError::Invalid {
                name: "MAX_MEMBERS",
                reason: format!("must be between 2 and {MAX_MEMBERS_LIMIT}"),
            });
        }
        Ok(Self {
            max_body_bytes,
            idempotency_ttl: Duration::from_secs(
                env.parsed("IDEMPOTENCY_TTL_SECS", d.idempotency_ttl.as_secs())?,
            ),
            message_retention: match env.parsed("MESSAGE_RETENTION_DAYS", 0u64)? {
                0 => None,
                days => Some(Duration::from_secs(days.saturating_mul(24 * 3600))),
            },
            max_members,
        })
    }
}

/// What a push notification may reveal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PushPreview {
    /// "alice: hello??", truncated.
    #[default]
    Full,
    /// No message text at all.
    None,
}

impl std::str::FromStr for PushPreview {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "full" => Ok(PushPreview::Full),
            "none" => Ok(PushPreview::None),
            other => Err(format!("expected full or none, got {other:?}")),
        }
    }
}

/// Push notification settings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PushConfig {
    pub preview: PushPreview,
    /// SNS platform application ARNs; a platform without one gets no pushes.
    pub apns_app_arn: Option<String>,
    pub apns_sandbox_app_arn: Option<String>,
    pub fcm_app_arn: Option<String>,
}

impl PushConfig {
    pub fn from_env<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<Self, ConfigError> {
        Ok(Self {
            preview: env.parsed("PUSH_PREVIEW", PushPreview::Full)?,
            apns_app_arn: env.optional("SNS_APNS_APP_ARN"),
            apns_sandbox_app_arn: env.optional("SNS_APNS_SANDBOX_APP_ARN"),
            fcm_app_arn: env.optional("SNS_FCM_APP_ARN"),
        })
    }
}

/// Per-user rate limit of sends (`RATE_LIMIT_PER_SEC`, `RATE_LIMIT_BURST`):
/// a token bucket that refills at `per_sec` tokens a second and holds at
/// most `burst`. `RATE_LIMIT_PER_SEC=0` turns limiting off.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimitConfig {
    /// Sustained sends a second per user. A person types far below 10; a
    /// client retrying its outbox after a reconnect sends in bursts, which
    /// `burst` absorbs.
    pub per_sec: f64,
    pub burst: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            per_sec: 10.0,
            burst: 30,
        }
    }
}

impl RateLimitConfig {
    pub fn enabled(&self) -> bool {
        self.per_sec > 0.0
    }

    pub fn from_env<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<Self, ConfigError> {
        let d = Self::default();
        let per_sec: f64 = env.parsed("RATE_LIMIT_PER_SEC", d.per_sec)?;
        if !per_sec.is_finite() || per_sec < 0.0 {
            return Err(ConfigError::Invalid {
                name: "RATE_LIMIT_PER_SEC",
                reason: "must be a number >= 0 (0 turns limiting off)".into(),
            });
        }
        let burst: u32 = env.parsed("RATE_LIMIT_BURST", d.burst)?;
        if burst == 0 {
            return Err(ConfigError::Invalid {
                name: "RATE_LIMIT_BURST",
                reason: "must be at least 1".into(),
            });
        }
        Ok(Self { per_sec, burst })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> Env<impl Fn(&str) -> Option<String>> {
        Env(move |k: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn missing_table_is_named() {
        let e = TableNames::from_env(&env(&[("MESSAGES_TABLE", "m")])).unwrap_err();
        assert_eq!(e, ConfigError::Missing("PENDING_TABLE"));
        assert!(e.to_string().contains("PENDING_TABLE"));
    }

    #[test]
    fn message_retention_is_days_and_zero_keeps_for_ever() {
        let s = SendConfig::from_env(&env(&[("MESSAGE_RETENTION_DAYS", "30")])).unwrap();
        assert_eq!(
            s.message_retention,
            Some(Duration::from_secs(30 * 24 * 3600))
        );
        let s = SendConfig::from_env(&env(&[("MESSAGE_RETENTION_DAYS", "0")])).unwrap();
        assert_eq!(s.message_retention, None);
        let e = SendConfig::from_env(&env(&[("MESSAGE_RETENTION_DAYS", "-1")])).unwrap_err();
        assert!(matches!(
            e,
            ConfigError::Invalid {
                name: "MESSAGE_RETENTION_DAYS",
                ..
            }
        ));
    }

    #[test]
    fn catch_up_margin_covers_the_open_window_and_one_post() {
        // Default: derived, equal to what `Default` says.
        let c = CatchUpConfig::from_env(&env(&[])).unwrap();
        assert_eq!(c, CatchUpConfig::default());
        assert_eq!(c.deadline_margin, DEFAULT_OPEN_WINDOW + POST_ATTEMPT);
        // Follows a longer open window when not set.
        let c = CatchUpConfig::from_env(&env(&[("OPEN_WINDOW_MS", "6000")])).unwrap();
        assert_eq!(c.deadline_margin, Duration::from_millis(7000));
        // The template's 5 s passes; anything under the window + a post is refused.
        let c = CatchUpConfig::from_env(&env(&[
            ("OPEN_WINDOW_MS", "3000"),
            ("CATCH_UP_DEADLINE_MARGIN_MS", "5000"),
        ]))
        .unwrap();
        assert_eq!(c.deadline_margin, Duration::from_millis(5000));
        for bad in [
            &[("CATCH_UP_DEADLINE_MARGIN_MS", "1500")][..],
            &[("CATCH_UP_DEADLINE_MARGIN_MS", "3999")][..],
            &[
                ("OPEN_WINDOW_MS", "6000"),
                ("CATCH_UP_DEADLINE_MARGIN_MS", "5000"),
            ][..],
        ] {
            let e = CatchUpConfig::from_env(&env(bad)).unwrap_err();
            assert!(
                matches!(
                    e,
                    ConfigError::Invalid {
                        name: "CATCH_UP_DEADLINE_MARGIN_MS",
                        ..
                    }
                ),
                "{bad:?}: {e}"
            );
            assert!(e.to_string().contains("CATCH_UP_DEADLINE_MARGIN_MS"));
        }
    }

    #[test]
    fn catch_up_bytes_in_flight_parses_and_refuses() {
        let c = CatchUpConfig::from_env(&env(&[])).unwrap();
        assert_eq!(c.max_bytes_in_flight, 256 * 1024 * 1024);
        let c =
            CatchUpConfig::from_env(&env(&[("CATCH_UP_MAX_BYTES_IN_FLIGHT", "8388608")])).unwrap();
        assert_eq!(c.max_bytes_in_flight, 8 * 1024 * 1024);
        for bad in [
            &[("CATCH_UP_MAX_BYTES_IN_FLIGHT", "0")][..],
            &[("CATCH_UP_MAX_BYTES_IN_FLIGHT", "1000")][..],
            &[("CATCH_UP_MAX_BYTES_IN_FLIGHT", "lots")][..],
            &[("CATCH_UP_MAX_BYTES_IN_FLIGHT", "8589934592")][..],
        ] {
            let e = CatchUpConfig::from_env(&env(bad)).unwrap_err();
            assert!(
                matches!(
                    e,
                    ConfigError::Invalid {
                        name: "CATCH_UP_MAX_BYTES_IN_FLIGHT",
                        ..
                    }
                ),
                "{bad:?}: {e}"
            );
        }
    }

    #[test]
    fn pending_clear_parses_and_refuses() {
        let d = DeliveryConfig::from_env(&env(&[("PENDING_CLEAR", "post")])).unwrap();
        assert_eq!(d.pending_clear, PendingClear::Post);
        let e = DeliveryConfig::from_env(&env(&[("PENDING_CLEAR", "never")])).unwrap_err();
        assert!(matches!(
            e,
            ConfigError::Invalid {
                name: "PENDING_CLEAR",
                ..
            }
        ));
        let e = DeliveryConfig::from_env(&env(&[("FRAME_BYTES", "999999")])).unwrap_err();
        assert!(matches!(
            e,
            ConfigError::Invalid {
                name: "FRAME_BYTES",
                ..
            }
        ));
    }
}

#[cfg(test)]
mod rate_limit_config_tests {
    use super::*;

    #[test]
    fn rate_limit_config_reads_its_variables_and_refuses_nonsense() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            Env(move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| (*v).to_owned())
            })
        };
        assert_eq!(
            RateLimitConfig::from_env(&env(&[])),
            Ok(RateLimitConfig::default())
        );
        let c = RateLimitConfig::from_env(&env(&[
            ("RATE_LIMIT_PER_SEC", "2.5"),
            ("RATE_LIMIT_BURST", "5"),
        ]));
        assert_eq!(
            c,
            Ok(RateLimitConfig {
                per_sec: 2.5,
                burst: 5
            })
        );
        assert!(
            !RateLimitConfig::from_env(&env(&[("RATE_LIMIT_PER_SEC", "0")]))
                .unwrap_or_default()
                .enabled()
        );
        for bad in [
            &[("RATE_LIMIT_PER_SEC", "-1")][..],
            &[("RATE_LIMIT_PER_SEC", "fast")][..],
            &[("RATE_LIMIT_PER_SEC", "NaN")][..],
            &[("RATE_LIMIT_BURST", "0")][..],
        ] {
            assert!(RateLimitConfig::from_env(&env(bad)).is_err(), "{bad:?}");
        }
    }
}
