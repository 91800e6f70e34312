//! Cost per million messages (issue 16, item 6): computed, not asserted.
//!
//! Each workload runs through Courier's real handlers in the local gateway
//! ([`crate::gateway::start_with`]) over moto, Redis and the gateway's own
//! `@connections`, with every billable thing counted where it happens:
//!
//! - DynamoDB: at the wire, by [`dynamo::DynamoMeter`], an HTTP proxy in
//!   front of moto that reads each request and answer and adds up read and
//!   write units from item sizes.
//! - Lambda: every invocation of every function counted and timed in the
//!   gateway ([`lambda::metered`]), at the `MemorySize` the template gives
//!   the function.
//! - API Gateway: every text frame in either direction on the clients'
//!   sockets ([`crate::ws::Wire`]), each billed per started 32 KB.
//! - ElastiCache: Redis's own `INFO commandstats` before and after (calls
//!   of every command but `INFO`), and the bytes both ways through the
//!   proxy in front of Redis.
//! - NAT: the bytes both ways through the proxy in front of the Management
//!   API. In the template, the functions that reach the cache run in
//!   private subnets; DynamoDB is reached through a (free) gateway
//!   endpoint, the Management API, Lambda and SNS through the NAT gateway.
//! - SNS: the pushes the send path published (`sns publish` on the tape).
//!
//! The counts are priced with `bench/prices.toml` ([`prices`]). The same
//! meters count the design of aws-samples' simple-websockets-chat-app
//! ([`sample_app`]) on the same workloads.

pub mod dynamo;
pub mod lambda;
pub mod meters;
pub mod prices;
pub mod sample_app;
pub mod workloads;

use anyhow::{Context as _, ensure};

use crate::backends::Backends;
use crate::gateway;
use crate::report::Report;
use dynamo::{DynamoCount, DynamoMeter};
use lambda::{LambdaCount, LambdaMeter};
use meters::Meters;
use prices::{Bill, Prices, Usage};

#[derive(Debug, Clone)]
pub struct Config {
    /// 1:1 messages sent (each delivered live, acked, receipted).
    pub chat_messages: usize,
    /// Members of the group, the sender included.
    pub group_members: usize,
    /// Members connected while the group's messages are sent, the sender
    /// included; the others are offline with a push device.
    pub group_online: usize,
    pub group_messages: usize,
    /// The catch-up of a user back after a day: conversations × messages.
    pub backlog_conversations: usize,
    pub backlog_messages: usize,
    /// Every message body, in bytes.
    pub body_bytes: usize,
    /// Connections in the sample design's table (the whole app's).
    pub app_sizes: Vec<usize>,
}

impl Config {
    pub fn full() -> Self {
        Self {
            chat_messages: 20,
            group_members: 20,
            group_online: 10,
            group_messages: 5,
            backlog_conversations: 30,
            backlog_messages: 50,
            body_bytes: 100,
            app_sizes: vec![100, 1_000, 10_000],
        }
    }

    pub fn smoke() -> Self {
        Self {
            chat_messages: 2,
            group_members: 4,
            group_online: 3,
            group_messages: 1,
            backlog_conversations: 3,
            backlog_messages: 5,
            body_bytes: 100,
            app_sizes: vec![50],
        }
    }
}

/// What one workload counted.
#[derive(Debug, Clone)]
pub struct Workload {
    pub design: &'static str,
    pub name: String,
    /// Messages the counts are for (the per-million divisor).
    pub messages: usize,
    pub usage: Usage,
    pub dynamo: DynamoCount,
    pub lambda: LambdaCount,
    /// Frames on the clients' sockets, both ways.
    pub frames: u64,
}

impl Workload {
    pub fn bill(&self, prices: &Prices) -> Bill {
        prices.bill(&self.usage).per_million(self.messages)
    }
}

#[derive(Debug, Clone)]
pub struct Figures {
    pub prices: Prices,
    pub config: Config,
    pub workloads: Vec<Workload>,
}

pub async fn run(config: &Config) -> anyhow::Result<Figures> {
    let prices = Prices::load()?;
    let backends = Backends::get().await?;
    let tables = backends.fresh_tables().await?;
    let dynamo = DynamoMeter::start(&backends.dynamodb_endpoint).await?;
    let lambda = LambdaMeter::new(
        lambda::template_memory()?
            .into_iter()
            .chain([
                (sample_app::ON_CONNECT.to_owned(), sample_app::MEMORY_MB),
                (sample_app::ON_DISCONNECT.to_owned(), sample_app::MEMORY_MB),
                (sample_app::SEND_MESSAGE.to_owned(), sample_app::MEMORY_MB),
            ])
            .collect(),
        prices.lambda.billing_granularity_ms,
    );
    let wrap_meter = lambda.clone();
    let gw = gateway::start_with(&dynamo.url, &backends.redis_url, &tables, move |routes| {
        lambda::metered(&routes, &wrap_meter)
    })
    .await?;
    let meters = Meters {
        dynamo,
        lambda,
        gw,
        redis_url: backends.redis_url.clone(),
        increment: prices.apigateway_websocket.message_increment_bytes,
    };
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let body = "m".repeat(config.body_bytes);
    let mut all = Vec::new();

    all.push(workloads::chat(&meters, config, tag, &body).await?);
    all.push(workloads::group(&meters, config, tag, &body).await?);
    all.push(workloads::catch_up(&meters, &backends, config, tag).await?);
    all.extend(workloads::sample(&meters, &backends, config, tag, &body).await?);
    Ok(Figures {
        prices,
        config: config.clone(),
        workloads: all,
    })
}

