//! A Lambda function's logs and metrics, set up once in `main`.
//!
//! - Logs: `tracing` to stdout, JSON when Lambda's advanced logging controls
//!   ask for it (`AWS_LAMBDA_LOG_FORMAT=JSON`), level from
//!   `AWS_LAMBDA_LOG_LEVEL` or else `RUST_LOG` — what
//!   `lambda_runtime::tracing::init_default_subscriber` does, with the
//!   settings read into a value ([`LogSettings`]) so a test installs the very
//!   same setup on a writer of its own.
//! - Metrics: the `metrics` facade's recorder is
//!   `metrics_cloudwatch_embedded`'s collector, which writes CloudWatch
//!   embedded-metric-format (EMF) lines: JSON log lines that CloudWatch Logs
//!   turns into metrics, with no API call and no agent. Namespace `Courier`,
//!   dimension `Function` = the function's package name; the names, units
//!   and meanings are `courier_core::telemetry::METRICS`. [`Telemetry::flushed`]
//!   writes them once per invocation, after the handler, to the same stdout
//!   as the logs (one write, so no log line lands inside one). Lambda runs
//!   one invocation at a time per execution environment here
//!   (`lambda_runtime::run`), so a flush holds that invocation's metrics.
//! - Correlation: [`correlated`] is the span a handler runs its work in:
//!   `correlation_id` (one id from `$connect` through the catch-up it
//!   starts, and from a send through its deliveries) and, when Lambda passed
//!   an X-Ray trace header, `trace_id` (its root). The trace itself crosses
//!   the catch-up invoke on its own: `lambda_runtime` sets
//!   `_X_AMZN_TRACE_ID` for each invocation and the SDK's recursion-detection
//!   interceptor sends it on the `Invoke` call.

use std::future::Future;
use std::io::Write;
use std::sync::Arc;

use courier_core::config::Env;
use courier_core::domain::CorrelationId;
use courier_core::telemetry;
use metrics_cloudwatch_embedded::{Builder, Collector};
use tracing_subscriber::filter::{EnvFilter, LevelFilter};

/// How a function logs, read once from Lambda's logging controls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// One JSON object a line (`AWS_LAMBDA_LOG_FORMAT=JSON`), else text.
    pub json: bool,
    /// `tracing` filter directives: `AWS_LAMBDA_LOG_LEVEL` if set (a
    /// level), else `RUST_LOG`, else `info`.
    pub filter: String,
}

impl LogSettings {
    pub fn from_env<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Self {
        Self {
            json: env
                .optional("AWS_LAMBDA_LOG_FORMAT")
                .is_some_and(|f| f.eq_ignore_ascii_case("json")),
            filter: env
                .optional("AWS_LAMBDA_LOG_LEVEL")
                .or_else(|| env.optional("RUST_LOG"))
                .unwrap_or_else(|| "info".to_owned()),
        }
    }

