//! What Courier counts: every metric's name, unit, dimensions and meaning in
//! one table ([`METRICS`]), and the few calls the services record them with.
//!
//! The services record through the `metrics` facade only; which exporter
//! listens is the edge's choice (`courier_aws::telemetry` installs the
//! CloudWatch embedded-metric-format one and flushes it once per Lambda
//! invocation). With no exporter installed (unit tests, the local gateway)
//! every call here is a no-op.
//!
//! Dimensions are bounded on purpose: the exporter adds `Function` (the
//! function's package name), and a few metrics add `Outcome`, one of a fixed
//! set of words. Never a user id, a connection id, a token or a body: each
//! distinct dimension value is a separate CloudWatch metric (and a separate
//! bill line), and a metric is readable by whoever reads the dashboards.
//! `docs/architecture.md` (metrics) renders [`METRICS`] for operators;
//! a test keeps the two in step.

use std::time::Duration;

pub use metrics::Unit;

/// The CloudWatch namespace every metric is published under.
pub const NAMESPACE: &str = "Courier";
/// The dimension naming the function that recorded a metric (the exporter
/// sets it on every metric).
pub const FUNCTION: &str = "Function";
/// The dimension some metrics split by, from a fixed set of words.
pub const OUTCOME: &str = "Outcome";

/// How a metric is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Summed over an invocation; published only when not zero.
    Counter,
    /// One value per event (per catch-up): CloudWatch keeps the
    /// distribution, so averages and percentiles can be read and alarmed on.
    Histogram,
}

/// One metric as operators see it.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    pub name: &'static str,
    pub unit: Unit,
    pub kind: Kind,
    /// The values `Outcome` takes; empty when the metric has no `Outcome`.
    pub outcomes: &'static [&'static str],
    pub meaning: &'static str,
}

impl Metric {
    const fn new(name: &'static str, unit: Unit, kind: Kind, meaning: &'static str) -> Self {
        Self {
            name,
            unit,
            kind,
            outcomes: &[],
            meaning,
        }
    }

    const fn with_outcomes(mut self, outcomes: &'static [&'static str]) -> Self {
        self.outcomes = outcomes;
        self
    }
}

pub const CATCH_UP_TIME_MS: &str = "CatchUpTimeMs";
pub const CATCH_UPS: &str = "CatchUps";
pub const CATCH_UP_CONVERSATIONS: &str = "CatchUpConversations";
pub const CATCH_UP_MESSAGES: &str = "CatchUpMessages";
pub const CATCH_UP_FRAMES: &str = "CatchUpFrames";
pub const CATCH_UP_MORE_FRAMES: &str = "CatchUpMoreFrames";
pub const CATCH_UP_UNREACHED: &str = "CatchUpUnreached";
pub const GONE_RETRIES: &str = "GoneRetries";
pub const GONE_CONNECTIONS: &str = "GoneConnections";
pub const REGISTRY_FALLBACKS: &str = "RegistryFallbacks";
pub const PUSHES_SENT: &str = "PushesSent";
pub const PUSHES_FAILED: &str = "PushesFailed";
pub const RATE_LIMITED: &str = "RateLimited";
pub const RATE_LIMITER_FALLBACKS: &str = "RateLimiterFallbacks";
pub const SEQ_CONFLICTS: &str = "SeqConflicts";
pub const SEND_RETRIES: &str = "SendRetries";
pub const SEND_CONTENTION: &str = "SendContention";
pub const IDEMPOTENT_REPLAYS: &str = "IdempotentReplays";

/// `CatchUps`' outcomes: how a catch-up ended.
pub const CATCH_UP_OUTCOMES: &[&str] = &["caught_up", "gone", "device_refused", "failed"];
/// `PushesFailed`' outcomes: why a push did not go out.
pub const PUSH_FAILURES: &[&str] = &[
    "endpoint_disabled",
    "not_configured",
    "unavailable",
    "devices_unreadable",
];

