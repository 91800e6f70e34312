//! The test harness: real Redis and a real DynamoDB API (moto's server) for
//! every integration and conformance test.
//!
//! `scripts/test` starts the servers once and names them in `REDIS_URL`,
//! `REDIS_CLUSTER_URL` (a three-master Redis Cluster, the shape of
//! ElastiCache Serverless's protocol) and `DYNAMODB_ENDPOINT`; the helpers
//! here use those when set. When they are not (a plain `cargo test`), the
//! first test that asks starts its own `redis-server`, cluster or moto's
//! server on free loopback ports, once per test process, and waits until it
//! answers. moto runs through
//! `scripts/moto_server.py`, which serializes its requests: moto's threaded
//! server is not transactional under concurrency, DynamoDB is. A binary that
//! cannot be found is a panic that says how to get it: a test that silently
//! skips proves nothing.
//!
//! A test process can end without running destructors (the harness calls
//! `exit`), so every server started here gets a watchdog shell that polls the
//! test process and kills the server once it is gone.
//!
//! Isolation is by table name, not by server: [`fresh_tables`] creates a new
//! set of tables under a unique prefix for each test, so tests run in
//! parallel against one moto without seeing each other's items.

pub mod cluster;
pub mod crash;
pub mod proxy;

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_dynamodb::types::AttributeValue;
use courier_aws::dynamo::{create_registry_table, create_tables};
use courier_core::config::TableNames;

/// The region every fake AWS client uses; moto keeps state per region.
pub const TEST_REGION: &str = "us-east-1";

/// How long a freshly started server gets to answer.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Where to get the servers, for the panic messages.
const HOW_TO_GET: &str = "run `bash scripts/test` (it installs redis-server and redis-cli with \
     apt-get and moto[server] into .venv, then runs the tests), or set REDIS_URL / \
     REDIS_CLUSTER_URL / DYNAMODB_ENDPOINT to running servers";

/// Logs go to the test output only when `TEST_LOG` is set (its value is an
/// `EnvFilter`, e.g. `TEST_LOG=debug` or `TEST_LOG=courier=trace`); silent
/// otherwise. Safe to call from every test.
pub fn init_test_logging() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let Some(filter) = env_var("TEST_LOG") else {
            return;
        };
        let filter = tracing_subscriber::EnvFilter::try_new(&filter)
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("debug"));
        // Another subscriber may already be set by the test itself: fine.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// `redis://127.0.0.1:PORT` of a running redis-server.
pub async fn redis_url() -> String {
    init_test_logging();
    if let Some(url) = env_var("REDIS_URL") {
        return url;
    }
    static REDIS: OnceLock<String> = OnceLock::new();
    blocking(|| REDIS.get_or_init(start_redis).clone()).await
}

/// `redis://127.0.0.1:PORT` of one master of a running Redis Cluster of
/// three masters (all 16384 slots assigned, `cluster_state:ok`); a cluster
/// client finds the other two from it.
pub async fn redis_cluster_url() -> String {
    init_test_logging();
    if let Some(url) = env_var("REDIS_CLUSTER_URL") {
        return url;
    }
    static CLUSTER: OnceLock<String> = OnceLock::new();
    blocking(|| CLUSTER.get_or_init(start_redis_cluster).clone()).await
}

/// `http://127.0.0.1:PORT` of moto's server (DynamoDB, SNS, …).
pub async fn dynamodb_endpoint() -> String {
    init_test_logging();
    if let Some(url) = env_var("DYNAMODB_ENDPOINT") {
        return url;
    }
    static MOTO: OnceLock<String> = OnceLock::new();
    blocking(|| MOTO.get_or_init(start_moto).clone()).await
}

/// A moto server of this test process alone, even when `DYNAMODB_ENDPOINT`
/// names a shared one: for tests that read moto's whole state back
/// (`/moto-api/data.json` dumps every backend, and on the shared server that
/// includes every table the run has filled so far, which takes seconds).
pub async fn dedicated_moto_endpoint() -> String {
    init_test_logging();
    static OWN: OnceLock<String> = OnceLock::new();
    blocking(|| OWN.get_or_init(start_moto).clone()).await
}

/// SNS is served by the same moto server unless `SNS_ENDPOINT` says
/// otherwise.
pub async fn sns_endpoint() -> String {
    match env_var("SNS_ENDPOINT") {
        Some(url) => url,
        None => dynamodb_endpoint().await,
    }
}

/// A DynamoDB client pointed at [`dynamodb_endpoint`] with fake credentials.
pub async fn dynamo_client() -> Client {
    dynamo_client_for(&dynamodb_endpoint().await)
}

/// A DynamoDB client for `endpoint` with fake credentials and region.
pub fn dynamo_client_for(endpoint: &str) -> Client {
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new(TEST_REGION))
        .credentials_provider(Credentials::new(
            "testing",
            "testing",
            None,
            None,
            "courier-tests",
        ))
        .build();
    Client::from_conf(config)
}

