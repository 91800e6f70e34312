//! The send path (issue 7, figure 3): round trips and time from
//! `sendMessage` to `sent` and to the recipient's frame, and the throughput
//! of 100 concurrent senders.
//!
//! Everything goes through the local gateway with real WebSocket clients.
//! The gateway's functions reach DynamoDB (moto), Redis and `@connections`
//! through latency proxies ([`crate::gateway`]), so with a one-way delay d
//! on each, every sequential backend round trip of a send costs 2d. As for
//! catch-up, each send is timed with the proxies passing and delayed in the
//! same run, and `(T − T0) / RTT` is the number of sequential round trips
//! paid. The client's own hop to the gateway is loopback and not delayed:
//! these are the backend round trips a Lambda pays, not the phone's.
//!
//! Throughput: 100 sender/recipient pairs, each in its own conversation
//! (no seq contention), both online; every sender sends its messages one
//! after the other (the next once `sent` came), all senders at once. Every
//! recipient must receive every message, in order.

use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail, ensure};
use courier_core::domain::{ConversationId, UserId};
use courier_core::protocol::{ErrorCode, ServerFrame};
use serde_json::json;

use crate::backends::{Backends, set_all};
use crate::gateway::{self, ProxiedGateway};
use crate::report::Report;
use crate::seed::{self, Spec};
use crate::stats::{median, ms, percentile};
use crate::trace;
use crate::ws::WsClient;

#[derive(Debug, Clone)]
pub struct Config {
    pub rtt: Duration,
    /// Timed sends per mode (after one warm-up pair).
    pub reps: usize,
    pub senders: usize,
    pub sends_per_sender: usize,
}

impl Config {
    pub fn full() -> Self {
        Self {
            rtt: Duration::from_millis(20),
            reps: 9,
            senders: 100,
            sends_per_sender: 5,
        }
    }