/// One row per workload and service, per million messages.
pub fn report(f: &Figures) -> Report {
    let mut r = Report::new();
    const S: &str = "cost";
    let p = &f.prices;
    for w in &f.workloads {
        let b = w.bill(p);
        let per = |x: f64| format!("${x:.2}");
        r.info(
            S,
            format!("{}: {}", w.design, w.name),
            format!(
                "**{}** per million messages: API Gateway {}, DynamoDB {}, Lambda {}, ElastiCache {}, NAT {}, SNS {}",
                per(b.total()),
                per(b.apigateway),
                per(b.dynamodb),
                per(b.lambda),
                per(b.cache),
                per(b.nat),
                per(b.sns)
            ),
        );
        let u = &w.usage;
        let k = |x: f64| x / w.messages as f64;
        r.info(
            S,
            format!("  counted per message ({} messages)", w.messages),
            format!(
                "{:.2} WebSocket messages ({} frames in all); DynamoDB {:.2} requests, {:.2} WRU, {:.2} RRU ({}); Lambda {:.2} invocations, {:.4} GB-s ({}); Redis {:.2} commands, {:.0} B; NAT {:.0} B; {:.2} pushes",
                k(u.apigw_messages as f64),
                w.frames,
                k(u.dynamo_requests as f64),
                k(u.dynamo_write_units),
                k(u.dynamo_read_units),
                w.dynamo
                    .requests
                    .iter()
                    .map(|(op, n)| format!("{op} {n}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                k(u.lambda_requests as f64),
                k(u.lambda_gb_seconds),
                w.lambda.describe(),
                k(u.redis_commands as f64),
                k(u.redis_bytes as f64),
                k(u.nat_bytes as f64),
                k(u.pushes as f64),
            ),
        );
    }
    r.note(format!(
        "cost: prices of bench/prices.toml ({}, {}); not confirmed on the AWS page from this machine: {}. Lambda durations are this machine's in-process handler times on moto (debug or release as built), at the template's MemorySize, arm64. Connection minutes are billed apart ($0.25 per million): per connected user, not per message.",
        p.region,
        p.date,
        p.unconfirmed().join(", ")
    ));
    r
}

/// The smoke run's checks: counts, never times. Each fails when the thing
/// it counts is broken (a meter that counts nothing, a workload that
/// skips a step).
pub fn check(f: &Figures) -> anyhow::Result<()> {
    let get = |design: &str, prefix: &str| {
        f.workloads
            .iter()
            .find(|w| w.design == design && w.name.starts_with(prefix))
            .with_context(|| format!("no {design} workload {prefix}"))
    };
    let chat = get("Courier", "1:1")?;
    let n = chat.messages as u64;
    let fns = |w: &Workload, f: &str| w.lambda.functions.get(f).map_or(0, |i| i.count);
    // Each message: sendMessage in, `sent`, the recipient's frame, the ack
    // in, the receipt: 5 frames, all under 32 KB.
    ensure!(
        chat.usage.apigw_messages == 5 * n && chat.frames == 5 * n,
        "1:1: {} billed messages in {} frames for {n} messages, expected {}",
        chat.usage.apigw_messages,
        chat.frames,
        5 * n
    );
    ensure!(
        fns(chat, "send-message") == n && fns(chat, "ack") == n && chat.lambda.requests() == 2 * n,
        "1:1: invocations {}",
        chat.lambda.describe()
    );
    // The append is one transaction per message; every write is one.
    ensure!(
        chat.dynamo.requests.get("TransactWriteItems") == Some(&n),
        "1:1: DynamoDB requests {:?}",
        chat.dynamo.requests
    );
    ensure!(
        chat.usage.dynamo_write_units >= 2.0 * n as f64 && chat.usage.dynamo_read_units >= n as f64,
        "1:1: {} WRU, {} RRU for {n} messages",
        chat.usage.dynamo_write_units,
        chat.usage.dynamo_read_units
    );
    ensure!(
        chat.usage.redis_commands >= n && chat.usage.redis_bytes > 0 && chat.usage.nat_bytes > 0,
        "1:1: Redis {} commands, {} B; NAT {} B",
        chat.usage.redis_commands,
        chat.usage.redis_bytes,
        chat.usage.nat_bytes
    );
    let group = get("Courier", "group")?;
    let offline = (f.config.group_members - f.config.group_online) as u64;
    ensure!(
        group.usage.pushes == offline * group.messages as u64,
        "group: {} pushes, expected {}",
        group.usage.pushes,
        offline * group.messages as u64
    );
    let cu = get("Courier", "catch-up")?;
    ensure!(
        fns(cu, "catch-up") == 1 && fns(cu, "connect") == 1 && fns(cu, "authorizer") == 1,
        "catch-up: invocations {}",
        cu.lambda.describe()
    );
    ensure!(
        // The pending query, then a range per conversation.
        cu.dynamo.requests.get("Query").copied().unwrap_or(0)
            > f.config.backlog_conversations as u64,
        "catch-up: DynamoDB requests {:?}",
        cu.dynamo.requests
    );
    let sample = get("simple-websockets-chat-app", "1:1")?;
    ensure!(
        sample.dynamo.requests.get("Scan").copied().unwrap_or(0) >= sample.messages as u64
            && fns(sample, sample_app::SEND_MESSAGE) == sample.messages as u64,
        "sample: {:?}, {}",
        sample.dynamo.requests,
        sample.lambda.describe()
    );
    Ok(())
}
