//! The catch-up critical path against its physical limit, and frames
//! against the packing bound (issue 7, figures 1 and 2).
//!
//! Set-up: a user with N conversations × M pending messages seeded into
//! fresh tables on moto; the user's WebSocket open on the local gateway.
//! The catch-up function's own handler (`catch_up::handle`, the code the
//! Lambda binary runs) is called in process with an App over the real
//! adapters: `DynamoStore` on moto and `ApiGatewayManagement` on the
//! gateway's `@connections`, each behind a latency proxy.
//!
//! **Time** is taken from the call of the handler (the invoke) to its
//! return, which is when API Gateway has accepted the last post (the
//! `caught_up` frame). The client-side arrival of the last `messages` frame
//! and of `caught_up` are recorded too.
//!
//! **The bound.** With a one-way delay d on both proxies (RTT = 2d = 20 ms),
//! a path of k sequential round trips costs k·RTT more than the same path
//! with no delay. So, in the same run and on the same data, each catch-up is
//! timed with the proxies passing (T0: the emulators' and Courier's own
//! service time, serialized by moto, plus loopback) and delayed (T). The
//! 3-RTT bound is `B = 3·RTT + T0`, and the figure is `T / B`. Since that
//! ratio shrinks as T0 grows, the sequential round trips actually paid,
//! `(T − T0) / RTT`, are printed beside it: 3 is the design's limit.
//!
//! **The naive baseline** (written here, never in the product) does what a
//! straightforward loop does: list pending; for each conversation in turn,
//! read the conversation, query its messages, post each message in a frame
//! of its own; then `caught_up`. That is 2 + 2N + N·M round trips. It runs
//! on the same data, adapters and proxies, and its ratio uses the same B.
//!
//! **The code's own critical path.** moto serves one request at a time, so
//! at large N its service time dominates T0 and hides how many round trips
//! the code makes (the ratio tends to 1 whatever the code does). So each
//! case also runs on the in-memory adapters with every port call held one
//! RTT before it runs (`trace::traced_delayed`): a backend with a fixed
//! round trip and unlimited parallelism, as DynamoDB and API Gateway are at
//! these sizes. There, wall time / RTT is exactly the number of sequential
//! round trips of the catch-up code.
//!
//! **Packing.** Every `messages` frame the client receives is counted with
//! its bytes; the figure is frames against `N + ceil(bytes / 32 KB)`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, ensure};
use courier_aws::apigw::ApiGatewayManagement;
use courier_aws::dynamo::DynamoStore;
use courier_core::app::{App, Ports, Settings};
use courier_core::domain::{
    ClientMsgId, Connection, ConnectionId, Conversation, ConversationId, Message, Seq, UserId,
    now_millis,
};
use courier_core::ports::{AppendOutcome, NewMessage};
use courier_core::protocol::{DEFAULT_FRAME_BYTES, ServerFrame, WireMessage};
use courier_local::wiring::LocalOptions;
use lambda_runtime::{Context, LambdaEvent};
use serde_json::json;

use crate::backends::{Backends, Latency, set_all};
use crate::report::{Report, Verdict};
use crate::seed::{self, Backlog, Spec};
use crate::stats::{median, ms};
use crate::trace::{self, Tape};
use crate::ws::{Received, WsClient};

/// What to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// (conversations, messages per conversation), timed.
    pub cases: Vec<(usize, usize)>,
    /// Body of each timed case's messages.
    pub body_bytes: usize,
    /// Injected round trip (half of it each way on every proxied call).
    pub rtt: Duration,
    /// Timed repetitions per mode (after one warm-up).
    pub reps: usize,
    /// Repetitions of the naive baseline per mode (no warm-up: the
    /// optimized runs warmed the same connections).
    pub naive_reps: usize,
    /// (conversations, messages, body bytes): packing only, not timed.
    pub packing: Vec<(usize, usize, usize)>,
}