/// Every metric Courier records.
pub const METRICS: &[Metric] = &[
    Metric::new(
        CATCH_UP_TIME_MS,
        Unit::Milliseconds,
        Kind::Histogram,
        "From the connection's opening (API Gateway's connectedAt) to its \
         caught_up frame accepted by API Gateway, for the catch-up $connect \
         starts; the p99 alarm watches it",
    ),
    Metric::new(
        CATCH_UPS,
        Unit::Count,
        Kind::Counter,
        "Full catch-ups run (started by $connect or a sync), by how they ended",
    )
    .with_outcomes(CATCH_UP_OUTCOMES),
    Metric::new(
        CATCH_UP_CONVERSATIONS,
        Unit::Count,
        Kind::Histogram,
        "Conversations with something pending for the device, per catch-up",
    ),
    Metric::new(
        CATCH_UP_MESSAGES,
        Unit::Count,
        Kind::Histogram,
        "Messages posted, per catch-up",
    ),
    Metric::new(
        CATCH_UP_FRAMES,
        Unit::Count,
        Kind::Histogram,
        "Frames posted (messages, more, history_starts, caught_up), per catch-up",
    ),
    Metric::new(
        CATCH_UP_MORE_FRAMES,
        Unit::Count,
        Kind::Histogram,
        "Conversations cut at the per-conversation cap and announced with a \
         more frame, per catch-up",
    ),
    Metric::new(
        CATCH_UP_UNREACHED,
        Unit::Count,
        Kind::Histogram,
        "Conversations not reached before the deadline margin (counted in \
         caught_up; the client syncs again), per catch-up",
    ),
    Metric::new(
        GONE_RETRIES,
        Unit::Count,
        Kind::Counter,
        "Posts answered 410 inside the open window (the connection's $connect \
         had not returned yet) and retried",
    ),
    Metric::new(
        GONE_CONNECTIONS,
        Unit::Count,
        Kind::Counter,
        "Connections found gone (410 past the open window) and dropped from \
         the registry",
    ),
    Metric::new(
        REGISTRY_FALLBACKS,
        Unit::Count,
        Kind::Counter,
        "Redis registry calls that failed and were worked around: a lookup \
         taken as offline (push and pending rows instead of a live post), a \
         register or remove left to the entry's TTL and the next ping",
    ),
    Metric::new(
        PUSHES_SENT,
        Unit::Count,
        Kind::Counter,
        "Pushes the notifier (SNS) accepted, one per device",
    ),
    Metric::new(
        PUSHES_FAILED,
        Unit::Count,
        Kind::Counter,
        "Pushes not sent, by reason (the message is stored and pending either way)",
    )
    .with_outcomes(PUSH_FAILURES),
    Metric::new(
        RATE_LIMITED,
        Unit::Count,
        Kind::Counter,
        "Sends refused with rate_limited",
    ),
    Metric::new(
        RATE_LIMITER_FALLBACKS,
        Unit::Count,
        Kind::Counter,
        "Sends let through because the rate limiter could not be asked",
    ),
    Metric::new(
        SEQ_CONFLICTS,
        Unit::Count,
        Kind::Counter,
        "Appends that lost the race for the next seq to a concurrent send",
    ),
    Metric::new(
        SEND_RETRIES,
        Unit::Count,
        Kind::Counter,
        "Appends retried after a seq conflict (re-read, backoff, next seq)",
    ),
    Metric::new(
        SEND_CONTENTION,
        Unit::Count,
        Kind::Counter,
        "Sends that gave up after MAX_APPEND_ATTEMPTS conflicts (a server \
         fault; the client retries with the same client_msg_id)",
    ),
    Metric::new(
        IDEMPOTENT_REPLAYS,
        Unit::Count,
        Kind::Counter,
        "Sends of a client_msg_id already stored: answered with the original \
         seq, and delivered again",
    ),
];

/// Tells the installed exporter every metric's unit (and meaning). Called
/// by the exporter's installer, after it is installed: the facade forwards
/// descriptions only to a recorder that exists.
pub fn describe() {
    for m in METRICS {
        match m.kind {
            Kind::Counter => metrics::describe_counter!(m.name, m.unit, m.meaning),
            Kind::Histogram => metrics::describe_histogram!(m.name, m.unit, m.meaning),
        }
    }
}

/// Adds `n` to counter `name`.
pub fn count(name: &'static str, n: u64) {
    metrics::counter!(name).increment(n);
}

/// Adds one to counter `name` under `Outcome = outcome`.
pub fn count_outcome(name: &'static str, outcome: &'static str) {
    metrics::counter!(name, OUTCOME => outcome).increment(1);
}

/// Records one value of histogram `name`.
pub fn observe(name: &'static str, value: f64) {
    metrics::histogram!(name).record(value);
}

/// Records a duration in milliseconds (the unit `CatchUpTimeMs` declares).
pub fn observe_ms(name: &'static str, elapsed: Duration) {
    observe(name, elapsed.as_secs_f64() * 1000.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_outcomes_are_words() {
        let mut names: Vec<_> = METRICS.iter().map(|m| m.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), METRICS.len());
        for m in METRICS {
            for o in m.outcomes {
                assert!(
                    o.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                    "{}: {o}",
                    m.name
                );
            }
        }
    }

    /// The template's alarm watches exactly this name and unit.
    #[test]
    fn catch_up_time_is_milliseconds_with_no_outcome() {
        let m = METRICS
            .iter()
            .find(|m| m.name == CATCH_UP_TIME_MS)
            .expect("declared");
        assert_eq!(m.unit, Unit::Milliseconds);
        assert_eq!(m.kind, Kind::Histogram);
        assert!(m.outcomes.is_empty());
    }
}
