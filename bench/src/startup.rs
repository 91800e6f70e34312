//! Start-up as Lambda counts it: each release binary spawned under the
//! conditions of a Lambda cold start, beside the same binary without them,
//! in one run, so the effect of each difference is its own row.
//!
//! Measured per spawn, against the Runtime API stand-in
//! ([`crate::runtime_api`]), the event already queued:
//!
//! - **init**: spawn → first `GET /next` (Lambda's Init Duration ends
//!   there: runtime, configuration, SDK clients);
//! - **first response**: spawn → first `/response`, which adds the first
//!   invocation with its lazy work (first connections, TLS handshakes,
//!   credentials).
//!
//! The conditions, each alone and together ([`VARIANTS`]):
//!
//! - **quota**: the CPU share Lambda gives at the function's `MemorySize`
//!   in `template.yaml`, as a CFS quota ([`crate::quota`]); the child is
//!   checked to be in the cgroup, and the cgroup's throttled periods are
//!   counted.
//! - **TLS**: DynamoDB (moto), SNS, `@connections` and Lambda Invoke (the
//!   stand-in) behind TLS proxies, the function trusting the run's root
//!   through `SSL_CERT_FILE` ([`crate::tls`]); Redis stays plain (see
//!   there). The handshakes the proxies completed are counted.
//! - **cold**: the binary's pages evicted from the page cache before the
//!   spawn (`fsync`, then `posix_fadvise(POSIX_FADV_DONTNEED)` through
//!   `dd iflag=nocache count=0`), checked with `fincore` to be 0 resident
//!   bytes. Only the binary: `drop_caches` would evict every other
//!   process's files too (moto's Python among them). Shared libraries
//!   (glibc) stay cached, as a runtime's would on a busy host.
//!
//! Variants take turns within each repetition, so drift of the machine
//! reaches them all alike; one unrecorded spawn first warms everything.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use courier_aws::wiring::Needs;

use crate::functions::{Fixture, Running, command, cpu_time, event_for};
use crate::quota::{CpuCgroup, CpuShare, TEMPLATE, memory_sizes};
use crate::report::Report;
use crate::runtime_api::RuntimeApi;
use crate::stats::{ms, spread};
use crate::tls::{Tls, TlsProxy, upstream_of};

/// What differs from an unthrottled, plain-text, warm-cache spawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conditions {
    pub quota: bool,
    pub tls: bool,
    pub cold: bool,
}

impl Conditions {
    fn label(self) -> String {
        let mut parts = Vec::new();
        if self.quota {
            parts.push("quota");
        }
        if self.tls {
            parts.push("TLS");
        }
        parts.push(if self.cold {
            "cold cache"
        } else {
            "warm cache"
        });
        if !self.quota && !self.tls && !self.cold {
            return "unthrottled, plain, warm cache".into();
        }
        parts.join(" + ")
    }
}

const fn c(quota: bool, tls: bool, cold: bool) -> Conditions {
    Conditions { quota, tls, cold }
}

/// The baseline, each difference alone, then all of them (warm and cold).
pub const VARIANTS: [Conditions; 6] = [
    c(false, false, false),
    c(false, false, true),
    c(false, true, false),
    c(true, false, false),
    c(true, true, false),
    c(true, true, true),
];

/// The samples of one function under one set of conditions.
#[derive(Debug, Clone)]
pub struct Samples {
    pub conditions: Conditions,
    pub init: Vec<Duration>,
    pub first_response: Vec<Duration>,
    /// On-CPU time of the process from spawn until it polls again after
    /// its first response (all threads, user + system): what the quota
    /// divides.
    pub cpu: Vec<Duration>,
    /// TLS handshakes the proxies completed per spawn (the last one).
    pub handshakes: usize,
    /// Periods throttled by the quota, summed over the spawns.
    pub throttled_periods: u64,
}

/// One function's start-up under every variant.
#[derive(Debug, Clone)]
pub struct FunctionStartUp {
    pub function: &'static str,
    pub share: CpuShare,
    /// Why no quota could be set, if so: its rows then say "no quota".
    pub no_quota: Option<String>,
    pub variants: Vec<Samples>,
}

pub struct Config {
    pub functions: Vec<&'static str>,
    pub reps: usize,
}