    pub fn smoke() -> Self {
        Self {
            rtt: Duration::from_millis(20),
            reps: 1,
            senders: 5,
            sends_per_sender: 3,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Figures {
    pub rtt: Duration,
    pub sent_t0: Duration,
    pub sent_t: Duration,
    pub frame_t0: Duration,
    pub frame_t: Duration,
    pub senders: usize,
    pub sends: usize,
    pub wall: Duration,
    pub sent_p50: Duration,
    pub sent_p99: Duration,
    /// One sender alone, same path, for the scaling ratio.
    pub single_per_sec: f64,
    /// Sequential port calls of one send, and their chain.
    pub depth: usize,
    pub chain: Vec<&'static str>,
    /// Sends of the burst resent after an `internal` error.
    pub retries: usize,
    /// The time of one send's DynamoDB calls (find_sent, conversation,
    /// append) on moto, measured alone just before and just after the
    /// burst: moto serves one request at a time, so no number of senders
    /// beats `1 / moto_per_send`, and it grows with the tables (a moto
    /// transaction snapshots every table it touches).
    pub moto_before: Duration,
    pub moto_after: Duration,
}

impl Figures {
    pub fn sent_round_trips(&self) -> f64 {
        self.sent_t.saturating_sub(self.sent_t0).as_secs_f64() / self.rtt.as_secs_f64()
    }
    pub fn frame_round_trips(&self) -> f64 {
        self.frame_t.saturating_sub(self.frame_t0).as_secs_f64() / self.rtt.as_secs_f64()
    }
    pub fn per_sec(&self) -> f64 {
        self.sends as f64 / self.wall.as_secs_f64()
    }
    /// moto's ceiling over the burst: tables grow steadily, so the mean of
    /// its per-send time before and after.
    pub fn moto_ceiling(&self) -> f64 {
        2.0 / (self.moto_before + self.moto_after).as_secs_f64().max(1e-9)
    }
}

/// Two online clients in one conversation.
struct Pair {
    sender: WsClient,
    recipient: WsClient,
    conversation: ConversationId,
    next_seq: u64,
    /// Sends resent after an `internal` error, as a client does (same
    /// `client_msg_id`: sends are idempotent).
    retries: usize,
}

async fn pairs(
    gw: &ProxiedGateway,
    backends: &Backends,
    count: usize,
) -> anyhow::Result<Vec<Pair>> {
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let users: Vec<(UserId, UserId)> = (0..count)
        .map(|i| {
            Ok((
                UserId::parse(&format!("s{i}-{tag}")).map_err(|e| anyhow!("{e}"))?,
                UserId::parse(&format!("r{i}-{tag}")).map_err(|e| anyhow!("{e}"))?,
            ))
        })
        .collect::<anyhow::Result<_>>()?;
    let prefixes: Vec<String> = (0..count).map(|i| format!("p{i}-{tag}")).collect();
    let specs: Vec<Spec<'_>> = users
        .iter()
        .zip(&prefixes)
        .map(|((s, r), prefix)| Spec {
            reader: r,
            sender: s,
            prefix,
            conversations: 1,
            messages_per_conversation: 0,
            body_bytes: 0,
        })
        .collect();
    let direct = Backends::clients(&backends.dynamodb_endpoint).dynamodb();
    let tables = gw.store.tables().clone();
    let backlogs = seed::seed_many(&direct, &tables, &specs).await?;
    let mut out = Vec::with_capacity(count);
    for ((s, r), b) in users.iter().zip(backlogs) {
        let mut sender = WsClient::connect(&gw.ws_url(), s).await?;
        let mut recipient = WsClient::connect(&gw.ws_url(), r).await?;
        sender.until_caught_up(Duration::from_secs(30)).await?;
        recipient.until_caught_up(Duration::from_secs(30)).await?;
        out.push(Pair {
            sender,
            recipient,
            conversation: b.conversations[0].clone(),
            next_seq: 1,
            retries: 0,
        });
    }
    Ok(out)
}

/// Attempts of one send before the benchmark gives up on it.
const MAX_ATTEMPTS: usize = 5;

/// Sends one message; returns (time to `sent`, time to the recipient's
/// frame), both from the moment the frame was first handed to the socket.
/// An `internal` error (a server fault, e.g. moto's queue past the SDK's
/// attempt timeout) is retried with the same `client_msg_id`, as a client
/// does.
async fn send_one(pair: &mut Pair) -> anyhow::Result<(Duration, Duration)> {
    let client_msg_id = uuid::Uuid::new_v4().to_string();
    let frame = json!({
        "action": "sendMessage",
        "conversation_id": pair.conversation.as_str(),
        "client_msg_id": client_msg_id,
        "body": format!("hello {}", pair.next_seq),
    })
    .to_string();
    let start = Instant::now();
    pair.sender.send(frame.clone())?;
    let timeout = Duration::from_secs(60);
    let mut attempts = 1;
    let sent_at = loop {
        let r = pair
            .sender
            .next(timeout)
            .await
            .context("waiting for sent")?;
        match r.frame {
            ServerFrame::Sent {
                client_msg_id: id,
                seq,
                ..
            } if id.as_str() == client_msg_id => {
                ensure!(
                    seq.get() == pair.next_seq,
                    "sent seq {seq}, expected {}",
                    pair.next_seq
                );
                break r.at;
            }
            ServerFrame::Error {
                code: ErrorCode::Internal,
                ..
            } if attempts < MAX_ATTEMPTS => {
                attempts += 1;
                pair.retries += 1;
                pair.sender.send(frame.clone())?;
            }
            ServerFrame::Error { code, message, .. } => {
                bail!("send refused after {attempts} attempt(s): {code:?} {message}")
            }
            _ => {}
        }
    };
    // A retried send may have been delivered live more than once: the
    // recipient keeps the first frame of each seq, as a client does.
    let frame_at = loop {
        let r = pair
            .recipient
            .next(timeout)
            .await
            .context("waiting for the recipient's frame")?;
        if let ServerFrame::Messages { messages, .. } = &r.frame {
            let seqs: Vec<u64> = messages.iter().map(|m| m.seq.get()).collect();
            if seqs.iter().all(|s| *s < pair.next_seq) {
                continue;
            }
            ensure!(
                seqs == [pair.next_seq],
                "recipient got seqs {seqs:?}, expected [{}]",
                pair.next_seq
            );
            break r.at;
        }
    };
    pair.next_seq += 1;
    Ok((
        sent_at.saturating_duration_since(start),
        frame_at.saturating_duration_since(start),
    ))
}

/// Every pair sends `per_sender` messages at once; returns the wall time
/// and every sender's time to `sent`.
async fn burst(pairs: &mut [Pair], per_sender: usize) -> anyhow::Result<(Duration, Vec<Duration>)> {
    let start = Instant::now();
    let runs = pairs.iter_mut().map(|pair| async move {
        let mut times = Vec::with_capacity(per_sender);
        for _ in 0..per_sender {
            times.push(send_one(pair).await?.0);
        }
        anyhow::Ok(times)
    });
    let results = futures::future::join_all(runs).await;
    let wall = start.elapsed();
    let mut all = Vec::new();
    for r in results {
        all.extend(r?);
    }
    Ok((wall, all))
}

/// One send alone; the time of its DynamoDB calls.
async fn moto_per_send(gw: &ProxiedGateway, pair: &mut Pair) -> anyhow::Result<Duration> {
    gw.tape.take();
    send_one(pair).await?;
    let calls = gw.tape.take();
    Ok(["ddb find_sent", "ddb get conversation", "ddb append"]
        .iter()
        .map(|c| trace::time_in(&calls, c))
        .sum())
}

pub async fn run(config: &Config) -> anyhow::Result<Figures> {
    let backends = Backends::get().await?;
    let tables = backends.fresh_tables().await?;
    let gw = gateway::start(&backends.dynamodb_endpoint, &backends.redis_url, &tables).await?;
    let one_way = config.rtt / 2;

    let mut one = pairs(&gw, &backends, 1).await?;
    let pair = &mut one[0];
    let (mut sent0, mut sent, mut frame0, mut frame) = (vec![], vec![], vec![], vec![]);
    let (mut depth, mut chain) = (0, Vec::new());
    for rep in 0..=config.reps {
        for delay in [Duration::ZERO, one_way] {
            set_all(&gw.proxies(), delay);
            gw.tape.take();
            let (s, f) = send_one(pair).await?;
            let calls = gw.tape.take();
            (depth, chain) = trace::depth(&calls);
            tracing::debug!(
                delay_ms = ms(delay),
                calls = ?calls
                    .iter()
                    .map(|c| (c.what, ms(c.end.saturating_duration_since(c.start))))
                    .collect::<Vec<_>>(),
                "one send"
            );
            if rep == 0 {
                continue;
            }
            if delay.is_zero() {
                sent0.push(s);
                frame0.push(f);
            } else {
                sent.push(s);
                frame.push(f);
            }
        }
    }
    set_all(&gw.proxies(), Duration::ZERO);
    // One sender alone, the same number of sends as each burst sender.
    let (single_wall, _) = burst(&mut one, config.sends_per_sender).await?;
    let single_per_sec = config.sends_per_sender as f64 / single_wall.as_secs_f64();

    let mut many = pairs(&gw, &backends, config.senders).await?;
    let moto_before = moto_per_send(&gw, &mut many[0]).await?;
    let (wall, times) = burst(&mut many, config.sends_per_sender).await?;
    let retries = many.iter().map(|p| p.retries).sum();
    let moto_after = moto_per_send(&gw, &mut many[0]).await?;
    for p in &many {
        p.sender.close();
        p.recipient.close();
    }
    ensure!(times.len() == config.senders * config.sends_per_sender);
    Ok(Figures {
        rtt: config.rtt,
        sent_t0: median(&sent0).unwrap_or_default(),
        sent_t: median(&sent).unwrap_or_default(),
        frame_t0: median(&frame0).unwrap_or_default(),
        frame_t: median(&frame).unwrap_or_default(),
        senders: config.senders,
        sends: times.len(),
        wall,
        sent_p50: percentile(&times, 50.0).unwrap_or_default(),
        sent_p99: percentile(&times, 99.0).unwrap_or_default(),
        single_per_sec,
        depth,
        chain,
        retries,
        moto_before,
        moto_after,
    })
}

pub fn report(f: &Figures) -> Report {
    let mut r = Report::new();
    const S: &str = "send";
    r.info(
        S,
        "sendMessage → sent",
        format!(
            "{:.1} RTTs paid ({:.0} ms at RTT {:.0} ms, {:.1} ms with none); {} sequential calls: {}",
            f.sent_round_trips(),
            ms(f.sent_t),
            ms(f.rtt),
            ms(f.sent_t0),
            f.depth,
            trace::fold(&f.chain)
        ),
    );
    r.info(
        S,
        "sendMessage → recipient's frame",
        format!(
            "{:.1} RTTs paid ({:.0} ms at RTT {:.0} ms, {:.1} ms with none)",
            f.frame_round_trips(),
            ms(f.frame_t),
            ms(f.rtt),
            ms(f.frame_t0)
        ),
    );
    r.info(
        S,
        format!("{} concurrent senders", f.senders),
        format!(
            "{:.0} sends/s = {:.2}× moto's ceiling of {:.0}/s (its DynamoDB calls take {:.1} → {:.1} ms per send as the tables grow), {:.1}× one sender alone; {} sends in {:.2} s, {} retried after internal; sent p50 {:.0} ms, p99 {:.0} ms; every frame received in order",
            f.per_sec(),
            f.per_sec() / f.moto_ceiling(),
            f.moto_ceiling(),
            ms(f.moto_before),
            ms(f.moto_after),
            f.per_sec() / f.single_per_sec,
            f.sends,
            f.wall.as_secs_f64(),
            f.retries,
            ms(f.sent_p50),
            ms(f.sent_p99)
        ),
    );
    r
}