    /// JSON at `info`: what a deployed function logs with the template's
    /// settings.
    pub fn json_info() -> Self {
        Self {
            json: true,
            filter: "info".to_owned(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("a global tracing subscriber is already installed: {0}")]
    Logs(String),
    #[error("a global metrics recorder is already installed: {0}")]
    Metrics(String),
}

type Out = Arc<dyn Fn() -> Box<dyn Write + Send> + Send + Sync>;

/// The installed logger and metrics collector; [`Telemetry::flushed`]
/// wraps each invocation.
pub struct Telemetry {
    collector: &'static Collector,
    out: Out,
}

impl Telemetry {
    /// Logs and metrics to stdout, as Lambda reads them, for `function`
    /// (its package name, the `Function` dimension).
    pub fn init(function: &'static str) -> Result<Self, TelemetryError> {
        let settings = LogSettings::from_env(&courier_core::config::process_env());
        Self::install(function, &settings, std::io::stdout)
    }

    /// [`Telemetry::init`] writing to `out` instead of stdout. Installs
    /// process-wide (the global subscriber and recorder), so once per
    /// process: a second call fails.
    pub fn install<W, M>(
        function: &'static str,
        logs: &LogSettings,
        out: M,
    ) -> Result<Self, TelemetryError>
    where
        W: Write + Send + 'static,
        M: Fn() -> W + Clone + Send + Sync + 'static,
    {
        let filter = EnvFilter::builder()
            .with_default_directive(LevelFilter::INFO.into())
            .parse_lossy(&logs.filter);
        let fmt = tracing_subscriber::fmt()
            .with_target(false)
            .without_time()
            .with_env_filter(filter)
            .with_writer(out.clone());
        let installed = if logs.json {
            fmt.json().try_init()
        } else {
            fmt.try_init()
        };
        installed.map_err(|e| TelemetryError::Logs(e.to_string()))?;
        let collector = Builder::new()
            .cloudwatch_namespace(telemetry::NAMESPACE)
            .with_dimension(telemetry::FUNCTION, function)
            .init()
            .map_err(|e| TelemetryError::Metrics(e.to_string()))?;
        telemetry::describe();
        Ok(Self {
            collector,
            out: Arc::new(move || Box::new(out()) as Box<dyn Write + Send>),
        })
    }

    /// Runs one invocation's `work`, then writes the metrics it recorded.
    pub async fn flushed<F: Future>(&self, work: F) -> F::Output {
        let output = work.await;
        self.flush();
        output
    }

    /// Writes what was recorded since the last flush as EMF lines (nothing
    /// when nothing was). A failure is logged: metrics never fail a request.
    pub fn flush(&self) {
        let mut lines = Vec::new();
        if let Err(e) = self.collector.flush(&mut lines) {
            tracing::warn!(error = %e, "could not encode the invocation's metrics");
            return;
        }
        if lines.is_empty() {
            return;
        }
        let mut out = (self.out)();
        if let Err(e) = out.write_all(&lines).and_then(|()| out.flush()) {
            tracing::warn!(error = %e, "could not write the invocation's metrics");
        }
    }
}

/// The span a handler runs one invocation's work in: `correlation_id`, and
/// `trace_id` when the Lambda context carries an X-Ray trace header.
pub fn correlated(
    correlation_id: &CorrelationId,
    context: &lambda_runtime::Context,
) -> tracing::Span {
    let span = tracing::info_span!(
        "invocation",
        correlation_id = %correlation_id,
        trace_id = tracing::field::Empty
    );
    if let Some(root) = trace_root(context.xray_trace_id.as_deref()) {
        span.record("trace_id", root);
    }
    span
}

/// The trace id of an X-Ray trace header
/// (`Root=1-5759e988-bd862e3fe1be46a994272793;Parent=…;Sampled=1`).
pub fn trace_root(header: Option<&str>) -> Option<&str> {
    header?
        .split(';')
        .find_map(|part| part.trim().strip_prefix("Root="))
        .filter(|root| !root.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_settings_follow_lambdas_controls() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            Env(move |k: &str| {
                pairs
                    .iter()
                    .find(|(name, _)| *name == k)
                    .map(|(_, v)| (*v).to_owned())
            })
        };
        assert_eq!(
            LogSettings::from_env(&env(&[])),
            LogSettings {
                json: false,
                filter: "info".into()
            }
        );
        let s = LogSettings::from_env(&env(&[
            ("AWS_LAMBDA_LOG_FORMAT", "json"),
            ("AWS_LAMBDA_LOG_LEVEL", "WARN"),
            ("RUST_LOG", "debug"),
        ]));
        assert!(s.json);
        assert_eq!(s.filter, "WARN");
        assert_eq!(
            LogSettings::from_env(&env(&[("RUST_LOG", "courier_core=debug")])).filter,
            "courier_core=debug"
        );
    }

    #[test]
    fn the_trace_id_is_the_headers_root() {
        assert_eq!(
            trace_root(Some(
                "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"
            )),
            Some("1-5759e988-bd862e3fe1be46a994272793")
        );
        assert_eq!(trace_root(Some("Parent=53995c3f42cd8ad8")), None);
        assert_eq!(trace_root(None), None);
    }
}