impl Config {
    pub fn full() -> Self {
        Self {
            cases: vec![(1, 3), (1, 50), (10, 3), (10, 50), (100, 3), (100, 50)],
            body_bytes: 100,
            rtt: Duration::from_millis(20),
            reps: 5,
            naive_reps: 1,
            packing: vec![(10, 50, 1000), (3, 400, 250), (20, 20, 4000)],
        }
    }

    pub fn smoke() -> Self {
        Self {
            cases: vec![(1, 3), (10, 3)],
            body_bytes: 100,
            rtt: Duration::from_millis(20),
            reps: 1,
            naive_reps: 1,
            packing: vec![(4, 60, 1000)],
        }
    }
}

/// One catch-up as the client saw it.
#[derive(Debug, Clone, Default)]
pub struct Delivery {
    /// Invoke to return of the handler (last post accepted).
    pub elapsed: Duration,
    /// Invoke to the client's receipt of the last `messages` frame.
    pub last_messages: Duration,
    /// Invoke to the client's receipt of `caught_up`.
    pub caught_up: Duration,
    pub messages: usize,
    pub message_frames: usize,
    pub message_bytes: usize,
    /// Every frame posted: messages, `more`, `caught_up`.
    pub posts: usize,
    /// Sequential port calls (backend round trips) on the tape, and the
    /// chain of them.
    pub depth: usize,
    pub chain: Vec<&'static str>,
}

/// The figures of one (N, M).
#[derive(Debug, Clone)]
pub struct CaseFigures {
    pub n: usize,
    pub m: usize,
    pub body_bytes: usize,
    pub t0: Duration,
    pub t: Duration,
    pub client_messages: Duration,
    pub client_caught_up: Duration,
    pub naive_t0: Duration,
    pub naive_t: Duration,
    pub rtt: Duration,
    pub delivery: Delivery,
    /// Sequential port calls of the naive loop.
    pub naive_depth: usize,
    /// Wall time on the ideal parallel backend, and the chain of calls.
    pub ideal: Duration,
    pub ideal_chain: Vec<&'static str>,
}

impl CaseFigures {
    pub fn bound(&self) -> Duration {
        3 * self.rtt + self.t0
    }
    pub fn ratio(&self) -> f64 {
        self.t.as_secs_f64() / self.bound().as_secs_f64()
    }
    pub fn naive_ratio(&self) -> f64 {
        self.naive_t.as_secs_f64() / self.bound().as_secs_f64()
    }
    /// Sequential round trips paid: the time the delay added, in RTTs.
    pub fn round_trips(&self) -> f64 {
        self.t.saturating_sub(self.t0).as_secs_f64() / self.rtt.as_secs_f64()
    }
    /// Sequential round trips of the code on the ideal backend.
    pub fn ideal_round_trips(&self) -> f64 {
        self.ideal.as_secs_f64() / self.rtt.as_secs_f64()
    }
    pub fn naive_round_trips(&self) -> f64 {
        self.naive_t.saturating_sub(self.naive_t0).as_secs_f64() / self.rtt.as_secs_f64()
    }
}

/// Frames of a packing case.
#[derive(Debug, Clone)]
pub struct PackingFigures {
    pub n: usize,
    pub m: usize,
    pub body_bytes: usize,
    pub delivery: Delivery,
}

impl PackingFigures {
    pub fn bound(&self) -> usize {
        self.n + self.delivery.message_bytes.div_ceil(DEFAULT_FRAME_BYTES)
    }
}

/// A gateway (in memory: its own catch-up finds nothing) with the reader's
/// socket open on it, and the proxies the measured catch-ups go through.
struct Bench {
    backends: Backends,
    _gateway: courier_local::wiring::Started,
    dynamo: Latency,
    management: Latency,
    reader: UserId,
    sender: UserId,
    ws: WsClient,
    connection: Connection,
    tape: Arc<Tape>,
}

