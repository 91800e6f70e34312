//! The real services every figure runs on, and the SDK clients for them.
//!
//! Redis comes from `courier-tests`' harness: the server named by
//! `REDIS_URL` when set, else one it starts on a free loopback port for the
//! life of this process. moto likewise is the one named by
//! `DYNAMODB_ENDPOINT` when set (as `scripts/test` sets it for the smoke
//! run); otherwise the benchmark starts `bench/moto_server.py`, which is
//! `scripts/moto_server.py` (requests serialized, see that file) plus a
//! patch that makes a Query read only its partition instead of sorting the
//! whole table (see that file: stock moto's Query cost grows with the
//! table, DynamoDB's does not). Either way the emulator handles one request
//! at a time, so its service time is additive across concurrent requests,
//! and every figure that depends on it says so.

use std::time::Duration;

use std::path::PathBuf;
use std::process::Stdio;

use anyhow::{Context as _, bail};
use courier_aws::dynamo::create_tables;
use courier_aws::wiring::{AwsClients, AwsEndpoints};
use courier_core::config::TableNames;
use courier_tests::proxy::{FaultProxy, Mode};

/// Where Redis and moto are.
#[derive(Debug, Clone)]
pub struct Backends {
    pub redis_url: String,
    pub dynamodb_endpoint: String,
}

impl Backends {
    /// The running servers, starting them if needed (once per process).
    pub async fn get() -> anyhow::Result<Backends> {
        static MOTO: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
        let dynamodb_endpoint = match std::env::var("DYNAMODB_ENDPOINT") {
            Ok(url) if !url.trim().is_empty() => url,
            _ => MOTO.get_or_try_init(start_moto).await?.clone(),
        };
        Ok(Backends {
            redis_url: courier_tests::redis_url().await,
            dynamodb_endpoint,
        })
    }

    /// A fresh set of Courier's tables on moto, under a unique prefix.
    pub async fn fresh_tables(&self) -> anyhow::Result<TableNames> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let names = TableNames::with_prefix(&format!("b{}", &id[..16]));
        create_tables(&Self::clients(&self.dynamodb_endpoint).dynamodb(), &names)
            .await
            .map_err(|e| anyhow::anyhow!("creating tables {names:?}: {e}"))?;
        Ok(names)
    }

    /// SDK clients with every AWS call going to `dynamodb` (and the rest
    /// unset): fixed fake credentials and region, nothing read from the
    /// machine.
    pub fn clients(dynamodb: &str) -> AwsClients {
        AwsClients::from_sdk_config(
            courier_local::wiring::local_sdk_config(),
            AwsEndpoints {
                dynamodb: Some(dynamodb.to_owned()),
                ..AwsEndpoints::default()
            },
        )
    }
}

/// A latency proxy in front of a URL's server: the URL to use instead, and
/// the proxy to switch between no delay and a one-way delay.
pub struct Latency {
    pub proxy: FaultProxy,
    pub url: String,
}

impl Latency {
    pub async fn in_front_of(url: &str) -> anyhow::Result<Latency> {
        let (proxy, url) = FaultProxy::in_front_of(url).await?;
        Ok(Latency { proxy, url })
    }

    /// `one_way` on every chunk in each direction; zero means pass-through.
    pub fn set(&self, one_way: Duration) {
        self.proxy.set_mode(if one_way.is_zero() {
            Mode::Pass
        } else {
            Mode::delay(one_way)
        });
    }
}

/// Sets the same one-way delay on several proxies.
pub fn set_all(proxies: &[&Latency], one_way: Duration) {
    for p in proxies {
        p.set(one_way);
    }
}

/// Starts `bench/moto_server.py` under the project's `.venv` Python on a
/// free loopback port; it dies with this process (a watchdog shell, as in
/// the test harness, since a benchmark may end without running drops).
async fn start_moto() -> anyhow::Result<String> {
    let root = crate::functions::workspace_root();
    let python = root.join(".venv/bin/python");
    let launcher: PathBuf = root.join("bench/moto_server.py");
    if !python.is_file() {
        bail!(
            "{} not found: run `bash scripts/test` once (it creates .venv with moto)",
            python.display()
        );
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let log = std::env::temp_dir().join(format!("courier-bench-moto-{port}.log"));
    let out = std::fs::File::create(&log)?;
    let child = std::process::Command::new(&python)
        .arg(&launcher)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("starting {}", launcher.display()))?;
    courier_tests::kill_with_this_process(&child);
    let url = format!("http://127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if answers(port).await {
            return Ok(url);
        }
        if std::time::Instant::now() >= deadline {
            bail!(
                "moto did not answer on {url} within 30 s; see {}",
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn answers(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let mut buf = [0u8; 8];
    s.write_all(b"GET /moto-api/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .is_ok()
        && matches!(
            tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await,
            Ok(Ok(n)) if buf[..n].starts_with(b"HTTP/")
        )
}