/// Spawns every function of `config` under every variant, `reps` times.
pub async fn run(bin_dir: &Path, config: &Config) -> anyhow::Result<Vec<FunctionStartUp>> {
    let sizes = memory_sizes(TEMPLATE)?;
    let fx = Fixture::new(1, 1).await?;
    let tls = Tls::generate().await?;
    let moto = tls
        .proxy(upstream_of(&fx.backends.dynamodb_endpoint)?)
        .await?;
    let mut out = Vec::new();
    for &function in &config.functions {
        let bin = bin_dir.join(function);
        ensure!(bin.exists(), "{}: build it first", bin.display());
        let memory_mb = *sizes
            .get(function)
            .with_context(|| format!("{function}: no MemorySize in template.yaml"))?;
        let share = CpuShare { memory_mb };
        let cgroup = CpuCgroup::create(&format!("courier-bench-{function}"), share);
        let no_quota = cgroup.as_ref().err().map(|e| format!("{e:#}"));
        let cgroup = cgroup.ok();
        let mut variants: Vec<Samples> = VARIANTS
            .iter()
            .map(|&conditions| Samples {
                conditions,
                init: Vec::new(),
                first_response: Vec::new(),
                cpu: Vec::new(),
                handshakes: 0,
                throttled_periods: 0,
            })
            .collect();
        let launch = Launch {
            bin: &bin,
            function,
            fx: &fx,
            memory_mb,
            tls: &tls,
            moto: &moto,
            cgroup: cgroup.as_ref(),
        };
        // Unrecorded: warms the page cache, moto's tables, the stand-in.
        launch.once(c(false, false, false), 0).await?;
        for rep in 0..config.reps {
            for s in &mut variants {
                let before = match (&cgroup, s.conditions.quota) {
                    (Some(cg), true) => cg.throttled_periods()?,
                    _ => 0,
                };
                let one = launch
                    .once(s.conditions, rep + 1)
                    .await
                    .with_context(|| format!("{function}, {}", s.conditions.label()))?;
                s.init.push(one.init);
                s.first_response.push(one.first_response);
                s.cpu.push(one.cpu);
                s.handshakes = one.handshakes;
                if let (Some(cg), true) = (&cgroup, s.conditions.quota) {
                    s.throttled_periods += cg.throttled_periods()?.saturating_sub(before);
                }
            }
        }
        out.push(FunctionStartUp {
            function,
            share,
            no_quota,
            variants,
        });
    }
    Ok(out)
}

struct Launch<'a> {
    bin: &'a Path,
    function: &'static str,
    fx: &'a Fixture,
    memory_mb: u32,
    tls: &'a Tls,
    moto: &'a TlsProxy,
    cgroup: Option<&'a CpuCgroup>,
}

struct One {
    init: Duration,
    first_response: Duration,
    cpu: Duration,
    handshakes: usize,
}

impl Launch<'_> {
    async fn once(&self, conditions: Conditions, i: usize) -> anyhow::Result<One> {
        if conditions.cold {
            evict(self.bin).await?;
        }
        let api = RuntimeApi::start().await?;
        api.push(event_for(self.function, i, self.fx)?);
        let mut env = self.fx.env(self.function, &api, &self.fx.tables);
        set(
            &mut env,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
            self.memory_mb.to_string(),
        );
        let stand_in = if conditions.tls {
            let p = self.tls.proxy(api.addr).await?;
            let moto = format!("https://{}", self.moto.addr);
            set(&mut env, "DYNAMODB_ENDPOINT", moto.clone());
            set(&mut env, "SNS_ENDPOINT", moto);
            set(
                &mut env,
                "MANAGEMENT_ENDPOINT",
                format!("https://{}/local", p.addr),
            );
            set(&mut env, "LAMBDA_ENDPOINT", format!("https://{}", p.addr));
            set(
                &mut env,
                "SSL_CERT_FILE",
                self.tls.bundle.display().to_string(),
            );
            Some(p)
        } else {
            None
        };
        let moto_before = self.moto.handshakes();
        let cmd = command(self.bin, env);
        let (child, spawned_at) = match (self.cgroup, conditions.quota) {
            (Some(cg), true) => cg.spawn(cmd).await?,
            _ => {
                let mut cmd = cmd;
                let at = Instant::now();
                (cmd.spawn()?, at)
            }
        };
        let mut run = Running::new(api, child, spawned_at)?;
        if let (Some(cg), true) = (self.cgroup, conditions.quota) {
            ensure!(
                cg.holds(run.pid)?,
                "pid {} is not in the quota's cgroup",
                run.pid
            );
        }
        run.wait_done(1, Duration::from_secs(60)).await?;
        // Read while the process waits in its second poll of `/next`.
        run.wait_polls(2, Duration::from_secs(10)).await?;
        let cpu = cpu_time(run.pid)?;
        run.check_outcomes()?;
        let polls = run.api.polls();
        let done = run.api.invocations()[0].done_at.context("not done")?;
        let handshakes = self.moto.handshakes() - moto_before
            + stand_in.as_ref().map_or(0, TlsProxy::handshakes);
        run.stop().await;
        if conditions.tls && handshakes == 0 && reaches_aws(self.function) {
            bail!("{}: no TLS handshake under TLS", self.function);
        }
        Ok(One {
            init: polls[0].saturating_duration_since(spawned_at),
            first_response: done.saturating_duration_since(spawned_at),
            cpu,
            handshakes,
        })
    }
}

