//! The reconnect storm (issue 7, figure 4): 1,000 clients, each with
//! messages pending, open their sockets at the same instant.
//!
//! The local gateway runs on real Redis and moto with the production SDK
//! path (`via_aws_apis`): `connect` invokes catch-up through the gateway's
//! Lambda Invoke API, catch-up posts through its `@connections`. Each
//! client times its own reconnect from the moment it starts the handshake
//! to its `caught_up`, checks that it got every pending message of its
//! conversation exactly once and in order, and acks the last one. Nothing
//! is lost when every client got everything *and* every pending row was
//! then cleared by those acks (`PENDING_CLEAR=ack`: rows go only on ack).
//!
//! No latency is injected: this measures how the system behaves under a
//! burst on this machine, where the bound is the emulator (moto handles one
//! request at a time) and the two cores shared by the gateway, the
//! functions, the clients, Redis and moto.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure};
use courier::adapters::dynamo::DynamoStore;
use courier::domain::UserId;
use courier::ports::PendingStore;
use courier::protocol::ServerFrame;
use courier_local::wiring::LocalOptions;
use serde_json::json;
use tokio::sync::Barrier;

use crate::backends::Backends;
use crate::report::{Report, Verdict};
use crate::seed::{self, Backlog, Spec};
use crate::stats::{ms, percentile};
use crate::ws::WsClient;

#[derive(Debug, Clone)]
pub struct Config {
    pub clients: usize,
    pub pending_per_client: usize,
}

impl Config {
    pub fn full() -> Self {
        Self {
            clients: 1000,
            pending_per_client: 3,
        }
    }

    pub fn smoke() -> Self {
        Self {
            clients: 20,
            pending_per_client: 3,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Figures {
    pub clients: usize,
    pub caught_up: usize,
    pub messages: usize,
    pub pending_left: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    /// Handshake (101) of the last client, from the common start.
    pub all_connected: Duration,
    pub failures: Vec<String>,
}

/// One client's reconnect.
async fn reconnect(
    ws_url: String,
    backlog: Backlog,
    barrier: Arc<Barrier>,
) -> anyhow::Result<(Duration, Duration, usize, WsClient)> {
    barrier.wait().await;
    let start = Instant::now();
    let mut ws = WsClient::connect(&ws_url, &backlog.reader).await?;
    let connected = start.elapsed();
    let frames = ws.until_caught_up(Duration::from_secs(120)).await?;
    let took = start.elapsed();
    let conversation = &backlog.conversations[0];
    let mut seqs = Vec::new();
    for r in &frames {
        if let ServerFrame::Messages {
            conversation_id,
            messages,
        } = &r.frame
        {
            ensure!(
                conversation_id == conversation,
                "frame of another conversation"
            );
            seqs.extend(messages.iter().map(|m| m.seq.get()));
        }
    }
    let want: Vec<u64> = (1..=backlog.messages_per_conversation as u64).collect();
    ensure!(seqs == want, "{}: got seqs {seqs:?}", backlog.reader);
    ws.send(
        json!({"action": "ack", "acks": [{"conversation_id": conversation.as_str(), "seq": want.len()}]})
            .to_string(),
    )?;
    Ok((connected, took, seqs.len(), ws))
}

pub async fn run(config: &Config) -> anyhow::Result<Figures> {
    let backends = Backends::get().await?;
    let tables = backends.fresh_tables().await?;
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let sender = UserId::parse(&format!("storm-sender-{tag}")).map_err(|e| anyhow!("{e}"))?;
    let readers: Vec<UserId> = (0..config.clients)
        .map(|i| UserId::parse(&format!("storm{i}-{tag}")).map_err(|e| anyhow!("{e}")))
        .collect::<anyhow::Result<_>>()?;
    let prefixes: Vec<String> = (0..config.clients)
        .map(|i| format!("storm{i}-{tag}"))
        .collect();
    let specs: Vec<Spec<'_>> = readers
        .iter()
        .zip(&prefixes)
        .map(|(r, prefix)| Spec {
            reader: r,
            sender: &sender,
            prefix,
            conversations: 1,
            messages_per_conversation: config.pending_per_client,
            body_bytes: 100,
        })
        .collect();
    let direct = Backends::clients(&backends.dynamodb_endpoint).dynamodb();
    let backlogs = seed::seed_many(&direct, &tables, &specs).await?;
    let store = DynamoStore::new(direct, tables.clone());
    if let Some(b) = backlogs.first() {
        b.verify(&store).await?;
    }

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let started = courier_local::wiring::start(
        LocalOptions {
            redis_url: Some(backends.redis_url.clone()),
            dynamodb_endpoint: Some(backends.dynamodb_endpoint.clone()),
            tables: tables.clone(),
            via_aws_apis: true,
            ..LocalOptions::default()
        },
        listener,
    )
    .await?;
    let ws_url = started.gateway.ws_url();

    let barrier = Arc::new(Barrier::new(config.clients + 1));
    let tasks: Vec<_> = backlogs
        .iter()
        .cloned()
        .map(|b| tokio::spawn(reconnect(ws_url.clone(), b, barrier.clone())))
        .collect();
    barrier.wait().await;
    let mut times = Vec::new();
    let mut connected = Vec::new();
    let mut messages = 0;
    let mut failures = Vec::new();
    let mut sockets = Vec::new();
    for t in tasks {
        match t.await {
            Ok(Ok((c, took, n, ws))) => {
                connected.push(c);
                times.push(took);
                messages += n;
                sockets.push(ws);
            }
            Ok(Err(e)) => failures.push(format!("{e:#}")),
            Err(e) => failures.push(format!("client task: {e}")),
        }
    }

    // The acks went out with the last frames; their invocations may still
    // be running. Every row must go, and only because of an ack.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut pending_left;
    loop {
        pending_left = 0;
        for b in &backlogs {
            pending_left += store.list(&b.reader).await?.len();
        }
        if pending_left == 0 || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for ws in &sockets {
        ws.close();
    }
    started.gateway.stop().await;
    failures.truncate(5);
    Ok(Figures {
        clients: config.clients,
        caught_up: times.len(),
        messages,
        pending_left,
        p50: percentile(&times, 50.0).unwrap_or_default(),
        p99: percentile(&times, 99.0).unwrap_or_default(),
        max: percentile(&times, 100.0).unwrap_or_default(),
        all_connected: percentile(&connected, 100.0).unwrap_or_default(),
        failures,
    })
}

pub fn report(f: &Figures, pending_per_client: usize) -> Report {
    let mut r = Report::new();
    const S: &str = "storm";
    let all = f.caught_up == f.clients
        && f.messages == f.clients * pending_per_client
        && f.pending_left == 0;
    r.add(
        S,
        format!("{} clients reconnect at once", f.clients),
        format!(
            "{}/{} caught up, {} messages, {} pending rows left after acks",
            f.caught_up, f.clients, f.messages, f.pending_left
        ),
        format!("{0}/{0}, nothing lost", f.clients),
        Verdict::of(all),
    );
    r.info(
        S,
        "time to caught_up",
        format!(
            "p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; last handshake done at {:.0} ms",
            ms(f.p50),
            ms(f.p99),
            ms(f.max),
            ms(f.all_connected)
        ),
    );
    for e in &f.failures {
        r.note(format!("storm failure: {e}"));
    }
    r
}