impl Bench {
    async fn start() -> anyhow::Result<Bench> {
        let backends = Backends::get().await?;
        let dynamo = Latency::in_front_of(&backends.dynamodb_endpoint).await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let gateway = courier_local::wiring::start(LocalOptions::default(), listener).await?;
        let management = Latency::in_front_of(&gateway.gateway.management_endpoint()).await?;
        let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let reader = UserId::parse(&format!("reader-{tag}")).map_err(|e| anyhow!("{e}"))?;
        let sender = UserId::parse(&format!("sender-{tag}")).map_err(|e| anyhow!("{e}"))?;
        let mut ws = WsClient::connect(&gateway.gateway.ws_url(), &reader).await?;
        // The gateway's own catch-up at $connect: nothing pending there.
        ws.until_caught_up(Duration::from_secs(10)).await?;
        let connection = gateway
            .registry
            .lookup(&reader)
            .await?
            .into_iter()
            .next()
            .context("the reader's connection is not in the gateway's registry")?;
        Ok(Bench {
            backends,
            _gateway: gateway,
            dynamo,
            management,
            reader,
            sender,
            ws,
            connection,
            tape: Tape::new(),
        })
    }

    fn proxies(&self) -> [&Latency; 2] {
        [&self.dynamo, &self.management]
    }

    /// Seeds a backlog in fresh tables; returns it and an App over the
    /// proxied adapters.
    async fn case(&self, n: usize, m: usize, body_bytes: usize) -> anyhow::Result<(Backlog, App)> {
        let tables = self.backends.fresh_tables().await?;
        let direct = Backends::clients(&self.backends.dynamodb_endpoint).dynamodb();
        let prefix = format!("n{n}-m{m}-b{body_bytes}");
        let backlog = seed::seed(
            &direct,
            &tables,
            &Spec {
                reader: &self.reader,
                sender: &self.sender,
                prefix: &prefix,
                conversations: n,
                messages_per_conversation: m,
                body_bytes,
            },
        )
        .await?;
        backlog
            .verify(&DynamoStore::new(direct, tables.clone()))
            .await?;
        let clients = Backends::clients(&self.dynamo.url);
        let store = Arc::new(DynamoStore::new(clients.dynamodb(), tables));
        let (mut ports, _) = Ports::in_memory();
        ports.messages = store.clone();
        ports.conversations = store.clone();
        ports.pending = store.clone();
        ports.devices = store;
        ports.gateway = Arc::new(ApiGatewayManagement::new(
            clients.management(&self.management.url),
        ));
        let ports = trace::traced(ports, &self.tape);
        Ok((backlog, App::new(ports, Settings::default())))
    }

    /// The catch-up function's handler, invoked as Lambda would with the
    /// event `connect` sends.
    async fn optimized(&mut self, app: &App, backlog: &Backlog) -> anyhow::Result<Delivery> {
        let payload = json!({
            "user_id": self.reader.as_str(),
            "connection_id": self.connection.connection_id.as_str(),
            "connected_at": self.connection.connected_at,
        });
        self.tape.take();
        let start = Instant::now();
        let report = catch_up::handle(app, LambdaEvent::new(payload, Context::default()))
            .await
            .map_err(|e| anyhow!("catch-up failed: {e}"))?;
        let elapsed = start.elapsed();
        ensure!(report["ending"] == "caught_up", "catch-up ended {report}");
        let frames = self.ws.until_caught_up(Duration::from_secs(120)).await?;
        let mut d = tally(start, elapsed, &frames, backlog)?;
        (d.depth, d.chain) = trace::depth(&self.tape.take());
        Ok(d)
    }

    /// The baseline: everything one after the other, one post per message.
    async fn naive(&mut self, app: &App, backlog: &Backlog) -> anyhow::Result<Delivery> {
        self.tape.take();
        let start = Instant::now();
        naive_catch_up(app, &self.reader, &self.connection).await?;
        let elapsed = start.elapsed();
        let frames = self.ws.until_caught_up(Duration::from_secs(600)).await?;
        let mut d = tally(start, elapsed, &frames, backlog)?;
        (d.depth, d.chain) = trace::depth(&self.tape.take());
        Ok(d)
    }
}

