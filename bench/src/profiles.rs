//! Release profile variants (issue 7, figure 6): `opt-level` 3 vs `"s"`,
//! `lto` thin vs fat, each built and measured with [`crate::functions`].
//!
//! Variants are built in one target directory per opt-level (the
//! workspace's own for `"s"`, the release profile's; `target/bench-profiles/o3`
//! for 3), with the profile
//! overridden through Cargo's environment (`CARGO_PROFILE_RELEASE_OPT_LEVEL`,
//! `CARGO_PROFILE_RELEASE_LTO`); the rest of `[profile.release]`
//! (`codegen-units = 1`, `strip`, `panic`) stays as the root `Cargo.toml`
//! writes it. Thin and fat LTO share a directory because only the final
//! link differs (dependencies are compiled to the same bitcode-carrying
//! rlibs either way), so switching between them costs links, not a
//! rebuild; variants run one after the other, each built then measured.
//! The x86_64 binaries are measured here (size, start-up, CPU); with
//! `--arm64`, `cargo lambda build --release --arm64` (the deployed
//! artefact) is run per variant for the arm64 sizes too.
//!
//! Variants build [`PROFILE_FUNCTIONS`], not all nine: the smallest binary
//! (the authorizer, no AWS SDK) and the two that carry the SDK and do the
//! per-message work (catch-up: memory and CPU per message; send-message:
//! CPU per send). The other six link the same SDK as these two; building
//! them four more times (a release link with `codegen-units = 1` takes
//! minutes each on two cores) would add hours, not information.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::process::Command;

use crate::functions::{self, target_dir, workspace_root};

/// What each variant builds and measures.
pub const PROFILE_FUNCTIONS: [&str; 3] = ["authorizer", "catch-up", "send-message"];
use crate::report::Report;
use crate::stats::ms;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Variant {
    pub name: &'static str,
    pub opt_level: &'static str,
    pub lto: &'static str,
}

/// In build order: variants sharing a target directory one after the other.
pub const VARIANTS: [Variant; 4] = [
    Variant {
        name: "o3-thin",
        opt_level: "3",
        lto: "thin",
    },
    Variant {
        name: "o3-fat",
        opt_level: "3",
        lto: "fat",
    },
    Variant {
        name: "os-thin",
        opt_level: "s",
        lto: "thin",
    },
    Variant {
        name: "os-fat",
        opt_level: "s",
        lto: "fat",
    },
];

impl Variant {
    /// The variants of the release profile's own `opt-level` (`"s"`) build
    /// in the workspace's target directory, where one of them is the
    /// release build itself (nothing to build) and the other relinks.
    /// `opt-level` 3 gets a directory of its own.
    pub fn target_dir(&self) -> PathBuf {
        if self.opt_level == "s" {
            return target_dir();
        }
        target_dir()
            .join("bench-profiles")
            .join(format!("o{}", self.opt_level))
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.current_dir(workspace_root())
            .env("CARGO_PROFILE_RELEASE_OPT_LEVEL", self.opt_level)
            .env("CARGO_PROFILE_RELEASE_LTO", self.lto)
            .stdin(Stdio::null());
        c
    }
}

fn packages(functions: &[&'static str]) -> Vec<String> {
    functions
        .iter()
        .flat_map(|f| ["-p".to_owned(), (*f).to_owned()])
        .collect()
}

async fn run_logged(mut cmd: Command, log: &Path, what: &str) -> anyhow::Result<Duration> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = std::fs::File::create(log)?;
    cmd.stdout(file.try_clone()?).stderr(file);
    let started = Instant::now();
    let status = cmd
        .status()
        .await
        .with_context(|| format!("starting {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status}); see {}", log.display());
    }
    Ok(started.elapsed())
}

/// Builds the x86_64 release binaries of `v`; returns their directory and
/// the build's wall time.
pub async fn build_host(v: &Variant) -> anyhow::Result<(PathBuf, Duration)> {
    let td = v.target_dir();
    let mut cmd = v.command("cargo");
    cmd.arg("build")
        .arg("--release")
        .arg("--target-dir")
        .arg(&td)
        .args(packages(&PROFILE_FUNCTIONS));
    let took = run_logged(
        cmd,
        &td.join(format!("build-host-{}.log", v.name)),
        &format!("cargo build ({})", v.name),
    )
    .await?;
    Ok((td.join("release"), took))
}

