//! Per-function figures on the release binaries: size, start-up to the
//! first handled invocation, peak RSS of a 10,000-message catch-up, and
//! CPU per delivered message of catch-up and send-message.
//!
//! Over 700 lines: one benchmark (per-function release figures) with its
//! Runtime API driver and report; split further it would scatter one
//! measurement.
//!
//! Each binary runs as a child process the way Lambda runs it: environment
//! set as the SAM template sets it (tables, endpoints, secrets, and the
//! `AWS_LAMBDA_*` variables of the runtime), `AWS_LAMBDA_RUNTIME_API`
//! pointing at [`RuntimeApi`]. Backends are real where the function needs
//! them (moto for DynamoDB, redis-server); `@connections` and the Lambda
//! Invoke API are answered by the stand-in itself, at once.
//!
//! - **Start-up**: spawn → the first `/response`, the event already queued
//!   (a cold start with a request waiting). Reported with its two parts:
//!   spawn → first poll of `/next` (init: runtime, config, SDK clients) and
//!   the first invocation's own run (which pays the lazy parts: first
//!   connections to moto and Redis, credential resolution), and the same
//!   invocation warm for comparison. Each function's event is its sample
//!   event under `events/`, aimed at seeded data, so the invocation does its
//!   real work (listed in [`event_for`]).
//! - **Memory**: `VmHWM` (peak resident set) of the catch-up process after
//!   it delivered 10,000 messages (20 conversations × 500, the per-
//!   conversation cap), read from `/proc/{pid}/status` before it is killed.
//! - **CPU**: the sum over the process's threads of `/proc/{pid}/task/*/
//!   schedstat` (on-CPU nanoseconds, user + system) read while the process
//!   waits in `/next` before and after the measured invocations: init is
//!   excluded, and no thread of these binaries exits in between (tokio's
//!   blocking threads linger 10 s). Instruction counters are not available
//!   on this VM (`perf stat -e instructions` reports none).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail, ensure};
use courier_aws::dynamo::DynamoStore;
use courier_aws::redis::RedisRegistry;
use courier_core::config::{RegistryConfig, TableNames};
use courier_core::domain::{Connection, ConnectionId, ConversationId, UserId, now_millis};
use courier_core::ports::{ConnectionRegistry, PendingStore};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

use crate::backends::Backends;
use crate::report::{Report, Verdict};
use crate::runtime_api::RuntimeApi;
use crate::seed::{self, Spec};
use crate::stats::{median, ms};

/// Every function crate, by binary name.
pub const FUNCTIONS: [&str; 9] = [
    "authorizer",
    "connect",
    "disconnect",
    "catch-up",
    "send-message",
    "ack",
    "conversations",
    "devices",
    "default",
];

/// Target of issue 7 for every function's start-up.
pub const START_UP_TARGET: Duration = Duration::from_millis(20);
/// Target for the peak RSS of a 10,000-message catch-up.
pub const RSS_TARGET_KB: u64 = 48 * 1024;

/// Where `cargo build --release` put the binaries of `target_dir`.
pub fn release_dir(target_dir: &Path) -> PathBuf {
    target_dir.join("release")
}

/// The workspace's target directory (`CARGO_TARGET_DIR` or `./target`).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

pub fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(Path::to_path_buf).unwrap_or(here)
}

