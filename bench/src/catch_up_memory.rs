//! Catch-up's peak memory at its worst case, against the byte bound it
//! states (`CATCH_UP_MAX_BYTES_IN_FLIGHT`).
//!
//! Catch-up holds the messages it has read until they are posted, and
//! bounds them in bytes (courier-core `services::catch_up`, `Budget`): a
//! read first takes its worst weight from the budget, then keeps what the
//! messages and their frames weigh (`held_bytes`). The claim measured here
//! is that the process's heap follows that bound, not the data: a backlog
//! several times the bound, read as fast as it can be, never holds more
//! than the bound plus a fixed slack.
//!
//! Each run is one catch-up in a process of its own, the `catch-up-memory`
//! binary (bench/src/bin/catch-up-memory/), whose global allocator counts
//! live heap bytes and their peak, beside `VmHWM` / `VmRSS` from
//! `/proc/self/status`. The worst case it sets up:
//!
//! - **Largest bodies.** For each kind (`"`, `\`, U+0001, 😀, all mixed) the
//!   longest body the send path accepts, found by bisection on its length
//!   with the send path's own checks (`Body::parse` against
//!   `MAX_BODY_BYTES`, `worst_frame_len` against `FRAME_BYTES`): about
//!   16 KB raw and 32 KB as encoded for the escaped kinds, 16 KB and 16 KB
//!   for the emoji.
//! - **All reads at once.** The message store makes each read's messages on
//!   the spot and answers at once, in full (`limit` messages: a
//!   conversation longer than the read, so each ends with a `more` frame).
//!   Nothing is stored, so the heap is the catch-up's own.
//! - **Posts slowed.** The gateway holds each post 1 ms, then drops it:
//!   reads outrun posts, so read messages pile up until the budget stops
//!   them.
//! - 32 conversations × 500 pending (the per-conversation cap) for one
//!   device; production settings (concurrency 128) but the bound.
//!
//! Every kind runs at the default bound (256 MiB) and at 64 MiB, where the
//! same data is 8 times the bound: the peak should move with the bound.
//! What to expect: a read reserves R = 501 × `worst_message_bytes` (56 MiB
//! at the 16 KB body limit) and then keeps H, what its 500 messages and
//! frames weigh (24 MiB for `"`, 18 for U+0001, 16 for 😀). A read starts
//! only when R is free, so at most ⌊(bound − R) / H⌋ + 1 conversations are
//! held at once: a peak of about bound − R + H, under the bound because a
//! real read weighs less than its worst case (H < R).
//!
//! The verdict is the peak heap ≤ bound + [`SLACK`]. The slack is what the
//! budget does not count: the runtime, the catch-up's futures and pending
//! rows, the transient strings of frame packing, the gateway's frame in
//! hand. It is measured, not assumed: the same run with 1-byte bodies
//! (the baseline row, whose own messages count against it too) must stay
//! under it. `VmHWM` growth is reported beside the heap: what `malloc` adds
//! (arenas per thread, freed memory not returned), which is the process's
//! real cost but not the catch-up's choice.
//!
//! The smoke run (24 × 50, `"` and U+0001, 12 MiB) asserts the same bound
//! and the baseline, with data over twice bound + slack, so that a
//! catch-up without its budget would fail it.

pub mod record;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use courier_core::config::DEFAULT_MAX_BYTES_IN_FLIGHT;
use tokio::process::Command;

use crate::functions::workspace_root;
use crate::report::{Report, Verdict};
use record::{Kind, Record};

const MIB: usize = 1 << 20;

/// What the peak heap may exceed the bound by: what the budget does not
/// count (see the module docs). The baseline measures it: 1-byte bodies,
/// whose peak is all slack.
pub const SLACK: usize = 8 * MIB;

/// The binary each run is.
const BINARY: &str = "catch-up-memory";

#[derive(Debug, Clone)]
pub struct Config {
    pub conversations: usize,
    pub messages: usize,
    pub kinds: Vec<Kind>,
    /// `CATCH_UP_MAX_BYTES_IN_FLIGHT` of the runs; every kind at each. The
    /// baseline runs at the first.
    pub bounds: Vec<usize>,
    pub post_delay: Duration,
}

impl Config {
    pub fn full() -> Self {
        Self {
            conversations: 32,
            messages: 500,
            kinds: Kind::ADVERSARIAL.to_vec(),
            bounds: vec![DEFAULT_MAX_BYTES_IN_FLIGHT, 64 * MIB],
            post_delay: Duration::from_millis(1),
        }
    }

