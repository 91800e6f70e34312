//! The reconnect storm (issue 16, item 3): 1,000 clients, each with
//! messages pending, open their sockets at the same instant while senders
//! send them new ones.
//!
//! The local gateway runs on real Redis (and moto or memory stores) with
//! the production SDK path (`via_aws_apis`): `connect` invokes catch-up
//! through the gateway's Lambda Invoke API, catch-up posts through its
//! `@connections`. Each client times its reconnect from the moment it
//! starts the handshake to its first `caught_up`.
//!
//! At the same barrier, [`Config::senders`] sender users (each a member of
//! every `senders`-th client's conversation, on a socket of its own through
//! the same gateway) send [`Config::live_per_client`] new messages to each
//! of their conversations with `sendMessage`, one round after another, so
//! a conversation's next send waits for the previous `sent`.
//!
//! Once the senders are done, every client has its `caught_up` and every
//! catch-up `$connect` started has ended, each client waits for the answer
//! to each `sync` it sent, then sends `ping`: its `pong` comes after every
//! frame posted to it before (one connection's frames keep their order),
//! so the client has read everything when it checks. [`check::check`]
//! holds its frames to the protocol's promise of order and duplicates;
//! then it acks everything, as do the senders, and nothing is lost when
//! every client showed every message *and* every pending row was cleared
//! by those acks (`PENDING_CLEAR=ack`: rows go only on ack).
//!
//! Clients behave as `courier-client` does when the asynchronous catch-up
//! is lost (it fails, or is never run): no `caught_up` 4 s after opening
//! means a full `sync`, and each further one waits twice as long (equal
//! jitter, up to a minute); `--fixed-sync` keeps the wait at 4 s. Why each
//! syncing client gave up waiting is read from a record of its connect's
//! catch-up ([`why`]).
//!
//! No latency is injected: this measures how the system behaves under a
//! burst on this machine, where the bound is the emulator (moto handles one
//! request at a time) and the two cores shared by the gateway, the
//! functions, the clients, Redis and moto.

pub mod check;
mod client;
pub mod why;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail, ensure};
use courier_aws::dynamo::DynamoStore;
use courier_core::adapters::memory::MemoryStore;
use courier_core::app::Ports;
use courier_core::backoff::Backoff;
use courier_core::domain::{ConversationId, UserId};
use courier_core::ports::PendingStore;
use courier_core::protocol::{ErrorCode, ServerFrame};
use serde_json::json;
use tokio::sync::{Barrier, watch};