/// Sizes of the function binaries in `dir`, in bytes.
pub fn sizes(dir: &Path, functions: &[&'static str]) -> anyhow::Result<Vec<(&'static str, u64)>> {
    functions
        .iter()
        .map(|f| {
            let path = dir.join(f);
            let len = std::fs::metadata(&path)
                .with_context(|| format!("{}: build it first", path.display()))?
                .len();
            Ok((*f, len))
        })
        .collect()
}

/// What the processes read and write: tables, users, a conversation.
///
/// The 10,000-message backlog lives in tables of its own: moto snapshots
/// every table a transaction touches (to roll back), so a send next to a
/// large table would measure moto's copying, not Courier.
pub struct Fixture {
    pub backends: Backends,
    pub tables: TableNames,
    pub backlog_tables: TableNames,
    /// Sends from `alice` to `bob` in `conversation`; `bob` is online
    /// (registry entry, posts answered by the stand-in).
    pub alice: UserId,
    pub bob: UserId,
    pub conversation: ConversationId,
    /// Has 10,000 pending messages.
    pub reader: UserId,
    pub reader_messages: usize,
}

impl Fixture {
    pub async fn new(
        backlog_conversations: usize,
        per_conversation: usize,
    ) -> anyhow::Result<Fixture> {
        let backends = Backends::get().await?;
        let tables = backends.fresh_tables().await?;
        let backlog_tables = backends.fresh_tables().await?;
        let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let user = |s: &str| UserId::parse(&format!("{s}-{tag}")).map_err(|e| anyhow!("{e}"));
        let (alice, bob, reader, sender) = (
            user("alice")?,
            user("bob")?,
            user("reader")?,
            user("sender")?,
        );
        let direct = Backends::clients(&backends.dynamodb_endpoint).dynamodb();
        // alice ↔ bob: one conversation with no messages yet.
        let chat = seed::seed(
            &direct,
            &tables,
            &Spec {
                reader: &bob,
                sender: &alice,
                prefix: &format!("chat-{tag}"),
                conversations: 1,
                messages_per_conversation: 0,
                body_bytes: 0,
            },
        )
        .await?;
        let backlog = seed::seed(
            &direct,
            &backlog_tables,
            &Spec {
                reader: &reader,
                sender: &sender,
                prefix: &format!("backlog-{tag}"),
                conversations: backlog_conversations,
                messages_per_conversation: per_conversation,
                body_bytes: 150,
            },
        )
        .await?;
        backlog
            .verify(&DynamoStore::new(direct, backlog_tables.clone()))
            .await?;
        let registry = RedisRegistry::new(RegistryConfig::new(backends.redis_url.clone()))
            .map_err(|e| anyhow!("redis: {e}"))?;
        registry
            .register(
                &bob,
                &Connection {
                    connection_id: ConnectionId::parse("bench-bob").map_err(|e| anyhow!("{e}"))?,
                    // Past the open window: a 410 would mean gone at once.
                    connected_at: Some(now_millis() - 60_000),
                    device_id: Default::default(),
                },
            )
            .await?;
        Ok(Fixture {
            backends,
            tables,
            backlog_tables,
            alice,
            bob,
            conversation: chat.conversations[0].clone(),
            reader,
            reader_messages: backlog.total_messages(),
        })
    }

    /// The environment of `function`, as the SAM template gives it, with
    /// the stand-in as Runtime API, `@connections` and Lambda endpoint.
    pub fn env(&self, function: &str, api: &RuntimeApi, t: &TableNames) -> Vec<(String, String)> {
        let pairs: [(&str, String); 27] = [
            ("AWS_LAMBDA_RUNTIME_API", api.runtime_api()),
            ("AWS_LAMBDA_FUNCTION_NAME", function.to_owned()),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128".into()),
            ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".into()),
            ("AWS_LAMBDA_LOG_STREAM_NAME", "bench".into()),
            (
                "AWS_LAMBDA_LOG_GROUP_NAME",
                format!("/aws/lambda/{function}"),
            ),
            ("AWS_REGION", courier_tests::TEST_REGION.into()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_SESSION_TOKEN", "testing".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
            ("MESSAGES_TABLE", t.messages.clone()),
            ("PENDING_TABLE", t.pending.clone()),
            ("CONVERSATIONS_TABLE", t.conversations.clone()),
            ("IDEMPOTENCY_TABLE", t.idempotency.clone()),
            ("DEVICES_TABLE", t.devices.clone()),
            ("DYNAMODB_ENDPOINT", self.backends.dynamodb_endpoint.clone()),
            ("SNS_ENDPOINT", self.backends.dynamodb_endpoint.clone()),
            ("REDIS_URL", self.backends.redis_url.clone()),
            // moto serves one request at a time: the 10,000-message
            // catch-up's 20 concurrent 500-item queries queue for seconds
            // there (DynamoDB answers each in milliseconds).
            ("DYNAMODB_ATTEMPT_TIMEOUT_MS", "30000".into()),
            ("MANAGEMENT_ENDPOINT", api.management_endpoint()),
            ("LAMBDA_ENDPOINT", api.lambda_endpoint()),
            ("CATCH_UP_FUNCTION", "catch-up".into()),
            (
                "JWT_SECRET",
                courier_local::wiring::LOCAL_JWT_SECRET.to_owned(),
            ),
            // The limiter runs (its Redis round trip is part of a send) but
            // never refuses the benchmark's 300 sends from one user.
            ("RATE_LIMIT_PER_SEC", "1000000".into()),
            ("RATE_LIMIT_BURST", "1000000".into()),
            ("PATH", std::env::var("PATH").unwrap_or_default()),
        ];
        pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }
}

fn sample(name: &str) -> &'static str {
    match name {
        "authorizer" => include_str!("../../events/authorizer.json"),
        "connect" => include_str!("../../events/connect.json"),
        "disconnect" => include_str!("../../events/disconnect.json"),
        "catch-up" => include_str!("../../events/catch-up.json"),
        "send-message" => include_str!("../../events/send-message.json"),
        "ack" => include_str!("../../events/ack.json"),
        "conversations" => include_str!("../../events/conversations.json"),
        "devices" => include_str!("../../events/devices.json"),
        _ => include_str!("../../events/default.json"),
    }
}

fn set_user(event: &mut Value, user: &UserId) {
    let a = &mut event["requestContext"]["authorizer"];
    a["user_id"] = json!(user.as_str());
    a["principalId"] = json!(user.as_str());
}

fn set_connection(event: &mut Value, id: &str) {
    event["requestContext"]["connectionId"] = json!(id);
    event["requestContext"]["connectedAt"] = json!(now_millis());
}

/// The `i`-th invocation's event of `function`: its sample event, aimed at
/// the fixture. What each one does:
///
/// - authorizer: verifies a fresh HS256 token, answers Allow (no I/O);
/// - connect: Redis SET, async Invoke of catch-up (stand-in, 202);
/// - disconnect: Redis compare-and-delete;
/// - catch-up: pending Query on moto (nothing pending), `caught_up` post;
/// - send-message: idempotency GetItem, conversation GetItem,
///   TransactWriteItems, Redis GET, one post to the online recipient;
/// - ack: two conditional pending writes on moto (no rows: stale);
/// - conversations: a conditional PutItem on moto;
/// - devices: a GetItem on moto, then `bad_request` (no SNS platform
///   application configured here);
/// - default: `unknown_action` (no I/O).
pub fn event_for(function: &str, i: usize, fx: &Fixture) -> anyhow::Result<Value> {
    let mut e: Value = serde_json::from_str(sample(function))?;
    let conn = format!("bench-conn-{i}");
    match function {
        "authorizer" => {
            let token = crate::ws::token(&fx.alice);
            e["queryStringParameters"]["token"] = json!(token);
            e["multiValueQueryStringParameters"]["token"] = json!([token]);
        }
        "catch-up" => {
            e["user_id"] = json!(fx.alice.as_str());
            e["connection_id"] = json!(conn);
            e["connected_at"] = json!(now_millis());
        }
        "send-message" => {
            set_user(&mut e, &fx.alice);
            set_connection(&mut e, &conn);
            e["body"] = json!(
                json!({
                    "action": "sendMessage",
                    "conversation_id": fx.conversation.as_str(),
                    "client_msg_id": uuid::Uuid::new_v4().to_string(),
                    "body": format!("hello {i}"),
                    "request_id": format!("r-{i}"),
                })
                .to_string()
            );
        }
        "ack" => {
            set_user(&mut e, &fx.bob);
            set_connection(&mut e, &conn);
        }
        "conversations" => {
            set_user(&mut e, &fx.alice);
            set_connection(&mut e, &conn);
            e["body"] = json!(
                json!({
                    "action": "createConversation",
                    "members": [fx.alice.as_str(), fx.bob.as_str()],
                    "request_id": format!("r-{i}"),
                })
                .to_string()
            );
        }
        _ => {
            set_user(&mut e, &fx.alice);
            set_connection(&mut e, &conn);
        }
    }
    Ok(e)
}

/// On-CPU time of every thread of `pid` (user + system), from schedstat.
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let mut total: u64 = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = task?.path().join("schedstat");
        // A thread may exit between the listing and the read.
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let ns: u64 = text
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("{}: {text:?}", path.display()))?;
        total += ns;
    }
    Ok(Duration::from_nanos(total))
}

