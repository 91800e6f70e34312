//! Lambda's bill counted in the local gateway: every route handler, the
//! authorizer and every function of the Invoke API wrapped so that each
//! invocation is counted and timed, and the memory each function is given
//! read from `template.yaml`.
//!
//! The durations are those of the handlers running in this process (debug
//! or release, as the benchmark was built) against moto, Redis and the
//! local gateway on this machine: moto serves one request at a time and
//! takes milliseconds for each, so they stand for a function's wall time on
//! AWS only roughly, and are stated as measured here.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use courier_local::routes::Routes;
use futures::FutureExt as _;

/// Invocations and their measured time, per function.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LambdaCount {
    pub functions: BTreeMap<String, Invocations>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Invocations {
    pub count: u64,
    /// Sum of each invocation's wall time, in ms.
    pub ms: f64,
    /// Sum of each invocation's GB-seconds at its memory, rounded per
    /// invocation as Lambda bills.
    pub gb_seconds: f64,
}

impl LambdaCount {
    pub fn requests(&self) -> u64 {
        self.functions.values().map(|i| i.count).sum()
    }

    pub fn gb_seconds(&self) -> f64 {
        self.functions.values().map(|i| i.gb_seconds).sum()
    }

    /// `name ×count (mean ms)`, for the table.
    pub fn describe(&self) -> String {
        self.functions
            .iter()
            .map(|(f, i)| format!("{f} ×{} ({:.1} ms)", i.count, i.ms / i.count.max(1) as f64))
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn since(&self, before: &LambdaCount) -> LambdaCount {
        let mut functions = self.functions.clone();
        for (f, b) in &before.functions {
            if let Some(i) = functions.get_mut(f) {
                i.count -= b.count;
                i.ms -= b.ms;
                i.gb_seconds -= b.gb_seconds;
            }
        }
        functions.retain(|_, i| i.count > 0);
        LambdaCount { functions }
    }
}

/// Counts invocations; shared by every wrapped handler.
pub struct LambdaMeter {
    memory_mb: BTreeMap<String, u32>,
    granularity_ms: u64,
    count: Mutex<LambdaCount>,
    /// Invocations started and not yet ended.
    running: AtomicUsize,
}

/// Ends an invocation's run, also when its future is dropped.
struct Running<'a>(&'a AtomicUsize);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl LambdaMeter {
    pub fn new(memory_mb: BTreeMap<String, u32>, granularity_ms: u64) -> Arc<LambdaMeter> {
        Arc::new(LambdaMeter {
            memory_mb,
            granularity_ms,
            count: Mutex::default(),
            running: AtomicUsize::new(0),
        })
    }

    pub fn count(&self) -> LambdaCount {
        self.count.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Records one invocation of `function` that took `ms`. A function the
    /// template does not know fails the run rather than go unpriced.
    pub fn record(&self, function: &str, ms: f64) {
        let memory = self.memory_mb.get(function).copied().unwrap_or(0);
        let gb_s = super::prices::gb_seconds(memory, ms, self.granularity_ms);
        let mut c = self.count.lock().unwrap_or_else(|e| e.into_inner());
        let i = c.functions.entry(function.to_owned()).or_default();
        i.count += 1;
        i.ms += ms;
        i.gb_seconds += if memory == 0 { f64::NAN } else { gb_s };
    }

    /// Returns once no invocation has run for `quiet` (what a client sent
    /// last may still be on its way to the gateway when its socket is
    /// done), or fails after `timeout`: a window is closed only when
    /// everything it started is counted.
    pub async fn idle(&self, quiet: Duration, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let mut quiet_since = Instant::now();
        loop {
            if self.running.load(Ordering::SeqCst) > 0 {
                quiet_since = Instant::now();
            } else if quiet_since.elapsed() >= quiet {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "invocations still running after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Times `fut` as one invocation of `function`.
    pub async fn time<T>(&self, function: &str, fut: impl Future<Output = T>) -> T {
        self.running.fetch_add(1, Ordering::SeqCst);
        let _running = Running(&self.running);
        let start = Instant::now();
        let out = fut.await;
        self.record(function, start.elapsed().as_secs_f64() * 1e3);
        out
    }
}

/// `routes` with every handler counted on `meter`.
pub fn metered(routes: &Routes, meter: &Arc<LambdaMeter>) -> Routes {
    let mut out = Routes::new();
    if let Some(a) = routes.get_authorizer() {
        let (m, f, h) = (meter.clone(), a.function.clone(), a.handler.clone());
        out = out.authorizer(&a.function, move |e| {
            let (m, f, h) = (m.clone(), f.clone(), h.clone());
            async move { m.time(&f, h(e)).await }
        });
    }
    for key in routes.route_keys() {
        let Some(r) = routes.get(&key) else { continue };
        let (m, f, h) = (meter.clone(), r.function.clone(), r.handler.clone());
        out = out.route(&key, &r.function, move |e| {
            let (m, f, h) = (m.clone(), f.clone(), h.clone());
            async move { m.time(&f, h(e)).await }
        });
    }
    // After the routes, so these replace the untimed functions `route`
    // registered for the Invoke API.
    for name in routes.function_names() {
        let Some(h) = routes.get_function(&name).cloned() else {
            continue;
        };
        let (m, f) = (meter.clone(), name.clone());
        out = out
            .function(&name, move |e| {
                let (m, f, h) = (m.clone(), f.clone(), h.clone());
                async move { m.time(&f, h(e)).await }.boxed()
            })
            .timeout(&name, routes.function_timeout(&name));
    }
    out
}

/// `MemorySize` of every function of `template.yaml`, by its crate's name
/// (`CodeUri: functions/<name>`).
pub fn template_memory() -> anyhow::Result<BTreeMap<String, u32>> {
    let path = crate::functions::workspace_root().join("template.yaml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    memory_of(&text)
}

fn memory_of(template: &str) -> anyhow::Result<BTreeMap<String, u32>> {
    let doc: serde_yaml::Value = serde_yaml::from_str(template).context("parsing template.yaml")?;
    let mut out = BTreeMap::new();
    let resources = doc["Resources"].as_mapping().context("no Resources")?;
    for (_, r) in resources {
        if r["Type"].as_str() != Some("AWS::Serverless::Function") {
            continue;
        }
        let p = &r["Properties"];
        let (Some(uri), Some(mb)) = (p["CodeUri"].as_str(), p["MemorySize"].as_u64()) else {
            continue;
        };
        if let Some(name) = uri.strip_prefix("functions/") {
            out.insert(name.trim_end_matches('/').to_owned(), u32::try_from(mb)?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_function_of_the_template_has_its_memory() {
        let m = template_memory().expect("template.yaml");
        assert_eq!(m.get("send-message"), Some(&512));
        assert_eq!(m.get("catch-up"), Some(&1024));
        assert_eq!(m.get("ack"), Some(&256));
        assert_eq!(m.len(), courier_local::wiring::FUNCTION_TIMEOUTS.len());
    }

    #[test]
    fn an_invocation_is_billed_at_its_function_s_memory() {
        let meter = LambdaMeter::new(BTreeMap::from([("f".to_owned(), 512)]), 1);
        meter.record("f", 12.3);
        meter.record("f", 0.4);
        let c = meter.count();
        let f = &c.functions["f"];
        assert_eq!(f.count, 2);
        // 13 ms + 1 ms at 0.5 GB.
        assert!((f.gb_seconds - 0.5 * 0.014).abs() < 1e-12);
        // An unknown function cannot be priced: NaN, which the run refuses.
        meter.record("g", 1.0);
        assert!(meter.count().gb_seconds().is_nan());
    }
}