/// A new, empty set of Courier's tables under a unique prefix.
pub async fn fresh_tables() -> TableNames {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let names = TableNames::with_prefix(&format!("t{}", &id[..16]));
    create_tables(&dynamo_client().await, &names)
        .await
        .unwrap_or_else(|e| panic!("creating test tables {names:?} failed: {e}"));
    names
}

/// Deletes the membership items of `conversation` for `members`, behind the
/// store's back: the conversation then looks as one created before the
/// memberships index did (what the memberships backfill is for).
pub async fn forget_memberships(
    client: &Client,
    tables: &TableNames,
    conversation: &str,
    members: &[courier_core::domain::UserId],
) {
    for m in members {
        client
            .delete_item()
            .table_name(&tables.pending)
            .key("user_id", AttributeValue::S(m.to_string()))
            .key(
                "conversation_id",
                AttributeValue::S(format!("#m#{conversation}")),
            )
            .send()
            .await
            .unwrap_or_else(|e| panic!("deleting a membership of {conversation}: {e}"));
    }
}

/// A new, empty connection registry table (`REGISTRY_BACKEND=dynamodb`)
/// under a unique name, TTL on.
pub async fn fresh_registry_table() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let name = format!("t{}-registry", &id[..16]);
    create_registry_table(&dynamo_client().await, &name)
        .await
        .unwrap_or_else(|e| panic!("creating test registry table {name} failed: {e}"));
    name
}

/// Deletes a set made by [`fresh_tables`]. Tests that fill tables with a lot
/// call it when done: the servers are shared by the whole run, and moto keeps
/// everything in memory (and dumps all of it for `/moto-api/data.json`).
pub async fn drop_tables(names: &TableNames) {
    let client = dynamo_client().await;
    for table in [
        &names.messages,
        &names.pending,
        &names.conversations,
        &names.idempotency,
        &names.devices,
    ] {
        if let Err(e) = client.delete_table().table_name(table).send().await {
            panic!("deleting test table {table} failed: {e:?}");
        }
    }
}

/// Runs a server start (blocking: processes, sockets, sleeps) off the async
/// runtime, so a current-thread test runtime keeps its timers going.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

fn start_redis() -> String {
    let bin = find_on_path(
        "redis-server",
        &[Path::new("/usr/bin"), Path::new("/usr/sbin")],
    )
    .unwrap_or_else(|| panic!("redis-server not found on PATH: {HOW_TO_GET}"));
    let port = start_server(
        "redis-server",
        |port| {
            let mut cmd = Command::new(&bin);
            cmd.args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ]);
            cmd
        },
        redis_answers,
    );
    format!("redis://127.0.0.1:{port}")
}