/// The naive loop of the module doc. Benchmark only.
async fn naive_catch_up(app: &App, user: &UserId, connection: &Connection) -> anyhow::Result<()> {
    let ports = &app.ports;
    let cap = app.settings.catch_up.per_conversation_cap;
    let rows = ports.pending.list(user).await?;
    let mut messages = 0;
    for row in &rows {
        let conversation = ports
            .conversations
            .get(&row.conversation_id)
            .await?
            .with_context(|| format!("conversation {} missing", row.conversation_id))?;
        ensure!(conversation.is_member(user), "not a member");
        let batch = ports
            .messages
            .range(&row.conversation_id, row.first_undelivered_seq, cap)
            .await?;
        for m in &batch {
            let frame = ServerFrame::Messages {
                conversation_id: row.conversation_id.clone(),
                messages: vec![WireMessage::from(m)],
            }
            .to_json();
            ports
                .gateway
                .post(&connection.connection_id, frame.as_bytes())
                .await?;
        }
        messages += batch.len();
    }
    let done = ServerFrame::CaughtUp {
        conversations: rows.len(),
        messages,
        unreached: 0,
        request_id: None,
    }
    .to_json();
    ports
        .gateway
        .post(&connection.connection_id, done.as_bytes())
        .await?;
    Ok(())
}

