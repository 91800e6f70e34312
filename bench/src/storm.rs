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
//! Clients behave as `courier-client` does when the asynchronous catch-up
//! is lost (it fails, or is never run): no `caught_up` 4 s after opening
//! means a full `sync`, and each further one waits twice as long (equal
//! jitter, up to a minute); `--fixed-sync` keeps the wait at 4 s, as the
//! clients did before they backed off. Duplicates that a second
//! catch-up brings are dropped by seq, as a client drops them.
//!
//! No latency is injected: this measures how the system behaves under a
//! burst on this machine, where the bound is the emulator (moto handles one
//! request at a time) and the two cores shared by the gateway, the
//! functions, the clients, Redis and moto.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure};
use courier_aws::dynamo::DynamoStore;
use courier_core::adapters::memory::MemoryStore;
use courier_core::app::Ports;
use courier_core::domain::UserId;
use courier_core::ports::PendingStore;
use courier_core::protocol::ServerFrame;
use serde_json::json;
use tokio::sync::Barrier;

use crate::backends::Backends;
use crate::gateway;
use crate::report::{Report, Verdict};
use crate::seed::{self, Backlog, Spec};
use crate::stats::{ms, percentile};
use crate::ws::WsClient;

/// Where the stores are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// In memory: the figure is the gateway's, the functions' and Redis's.
    Memory,
    /// DynamoDB on moto, which serves one request at a time.
    Moto,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub backend: Backend,
    pub clients: usize,
    pub pending_per_client: usize,
    /// Double the wait between a client's syncs (with jitter), as
    /// `courier-client` does; `false`: a fixed 4 s.
    pub sync_backoff: bool,
}

impl Config {
    pub fn full() -> Self {
        Self {
            backend: Backend::Memory,
            clients: 1000,
            pending_per_client: 3,
            sync_backoff: true,
        }
    }