    /// Small, in a debug build: counts and bounds only. The data, as the
    /// budget weighs it, is over twice bound + slack (and [`check`] insists
    /// it be over), so a catch-up that held it all would fail.
    pub fn smoke() -> Self {
        Self {
            conversations: 24,
            messages: 50,
            kinds: vec![Kind::Quote, Kind::Control],
            bounds: vec![12 * MIB],
            post_delay: Duration::from_millis(1),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Figures {
    /// 1-byte bodies at the first bound.
    pub baseline: Record,
    /// Every bound × kind, in that order.
    pub runs: Vec<Record>,
}

pub async fn run(config: &Config) -> anyhow::Result<Figures> {
    let binary = build().await?;
    let first = *config.bounds.first().context("no bound to run at")?;
    let baseline = measure(&binary, config, Kind::Tiny, first).await?;
    let mut runs = Vec::new();
    for &bound in &config.bounds {
        for &kind in &config.kinds {
            let r = measure(&binary, config, kind, bound).await?;
            tracing::info!(
                kind = kind.name(),
                bound,
                peak = r.heap_peak,
                "catch-up memory run"
            );
            runs.push(r);
        }
    }
    Ok(Figures { baseline, runs })
}

/// Builds `catch-up-memory` next to this executable, with its profile, and
/// returns its path. `cargo run -p courier-bench` builds only the binary it
/// runs, so the sibling may be missing or stale; when it is fresh this is
/// Cargo's check alone (Cargo's progress goes to stderr).
async fn build() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe().context("finding this executable")?;
    let dir = me.parent().context("this executable has no folder")?;
    let profile = match dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev",
        Some(name) => name,
        None => bail!("{}: no profile folder", me.display()),
    };
    let target_dir = dir.parent().context("the profile folder has no parent")?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(&cargo)
        .current_dir(workspace_root())
        .args(["build", "--profile", profile, "--target-dir"])
        .arg(target_dir)
        .args(["-p", "courier-bench", "--bin", BINARY])
        .stdin(Stdio::null())
        .status()
        .await
        .with_context(|| format!("running {}", cargo.to_string_lossy()))?;
    ensure!(
        status.success(),
        "cargo build --profile {profile} --bin {BINARY} failed ({status})"
    );
    let binary = me.with_file_name(BINARY);
    ensure!(
        binary.is_file(),
        "built {BINARY}, but it is not at {}",
        binary.display()
    );
    Ok(binary)
}

/// One run of the binary: one catch-up, its JSON line.
async fn measure(
    binary: &Path,
    config: &Config,
    kind: Kind,
    bound: usize,
) -> anyhow::Result<Record> {
    let out = Command::new(binary)
        .args(["--kind", kind.name()])
        .args(["--conversations", &config.conversations.to_string()])
        .args(["--messages", &config.messages.to_string()])
        .args(["--max-bytes-in-flight", &bound.to_string()])
        .args([
            "--post-delay-us",
            &config.post_delay.as_micros().to_string(),
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("running {}", binary.display()))?;
    ensure!(
        out.status.success(),
        "{BINARY} --kind {} at {bound} bytes failed ({})",
        kind.name(),
        out.status
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().context("no output")?;
    serde_json::from_str(line).with_context(|| format!("{BINARY} printed {line:?}"))
}

/// Whether the run's peak heap is within its bound plus the slack.
pub fn within_bound(r: &Record) -> bool {
    r.heap_peak <= r.max_bytes_in_flight + SLACK
}

/// What the smoke run asserts: bounds and counts, never times.
pub fn check(f: &Figures) -> anyhow::Result<()> {
    ensure!(
        f.baseline.heap_peak <= SLACK,
        "1-byte bodies peaked at {} bytes of heap, over the {SLACK}-byte slack the bound allows",
        f.baseline.heap_peak
    );
    for r in &f.runs {
        let limit = r.max_bytes_in_flight + SLACK;
        ensure!(
            r.bytes_weighed > limit as u64,
            "{}: {} bytes weighed, not above bound + slack ({limit}): the run cannot test the bound",
            r.kind.name(),
            r.bytes_weighed
        );
        ensure!(
            within_bound(r),
            "{}: peak heap {} bytes, over bound + slack ({limit})",
            r.kind.name(),
            r.heap_peak
        );
    }
    Ok(())
}

fn mib(bytes: f64) -> f64 {
    bytes / MIB as f64
}

fn hwm_growth_mib(r: &Record) -> f64 {
    r.vm_hwm_after_kb.saturating_sub(r.vm_hwm_before_kb) as f64 / 1024.0
}

/// What every row says of its run's memory.
fn memory(r: &Record) -> String {
    format!(
        "peak heap {:.1} MiB (live before {:.1}); VmHWM +{:.1} MiB (to {:.1} MiB)",
        mib(r.heap_peak as f64),
        mib(r.heap_before as f64),
        hwm_growth_mib(r),
        r.vm_hwm_after_kb as f64 / 1024.0,
    )
}

/// Rows for the table.
pub fn report(f: &Figures) -> Report {
    let mut r = Report::new();
    const S: &str = "catch-up memory";
    let slack = SLACK / MIB;
    let b = &f.baseline;
    r.add(
        S,
        format!(
            "baseline: {} × {} of 1-byte bodies, bound {} MiB",
            b.conversations,
            b.messages_per_conversation,
            b.max_bytes_in_flight / MIB
        ),
        format!(
            "{}; {:.1} MiB posted in {} frames, {:.0} ms",
            memory(b),
            mib(b.bytes_posted as f64),
            b.frames,
            b.elapsed_ms
        ),
        format!("peak ≤ slack ({slack} MiB)"),
        Verdict::of(b.heap_peak <= SLACK),
    );
    for run in &f.runs {
        let bound = run.max_bytes_in_flight as f64;
        r.add(
            S,
            format!(
                "{} × {}, bound {} MiB: {} × {} ({} B raw, frame {} B)",
                run.conversations,
                run.messages_per_conversation,
                run.max_bytes_in_flight / MIB,
                run.kind.label(),
                run.body_chars,
                run.body_bytes,
                run.frame_bytes
            ),
            format!(
                "peak/bound {:.2}; {}; data {:.0} MiB posted = {:.1}× the bound ({:.0} MiB as the budget weighs it = {:.1}×), {} frames (largest {} B), {:.0} ms",
                run.heap_peak as f64 / bound,
                memory(run),
                mib(run.bytes_posted as f64),
                run.bytes_posted as f64 / bound,
                mib(run.bytes_weighed as f64),
                run.bytes_weighed as f64 / bound,
                run.frames,
                run.largest_frame,
                run.elapsed_ms
            ),
            format!("peak ≤ bound + {slack} MiB"),
            Verdict::of(within_bound(run)),
        );
    }
    r.note(format!(
        "catch-up memory: the slack ({slack} MiB) is what the byte budget does not count (runtime, the catch-up's futures and rows, frame packing's transient strings); the baseline row measures it. Heap is the counting allocator's (bytes requested); VmHWM adds malloc's own (per-thread arenas, freed memory kept)."
    ));
    r
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The `key = value` lines of `[section]` in a manifest, in order.
    fn section(manifest: &str, section: &str) -> Vec<String> {
        manifest
            .lines()
            .skip_while(|l| l.trim() != format!("[{section}]"))
            .skip(1)
            .take_while(|l| !l.trim_start().starts_with('['))
            .filter(|l| l.contains('=') && !l.trim_start().starts_with('#'))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect()
    }

    /// bench/Cargo.toml writes its lints out (it cannot take the
    /// workspace's and change one): they must stay the workspace's, but
    /// `unsafe_code`.
    #[test]
    fn lints_are_the_workspace_s_but_unsafe_code() {
        let read = |p: PathBuf| std::fs::read_to_string(p).unwrap();
        let root = read(workspace_root().join("Cargo.toml"));
        let bench = read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"));
        let mut rust = section(&root, "workspace.lints.rust");
        assert!(rust.contains(&r#"unsafe_code = "forbid""#.to_owned()));
        for l in &mut rust {
            *l = l.replace(r#"unsafe_code = "forbid""#, r#"unsafe_code = "deny""#);
        }
        assert_eq!(section(&bench, "lints.rust"), rust);
        let clippy = section(&root, "workspace.lints.clippy");
        assert!(!clippy.is_empty());
        assert_eq!(section(&bench, "lints.clippy"), clippy);
    }

    #[test]
    fn kinds_read_back_by_name() {
        for kind in Kind::ADVERSARIAL.into_iter().chain([Kind::Tiny]) {
            assert_eq!(kind.name().parse::<Kind>(), Ok(kind));
        }
        assert!("nope".parse::<Kind>().is_err());
    }
}