/// The catch-up handler on the in-memory adapters, every port call held
/// `rtt`; returns the wall time, the chain of sequential calls and the
/// `messages` frames posted.
pub async fn ideal(
    n: usize,
    m: usize,
    body_bytes: usize,
    rtt: Duration,
) -> anyhow::Result<(Duration, Vec<&'static str>, usize)> {
    let (ports, handles) = Ports::in_memory();
    let reader = UserId::parse("reader").map_err(|e| anyhow!("{e}"))?;
    let sender = UserId::parse("sender").map_err(|e| anyhow!("{e}"))?;
    for i in 0..n {
        let id = ConversationId::parse(&format!("c{i}")).map_err(|e| anyhow!("{e}"))?;
        let created = ports
            .conversations
            .create(&Conversation {
                conversation_id: id.clone(),
                members: vec![reader.clone(), sender.clone()],
                last_seq: Seq::ZERO,
                created_at: now_millis(),
            })
            .await?;
        ensure!(created);
        for seq in 1..=m as u64 {
            let new = NewMessage {
                message: Message {
                    conversation_id: id.clone(),
                    seq: Seq(seq),
                    message_id: format!("m{i}-{seq}"),
                    client_msg_id: ClientMsgId::parse(&format!("k{i}-{seq}"))
                        .map_err(|e| anyhow!("{e}"))?,
                    sender_id: sender.clone(),
                    body: seed::body(seq as usize, body_bytes),
                    sent_at: now_millis(),
                },
                pending_for: vec![reader.clone()],
                idempotency_expires_at: i64::MAX,
                message_expires_at: None,
            };
            ensure!(ports.messages.append(&new).await? == AppendOutcome::Stored);
        }
    }
    let connection = ConnectionId::parse("ideal").map_err(|e| anyhow!("{e}"))?;
    handles.gateway.open(&connection);
    let tape = Tape::new();
    let app = App::new(
        trace::traced_delayed(ports, &tape, rtt),
        Settings::default(),
    );
    let payload = json!({"user_id": "reader", "connection_id": "ideal"});
    let start = Instant::now();
    let report = catch_up::handle(&app, LambdaEvent::new(payload, Context::default()))
        .await
        .map_err(|e| anyhow!("catch-up failed: {e}"))?;
    let elapsed = start.elapsed();
    ensure!(
        report["messages"].as_u64() == Some((n * m) as u64),
        "ideal run delivered {report}"
    );
    let frames = handles
        .gateway
        .frames(&connection)
        .iter()
        .filter(|f| f.starts_with(r#"{"type":"messages""#))
        .count();
    Ok((elapsed, trace::depth(&tape.take()).1, frames))
}

/// Checks what the client got against the backlog (every message exactly
/// once, in seq order per conversation) and counts frames and bytes.
fn tally(
    start: Instant,
    elapsed: Duration,
    frames: &[Received],
    backlog: &Backlog,
) -> anyhow::Result<Delivery> {
    let mut d = Delivery {
        elapsed,
        posts: frames.len(),
        ..Delivery::default()
    };
    let mut seen: BTreeMap<&ConversationId, Vec<u64>> = BTreeMap::new();
    for r in frames {
        match &r.frame {
            ServerFrame::Messages {
                conversation_id,
                messages,
            } => {
                d.message_frames += 1;
                d.message_bytes += r.bytes;
                d.messages += messages.len();
                d.last_messages = r.at.saturating_duration_since(start);
                seen.entry(conversation_id)
                    .or_default()
                    .extend(messages.iter().map(|m| m.seq.get()));
            }
            ServerFrame::CaughtUp { messages, .. } => {
                d.caught_up = r.at.saturating_duration_since(start);
                ensure!(
                    *messages == backlog.total_messages(),
                    "caught_up counts {messages} messages, {} were pending",
                    backlog.total_messages()
                );
            }
            ServerFrame::More { .. } => {}
            other => anyhow::bail!("unexpected frame during catch-up: {other:?}"),
        }
    }
    let want: Vec<u64> = (1..=backlog.messages_per_conversation as u64).collect();
    ensure!(
        seen.len() == backlog.conversations.len(),
        "messages arrived for {} of {} conversations",
        seen.len(),
        backlog.conversations.len()
    );
    for c in &backlog.conversations {
        let got = seen.get(c).map(Vec::as_slice).unwrap_or_default();
        ensure!(
            got == want.as_slice(),
            "conversation {c}: got seqs {:?}…, want 1..={} once each in order",
            &got[..got.len().min(10)],
            backlog.messages_per_conversation
        );
    }
    Ok(d)
}

/// Runs every case of `config`; asserts only counts and the packing bound.
pub async fn run(config: &Config) -> anyhow::Result<(Vec<CaseFigures>, Vec<PackingFigures>)> {
    let mut bench = Bench::start().await?;
    let one_way = config.rtt / 2;
    let mut cases = Vec::new();
    for &(n, m) in &config.cases {
        let (ideal, ideal_chain, _) = ideal(n, m, config.body_bytes, config.rtt).await?;
        let (backlog, app) = bench.case(n, m, config.body_bytes).await?;
        let mut t0 = Vec::new();
        let mut t = Vec::new();
        let mut client_messages = Vec::new();
        let mut client_caught_up = Vec::new();
        let mut last = Delivery::default();
        for rep in 0..=config.reps {
            for delay in [Duration::ZERO, one_way] {
                set_all(&bench.proxies(), delay);
                let d = bench.optimized(&app, &backlog).await?;
                if rep == 0 {
                    continue; // warm-up: connection pools, moto's caches
                }
                if delay.is_zero() {
                    t0.push(d.elapsed);
                } else {
                    t.push(d.elapsed);
                    client_messages.push(d.last_messages);
                    client_caught_up.push(d.caught_up);
                    last = d;
                }
            }
        }
        let mut naive_t0 = Vec::new();
        let mut naive_t = Vec::new();
        let mut naive_depth = 0;
        for _ in 0..config.naive_reps {
            for delay in [Duration::ZERO, one_way] {
                set_all(&bench.proxies(), delay);
                let d = bench.naive(&app, &backlog).await?;
                ensure!(d.messages == backlog.total_messages());
                naive_depth = d.depth;
                if delay.is_zero() {
                    naive_t0.push(d.elapsed);
                } else {
                    naive_t.push(d.elapsed);
                }
            }
        }
        set_all(&bench.proxies(), Duration::ZERO);
        ensure!(
            naive_depth == 2 + 2 * n + n * m,
            "the naive baseline made {naive_depth} sequential calls, its definition says 2 + 2N + N·M"
        );
        let f = CaseFigures {
            n,
            m,
            body_bytes: config.body_bytes,
            t0: median(&t0).unwrap_or_default(),
            t: median(&t).unwrap_or_default(),
            client_messages: median(&client_messages).unwrap_or_default(),
            client_caught_up: median(&client_caught_up).unwrap_or_default(),
            naive_t0: median(&naive_t0).unwrap_or_default(),
            naive_t: median(&naive_t).unwrap_or_default(),
            rtt: config.rtt,
            delivery: last,
            naive_depth,
            ideal,
            ideal_chain,
        };
        tracing::info!(
            n,
            m,
            t0_ms = ms(f.t0),
            t_ms = ms(f.t),
            ratio = f.ratio(),
            round_trips = f.round_trips(),
            ideal_round_trips = f.ideal_round_trips(),
            naive_ratio = f.naive_ratio(),
            "catch-up case done"
        );
        cases.push(f);
    }

    let mut packing = Vec::new();
    for &(n, m, body_bytes) in &config.packing {
        let (backlog, app) = bench.case(n, m, body_bytes).await?;
        let delivery = bench.optimized(&app, &backlog).await?;
        let p = PackingFigures {
            n,
            m,
            body_bytes,
            delivery,
        };
        ensure!(
            p.delivery.message_frames <= p.bound(),
            "packing: {} frames for N={n} and {} bytes, bound {}",
            p.delivery.message_frames,
            p.delivery.message_bytes,
            p.bound()
        );
        packing.push(p);
    }
    // The timed cases are packing cases too.
    for c in &cases {
        let bound = c.n + c.delivery.message_bytes.div_ceil(DEFAULT_FRAME_BYTES);
        ensure!(
            c.delivery.message_frames <= bound,
            "packing: {} frames for N={} and {} bytes, bound {bound}",
            c.delivery.message_frames,
            c.n,
            c.delivery.message_bytes
        );
    }
    bench.ws.close();
    Ok((cases, packing))
}

/// Rows for the table.
pub fn report(cases: &[CaseFigures], packing: &[PackingFigures]) -> Report {
    let mut r = Report::new();
    const S: &str = "catch-up";
    for c in cases {
        let target = match c.n {
            10 => Some(1.25),
            100 => Some(1.5),
            _ => None,
        };
        let label = format!("N={} × M={}", c.n, c.m);
        let value = format!(
            "T/B = {:.2} (T {:.0} ms, B = 3×{:.0} + T0 {:.0} ms), {:.1} RTTs paid; naive {:.1}× B ({:.0} RTTs paid, {} sequential calls); code's critical path {:.1} RTTs ({})",
            c.ratio(),
            ms(c.t),
            ms(c.rtt),
            ms(c.t0),
            c.round_trips(),
            c.naive_ratio(),
            c.naive_round_trips(),
            c.naive_depth,
            c.ideal_round_trips(),
            trace::fold(&c.ideal_chain),
        );
        match target {
            Some(x) => r.add(
                S,
                label,
                value,
                format!("≤ {x} × B"),
                Verdict::of(c.ratio() <= x),
            ),
            None => r.info(S, label, value),
        }
        r.info(
            S,
            format!("N={} × M={} client side", c.n, c.m),
            format!(
                "last messages frame at {:.2} B, caught_up at {:.2} B",
                c.client_messages.as_secs_f64() / c.bound().as_secs_f64(),
                c.client_caught_up.as_secs_f64() / c.bound().as_secs_f64(),
            ),
        );
    }
    const P: &str = "frames";
    for (n, m, body, d) in cases
        .iter()
        .map(|c| (c.n, c.m, c.body_bytes, &c.delivery))
        .chain(
            packing
                .iter()
                .map(|p| (p.n, p.m, p.body_bytes, &p.delivery)),
        )
    {
        let bound = n + d.message_bytes.div_ceil(DEFAULT_FRAME_BYTES);
        r.add(
            P,
            format!("N={n} × M={m}, {body} B bodies"),
            format!(
                "{} messages frames for {} messages, {} KB ({} posts with caught_up/more)",
                d.message_frames,
                d.messages,
                d.message_bytes / 1024,
                d.posts
            ),
            format!("≤ N + ⌈bytes/32 KB⌉ = {bound}"),
            Verdict::of(d.message_frames <= bound),
        );
    }
    r
}