    pub fn smoke() -> Self {
        Self {
            backend: Backend::Moto,
            clients: 20,
            pending_per_client: 3,
            sync_backoff: true,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Figures {
    pub clients: usize,
    pub caught_up: usize,
    pub messages: usize,
    pub pending_left: usize,
    /// Clients that had to send `sync` (their first catch-up was lost).
    pub synced: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    /// Handshake (101) of the last client, from the common start.
    pub all_connected: Duration,
    pub sync_backoff: bool,
    pub backend: Backend,
    pub failures: Vec<String>,
}

/// `courier-client`'s `caught_up_timeout`.
const SYNC_AFTER: Duration = Duration::from_secs(4);

/// One client's reconnect.
struct Reconnected {
    connected: Duration,
    caught_up: Duration,
    messages: usize,
    syncs: usize,
    ws: WsClient,
}

async fn reconnect(
    ws_url: String,
    backlog: Backlog,
    barrier: Arc<Barrier>,
    sync_backoff: bool,
) -> anyhow::Result<Reconnected> {
    barrier.wait().await;
    let start = Instant::now();
    let mut ws = WsClient::connect(&ws_url, &backlog.reader).await?;
    let connected = start.elapsed();
    let (frames, syncs) = ws
        .until_caught_up_syncing(SYNC_AFTER, sync_backoff, Duration::from_secs(300))
        .await?;
    let caught_up = start.elapsed();
    let conversation = &backlog.conversations[0];
    let mut seqs = std::collections::BTreeSet::new();
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
    let seqs: Vec<u64> = seqs.into_iter().collect();
    ensure!(seqs == want, "{}: got seqs {seqs:?}", backlog.reader);
    ws.send(
        json!({"action": "ack", "acks": [{"conversation_id": conversation.as_str(), "seq": want.len()}]})
            .to_string(),
    )?;
    Ok(Reconnected {
        connected,
        caught_up,
        messages: seqs.len(),
        syncs,
        ws,
    })
}

pub async fn run(config: &Config) -> anyhow::Result<Figures> {
    let backends = Backends::get().await?;
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
    let (backlogs, pending, stores): (Vec<Backlog>, Arc<dyn PendingStore>, Ports) =
        match config.backend {
            Backend::Moto => {
                let tables = backends.fresh_tables().await?;
                let direct = Backends::clients(&backends.dynamodb_endpoint).dynamodb();
                let backlogs = seed::seed_many(&direct, &tables, &specs).await?;
                let store = Arc::new(DynamoStore::new(direct, tables));
                if let Some(b) = backlogs.first() {
                    b.verify(&store).await?;
                }
                let stores = Ports::unwired().with_store(store.clone());
                (backlogs, store, stores)
            }
            Backend::Memory => {
                let store = MemoryStore::new();
                let backlogs = seed::seed_memory(&store, &specs).await?;
                let stores = Ports::unwired().with_store(Arc::new(store.clone()));
                (backlogs, Arc::new(store), stores)
            }
        };
    let gateway = gateway::start_sdk(stores, &backends.redis_url).await?;
    let ws_url = gateway.ws_url();

    let barrier = Arc::new(Barrier::new(config.clients + 1));
    let tasks: Vec<_> = backlogs
        .iter()
        .cloned()
        .map(|b| {
            tokio::spawn(reconnect(
                ws_url.clone(),
                b,
                barrier.clone(),
                config.sync_backoff,
            ))
        })
        .collect();
    barrier.wait().await;
    let mut times = Vec::new();
    let mut connected = Vec::new();
    let mut messages = 0;
    let mut failures = Vec::new();
    let mut sockets = Vec::new();
    let mut synced = 0;
    for t in tasks {
        match t.await {
            Ok(Ok(r)) => {
                connected.push(r.connected);
                times.push(r.caught_up);
                messages += r.messages;
                synced += usize::from(r.syncs > 0);
                sockets.push(r.ws);
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
        let mut unread = false;
        for b in &backlogs {
            match pending.list(&b.reader).await {
                Ok(rows) => pending_left += rows.len(),
                // moto may still be draining the storm: read again later.
                Err(_) => unread = true,
            }
        }
        if (pending_left == 0 && !unread) || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for ws in &sockets {
        ws.close();
    }
    gateway.stop().await;
    failures.truncate(5);
    Ok(Figures {
        clients: config.clients,
        caught_up: times.len(),
        messages,
        pending_left,
        synced,
        p50: percentile(&times, 50.0).unwrap_or_default(),
        p99: percentile(&times, 99.0).unwrap_or_default(),
        max: percentile(&times, 100.0).unwrap_or_default(),
        all_connected: percentile(&connected, 100.0).unwrap_or_default(),
        sync_backoff: config.sync_backoff,
        backend: config.backend,
        failures,
    })
}

pub fn report(f: &Figures, pending_per_client: usize) -> Report {
    let mut r = Report::new();
    const S: &str = "storm";
    let setting = format!(
        "{} stores, client sync {}",
        match f.backend {
            Backend::Memory => "in-memory",
            Backend::Moto => "moto",
        },
        if f.sync_backoff {
            "backing off"
        } else {
            "every 4 s"
        }
    );
    // Lost means a client missing a message. A row left is the opposite: an
    // ack refused under load, so the messages come again next time.
    let all = f.caught_up == f.clients && f.messages == f.clients * pending_per_client;
    r.add(
        S,
        format!("{} clients reconnect at once ({setting})", f.clients),
        format!(
            "{}/{} caught up ({} after a sync of their own), {} of {} messages; {} pending rows left (acks refused under load: redelivered next time)",
            f.caught_up,
            f.clients,
            f.synced,
            f.messages,
            f.clients * pending_per_client,
            f.pending_left
        ),
        format!("{0}/{0}, nothing lost", f.clients),
        Verdict::of(all),
    );
    r.info(
        S,
        format!("time to caught_up ({setting})"),
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
