//! `courier-bench`: run the benchmarks of issue 7 and print one table.
//!
//! `all` is what `scripts/bench` runs; `smoke` is the step of
//! `scripts/test` (small sizes, asserts counts and bounds only). The other
//! subcommands run one figure each.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use courier_bench::report::Report;
use courier_bench::{
    catch_up_memory, catchup, cost, devices, functions, profiles, send, startup, storm,
};

#[derive(Parser)]
#[command(
    name = "courier-bench",
    about = "Courier against its physical limits (issue 7): catch-up round trips, frames, send path, reconnect storm, per-function figures, release profiles"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Also write the table as Markdown to this file.
    #[arg(long, global = true)]
    markdown: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Everything below, in order.
    All {
        /// Skip the release-profile variants (four extra builds, long the
        /// first time).
        #[arg(long)]
        skip_profiles: bool,
    },
    /// Catch-up depth in round trips (paired slopes, moto and in memory)
    /// beside the fair baseline; frames.
    CatchUp {
        /// The smoke sizes only, with the smoke run's structure checks.
        #[arg(long)]
        smoke: bool,
    },
    /// Catch-up's peak heap and VmHWM at the worst case (largest bodies,
    /// reads answered at once, posts slowed) against its byte bound; builds
    /// and runs the `catch-up-memory` binary.
    CatchUpMemory,
    /// Send path round trips and 100 concurrent senders.
    Send,
    /// Several devices per user: catch-up depth with other devices'
    /// cursors, live fan-out to 5 devices, the tapped conversation first.
    Devices,
    /// 1,000 clients reconnecting at once (100 with `--moto`).
    Storm {
        #[arg(long)]
        clients: Option<usize>,
        /// Clients sync every 4 s while no caught_up comes, instead of
        /// doubling the wait as courier-client does.
        #[arg(long)]
        fixed_sync: bool,
        /// Stores on moto instead of in memory.
        #[arg(long)]
        moto: bool,
    },
    /// Per-function size, start-up, peak RSS, CPU per message, on the
    /// release binaries in `--bin-dir` (default: target/release).
    Functions {
        #[arg(long)]
        bin_dir: Option<PathBuf>,
    },
    /// Start-up as Lambda counts it: each release binary in `--bin-dir`
    /// under its template's CPU quota, with TLS, cold and warm page cache,
    /// beside the unthrottled plain-text warm spawn.
    StartUp {
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// Functions to spawn (default: all nine).
        #[arg(long, value_delimiter = ',')]
        functions: Vec<String>,
        /// Spawns per function and variant.
        #[arg(long, default_value_t = 7)]
        reps: usize,
    },
    /// Build and measure the release profile variants.
    Profiles {
        /// Also build each variant for arm64 with `cargo lambda` (sizes).
        #[arg(long)]
        arm64: bool,
    },
    /// Cost per million messages: 1:1, a group, a catch-up after a day,
    /// and the simple-websockets-chat-app design, counted and priced.
    Cost {
        /// The smoke sizes only, with the smoke run's count checks.
        #[arg(long)]
        smoke: bool,
    },
    /// A small run of catch-up, frames, send, devices, storm and cost; asserts
    /// counts, bounds and the tape's structure, never times.
    Smoke,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logs();
    let cli = Cli::parse();
    let mut report = Report::new();
    machine(&mut report).await;
    match cli.command {
        Command::All { skip_profiles } => {
            run_catch_up(&mut report, &catchup::Config::full()).await?;
            run_catch_up_memory(&mut report, &catch_up_memory::Config::full()).await?;
            run_send(&mut report, &send::Config::full()).await?;
            run_devices(&mut report, &devices::Config::full()).await?;
            run_storm(&mut report, &storm::Config::full()).await?;
            run_storm(&mut report, &storm::Config::moto()).await?;
            let f = cost::run(&cost::Config::full()).await?;
            report.extend(cost::report(&f));
            run_functions(&mut report, None).await?;
            run_start_up(&mut report, None, &[], 7).await?;
            if !skip_profiles {
                // x86_64 only: the arm64 sizes of the profile in use come
                // from scripts/lambda-build in the functions rows.
                run_profiles(&mut report, false).await?;
            }
        }
        Command::CatchUp { smoke: false } => {
            run_catch_up(&mut report, &catchup::Config::full()).await?;
        }
        Command::CatchUp { smoke: true } => smoke_catch_up(&mut report).await?,
        Command::CatchUpMemory => {
            run_catch_up_memory(&mut report, &catch_up_memory::Config::full()).await?;
        }
        Command::Send => run_send(&mut report, &send::Config::full()).await?,
        Command::Devices => run_devices(&mut report, &devices::Config::full()).await?,
        Command::Storm {
            clients,
            fixed_sync,
            moto,
        } => {
            let base = if moto {
                storm::Config::moto()
            } else {
                storm::Config::full()
            };
            let config = storm::Config {
                clients: clients.unwrap_or(base.clients),
                sync_backoff: !fixed_sync,
                ..base
            };
            run_storm(&mut report, &config).await?;
        }
        Command::Cost { smoke: false } => {
            let f = cost::run(&cost::Config::full()).await?;
            report.extend(cost::report(&f));
        }
        Command::Cost { smoke: true } => {
            let f = cost::run(&cost::Config::smoke()).await?;
            report.extend(cost::report(&f));
            cost::check(&f)?;
        }
        Command::Functions { bin_dir } => run_functions(&mut report, bin_dir).await?,
        Command::StartUp {
            bin_dir,
            functions,
            reps,
        } => run_start_up(&mut report, bin_dir, &functions, reps).await?,
        Command::Profiles { arm64 } => run_profiles(&mut report, arm64).await?,
        Command::Smoke => {
            smoke_catch_up(&mut report).await?;
            let f = catch_up_memory::run(&catch_up_memory::Config::smoke()).await?;
            report.extend(catch_up_memory::report(&f));
            catch_up_memory::check(&f)?;
            run_send(&mut report, &send::Config::smoke()).await?;
            let f = devices::run(&devices::Config::smoke()).await?;
            report.extend(devices::report(&f));
            devices::check_structure(&f)?;
            let f = storm::run(&storm::Config::smoke()).await?;
            report.extend(storm::report(&f));
            storm::check_smoke(&f)?;
            let f = cost::run(&cost::Config::smoke()).await?;
            report.extend(cost::report(&f));
            cost::check(&f)?;
        }
    }
    print!("{}", report.to_text());
    if let Some(path) = cli.markdown {
        std::fs::write(&path, report.to_markdown())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

async fn run_catch_up(report: &mut Report, config: &catchup::Config) -> anyhow::Result<()> {
    let (cases, packing) = catchup::run(config).await?;
    report.extend(catchup::report(&cases, &packing));
    Ok(())
}

async fn smoke_catch_up(report: &mut Report) -> anyhow::Result<()> {
    let (cases, packing) = catchup::run(&catchup::Config::smoke()).await?;
    report.extend(catchup::report(&cases, &packing));
    catchup::check_structure(&cases)
}

async fn run_catch_up_memory(
    report: &mut Report,
    config: &catch_up_memory::Config,
) -> anyhow::Result<()> {
    let f = catch_up_memory::run(config).await?;
    report.extend(catch_up_memory::report(&f));
    Ok(())
}

async fn run_send(report: &mut Report, config: &send::Config) -> anyhow::Result<()> {
    let f = send::run(config).await?;
    report.extend(send::report(&f));
    Ok(())
}

async fn run_devices(report: &mut Report, config: &devices::Config) -> anyhow::Result<()> {
    let f = devices::run(config).await?;
    report.extend(devices::report(&f));
    Ok(())
}

async fn run_storm(report: &mut Report, config: &storm::Config) -> anyhow::Result<()> {
    let f = storm::run(config).await?;
    report.extend(storm::report(&f));
    Ok(())
}

async fn run_functions(report: &mut Report, bin_dir: Option<PathBuf>) -> anyhow::Result<()> {
    let target = functions::target_dir();
    let dir = bin_dir.unwrap_or_else(|| functions::release_dir(&target));
    let f = functions::measure(&dir, &functions::Config::full()).await?;
    // The arm64 artefacts of `scripts/lambda-build`, if it ran.
    let arm64 = profiles::arm64_sizes(&target, &functions::FUNCTIONS).ok();
    report.extend(functions::report(&f, arm64.as_deref()));
    Ok(())
}

async fn run_start_up(
    report: &mut Report,
    bin_dir: Option<PathBuf>,
    names: &[String],
    reps: usize,
) -> anyhow::Result<()> {
    let dir = bin_dir.unwrap_or_else(|| functions::release_dir(&functions::target_dir()));
    let functions = if names.is_empty() {
        functions::FUNCTIONS.to_vec()
    } else {
        names
            .iter()
            .map(|n| {
                functions::FUNCTIONS
                    .into_iter()
                    .find(|f| f == n)
                    .ok_or_else(|| anyhow::anyhow!("no function {n}"))
            })
            .collect::<anyhow::Result<_>>()?
    };
    let results = startup::run(&dir, &startup::Config { functions, reps }).await?;
    report.extend(startup::report(&results));
    Ok(())
}

async fn run_profiles(report: &mut Report, arm64: bool) -> anyhow::Result<()> {
    let config = functions::Config {
        functions: &profiles::PROFILE_FUNCTIONS,
        ..functions::Config::full()
    };
    let measured = profiles::run(&config, arm64).await?;
    report.extend(profiles::report(&measured));
    Ok(())
}

/// The machine, first in every table.
async fn machine(report: &mut Report) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or("?".to_owned(), |kb| {
            format!("{:.0} GB", kb as f64 / 1024.0 / 1024.0)
        });
    let rustc = tokio::process::Command::new("rustc")
        .arg("-V")
        .output()
        .await
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    report.info(
        "machine",
        "host",
        format!("{cores} cores ({model}), {mem} RAM, {rustc}"),
    );
}

fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BENCH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
