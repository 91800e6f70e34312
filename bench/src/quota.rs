//! Lambda's CPU share at a function's memory size, and a cgroup v1 CFS
//! quota that holds a child process to it.
//!
//! Lambda allocates CPU in proportion to memory: one vCPU at 1,769 MB
//! (docs.aws.amazon.com/lambda/latest/dg/configuration-memory.html), so a
//! 256 MB function runs on 0.145 of a core for its whole life, init
//! included. A start-up measured on an unthrottled core is therefore up to
//! 1 / 0.145 ≈ 7× too fast for CPU-bound parts.
//!
//! The memory size comes from `template.yaml` itself (the function's
//! `MemorySize`, else `Globals.Function.MemorySize`, else SAM's default of
//! 128 MB), so the share follows the template when it changes.
//!
//! The quota: a cgroup of its own under the cpu controller, with
//! `cpu.cfs_period_us` = 100 ms and `cpu.cfs_quota_us` = period × share.
//! The child must be in it before it executes its first instruction: the
//! spawning thread joins the cgroup (cgroup v1 moves single threads through
//! `tasks`), forks the child, which inherits it, and goes back. No
//! `pre_exec` (unsafe, and it would allocate after `fork`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail, ensure};
use serde_yaml::Value;
use tokio::process::{Child, Command};

/// Memory at which Lambda gives a function one full vCPU.
pub const MB_PER_VCPU: u32 = 1769;
/// SAM's `MemorySize` when neither the function nor `Globals` sets one.
pub const SAM_DEFAULT_MEMORY_MB: u32 = 128;
/// The CFS period the quota is a fraction of.
pub const PERIOD: Duration = Duration::from_millis(100);

/// The template the functions are deployed with.
pub const TEMPLATE: &str = include_str!("../../template.yaml");

/// `MemorySize` of every `AWS::Serverless::Function` whose `CodeUri` is
/// `functions/<name>`, by `<name>`.
pub fn memory_sizes(template: &str) -> anyhow::Result<BTreeMap<String, u32>> {
    let doc: Value = serde_yaml::from_str(template).context("template.yaml")?;
    let global = match doc["Globals"]["Function"].get("MemorySize") {
        None => SAM_DEFAULT_MEMORY_MB,
        Some(v) => megabytes(v).context("Globals.Function.MemorySize")?,
    };
    let resources = doc["Resources"]
        .as_mapping()
        .context("template.yaml has no Resources")?;
    let mut out = BTreeMap::new();
    for (id, r) in resources {
        if r["Type"].as_str() != Some("AWS::Serverless::Function") {
            continue;
        }
        let props = &r["Properties"];
        let Some(name) = props["CodeUri"]
            .as_str()
            .and_then(|u| u.strip_prefix("functions/"))
        else {
            continue;
        };
        let mb = match props.get("MemorySize") {
            None => global,
            Some(v) => megabytes(v).with_context(|| format!("{id:?}.MemorySize"))?,
        };
        out.insert(name.trim_end_matches('/').to_owned(), mb);
    }
    Ok(out)
}

fn megabytes(v: &Value) -> anyhow::Result<u32> {
    v.as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| (128..=10_240).contains(n))
        .ok_or_else(|| anyhow!("not a literal size in 128..=10240 MB: {v:?}"))
}

/// Lambda's CPU at a memory size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuShare {
    pub memory_mb: u32,
}

impl CpuShare {
    /// Fraction of one vCPU (above 1 past 1,769 MB).
    pub fn vcpu(self) -> f64 {
        f64::from(self.memory_mb) / f64::from(MB_PER_VCPU)
    }

    /// `cpu.cfs_quota_us` for `period`, rounded to the nearest µs.
    pub fn quota_us(self, period: Duration) -> u64 {
        let period_us = period.as_micros() as u64;
        (period_us * u64::from(self.memory_mb) + u64::from(MB_PER_VCPU) / 2)
            / u64::from(MB_PER_VCPU)
    }
}

/// Where the cgroup v1 cpu controller is mounted.
const CPU_ROOT: &str = "/sys/fs/cgroup/cpu";

/// A cgroup with a CFS quota, removed when dropped (its processes must be
/// gone by then: a cgroup with tasks cannot be removed).
#[derive(Debug)]
pub struct CpuCgroup {
    dir: PathBuf,
    /// `tasks` of the cgroup this process's threads live in.
    home_tasks: PathBuf,
    pub share: CpuShare,
}