/// Three `redis-server --cluster-enabled yes` on free ports, joined by
/// `redis-cli --cluster create` with no replicas, as `scripts/test` does.
fn start_redis_cluster() -> String {
    let dirs = [Path::new("/usr/bin"), Path::new("/usr/sbin")];
    let bin = find_on_path("redis-server", &dirs)
        .unwrap_or_else(|| panic!("redis-server not found on PATH: {HOW_TO_GET}"));
    let cli = find_on_path("redis-cli", &dirs)
        .unwrap_or_else(|| panic!("redis-cli not found on PATH: {HOW_TO_GET}"));
    let dir = std::env::temp_dir().join(format!(
        "courier-tests-{}-cluster-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    let ports: Vec<u16> = (0..3)
        .map(|i| {
            start_server(
                &format!("redis-cluster-{i}"),
                |port| {
                    let mut cmd = Command::new(&bin);
                    cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                        // The bus port is chosen too, not left at port + 10000.
                        .args(["--cluster-enabled", "yes"])
                        .args(["--cluster-port", &free_port().to_string()])
                        .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                        .arg("--dir")
                        .arg(&dir)
                        .args(["--save", "", "--appendonly", "no"]);
                    cmd
                },
                redis_answers,
            )
        })
        .collect();
    let nodes: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let created = Command::new(&cli)
        .arg("--cluster")
        .arg("create")
        .args(&nodes)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run redis-cli --cluster create: {e}"));
    if !created.status.success() {
        panic!(
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&created.stdout),
            String::from_utf8_lossy(&created.stderr)
        );
    }
    let deadline = Instant::now() + START_TIMEOUT;
    while !ports.iter().all(|p| cluster_ok(*p)) {
        if Instant::now() > deadline {
            panic!("the Redis Cluster on {nodes:?} did not reach cluster_state:ok");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    format!("redis://127.0.0.1:{}", ports[0])
}

/// `CLUSTER INFO` of the node on `port` says `cluster_state:ok`.
fn cluster_ok(port: u16) -> bool {
    let Some(mut s) = connect(port) else {
        return false;
    };
    if s.write_all(b"CLUSTER INFO\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 4096];
    let mut got = Vec::new();
    while !got.windows(14).any(|w| w == b"cluster_state:") || !got.ends_with(b"\r\n") {
        match s.read(&mut buf) {
            Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => return false,
        }
    }
    got.windows(16).any(|w| w == b"cluster_state:ok")
}

fn start_moto() -> String {
    let command = moto_command();
    let port = start_server(
        "moto_server",
        |port| {
            let mut cmd = Command::new(&command[0]);
            cmd.args(&command[1..])
                .args(["-H", "127.0.0.1", "-p", &port.to_string()]);
            cmd
        },
        http_answers,
    );
    format!("http://127.0.0.1:{port}")
}

/// How to run moto's server: `scripts/moto_server.py` (moto with requests
/// serialized, see that file for why) under a Python that has moto — the
/// project's `.venv` first — else a bare `moto_server` from `PATH`.
fn moto_command() -> Vec<PathBuf> {
    let root = workspace_root();
    let launcher = root.join("scripts/moto_server.py");
    let venv_python = root.join(".venv/bin/python");
    if venv_python.is_file() && launcher.is_file() {
        return vec![venv_python, launcher];
    }
    if let Some(python) = find_on_path("python3", &[]) {
        let has_moto = Command::new(&python)
            .args(["-c", "import moto.server"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if has_moto && launcher.is_file() {
            return vec![python, launcher];
        }
    }
    match find_on_path("moto_server", &[]) {
        Some(bin) => {
            eprintln!(
                "courier-tests: using {} without request serialization; concurrent \
                 transaction tests may fail on moto ({HOW_TO_GET})",
                bin.display()
            );
            vec![bin]
        }
        None => panic!("moto (moto_server) not found in .venv or on PATH: {HOW_TO_GET}"),
    }
}

/// The workspace root (the parent of this crate).
fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(Path::to_path_buf).unwrap_or(here)
}

/// `preferred` directories first (the project's own pinned install), then
/// `PATH`.
fn find_on_path(name: &str, preferred: &[&Path]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    preferred
        .iter()
        .map(|p| p.to_path_buf())
        .chain(std::env::split_paths(&path))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Starts a server on a free port (a few tries: another process may take the
/// port between our probe and the server's bind), ties its life to this
/// process, and waits until `ready` says it answers. Returns the port.
fn start_server(name: &str, command: impl Fn(u16) -> Command, ready: fn(u16) -> bool) -> u16 {
    let mut last_log = String::new();
    for _attempt in 0..3 {
        let port = free_port();
        let log_path = std::env::temp_dir().join(format!(
            "courier-tests-{}-{name}-{port}.log",
            std::process::id()
        ));
        let log = File::create(&log_path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log_path.display()));
        let log_err = log
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot clone log handle: {e}"));
        let mut child = command(port)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}; {HOW_TO_GET}"));
        kill_with_this_process(&child);
        if wait_ready(&mut child, port, ready) {
            return port;
        }
        let _ = child.kill();
        let _ = child.wait();
        last_log = std::fs::read_to_string(&log_path).unwrap_or_default();
    }
    panic!("{name} did not start answering within {START_TIMEOUT:?}; its output:\n{last_log}");
}

fn wait_ready(child: &mut Child, port: u16, ready: fn(u16) -> bool) -> bool {
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(_status)) = child.try_wait() {
            return false;
        }
        if ready(port) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free loopback port: {e}"))
}

/// A shell that waits for this test process to end, then kills the server.
/// Its own output goes nowhere, so it never holds a pipe of `cargo test` open.
/// The benchmark starts its own moto with it too.
pub fn kill_with_this_process(child: &Child) {
    let script = "while kill -0 \"$0\" 2>/dev/null; do sleep 0.5; done; \
                  kill \"$1\" 2>/dev/null; sleep 2; kill -9 \"$1\" 2>/dev/null; true";
    let spawned = Command::new("sh")
        .args([
            "-c",
            script,
            &std::process::id().to_string(),
            &child.id().to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    if let Err(e) = spawned {
        panic!("cannot start the watchdog shell that stops test servers: {e}");
    }
}

fn connect(port: u16) -> Option<TcpStream> {
    let stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .set_write_timeout(Some(Duration::from_secs(2)))
        .ok()?;
    Some(stream)
}

fn redis_answers(port: u16) -> bool {
    let Some(mut s) = connect(port) else {
        return false;
    };
    let mut buf = [0u8; 16];
    s.write_all(b"PING\r\n").is_ok()
        && s.read(&mut buf)
            .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
}

fn http_answers(port: u16) -> bool {
    let Some(mut s) = connect(port) else {
        return false;
    };
    let mut buf = [0u8; 16];
    s.write_all(b"GET /moto-api/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_ok()
        && s.read(&mut buf)
            .is_ok_and(|n| buf[..n].starts_with(b"HTTP/1."))
}