/// The deploy toolchain's bin folder (`scripts/sam-venv`), which has
/// `cargo-lambda` and zig; `None` when it cannot be set up.
async fn sam_bin() -> Option<String> {
    let out = Command::new("bash")
        .arg(workspace_root().join("scripts/sam-venv"))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .await
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// Builds the arm64 Lambda binaries of `v` with `cargo lambda build
/// --release --arm64`; returns their sizes and the build's wall time.
pub async fn build_arm64(v: &Variant) -> anyhow::Result<(Vec<(&'static str, u64)>, Duration)> {
    let bin = sam_bin()
        .await
        .context("scripts/sam-venv failed: no cargo-lambda for the arm64 build")?;
    let td = v.target_dir();
    let path = format!("{bin}:{}", std::env::var("PATH").unwrap_or_default());
    let mut cmd = v.command("cargo");
    cmd.env("PATH", path)
        .args(["lambda", "build", "--release", "--arm64", "--target-dir"])
        .arg(&td)
        .args(packages(&PROFILE_FUNCTIONS));
    let took = run_logged(
        cmd,
        &td.join(format!("build-arm64-{}.log", v.name)),
        &format!("cargo lambda build ({})", v.name),
    )
    .await?;
    Ok((arm64_sizes(&td, &PROFILE_FUNCTIONS)?, took))
}

/// `bootstrap` sizes under `{target_dir}/lambda/{function}/`.
pub fn arm64_sizes(
    target_dir: &Path,
    functions: &[&'static str],
) -> anyhow::Result<Vec<(&'static str, u64)>> {
    functions
        .iter()
        .map(|f| {
            let p = target_dir.join("lambda").join(f).join("bootstrap");
            let len = std::fs::metadata(&p)
                .with_context(|| format!("{}: not built", p.display()))?
                .len();
            Ok((*f, len))
        })
        .collect()
}

/// One variant's figures.
#[derive(Debug, Clone)]
pub struct Measured {
    pub variant: Variant,
    pub host_build: Duration,
    pub arm64_build: Option<Duration>,
    pub arm64: Option<Vec<(&'static str, u64)>>,
    pub figures: functions::Figures,
}

pub async fn run(config: &functions::Config, arm64: bool) -> anyhow::Result<Vec<Measured>> {
    let mut out = Vec::new();
    for v in VARIANTS {
        eprintln!(
            "courier-bench: building {} (x86_64{})",
            v.name,
            if arm64 { " and arm64" } else { "" }
        );
        let (dir, host_build) = build_host(&v).await?;
        let (arm64_sizes, arm64_build) = if arm64 {
            let (s, t) = build_arm64(&v).await?;
            (Some(s), Some(t))
        } else {
            (None, None)
        };
        let figures = functions::measure(&dir, config).await?;
        out.push(Measured {
            variant: v,
            host_build,
            arm64_build,
            arm64: arm64_sizes,
            figures,
        });
    }
    Ok(out)
}

fn total(sizes: &[(&'static str, u64)]) -> u64 {
    sizes.iter().map(|(_, b)| b).sum()
}

/// One row per variant, every figure relative to `o3-thin`.
pub fn report(measured: &[Measured]) -> Report {
    let mut r = Report::new();
    const S: &str = "profile";
    let Some(base) = measured.iter().find(|m| m.variant.name == "o3-thin") else {
        return r;
    };
    let worst_start = |m: &Measured| {
        m.figures
            .start_ups
            .iter()
            .map(|s| s.first_response)
            .max()
            .unwrap_or_default()
    };
    let median_start = |m: &Measured| {
        let v: Vec<Duration> = m
            .figures
            .start_ups
            .iter()
            .map(|s| s.first_response)
            .collect();
        crate::stats::median(&v).unwrap_or_default()
    };
    let rel = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    for m in measured {
        let f = &m.figures;
        let arm = match (&m.arm64, &base.arm64) {
            (Some(a), Some(b)) => format!(
                "arm64 {:.1} MB ({:.2}×)",
                total(a) as f64 / 1e6,
                rel(total(a) as f64, total(b) as f64)
            ),
            _ => "arm64 not built".to_owned(),
        };
        r.info(
            S,
            format!(
                "opt-level {} lto {}",
                m.variant.opt_level, m.variant.lto
            ),
            format!(
                "{}: {arm}, x86_64 {:.1} MB ({:.2}×); start-up median {:.1} ms ({:.2}×), worst {:.1} ms; CPU/msg catch-up {:.1} µs ({:.2}×), send {:.0} µs ({:.2}×); build {:.0} s",
                PROFILE_FUNCTIONS.join(" + "),
                total(&f.sizes) as f64 / 1e6,
                rel(total(&f.sizes) as f64, total(&base.figures.sizes) as f64),
                ms(median_start(m)),
                rel(ms(median_start(m)), ms(median_start(base))),
                ms(worst_start(m)),
                f.catch_up.cpu_per_message().as_secs_f64() * 1e6,
                rel(
                    f.catch_up.cpu_per_message().as_secs_f64(),
                    base.figures.catch_up.cpu_per_message().as_secs_f64()
                ),
                f.send.cpu_per_message().as_secs_f64() * 1e6,
                rel(
                    f.send.cpu_per_message().as_secs_f64(),
                    base.figures.send.cpu_per_message().as_secs_f64()
                ),
                m.host_build.as_secs_f64() + m.arm64_build.unwrap_or_default().as_secs_f64(),
            ),
        );
    }
    r
}
