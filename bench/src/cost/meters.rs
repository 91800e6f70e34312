//! The meters around one gateway, read together: a [`Mark`] is what each
//! had counted at one instant, and [`Meters::usage`] the difference.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::Workload;
use super::dynamo::{DynamoCount, DynamoMeter};
use super::lambda::{LambdaCount, LambdaMeter};
use super::prices::{self, Usage};
use crate::gateway::ProxiedGateway;
use crate::ws::WsClient;

/// Everything the meters have counted at one instant.
pub struct Mark {
    dynamo: DynamoCount,
    lambda: LambdaCount,
    redis_calls: u64,
    redis_bytes: u64,
    nat_bytes: u64,
    /// Billed messages of each client's frames so far.
    frames: Vec<(u64, u64)>,
}

/// The meters around one gateway.
pub struct Meters {
    pub dynamo: DynamoMeter,
    pub lambda: Arc<LambdaMeter>,
    pub gw: ProxiedGateway,
    pub redis_url: String,
    /// API Gateway's message increment (32 KB).
    pub increment: u64,
}

impl Meters {
    pub async fn mark(&self, clients: &[&WsClient]) -> anyhow::Result<Mark> {
        let stats = |l: &crate::backends::Latency| {
            let s = l.proxy.stats();
            s.bytes_to_target + s.bytes_to_client
        };
        Ok(Mark {
            dynamo: self.dynamo.count(),
            lambda: self.lambda.count(),
            redis_calls: redis_calls(&self.redis_url).await?,
            redis_bytes: stats(&self.gw.redis),
            nat_bytes: stats(&self.gw.management),
            frames: clients.iter().map(|c| billed(c, self.increment)).collect(),
        })
    }

    /// What was counted between `before` and now; `clients` are those
    /// marked in `before`, in the same order, then any opened since.
    pub async fn usage(
        &self,
        design: &'static str,
        name: String,
        messages: usize,
        before: &Mark,
        clients: &[&WsClient],
    ) -> anyhow::Result<Workload> {
        // Every invocation the workload set off, counted: the last acks,
        // receipts and disconnects.
        self.lambda
            .idle(Duration::from_millis(300), Duration::from_secs(120))
            .await?;
        let after = self.mark(clients).await?;
        let (mut msgs, mut frames) = (0, 0);
        for (i, now) in after.frames.iter().enumerate() {
            let was = before.frames.get(i).copied().unwrap_or((0, 0));
            msgs += now.0 - was.0;
            frames += now.1 - was.1;
        }
        let dynamo = after.dynamo.since(&before.dynamo);
        ensure!(
            dynamo.uncountable.is_empty(),
            "{name}: DynamoDB requests whose units cannot be counted: {:?}",
            dynamo.uncountable
        );
        let lambda = after.lambda.since(&before.lambda);
        ensure!(
            lambda.gb_seconds().is_finite(),
            "{name}: a function the template does not size: {}",
            lambda.describe()
        );
        let pushes = self
            .gw
            .tape
            .take()
            .iter()
            .filter(|c| c.what == "sns publish")
            .count() as u64;
        Ok(Workload {
            design,
            name,
            messages,
            usage: Usage {
                dynamo_requests: dynamo.billed_requests(),
                dynamo_read_units: dynamo.read_units,
                dynamo_write_units: dynamo.write_units,
                lambda_requests: lambda.requests(),
                lambda_gb_seconds: lambda.gb_seconds(),
                apigw_messages: msgs,
                redis_commands: after.redis_calls - before.redis_calls,
                redis_bytes: after.redis_bytes - before.redis_bytes,
                nat_bytes: after.nat_bytes - before.nat_bytes,
                pushes,
            },
            dynamo,
            lambda,
            frames,
        })
    }
}

/// (billed messages, frames) of a client's socket so far.
fn billed(c: &WsClient, increment: u64) -> (u64, u64) {
    let sizes = c.wire().sizes();
    let msgs = sizes
        .iter()
        .map(|b| prices::apigw_messages(*b, increment))
        .sum();
    (msgs, sizes.len() as u64)
}

/// Calls of every Redis command but `INFO` since the server started.
async fn redis_calls(url: &str) -> anyhow::Result<u64> {
    let addr = url
        .strip_prefix("redis://")
        .unwrap_or(url)
        .trim_end_matches('/');
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    s.write_all(b"INFO commandstats\r\n").await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    // A bulk string: `$<len>\r\n<len bytes>\r\n`.
    let body = loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            bail!("redis closed during INFO");
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some((head, rest)) = text.split_once("\r\n") {
            let len: usize = head.trim_start_matches('$').parse()?;
            if rest.len() >= len {
                break rest[..len].to_owned();
            }
        }
    };
    Ok(body
        .lines()
        .filter(|l| l.starts_with("cmdstat_") && !l.starts_with("cmdstat_info:"))
        .filter_map(|l| {
            l.split(['=', ','])
                .nth(1)
                .and_then(|calls| calls.parse::<u64>().ok())
        })
        .sum())
}
