//! `catch-up-memory`: one catch-up at the worst case for memory, measured
//! from the inside (a counting allocator) and from the outside
//! (`/proc/self/status`); prints one JSON line ([`record::Record`]).
//!
//! `courier-bench catch-up-memory` (bench/src/catch_up_memory.rs) runs it
//! once per body kind and bound and says what the figures mean. It is a
//! binary of its own so that the counting allocator ([`counting`]) is the
//! global one here and nowhere else (the benchmark's other figures pay no
//! counting), and so that it links courier-core alone, not the benchmark
//! library with the AWS SDK and the local gateway: what is live before the
//! catch-up starts is a runtime and a few pending rows.
//!
//! The run: the user has `--conversations` pending rows of `--messages`
//! each (in the in-memory store); the message store is [`worst_case`]'s,
//! which makes every read's messages on the spot with the largest body of
//! `--kind` the send path accepts; the gateway holds each post
//! `--post-delay-us` and drops it. Catch-up runs with the production
//! settings but `--max-bytes-in-flight`. The peak is reset to the live heap
//! right before `catch_up` is called and read right after it returns.

mod counting;
// The driver's half of the file (labels, the list of kinds) is unused here.
#[allow(dead_code)]
#[path = "../../catch_up_memory/record.rs"]
mod record;
mod worst_case;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, ensure};
use clap::Parser;
use courier_core::app::{App, Ports, Settings};
use courier_core::config::DEFAULT_MAX_BYTES_IN_FLIGHT;
use courier_core::domain::{ConnectionId, ConversationId, Seq, UserId};
use courier_core::ports::{CatchUpRequest, PendingStore};
use courier_core::protocol::pack_messages;
use courier_core::services::catch_up::{self, Ending, held_bytes};

use crate::record::{Kind, Record};
use crate::worst_case::{Fabricated, SlowGateway, largest_body};

#[global_allocator]
static HEAP: counting::Counting = counting::Counting::new();

#[derive(Parser)]
#[command(
    name = "catch-up-memory",
    about = "One catch-up at the worst case for memory; prints its peak heap and VmHWM as JSON"
)]
struct Args {
    /// quote, backslash, control, emoji, mix, or tiny (1 byte).
    #[arg(long)]
    kind: Kind,
    #[arg(long, default_value_t = 32)]
    conversations: usize,
    /// Pending per conversation (catch-up delivers at most its cap, 500).
    #[arg(long, default_value_t = 500)]
    messages: usize,
    /// `CATCH_UP_MAX_BYTES_IN_FLIGHT`.
    #[arg(long, default_value_t = DEFAULT_MAX_BYTES_IN_FLIGHT)]
    max_bytes_in_flight: usize,
    /// How long the gateway holds each post.
    #[arg(long, default_value_t = 1000)]
    post_delay_us: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("BENCH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    // As the catch-up function runs: tokio's multi-threaded runtime, one
    // worker per core.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let record = runtime.block_on(run(&args))?;
    println!("{}", serde_json::to_string(&record)?);
    Ok(())
}

async fn run(args: &Args) -> anyhow::Result<Record> {
    let mut settings = Settings::default();
    settings.catch_up.max_bytes_in_flight = args.max_bytes_in_flight;
    let reader = parse("user", "reader", UserId::parse)?;
    let sender = parse("user", "sender", UserId::parse)?;
    let conversations = (0..args.conversations)
        .map(|i| {
            parse(
                "conversation",
                &format!("conversation-{i:04}"),
                ConversationId::parse,
            )
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let first = conversations.first().context("no conversations")?;
    // Every conversation id is as long as the first: the same frame length.
    let (body, frame_bytes) = largest_body(args.kind, &settings, first, &sender)?;

    let (ports, handles) = Ports::in_memory();
    let last = Seq(u64::try_from(args.messages)?);
    for c in &conversations {
        handles.store.record(&reader, c, last).await?;
        handles.store.record(&reader, c, Seq(1)).await?;
    }
    let gateway = Arc::new(SlowGateway::new(Duration::from_micros(args.post_delay_us)));
    let mut ports = ports.with_gateway(gateway.clone());
    ports.messages = Arc::new(Fabricated::new(&body, sender.clone()));
    let app = App::new(ports, settings);
    let request = CatchUpRequest {
        user_id: reader,
        device_id: Default::default(),
        connection_id: parse("connection", "reader-connection", ConnectionId::parse)?,
        connected_at: None,
        open_conversation: None,
        device_limit: None,
        origin: Default::default(),
        correlation_id: None,
    };

    let (vm_hwm_before_kb, vm_rss_before_kb) = vm_kb()?;
    let heap_before = HEAP.current();
    HEAP.reset_peak();
    let started = Instant::now();
    let report = catch_up::catch_up(&app, &request, None, None).await?;
    let elapsed = started.elapsed();
    let heap_peak = HEAP.peak();
    let heap_after = HEAP.current();
    let (vm_hwm_after_kb, vm_rss_after_kb) = vm_kb()?;

    let cap = app.settings.catch_up.per_conversation_cap;
    let per_conversation = args.messages.min(cap);
    ensure!(
        report.ending == Ending::CaughtUp
            && report.messages == args.conversations * per_conversation
            && report.unreached == 0,
        "catch-up ended {:?} with {} messages ({} unreached), want {} × {per_conversation}",
        report.ending,
        report.messages,
        report.unreached,
        args.conversations
    );
    let (frames, bytes_posted, largest_frame) = gateway.posted();
    ensure!(
        frames == report.frames,
        "the gateway was handed {frames} frames, the catch-up reports {}",
        report.frames
    );

    // After every reading: one conversation's delivered messages weighed as
    // the budget weighs them.
    let read = app
        .ports
        .messages
        .range(first, Seq(1), per_conversation)
        .await?;
    let packed = pack_messages(first, &read, app.settings.delivery.max_frame_bytes);
    let bytes_weighed = (held_bytes(&read, &packed) * args.conversations) as u64;

    Ok(Record {
        kind: args.kind,
        body_bytes: body.as_str().len(),
        body_chars: body.as_str().chars().count(),
        frame_bytes,
        conversations: args.conversations,
        messages_per_conversation: args.messages,
        max_bytes_in_flight: app.settings.catch_up.max_bytes_in_flight,
        concurrency: app.settings.catch_up.concurrency,
        per_conversation_cap: cap,
        post_delay_us: args.post_delay_us,
        heap_before,
        heap_peak,
        heap_after,
        vm_hwm_before_kb,
        vm_hwm_after_kb,
        vm_rss_before_kb,
        vm_rss_after_kb,
        messages: report.messages,
        more: report.more,
        frames,
        bytes_posted,
        largest_frame,
        bytes_weighed,
        elapsed_ms: elapsed.as_secs_f64() * 1000.0,
    })
}

fn parse<T, E: std::fmt::Display>(
    kind: &str,
    raw: &str,
    f: impl Fn(&str) -> Result<T, E>,
) -> anyhow::Result<T> {
    f(raw).map_err(|e| anyhow!("{kind} {raw:?}: {e}"))
}

/// `VmHWM` (peak resident set) and `VmRSS` of this process, KiB.
fn vm_kb() -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let field = |name: &str| -> anyhow::Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no {name} in /proc/self/status"))
    };
    Ok((field("VmHWM:")?, field("VmRSS:")?))
}