/// Whether `function` calls an AWS endpoint (DynamoDB, `@connections`,
/// Lambda, SNS), so makes a TLS handshake under TLS: from the ports it
/// wires (`courier_aws::wiring::Needs`). The authorizer wires none;
/// disconnect and default only the registry, which is Redis in plain text
/// here (see the module's docs).
fn reaches_aws(function: &str) -> bool {
    let needs = match function {
        "connect" => Needs::CONNECT,
        "disconnect" => Needs::DISCONNECT,
        "catch-up" => Needs::CATCH_UP,
        "send-message" => Needs::SEND,
        "ack" => Needs::ACK,
        "devices" => Needs::DEVICES,
        "default" => Needs::DEFAULT,
        "conversations" => Needs::CONVERSATIONS,
        _ => Needs::NONE,
    };
    needs.stores || needs.gateway || needs.trigger || needs.notifier
}

fn set(env: &mut Vec<(String, String)>, key: &str, value: String) {
    env.retain(|(k, _)| k != key);
    env.push((key.to_owned(), value));
}

/// Evicts `bin`'s pages from the page cache and checks that none is left.
pub async fn evict(bin: &Path) -> anyhow::Result<()> {
    let run = |program: &str, args: Vec<String>| {
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args);
        cmd
    };
    let path = bin.display().to_string();
    // Dirty pages cannot be dropped: write them back first.
    for (program, args) in [
        ("sync", vec![path.clone()]),
        (
            "dd",
            vec![
                format!("if={path}"),
                "iflag=nocache".into(),
                "count=0".into(),
                "status=none".into(),
            ],
        ),
    ] {
        let status = run(program, args).status().await.context(program)?;
        ensure!(status.success(), "{program} {path}: {status}");
    }
    let out = run(
        "fincore",
        vec![
            "-b".into(),
            "-n".into(),
            "-o".into(),
            "RES".into(),
            path.clone(),
        ],
    )
    .output()
    .await
    .context("fincore")?;
    let resident: u64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .with_context(|| format!("fincore {path}: {}", String::from_utf8_lossy(&out.stderr)))?;
    ensure!(
        resident == 0,
        "{path}: {resident} bytes still cached after eviction"
    );
    Ok(())
}

/// `median (min–max)` of the samples, in ms.
fn summary(samples: &[Duration]) -> (f64, String) {
    let (mid, lo, hi) = spread(&samples.iter().map(|d| ms(*d)).collect::<Vec<_>>());
    (mid, format!("{mid:.1} ({lo:.1}–{hi:.1})"))
}

pub fn report(results: &[FunctionStartUp]) -> Report {
    let mut r = Report::new();
    const S: &str = "start-up";
    for f in results {
        let base = f
            .variants
            .first()
            .map_or(0.0, |s| summary(&s.first_response).0);
        for s in &f.variants {
            let (first_mid, first) = summary(&s.first_response);
            let (_, init) = summary(&s.init);
            let (cpu_mid, cpu) = summary(&s.cpu);
            let quota = match (&f.no_quota, s.conditions.quota) {
                (_, false) => String::new(),
                (None, true) => format!(
                    "; {} periods throttled over {} spawns; CPU ÷ share {:.0} ms",
                    s.throttled_periods,
                    s.init.len(),
                    cpu_mid / f.share.vcpu()
                ),
                (Some(why), true) => format!("; NO QUOTA ({why})"),
            };
            r.info(
                S,
                format!(
                    "{} ({} MB = {:.3} vCPU), {}",
                    f.function,
                    f.share.memory_mb,
                    f.share.vcpu(),
                    s.conditions.label()
                ),
                format!(
                    "init {init} ms; first response {first} ms = {:.2}× unthrottled; CPU to first response {cpu} ms; {} TLS handshakes{quota}",
                    if base > 0.0 { first_mid / base } else { 0.0 },
                    s.handshakes
                ),
            );
        }
    }
    r.note(
        "start-up: CPU ÷ share is computed, not measured: the time to first response if the share were enforced continuously instead of as a 100 ms CFS budget",
    );
    r.note(
        "start-up: median (min–max) over the spawns; Redis is plain text in every variant (the redis crate trusts only its compiled-in roots); x86_64 binaries (this machine cannot run arm64 natively)",
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_are_the_baseline_each_difference_alone_and_all_together() {
        assert_eq!(VARIANTS[0], c(false, false, false));
        for one in [
            c(true, false, false),
            c(false, true, false),
            c(false, false, true),
        ] {
            assert!(VARIANTS.contains(&one), "{one:?} alone");
        }
        assert!(VARIANTS.contains(&c(true, true, false)));
        assert!(VARIANTS.contains(&c(true, true, true)));
        assert_eq!(VARIANTS[5].label(), "quota + TLS + cold cache");
    }
}