use crate::backends::Backends;
use crate::gateway;
use crate::report::{Report, Verdict};
use crate::seed::{self, Backlog, Spec};
use crate::stats::{ms, percentile};
use crate::ws::WsClient;
use check::{Expected, Tally};
use client::{Reconnected, Storm, reconnect};
use why::{CatchUps, Reason};

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
    /// New messages sent to each client's conversation during the storm.
    pub live_per_client: usize,
    /// Sender users, each on its own socket; at most 8 keeps each of them
    /// a small share of the clients' conversations.
    pub senders: usize,
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
            live_per_client: 2,
            senders: 8,
            sync_backoff: true,
        }
    }

    /// The storm on moto: 100 clients. moto serves one request at a time
    /// (≈ 25 a second here); 200 clients' handshakes, sends and catch-ups
    /// are ≈ 2,400 requests, and past its queue `$connect`'s DynamoDB calls
    /// outlast the connect function's 10 s timeout, so the handshakes
    /// themselves fail (docs/performance.md). Larger storms run in memory.
    pub fn moto() -> Self {
        Self {
            backend: Backend::Moto,
            clients: 100,
            ..Self::full()
        }
    }

    pub fn smoke() -> Self {
        Self {
            backend: Backend::Moto,
            clients: 20,
            pending_per_client: 3,
            live_per_client: 2,
            senders: 4,
            sync_backoff: true,
        }
    }

    fn expected(&self) -> Expected {
        Expected {
            pending: self.pending_per_client as u64,
            live: self.live_per_client as u64,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Figures {
    pub clients: usize,
    pub pending_per_client: usize,
    pub live_per_client: usize,
    /// Clients that read a `caught_up`.
    pub caught_up: usize,
    /// Clients whose frames kept the promise of [`check`].
    pub kept: usize,
    /// The sum of the kept clients' tallies.
    pub tally: Tally,
    /// Kept clients with a resend (after their sync), with a live message
    /// also read by their catch-up, with a message shown ahead of a hole.
    pub resent_clients: usize,
    pub raced_clients: usize,
    pub ahead_clients: usize,
    /// Messages the senders got `sent` for.
    pub live_sent: usize,
    /// Sends sent again after `internal`, `rate_limited`, no answer or a
    /// closed socket.
    pub send_retries: usize,
    /// Clients whose handshake was refused at least once (and retried).
    pub refused_clients: usize,
    /// Live messages the storm did not bring (not posted live, stored after
    /// the catch-up read) that a further catch-up did, and their clients.
    pub late: usize,
    pub late_clients: usize,
    pub pending_left: usize,
    /// Clients that had to send `sync`, and why, counted per reason.
    pub synced: usize,
    pub reasons: BTreeMap<Reason, usize>,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    /// Handshake (101) of the last client, from the common start.
    pub all_connected: Duration,
    pub sync_backoff: bool,
    pub backend: Option<Backend>,
    /// Clients or senders that failed, or broke the promise (first few).
    pub failures: Vec<String>,
    pub failed: usize,
}

/// `courier-client`'s `caught_up_timeout`.
const SYNC_AFTER: Duration = Duration::from_secs(4);

/// How long anything may take before it counts as a failure: the moto
/// storm takes minutes.
const PATIENCE: Duration = Duration::from_secs(300);

/// How long a sender waits for the answers to a round before it sends the
/// unanswered ones again (the send function's timeout is 20 s).
const ANSWER_WAIT: Duration = Duration::from_secs(30);

/// Attempts of one send before the sender gives up on it.
const SEND_ATTEMPTS: u32 = 8;

/// Sends a sender retried, per conversation and seq: each retry of a send
/// that may have delivered (an `internal` answer, no answer, a closed
/// socket) re-runs delivery (`services/send.rs` `replay`), so it may post
/// one more live copy, which the client drops by seq.
pub(super) type Retried = Arc<std::sync::Mutex<HashMap<ConversationId, BTreeMap<u64, usize>>>>;

/// One sender, as `courier-client` sends: from the barrier, `live` rounds
/// of one message to each of `conversations`, a round once the previous
/// one's `sent` frames are all in. An `internal` or `rate_limited` answer,
/// no answer within [`ANSWER_WAIT`] or a closed socket sends it again with
/// the same `client_msg_id` (a new socket first when it closed), with
/// backoff. Then acks its own messages, as the sending device does.
/// Returns the number sent and the socket it ended on.
async fn send_live(
    mut ws: WsClient,
    sender: Sender,
    conversations: Vec<ConversationId>,
    expected: Expected,
    barrier: Arc<Barrier>,
) -> (anyhow::Result<usize>, WsClient) {
    barrier.wait().await;
    let mut retries = 0;
    let result = async {
        for round in 1..=expected.live {
            let seq = expected.pending + round;
            let frame = |c: &ConversationId| {
                json!({
                    "action": "sendMessage",
                    "conversation_id": c.as_str(),
                    "client_msg_id": format!("live-{round}"),
                    "request_id": c.as_str(),
                    "body": seed::body(usize::try_from(seq).unwrap_or(0), 100),
                })
                .to_string()
            };
            for c in &conversations {
                ws.send(frame(c))?;
            }
            // Each conversation still waiting for its `sent`, with its
            // attempts so far.
            let mut waiting: HashMap<&str, (&ConversationId, u32)> =
                conversations.iter().map(|c| (c.as_str(), (c, 0))).collect();
            let backoff = Backoff::equal(Duration::from_millis(500), Duration::from_secs(16));
            while !waiting.is_empty() {
                // (conversation, may it have delivered) to send again.
                let again: Vec<(&ConversationId, bool)> = match ws.next(ANSWER_WAIT).await {
                    Ok(r) => match r.frame {
                        ServerFrame::Sent {
                            conversation_id,
                            seq: got,
                            ..
                        } => {
                            // One sender per conversation, one send at a
                            // time in it: the round's seq, or the late
                            // answer of a retried send of an earlier round.
                            ensure!(
                                got.get() <= seq,
                                "{conversation_id}: round {round} got seq {got}"
                            );
                            if got.get() == seq {
                                waiting.remove(conversation_id.as_str());
                            }
                            continue;
                        }
                        ServerFrame::Error {
                            code: code @ (ErrorCode::Internal | ErrorCode::RateLimited),
                            request_id: Some(c),
                            ..
                        } if waiting.contains_key(c.as_str()) => {
                            vec![(waiting[c.as_str()].0, code == ErrorCode::Internal)]
                        }
                        ServerFrame::Error { code, message, .. } => {
                            bail!("round {round}: {}: {message}", code.as_str())
                        }
                        _ => continue,
                    },
                    Err(e) => {
                        // No answer, or the socket closed: every send still
                        // waiting may or may not have been delivered.
                        if ws.is_closed() {
                            ws = sender.connect().await?;
                        } else {
                            tracing::debug!("round {round}: {e:#}");
                        }
                        waiting.values().map(|&(c, _)| (c, true)).collect()
                    }
                };
                for (c, may_have_delivered) in again {
                    let Some((_, attempts)) = waiting.get_mut(c.as_str()) else {
                        continue;
                    };
                    *attempts += 1;
                    ensure!(
                        *attempts < SEND_ATTEMPTS,
                        "{c}: round {round} unanswered after {SEND_ATTEMPTS} attempts"
                    );
                    if may_have_delivered {
                        *sender
                            .retried
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .entry(c.clone())
                            .or_default()
                            .entry(seq)
                            .or_default() += 1;
                    }
                    retries += 1;
                    tokio::time::sleep(backoff.delay(*attempts - 1)).await;
                    ws.send(frame(c))?;
                }
            }
        }
        for chunk in conversations.chunks(100) {
            let acks: Vec<_> = chunk
                .iter()
                .map(|c| json!({"conversation_id": c.as_str(), "seq": expected.all()}))
                .collect();
            ws.send(json!({"action": "ack", "acks": acks}).to_string())?;
        }
        Ok(conversations.len() * usize::try_from(expected.live)?)
    }
    .await;
    sender.retries.fetch_add(retries, Ordering::SeqCst);
    (result, ws)
}

/// What a sender needs to open a new socket and to record its retries.
#[derive(Clone)]
struct Sender {
    ws_url: String,
    user: UserId,
    retried: Retried,
    /// Sends sent again, over all senders.
    retries: Arc<AtomicUsize>,
}

impl Sender {
    async fn connect(&self) -> anyhow::Result<WsClient> {
        Ok(client::connect_counting(&self.ws_url, &self.user).await?.0)
    }
}

/// Readers `storm{i}-{tag}`, senders `storm-sender{k}-{tag}`; reader `i`'s
/// conversation is shared with sender `i % senders`.
fn users(config: &Config, tag: &str) -> anyhow::Result<(Vec<UserId>, Vec<UserId>)> {
    let parse = |s: String| UserId::parse(&s).map_err(|e| anyhow!("{e}"));
    let readers = (0..config.clients)
        .map(|i| parse(format!("storm{i}-{tag}")))
        .collect::<anyhow::Result<_>>()?;
    let senders = (0..config.senders.clamp(1, config.clients.max(1)))
        .map(|k| parse(format!("storm-sender{k}-{tag}")))
        .collect::<anyhow::Result<_>>()?;
    Ok((readers, senders))
}

pub async fn run(config: &Config) -> anyhow::Result<Figures> {
    let backends = Backends::get().await?;
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let (readers, senders) = users(config, tag)?;
    let prefixes: Vec<String> = (0..config.clients)
        .map(|i| format!("storm{i}-{tag}"))
        .collect();
    let specs: Vec<Spec<'_>> = readers
        .iter()
        .zip(&prefixes)
        .enumerate()
        .map(|(i, (r, prefix))| Spec {
            reader: r,
            sender: &senders[i % senders.len()],
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
    let catch_ups = CatchUps::new();
    let gateway = gateway::start_sdk(stores, &backends.redis_url, |r| catch_ups.wrap(r)).await?;
    let ws_url = gateway.ws_url();

    // The senders are connected before the storm starts.
    let barrier = Arc::new(Barrier::new(config.clients + senders.len() + 1));
    let mut sender_tasks = Vec::new();
    let retried = Retried::default();
    let retries = Arc::new(AtomicUsize::new(0));
    for (k, user) in senders.iter().enumerate() {
        let sender = Sender {
            ws_url: ws_url.clone(),
            user: user.clone(),
            retried: retried.clone(),
            retries: retries.clone(),
        };
        let ws = sender.connect().await?;
        let theirs: Vec<ConversationId> = backlogs
            .iter()
            .skip(k)
            .step_by(senders.len())
            .map(|b| b.conversations[0].clone())
            .collect();
        let (expected, barrier) = (config.expected(), barrier.clone());
        sender_tasks.push(tokio::spawn(send_live(
            ws, sender, theirs, expected, barrier,
        )));
    }
    let (settle, settled) = watch::channel(false);
    let storm = Storm {
        ws_url,
        barrier: barrier.clone(),
        sync_backoff: config.sync_backoff,
        expected: config.expected(),
        catch_ups: catch_ups.clone(),
        retried: retried.clone(),
        waited: Arc::new(AtomicUsize::new(0)),
        caught: Arc::new(AtomicUsize::new(0)),
        settled,
    };
    let tasks: Vec<_> = backlogs
        .iter()
        .cloned()
        .map(|b| tokio::spawn(reconnect(storm.clone(), b)))
        .collect();
    barrier.wait().await;

    let mut f = Figures {
        clients: config.clients,
        pending_per_client: config.pending_per_client,
        live_per_client: config.live_per_client,
        sync_backoff: config.sync_backoff,
        backend: Some(config.backend),
        ..Figures::default()
    };
    let mut sockets = Vec::new();
    for t in sender_tasks {
        let (sent, ws) = t.await.context("sender task")?;
        sockets.push(ws);
        match sent {
            Ok(n) => f.live_sent += n,
            Err(e) => f.fail(format!("sender: {e:#}")),
        }
    }
    f.send_retries = retries.load(Ordering::SeqCst);
    settle_when_quiet(&storm, &readers).await;
    let _ = settle.send(true);

    let mut times = Vec::new();
    let mut connected = Vec::new();
    for t in tasks {
        match t.await {
            Ok(Ok(r)) => f.add(r, &mut times, &mut connected, &mut sockets),
            Ok(Err(e)) => f.fail(format!("{e:#}")),
            Err(e) => f.fail(format!("client task: {e}")),
        }
    }
    f.caught_up = storm.caught.load(Ordering::SeqCst);

    // The acks went out last; their invocations may still be running.
    // Every row must go, and only because of an ack.
    let owners: Vec<&UserId> = readers.iter().chain(&senders).collect();
    f.pending_left = rows_left(pending.as_ref(), &owners).await;
    for ws in &sockets {
        ws.close();
    }
    gateway.stop().await;
    f.p50 = percentile(&times, 50.0).unwrap_or_default();
    f.p99 = percentile(&times, 99.0).unwrap_or_default();
    f.max = percentile(&times, 100.0).unwrap_or_default();
    f.all_connected = percentile(&connected, 100.0).unwrap_or_default();
    Ok(f)
}

/// Waits (within [`PATIENCE`]) until every client is past its first
/// `caught_up` and every reader's connect catch-up has begun and ended, so
/// that nothing more is posted to the clients but the answers to their
/// syncs, which each client waits for itself.
async fn settle_when_quiet(storm: &Storm, readers: &[UserId]) {
    let deadline = Instant::now() + PATIENCE;
    let mut grace: Option<Instant> = None;
    while Instant::now() < deadline {
        let all_waited = storm.waited.load(Ordering::SeqCst) >= readers.len();
        let unended = readers
            .iter()
            .filter(|r| {
                storm
                    .catch_ups
                    .call(r.as_str())
                    .is_none_or(|c| c.ended.is_none())
            })
            .count();
        if all_waited && storm.catch_ups.running() == 0 {
            // A catch-up never invoked shows as none: give a late Invoke
            // ten seconds to arrive, then stop waiting for it.
            let since = *grace.get_or_insert_with(Instant::now);
            if unended == 0 || since.elapsed() >= Duration::from_secs(10) {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Pending rows left for `owners`, read until none are left or two
/// minutes pass (moto may still be draining the storm).
async fn rows_left(pending: &dyn PendingStore, owners: &[&UserId]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut left = 0;
        let mut unread = false;
        for u in owners {
            match pending.list(u).await {
                Ok(rows) => left += rows.len(),
                Err(_) => unread = true,
            }
        }
        if (left == 0 && !unread) || Instant::now() >= deadline {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

impl Figures {
    fn add(
        &mut self,
        r: Reconnected,
        times: &mut Vec<Duration>,
        connected: &mut Vec<Duration>,
        sockets: &mut Vec<WsClient>,
    ) {
        connected.push(r.connected);
        self.refused_clients += usize::from(r.refused > 0);
        times.push(r.caught_up);
        self.kept += 1;
        let t = &r.tally;
        self.resent_clients += usize::from(t.resent > 0);
        self.raced_clients += usize::from(t.raced > 0);
        self.ahead_clients += usize::from(t.ahead > 0);
        self.tally.shown += t.shown;
        self.tally.live_shown += t.live_shown;
        self.tally.live_framed += t.live_framed;
        self.tally.resent += t.resent;
        self.tally.raced += t.raced;
        self.tally.ahead += t.ahead;
        self.tally.relive += t.relive;
        self.synced += usize::from(r.syncs > 0);
        self.late += r.late;
        self.late_clients += usize::from(r.late > 0);
        if let Some(reason) = r.reason {
            *self.reasons.entry(reason).or_default() += 1;
        }
        sockets.push(r.ws);
    }

    fn fail(&mut self, e: String) {
        self.failed += 1;
        if self.failures.len() < 5 {
            self.failures.push(e);
        }
    }
}

/// What the smoke run asserts: counts and order, never a time. Each line
/// fails on the broken storm it names (`smoke_check_fails_on_each_broken_count`).
pub fn check_smoke(f: &Figures) -> anyhow::Result<()> {
    let (n, p, l) = (f.clients, f.pending_per_client, f.live_per_client);
    ensure!(
        f.failed == 0,
        "storm: {} failed: {:?}",
        f.failed,
        f.failures
    );
    ensure!(f.caught_up == n, "storm: {}/{n} caught up", f.caught_up);
    ensure!(
        f.kept == n,
        "storm: {}/{n} kept order and duplicates",
        f.kept
    );
    ensure!(
        f.live_sent == n * l,
        "storm: {} of {} live messages sent",
        f.live_sent,
        n * l
    );
    ensure!(
        f.tally.shown == n * (p + l) && f.tally.live_shown == n * l,
        "storm: {} messages shown ({} live), want {} ({})",
        f.tally.shown,
        f.tally.live_shown,
        n * (p + l),
        n * l
    );
    ensure!(
        f.reasons.values().sum::<usize>() == f.synced,
        "storm: {} syncing clients, {:?} reasons",
        f.synced,
        f.reasons
    );
    ensure!(
        f.pending_left == 0,
        "storm: {} pending rows left",
        f.pending_left
    );
    ensure!(
        f.late == 0,
        "storm: {} live messages came only with a later catch-up",
        f.late
    );
    Ok(())
}

pub fn report(f: &Figures) -> Report {
    let mut r = Report::new();
    const S: &str = "storm";
    let setting = format!(
        "{} stores, client sync {}",
        match f.backend {
            Some(Backend::Moto) => "moto",
            _ => "in-memory",
        },
        if f.sync_backoff {
            "backing off"
        } else {
            "every 4 s"
        }
    );
    let (n, p, l) = (f.clients, f.pending_per_client, f.live_per_client);
    // Lost means a client missing a message. A row left is the opposite: an
    // ack refused under load, so the messages come again next time.
    r.add(
        S,
        format!("{n} clients reconnect at once, {p} pending + {l} sent during it each ({setting})"),
        format!(
            "{}/{n} caught up, {}/{n} in order with no uncalled duplicate; {} of {} messages shown ({} of {} sent live: {} by live frame, {} only by a further catch-up in {} clients, the rest by the storm's catch-ups); {} pending rows left",
            f.caught_up,
            f.kept,
            f.tally.shown,
            n * (p + l),
            f.tally.live_shown,
            f.live_sent,
            f.tally.live_framed,
            f.late,
            f.late_clients,
            f.pending_left
        ),
        format!("{n}/{n}, every message shown once during the storm, nothing left"),
        Verdict::of(
            f.failed == 0
                && f.kept == n
                && f.late == 0
                && f.tally.shown == n * (p + l)
                && f.live_sent == n * l,
        ),
    );
    r.info(
        S,
        format!("raw duplicates, dropped by seq ({setting})"),
        format!(
            "{} resent by a second catch-up after a sync ({} clients); {} read both live and by catch-up ({} clients); {} live again after the sender retried ({} retries); {} messages arrived ahead of a lower seq ({} clients), shown once the hole filled",
            f.tally.resent,
            f.resent_clients,
            f.tally.raced,
            f.raced_clients,
            f.tally.relive,
            f.send_retries,
            f.tally.ahead,
            f.ahead_clients
        ),
    );
    let reasons = if f.reasons.is_empty() {
        "none".to_owned()
    } else {
        f.reasons
            .iter()
            .map(|(why, count)| format!("{count}: {why}"))
            .collect::<Vec<_>>()
            .join("; ")
    };
    r.info(
        S,
        format!("clients that sent sync, and why ({setting})"),
        format!("{}/{n}; {reasons}", f.synced),
    );
    r.info(
        S,
        format!("time to caught_up ({setting})"),
        format!(
            "p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; last handshake done at {:.0} ms; {} clients had a handshake refused and tried again",
            ms(f.p50),
            ms(f.p99),
            ms(f.max),
            ms(f.all_connected),
            f.refused_clients
        ),
    );
    for e in &f.failures {
        r.note(format!("storm failure: {e}"));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole() -> Figures {
        let mut reasons = BTreeMap::new();
        reasons.insert(Reason::StillRunning("caught_up".into()), 2);
        Figures {
            clients: 20,
            pending_per_client: 3,
            live_per_client: 2,
            caught_up: 20,
            kept: 20,
            tally: Tally {
                shown: 100,
                live_shown: 40,
                ..Tally::default()
            },
            live_sent: 40,
            synced: 2,
            reasons,
            ..Figures::default()
        }
    }

    #[test]
    fn smoke_check_fails_on_each_broken_count() {
        assert!(check_smoke(&whole()).is_ok());
        let broken: [fn(&mut Figures); 9] = [
            |f| f.late = 1,
            |f| f.failed = 1,
            |f| f.caught_up = 19,
            |f| f.kept = 19,
            |f| f.live_sent = 39,
            |f| f.tally.shown = 99,
            |f| f.tally.live_shown = 39,
            |f| f.synced = 3,
            |f| f.pending_left = 1,
        ];
        for (i, b) in broken.iter().enumerate() {
            let mut f = whole();
            b(&mut f);
            assert!(check_smoke(&f).is_err(), "case {i} passed");
        }
    }
}