/// `VmHWM` and `VmRSS` of `pid`, in KB.
pub fn memory_kb(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    Ok((field("VmHWM:")?, field("VmRSS:")?))
}

/// `bin` with exactly `env`, no stdio, killed when dropped.
pub fn command(bin: &Path, env: Vec<(String, String)>) -> Command {
    let mut cmd = Command::new(bin);
    cmd.env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// A function process under the stand-in.
pub struct Running {
    pub api: RuntimeApi,
    pub child: Child,
    pub spawned_at: Instant,
    pub pid: u32,
}

impl Running {
    /// Spawns `bin` with `fx`'s environment for `function`, after queueing
    /// `events`.
    pub async fn spawn(
        bin: &Path,
        function: &str,
        fx: &Fixture,
        tables: &TableNames,
        events: Vec<Value>,
    ) -> anyhow::Result<Running> {
        let api = RuntimeApi::start().await?;
        for e in events {
            api.push(e);
        }
        let mut cmd = command(bin, fx.env(function, &api, tables));
        let spawned_at = Instant::now();
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        Running::new(api, child, spawned_at)
    }

    /// A process already spawned (at `spawned_at`) against `api`.
    pub fn new(api: RuntimeApi, child: Child, spawned_at: Instant) -> anyhow::Result<Running> {
        let pid = child.id().context("no pid")?;
        Ok(Running {
            api,
            child,
            spawned_at,
            pid,
        })
    }

    pub async fn wait_done(&mut self, count: usize, timeout: Duration) -> anyhow::Result<()> {
        let child = &mut self.child;
        self.api
            .wait_done(count, timeout, || matches!(child.try_wait(), Ok(None)))
            .await
    }

    /// Waits until the process polls `/next` for the `n`-th time (it is
    /// then idle, blocked in that poll).
    pub async fn wait_polls(&mut self, n: usize, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while self.api.polls().len() < n {
            if let Some(e) = self.api.init_error() {
                bail!("init error: {e}");
            }
            if !matches!(self.child.try_wait(), Ok(None)) {
                bail!("the function exited");
            }
            if Instant::now() >= deadline {
                bail!("no poll #{n} within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(())
    }

    /// Every finished invocation answered (no `/error`), or the first error.
    pub fn check_outcomes(&self) -> anyhow::Result<Vec<Value>> {
        self.api
            .invocations()
            .into_iter()
            .filter_map(|v| v.outcome)
            .map(|o| o.map_err(|e| anyhow!("invocation failed: {e}")))
            .collect()
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// Start-up of one function, medians of its cold starts.
#[derive(Debug, Clone)]
pub struct StartUp {
    pub function: &'static str,
    /// Spawn → first `/next`.
    pub init: Duration,
    /// Spawn → first `/response`.
    pub first_response: Duration,
    /// The same kind of invocation, warm: `/next` answered → `/response`.
    pub warm: Duration,
    pub first_reply: Value,
}

/// `reps` cold starts of each function in `bin_dir`.
pub async fn start_ups(
    bin_dir: &Path,
    fx: &Fixture,
    reps: usize,
    functions: &[&'static str],
) -> anyhow::Result<Vec<StartUp>> {
    let mut out = Vec::new();
    for &function in functions {
        let bin = bin_dir.join(function);
        let mut init = Vec::new();
        let mut first = Vec::new();
        let mut warm = Vec::new();
        let mut first_reply = Value::Null;
        for rep in 0..reps {
            let events = vec![event_for(function, rep * 2, fx)?];
            let mut run = Running::spawn(&bin, function, fx, &fx.tables, events).await?;
            run.wait_done(1, Duration::from_secs(30))
                .await
                .with_context(|| format!("{function}: first invocation"))?;
            // A second invocation of the same kind, queued once the first is
            // done and the process waits in `/next`.
            run.wait_polls(2, Duration::from_secs(10)).await?;
            let pushed = Instant::now();
            run.api.push(event_for(function, rep * 2 + 1, fx)?);
            run.wait_done(2, Duration::from_secs(30)).await?;
            let inv = run.api.invocations();
            let replies = run.check_outcomes().context(function)?;
            let polls = run.api.polls();
            init.push(polls[0].saturating_duration_since(run.spawned_at));
            first.push(
                inv[0]
                    .done_at
                    .context("first not done")?
                    .saturating_duration_since(run.spawned_at),
            );
            warm.push(
                inv[1]
                    .done_at
                    .context("second not done")?
                    .saturating_duration_since(pushed),
            );
            first_reply = replies.into_iter().next().unwrap_or_default();
            run.stop().await;
        }
        out.push(StartUp {
            function,
            init: median(&init).unwrap_or_default(),
            first_response: median(&first).unwrap_or_default(),
            warm: median(&warm).unwrap_or_default(),
            first_reply,
        });
    }
    Ok(out)
}

/// Peak memory and CPU of the catch-up of the fixture's backlog.
#[derive(Debug, Clone)]
pub struct CatchUpProcess {
    pub messages: usize,
    pub posts: usize,
    pub post_bytes: usize,
    pub hwm_after_init_kb: u64,
    pub hwm_kb: u64,
    pub cpu: Duration,
    pub wall: Duration,
}

impl CatchUpProcess {
    pub fn cpu_per_message(&self) -> Duration {
        self.cpu / u32::try_from(self.messages.max(1)).unwrap_or(u32::MAX)
    }
}

pub async fn catch_up_process(bin_dir: &Path, fx: &Fixture) -> anyhow::Result<CatchUpProcess> {
    let bin = bin_dir.join("catch-up");
    let mut run = Running::spawn(&bin, "catch-up", fx, &fx.backlog_tables, Vec::new()).await?;
    run.wait_polls(1, Duration::from_secs(30)).await?;
    let (hwm_after_init_kb, _) = memory_kb(run.pid)?;
    let cpu_before = cpu_time(run.pid)?;
    let started = Instant::now();
    run.api.push(json!({
        "user_id": fx.reader.as_str(),
        "connection_id": "bench-reader",
        "connected_at": now_millis(),
    }));
    run.wait_done(1, Duration::from_secs(300)).await?;
    let wall = started.elapsed();
    run.wait_polls(2, Duration::from_secs(10)).await?;
    let cpu = cpu_time(run.pid)?.saturating_sub(cpu_before);
    let (hwm_kb, _) = memory_kb(run.pid)?;
    let reply = run.check_outcomes()?.into_iter().next().unwrap_or_default();
    let messages = reply["messages"].as_u64().unwrap_or(0) as usize;
    ensure!(
        messages == fx.reader_messages && reply["ending"] == "caught_up",
        "catch-up delivered {reply}, want {} messages",
        fx.reader_messages
    );
    let (posts, post_bytes) = run.api.posts();
    run.stop().await;
    Ok(CatchUpProcess {
        messages,
        posts,
        post_bytes,
        hwm_after_init_kb,
        hwm_kb,
        cpu,
        wall,
    })
}

/// CPU per send of `sends` sequential `sendMessage` invocations (each one
/// stored, delivered live to the online recipient, answered `sent`).
#[derive(Debug, Clone)]
pub struct SendProcess {
    pub sends: usize,
    pub cpu: Duration,
    pub wall: Duration,
    pub hwm_kb: u64,
}

impl SendProcess {
    pub fn cpu_per_message(&self) -> Duration {
        self.cpu / u32::try_from(self.sends.max(1)).unwrap_or(u32::MAX)
    }
}

pub async fn send_process(
    bin_dir: &Path,
    fx: &Fixture,
    sends: usize,
) -> anyhow::Result<SendProcess> {
    let bin = bin_dir.join("send-message");
    // One warm-up send pays the first connections, outside the figure.
    let mut run = Running::spawn(
        &bin,
        "send-message",
        fx,
        &fx.tables,
        vec![event_for("send-message", 0, fx)?],
    )
    .await?;
    run.wait_done(1, Duration::from_secs(30)).await?;
    run.wait_polls(2, Duration::from_secs(10)).await?;
    let cpu_before = cpu_time(run.pid)?;
    let (posts_before, _) = run.api.posts();
    let started = Instant::now();
    for i in 1..=sends {
        run.api.push(event_for("send-message", i, fx)?);
    }
    run.wait_done(sends + 1, Duration::from_secs(600)).await?;
    let wall = started.elapsed();
    run.wait_polls(sends + 2, Duration::from_secs(10)).await?;
    let cpu = cpu_time(run.pid)?.saturating_sub(cpu_before);
    let (hwm_kb, _) = memory_kb(run.pid)?;
    let replies = run.check_outcomes()?;
    for r in &replies {
        let body: Value = r["body"]
            .as_str()
            .and_then(|b| serde_json::from_str(b).ok())
            .unwrap_or_default();
        ensure!(body["type"] == "sent", "send answered {r}");
    }
    let (posts, _) = run.api.posts();
    ensure!(
        posts - posts_before == sends,
        "{} live posts for {sends} sends",
        posts - posts_before
    );
    run.stop().await;
    Ok(SendProcess {
        sends,
        cpu,
        wall,
        hwm_kb,
    })
}

/// Everything above for the binaries in `bin_dir`.
#[derive(Debug, Clone)]
pub struct Figures {
    pub sizes: Vec<(&'static str, u64)>,
    pub start_ups: Vec<StartUp>,
    pub catch_up: CatchUpProcess,
    pub send: SendProcess,
}

pub struct Config {
    /// The binaries measured (sizes, start-up); catch-up and send-message
    /// are always needed for memory and CPU.
    pub functions: &'static [&'static str],
    pub start_up_reps: usize,
    pub backlog: (usize, usize),
    pub sends: usize,
}

impl Config {
    pub fn full() -> Self {
        Self {
            functions: &FUNCTIONS,
            start_up_reps: 7,
            backlog: (20, 500),
            sends: 300,
        }
    }
}

pub async fn measure(bin_dir: &Path, config: &Config) -> anyhow::Result<Figures> {
    let sizes = sizes(bin_dir, config.functions)?;
    let fx = Fixture::new(config.backlog.0, config.backlog.1).await?;
    let start_ups = start_ups(bin_dir, &fx, config.start_up_reps, config.functions).await?;
    let catch_up = catch_up_process(bin_dir, &fx).await?;
    let send = send_process(bin_dir, &fx, config.sends).await?;
    // Catch-up deletes nothing in ack mode: every pending row is still
    // there (a catch-up that lost rows would show here).
    let store = DynamoStore::new(
        Backends::clients(&fx.backends.dynamodb_endpoint).dynamodb(),
        fx.backlog_tables.clone(),
    );
    ensure!(store.list(&fx.reader).await?.len() == config.backlog.0);
    Ok(Figures {
        sizes,
        start_ups,
        catch_up,
        send,
    })
}

/// Rows for the table; `arm64` are the `cargo lambda build` sizes if built.
pub fn report(f: &Figures, arm64: Option<&[(&'static str, u64)]>) -> Report {
    let mut r = Report::new();
    const S: &str = "functions";
    for s in &f.start_ups {
        let size = f
            .sizes
            .iter()
            .find(|(n, _)| *n == s.function)
            .map_or(0, |(_, b)| *b);
        let arm = arm64
            .and_then(|a| a.iter().find(|(n, _)| *n == s.function))
            .map_or("not built".to_owned(), |(_, b)| {
                format!("{:.1} MB", *b as f64 / 1e6)
            });
        r.add(
            S,
            format!("{} start-up", s.function),
            format!(
                "{:.1} ms to first response (init {:.1} + first invocation {:.1}; warm {:.1} ms, so starting cost {:.1} ms over a warm invocation); x86_64 {:.1} MB, arm64 {arm}",
                ms(s.first_response),
                ms(s.init),
                ms(s.first_response.saturating_sub(s.init)),
                ms(s.warm),
                ms(s.first_response.saturating_sub(s.warm)),
                size as f64 / 1e6,
            ),
            "≤ 20 ms",
            Verdict::of(s.first_response <= START_UP_TARGET),
        );
    }
    let c = &f.catch_up;
    r.add(
        S,
        format!("catch-up of {} messages: peak RSS", c.messages),
        format!(
            "{:.1} MB (after init {:.1} MB); {} posts, {} KB",
            c.hwm_kb as f64 / 1024.0,
            c.hwm_after_init_kb as f64 / 1024.0,
            c.posts,
            c.post_bytes / 1024
        ),
        "≤ 48 MB",
        Verdict::of(c.hwm_kb <= RSS_TARGET_KB),
    );
    r.info(
        S,
        "catch-up CPU per delivered message",
        format!(
            "{:.1} µs ({:.0} ms CPU for {} messages in {:.0} ms wall)",
            c.cpu_per_message().as_secs_f64() * 1e6,
            ms(c.cpu),
            c.messages,
            ms(c.wall)
        ),
    );
    let s = &f.send;
    r.info(
        S,
        "send-message CPU per message",
        format!(
            "{:.0} µs ({:.0} ms CPU for {} sends in {:.0} ms wall; peak RSS {:.1} MB)",
            s.cpu_per_message().as_secs_f64() * 1e6,
            ms(s.cpu),
            s.sends,
            ms(s.wall),
            s.hwm_kb as f64 / 1024.0
        ),
    );
    r
}