impl CpuCgroup {
    /// A new cgroup `name` beside this process's own, held to `share`.
    /// Fails with the reason when cgroup v1's cpu controller is absent or
    /// not writable (not root, cgroup v2 only).
    pub fn create(name: &str, share: CpuShare) -> anyhow::Result<CpuCgroup> {
        let own = std::fs::read_to_string("/proc/self/cgroup")?;
        let home = own
            .lines()
            .find_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
                controllers.split(',').any(|c| c == "cpu").then_some(path)
            })
            .context("no cgroup v1 cpu controller in /proc/self/cgroup (cgroup v2 only?)")?;
        let home = Path::new(CPU_ROOT).join(home.trim_start_matches('/'));
        ensure!(
            home.join("cpu.cfs_quota_us").exists() || home.join("tasks").exists(),
            "{} is not a cgroup v1 cpu hierarchy",
            home.display()
        );
        let dir = home.join(name);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => bail!("mkdir {}: {e}", dir.display()),
        }
        let cgroup = CpuCgroup {
            dir,
            home_tasks: home.join("tasks"),
            share,
        };
        cgroup.write("cpu.cfs_period_us", &PERIOD.as_micros().to_string())?;
        cgroup.write("cpu.cfs_quota_us", &share.quota_us(PERIOD).to_string())?;
        Ok(cgroup)
    }

    fn write(&self, file: &str, value: &str) -> anyhow::Result<()> {
        let path = self.dir.join(file);
        std::fs::write(&path, value)
            .with_context(|| format!("writing {value} to {}", path.display()))
    }

    /// Spawns `cmd` inside the cgroup; returns the child and the instant
    /// just before the fork.
    pub async fn spawn(&self, mut cmd: Command) -> anyhow::Result<(Child, std::time::Instant)> {
        let tasks = self.dir.join("tasks");
        let home = self.home_tasks.clone();
        tokio::task::spawn_blocking(move || {
            let tid = thread_id()?;
            std::fs::write(&tasks, &tid).with_context(|| format!("joining {}", tasks.display()))?;
            let spawned_at = std::time::Instant::now();
            let child = cmd.spawn();
            // Back home before anything else runs on this pool thread.
            std::fs::write(&home, &tid)
                .with_context(|| format!("leaving for {}", home.display()))?;
            Ok((child?, spawned_at))
        })
        .await?
    }

    /// Whether `pid` is in this cgroup (the check that the quota applied).
    pub fn holds(&self, pid: u32) -> anyhow::Result<bool> {
        let procs = std::fs::read_to_string(self.dir.join("cgroup.procs"))?;
        Ok(procs.lines().any(|l| l.trim() == pid.to_string()))
    }

    /// Periods in which the cgroup ran out of quota, from `cpu.stat`.
    pub fn throttled_periods(&self) -> anyhow::Result<u64> {
        let stat = std::fs::read_to_string(self.dir.join("cpu.stat"))?;
        stat.lines()
            .find_map(|l| l.strip_prefix("nr_throttled "))
            .and_then(|v| v.trim().parse().ok())
            .context("no nr_throttled in cpu.stat")
    }
}

impl Drop for CpuCgroup {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), %e, "cgroup left behind");
        }
    }
}

/// This thread's id, from `/proc/thread-self` (→ `pid/task/tid`).
fn thread_id() -> anyhow::Result<String> {
    let link = std::fs::read_link("/proc/thread-self")?;
    link.file_name()
        .and_then(|t| t.to_str())
        .map(str::to_owned)
        .context("no thread id in /proc/thread-self")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn quota_is_lambda_s_share_of_the_period() {
        let q = |mb| CpuShare { memory_mb: mb }.quota_us(PERIOD);
        assert_eq!(q(1769), 100_000);
        assert_eq!(q(256), 14_471);
        assert_eq!(q(512), 28_943);
        assert_eq!(q(1024), 57_886);
        assert_eq!(q(3538), 200_000);
        assert!((CpuShare { memory_mb: 256 }.vcpu() - 0.1447).abs() < 1e-4);
    }

    #[test]
    fn memory_sizes_follow_the_function_then_globals_then_sam_s_default() {
        let t = |globals: &str| {
            format!(
                "Globals:\n  Function:\n    Runtime: provided.al2023\n{globals}\
                 Resources:\n  A:\n    Type: AWS::Serverless::Function\n    Properties:\n      CodeUri: functions/a\n      MemorySize: 512\n\
                 \x20 B:\n    Type: AWS::Serverless::Function\n    Properties:\n      CodeUri: functions/b/\n      Role: !GetAtt R.Arn\n\
                 \x20 C:\n    Type: AWS::Serverless::Function\n    Properties:\n      CodeUri: elsewhere/c\n\
                 \x20 T:\n    Type: AWS::DynamoDB::Table\n"
            )
        };
        let sizes = memory_sizes(&t("")).unwrap();
        assert_eq!(sizes.len(), 2);
        assert_eq!(sizes["a"], 512);
        assert_eq!(sizes["b"], SAM_DEFAULT_MEMORY_MB);
        let sizes = memory_sizes(&t("    MemorySize: 1024\n")).unwrap();
        assert_eq!((sizes["a"], sizes["b"]), (512, 1024));
        assert!(memory_sizes(&t("    MemorySize: !Ref Memory\n")).is_err());
    }

    #[test]
    fn the_template_sizes_every_function() {
        let sizes = memory_sizes(TEMPLATE).unwrap();
        for f in crate::functions::FUNCTIONS {
            assert!(sizes.contains_key(f), "{f} has no size in template.yaml");
        }
        assert_eq!(sizes["authorizer"], 256);
    }
}
