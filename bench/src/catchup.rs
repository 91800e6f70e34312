//! The catch-up critical path as a depth in round trips, measured in
//! pairs, beside a fair baseline; and frames against the packing bound
//! (issue 7 figures 1 and 2, issue 16 items 1 and 2).
//!
//! **Depth by paired slope.** A path of k sequential round trips takes k·d
//! longer when every round trip takes d longer; the service time of the
//! emulators and of the code itself is in both and cancels. So each case is
//! run at two injected round trips d1 and d2, interleaved, one slope
//! `(T(d2) − T(d1)) / (d2 − d1)` per pair; the median is reported with its
//! min–max over the pairs (`devices::Slopes`, the method of the devices
//! figure). T runs from the call of the catch-up to the return of its last
//! post (`caught_up` accepted by the gateway).
//!
//! Two backends:
//! - **moto** behind the project's latency proxy (one-way d/2 on every
//!   chunk, both ways), the gateway's `@connections` behind another; the
//!   function's own handler (`catch_up::handle`) over `DynamoStore` and
//!   `ApiGatewayManagement`. moto serves one request at a time, so d added
//!   to requests that queue in it overlaps the queue: the slope there holds
//!   only while its queue is short, so no case there sends more than 4
//!   requests at once.
//! - **in memory, parallel**: the in-memory adapters with every port call
//!   held d before it runs (`trace::traced_delayed`): a fixed round trip
//!   and unlimited parallelism, as DynamoDB and API Gateway are at these
//!   sizes. The memory store answers a range in one call (it does not
//!   page), so there a "several pages" case shows only its frames.
//!
//! **Design depth**, `caught_up` counted: `1 + W·(P + F) + 1` — the pending
//! query; per wave of `CATCH_UP_CONCURRENCY` conversations, the range
//! read's P pages (each page is a round trip) and the conversation's F
//! frames (posted one after the other, in seq order); then `caught_up`. The
//! cases exercise each term: one frame each (W = P = F = 1: depth 4),
//! several frames in one conversation, a range of several DynamoDB pages,
//! and more conversations than the concurrency (waves).
//!
//! **The fair baseline** (written here, never in the product) is the seed
//! followed literally by a competent engineer: the pending query; then for
//! each conversation in turn, its range read, its messages packed into
//! frames (`pack_messages`) posted in order, and the delete of its pending
//! row (a `DeleteItem` on moto; the store's ack, one call, in memory); then
//! `caught_up`. Its design depth is `1 + N·(P + F + 1) + 1`. It deletes, so
//! on moto its rows are written back after each of its runs (not timed).
//! Both run on the same data, adapters and proxies, interleaved, and the
//! ratio baseline ÷ Courier is taken per pair.
//!
//! **Packing.** Every `messages` frame the client receives is counted with
//! its bytes; the figure is frames against `N + ceil(bytes / FRAME_BYTES)`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, ensure};
use aws_sdk_dynamodb::types::AttributeValue;
use courier_aws::apigw::ApiGatewayManagement;
use courier_aws::dynamo::{DynamoStore, attr};
use courier_core::app::{App, MemoryHandles, Ports, Settings};
use courier_core::config::TableNames;
use courier_core::domain::{
    Connection, ConnectionId, ConversationId, DeviceId, UserId, now_millis,
};
use courier_core::ports::CatchUpRequest;
use courier_core::protocol::{DEFAULT_FRAME_BYTES, ServerFrame, pack_messages};
use courier_core::services::catch_up::{self as service, Ending};
use courier_local::wiring::LocalOptions;
use lambda_runtime::{Context, LambdaEvent};
use serde_json::json;

use crate::backends::{Backends, Latency, set_all};
use crate::devices::Slopes;
use crate::report::{Report, Verdict};
use crate::seed::{self, Backlog, Spec};
use crate::stats::{ms, spread};
use crate::trace::{self, Tape};
use crate::ws::{Received, WsClient};

/// One catch-up case: the backlog and the settings it runs under.
#[derive(Debug, Clone)]
pub struct Case {
    /// Which source of depth it exercises.
    pub what: &'static str,
    pub n: usize,
    pub m: usize,
    pub body_bytes: usize,
    /// `CATCH_UP_CONCURRENCY`, when not the default.
    pub concurrency: Option<usize>,
    /// `FRAME_BYTES`, when not the default.
    pub frame_bytes: Option<usize>,
    /// Run the fair baseline beside it.
    pub baseline: bool,
}

impl Case {
    const fn new(what: &'static str, n: usize, m: usize, body_bytes: usize) -> Case {
        Case {
            what,
            n,
            m,
            body_bytes,
            concurrency: None,
            frame_bytes: None,
            baseline: true,
        }
    }

    fn settings(&self) -> Settings {
        let mut s = Settings::default();
        if let Some(c) = self.concurrency {
            s.catch_up.concurrency = c;
        }
        if let Some(f) = self.frame_bytes {
            s.delivery.max_frame_bytes = f;
        }
        s.send.max_body_bytes = s.send.max_body_bytes.max(self.body_bytes);
        s
    }

    fn label(&self) -> String {
        let mut l = format!(
            "{}: N={} × M={} × {} B",
            self.what, self.n, self.m, self.body_bytes
        );
        if let Some(c) = self.concurrency {
            l.push_str(&format!(", CATCH_UP_CONCURRENCY={c}"));
        }
        if let Some(f) = self.frame_bytes {
            l.push_str(&format!(", FRAME_BYTES={}K", f / 1024));
        }
        l
    }
}

const ONE_FRAME: &str = "one frame each";
const FRAMES: &str = "several frames";
const PAGES: &str = "several pages";
const WAVES: &str = "waves";

/// Bodies of the several-pages case: 250 × 9,000 B is 2.3 MB, three 1 MB
/// pages; frames of 120 KB keep its posts (20) from drowning its pages.
fn pages_case() -> Case {
    Case {
        frame_bytes: Some(120 * 1024),
        ..Case::new(PAGES, 1, 250, 9000)
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Injected round trips of each pair on moto, and in memory.
    pub moto_rtt: (Duration, Duration),
    pub memory_rtt: (Duration, Duration),
    /// Pairs per case (after one warm-up pair on moto).
    pub pairs: usize,
    pub moto: Vec<Case>,
    pub memory: Vec<Case>,
    /// (conversations, messages, body bytes): packing only, on moto.
    pub packing: Vec<(usize, usize, usize)>,
}

impl Config {
    pub fn full() -> Self {
        Self {
            moto_rtt: (Duration::from_millis(10), Duration::from_millis(70)),
            memory_rtt: (Duration::from_millis(10), Duration::from_millis(50)),
            pairs: 8,
            // On moto, at most 4 requests at once (moto's queue stays as
            // short as a wave's): 10 parallel range reads read 3.45
            // (3.00–4.03) against a depth of 4 in one run, the queue
            // overlapping the added delay; 10 and more run in memory.
            moto: vec![
                Case::new(ONE_FRAME, 1, 3, 100),
                Case::new(ONE_FRAME, 4, 3, 100),
                Case::new(FRAMES, 1, 50, 2000),
                pages_case(),
                Case {
                    concurrency: Some(4),
                    ..Case::new(WAVES, 10, 3, 100)
                },
            ],
            memory: vec![
                Case::new(ONE_FRAME, 10, 3, 100),
                Case::new(ONE_FRAME, 100, 3, 100),
                Case::new(FRAMES, 1, 50, 2000),
                pages_case(),
                Case {
                    concurrency: Some(4),
                    ..Case::new(WAVES, 10, 3, 100)
                },
                // Past the default concurrency (128): two waves. The
                // baseline's 602 round trips are left out (its depth is
                // known exactly from the N = 100 row).
                Case {
                    baseline: false,
                    ..Case::new(WAVES, 200, 3, 100)
                },
            ],
            packing: vec![(10, 50, 1000), (3, 400, 250), (20, 20, 4000)],
        }
    }

    /// One pair of each kind of case, small delays: the smoke run asserts
    /// deliveries and the tape's structure, never times.
    pub fn smoke() -> Self {
        Self {
            moto_rtt: (Duration::from_millis(2), Duration::from_millis(6)),
            memory_rtt: (Duration::from_millis(2), Duration::from_millis(6)),
            pairs: 1,
            moto: vec![
                Case::new(ONE_FRAME, 3, 3, 100),
                Case::new(FRAMES, 1, 20, 2000),
                Case {
                    concurrency: Some(2),
                    ..Case::new(WAVES, 5, 3, 100)
                },
            ],
            memory: vec![
                Case::new(ONE_FRAME, 10, 3, 100),
                Case::new(FRAMES, 1, 20, 2000),
                pages_case(),
                Case {
                    concurrency: Some(4),
                    ..Case::new(WAVES, 10, 3, 100)
                },
            ],
            packing: vec![(4, 60, 1000)],
        }
    }
}

/// One catch-up as the client saw it.
#[derive(Debug, Clone, Default)]
pub struct Delivery {
    /// Invoke to return (last post accepted).
    pub elapsed: Duration,
    pub messages: usize,
    pub message_frames: usize,
    pub message_bytes: usize,
    /// Every frame posted: messages, `more`, `caught_up`.
    pub posts: usize,
    /// Sequential port calls on the tape, and the chain of them.
    pub depth: usize,
    pub chain: Vec<&'static str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Moto,
    Memory,
}

impl Backend {
    fn label(self) -> &'static str {
        match self {
            Backend::Moto => "moto",
            Backend::Memory => "in memory, parallel",
        }
    }
}

/// The figures of one case on one backend.
#[derive(Debug, Clone)]
pub struct CaseFigures {
    pub backend: Backend,
    pub case: Case,
    pub rtt: (Duration, Duration),
    pub courier: Slopes,
    pub baseline: Option<Slopes>,
    /// Baseline slope ÷ Courier slope, per pair.
    pub ratios: Vec<f64>,
    /// Pages of one conversation's range read (1 in memory).
    pub pages: usize,
    /// `messages` frames of one conversation.
    pub frames: usize,
    /// The last Courier run (at d2), and the baseline's.
    pub delivery: Delivery,
    pub baseline_delivery: Option<Delivery>,
}

impl CaseFigures {
    pub fn waves(&self) -> usize {
        let c = self.case.settings().catch_up.concurrency;
        self.case.n.div_ceil(c)
    }

    /// `1 + W·(P + F) + 1`.
    pub fn design(&self) -> usize {
        2 + self.waves() * (self.pages + self.frames)
    }

    /// `1 + N·(P + F + 1) + 1`.
    pub fn baseline_design(&self) -> usize {
        2 + self.case.n * (self.pages + self.frames + 1)
    }

    /// What the tape can see: one port call per range read whatever its
    /// pages.
    pub fn tape_design(&self) -> usize {
        2 + self.waves() * (1 + self.frames)
    }

    pub fn baseline_tape_design(&self) -> usize {
        2 + self.case.n * (self.frames + 2)
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

/// How the baseline deletes a conversation's pending row.
enum Delete {
    /// A `DeleteItem` through the proxied client.
    Item {
        client: aws_sdk_dynamodb::Client,
        table: String,
    },
    /// The pending store's ack through every device (one port call).
    Ack,
}

/// The fair baseline of the module doc. Benchmark only.
async fn baseline_catch_up(
    app: &App,
    user: &UserId,
    connection: &Connection,
    delete: &Delete,
) -> anyhow::Result<()> {
    let ports = &app.ports;
    let cap = app.settings.catch_up.per_conversation_cap;
    let device = &connection.device_id;
    let rows = ports.pending.list(user).await?;
    let mut messages = 0;
    for row in &rows {
        let conversation = &row.conversation_id;
        let batch = ports
            .messages
            .range(conversation, row.start_for(device), cap)
            .await?;
        for frame in pack_messages(conversation, &batch, app.settings.delivery.max_frame_bytes) {
            ports
                .gateway
                .post(&connection.connection_id, frame.as_bytes())
                .await
                .map_err(|e| anyhow!("post: {e}"))?;
        }
        match delete {
            Delete::Item { client, table } => {
                client
                    .delete_item()
                    .table_name(table)
                    .key(attr::USER_ID, AttributeValue::S(user.as_str().to_owned()))
                    .key(
                        attr::CONVERSATION_ID,
                        AttributeValue::S(conversation.as_str().to_owned()),
                    )
                    .send()
                    .await
                    .context("DeleteItem pending")?;
            }
            Delete::Ack => {
                ports
                    .pending
                    .ack(
                        user,
                        device,
                        conversation,
                        row.last_seq,
                        std::slice::from_ref(device),
                    )
                    .await?;
            }
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
        .await
        .map_err(|e| anyhow!("post: {e}"))?;
    Ok(())
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

/// A seeded case on moto.
struct MotoCase {
    backlog: Backlog,
    tables: TableNames,
    app: App,
    /// Through the proxy, for the baseline's deletes.
    proxied: aws_sdk_dynamodb::Client,
    /// Straight to moto, to write the rows back.
    direct: aws_sdk_dynamodb::Client,
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

    fn set_rtt(&self, rtt: Duration) {
        set_all(&[&self.dynamo, &self.management], rtt / 2);
    }

    /// Seeds a backlog in fresh tables; an App over the proxied adapters.
    async fn case(
        &self,
        n: usize,
        m: usize,
        body_bytes: usize,
        settings: Settings,
    ) -> anyhow::Result<MotoCase> {
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
            .verify(&DynamoStore::new(direct.clone(), tables.clone()))
            .await?;
        let clients = Backends::clients(&self.dynamo.url);
        let store = Arc::new(DynamoStore::new(clients.dynamodb(), tables.clone()));
        let (mut ports, _) = Ports::in_memory();
        ports.messages = store.clone();
        ports.conversations = store.clone();
        ports.pending = store.clone();
        ports.devices = store;
        ports.gateway = Arc::new(ApiGatewayManagement::new(
            clients.management(&self.management.url),
        ));
        let ports = trace::traced(ports, &self.tape);
        Ok(MotoCase {
            backlog,
            tables,
            app: App::new(ports, settings),
            proxied: clients.dynamodb(),
            direct,
        })
    }

    /// The catch-up function's handler, invoked as Lambda would with the
    /// event `connect` sends.
    async fn courier(&mut self, c: &MotoCase) -> anyhow::Result<Delivery> {
        let payload = json!({
            "user_id": self.reader.as_str(),
            "connection_id": self.connection.connection_id.as_str(),
            "connected_at": self.connection.connected_at,
        });
        self.tape.take();
        let start = Instant::now();
        let report = catch_up::handle(&c.app, LambdaEvent::new(payload, Context::default()))
            .await
            .map_err(|e| anyhow!("catch-up failed: {e}"))?;
        let elapsed = start.elapsed();
        ensure!(report["ending"] == "caught_up", "catch-up ended {report}");
        let frames = self.ws.until_caught_up(Duration::from_secs(120)).await?;
        let mut d = tally(elapsed, &frames, &c.backlog)?;
        (d.depth, d.chain) = trace::depth(&self.tape.take());
        Ok(d)
    }

    /// The fair baseline; the rows it deleted are written back after it
    /// (untimed), for the next run.
    async fn baseline(&mut self, c: &MotoCase) -> anyhow::Result<Delivery> {
        let delete = Delete::Item {
            client: c.proxied.clone(),
            table: c.tables.pending.clone(),
        };
        self.tape.take();
        let start = Instant::now();
        baseline_catch_up(&c.app, &self.reader, &self.connection, &delete).await?;
        let elapsed = start.elapsed();
        let frames = self.ws.until_caught_up(Duration::from_secs(600)).await?;
        seed::reset_pending(&c.direct, &c.tables, &c.backlog).await?;
        let mut d = tally(elapsed, &frames, &c.backlog)?;
        (d.depth, d.chain) = trace::depth(&self.tape.take());
        Ok(d)
    }
}

/// Slopes of Courier and of the baseline over interleaved pairs; `run`
/// does one catch-up (`true`: the baseline) at one round trip.
struct Pairs {
    courier: Slopes,
    baseline: Option<Slopes>,
    ratios: Vec<f64>,
    delivery: Delivery,
    baseline_delivery: Option<Delivery>,
}

impl Pairs {
    fn new(baseline: bool) -> Pairs {
        Pairs {
            courier: Slopes::default(),
            baseline: baseline.then(Slopes::default),
            ratios: Vec::new(),
            delivery: Delivery::default(),
            baseline_delivery: None,
        }
    }

    /// Adds one pair: Courier and the baseline at d1, then both at d2.
    fn push(&mut self, c: [Delivery; 2], b: Option<[Delivery; 2]>, rtt: (Duration, Duration)) {
        self.courier.push(c[0].elapsed, c[1].elapsed, rtt.0, rtt.1);
        (self.courier.depth, self.courier.chain) = (c[1].depth, c[1].chain.clone());
        if let (Some(slopes), Some(b)) = (self.baseline.as_mut(), b) {
            slopes.push(b[0].elapsed, b[1].elapsed, rtt.0, rtt.1);
            (slopes.depth, slopes.chain) = (b[1].depth, b[1].chain.clone());
            if let (Some(bs), Some(cs)) = (slopes.slopes.last(), self.courier.slopes.last()) {
                self.ratios.push(bs / cs.max(1e-9));
            }
            self.baseline_delivery = Some(b[1].clone());
        }
        self.delivery = c[1].clone();
    }

    fn figures(
        self,
        backend: Backend,
        case: &Case,
        rtt: (Duration, Duration),
        pages: usize,
    ) -> CaseFigures {
        let frames = self.delivery.message_frames / case.n.max(1);
        CaseFigures {
            backend,
            case: case.clone(),
            rtt,
            courier: self.courier,
            baseline: self.baseline,
            ratios: self.ratios,
            pages,
            frames,
            delivery: self.delivery,
            baseline_delivery: self.baseline_delivery,
        }
    }
}

async fn run_moto(bench: &mut Bench, config: &Config) -> anyhow::Result<Vec<CaseFigures>> {
    let rtt = config.moto_rtt;
    let mut out = Vec::new();
    for case in &config.moto {
        let c = bench
            .case(case.n, case.m, case.body_bytes, case.settings())
            .await?;
        let pages = match c.backlog.conversations.first() {
            Some(first) => seed::range_pages(&c.direct, &c.tables, first, case.m + 1).await?,
            None => 0,
        };
        let mut pairs = Pairs::new(case.baseline);
        // Pair 0 warms connection pools and moto's caches.
        for pair in 0..=config.pairs {
            let mut courier = [Delivery::default(), Delivery::default()];
            let mut baseline = [Delivery::default(), Delivery::default()];
            for i in counterbalanced(pair) {
                let d = [rtt.0, rtt.1][i];
                bench.set_rtt(d);
                courier[i] = bench.courier(&c).await?;
                if case.baseline {
                    baseline[i] = bench.baseline(&c).await?;
                }
            }
            if pair > 0 {
                pairs.push(courier, case.baseline.then_some(baseline), rtt);
            }
        }
        bench.set_rtt(Duration::ZERO);
        let f = pairs.figures(Backend::Moto, case, rtt, pages);
        tracing::info!(case = %case.label(), courier = ?f.courier.slopes, baseline = ?f.baseline.as_ref().map(|b| &b.slopes), design = f.design(), "moto catch-up case done");
        out.push(f);
    }
    Ok(out)
}

/// One catch-up (or the baseline's) on fresh in-memory stores, every port
/// call held `rtt`.
async fn memory_once(case: &Case, rtt: Duration, baseline: bool) -> anyhow::Result<Delivery> {
    let handles = MemoryHandles::new();
    let reader = UserId::parse("reader").map_err(|e| anyhow!("{e}"))?;
    let sender = UserId::parse("sender").map_err(|e| anyhow!("{e}"))?;
    let backlog = seed::seed_memory(
        &handles.store,
        &[Spec {
            reader: &reader,
            sender: &sender,
            prefix: "c",
            conversations: case.n,
            messages_per_conversation: case.m,
            body_bytes: case.body_bytes,
        }],
    )
    .await?
    .pop()
    .context("no backlog")?;
    let connection = Connection {
        device_id: DeviceId::parse("device-0").map_err(|e| anyhow!("{e}"))?,
        connection_id: ConnectionId::parse("conn-0").map_err(|e| anyhow!("{e}"))?,
        connected_at: Some(now_millis()),
    };
    handles.gateway.open(&connection.connection_id);
    let tape = Tape::new();
    let app = App::new(
        trace::traced_delayed(handles.ports(), &tape, rtt),
        case.settings(),
    );
    let start = Instant::now();
    if baseline {
        baseline_catch_up(&app, &reader, &connection, &Delete::Ack).await?;
    } else {
        let request = CatchUpRequest {
            user_id: reader.clone(),
            device_id: connection.device_id.clone(),
            connection_id: connection.connection_id.clone(),
            connected_at: connection.connected_at,
            open_conversation: None,
            device_limit: None,
            origin: Default::default(),
            correlation_id: None,
        };
        let report = service::catch_up(&app, &request, None, None)
            .await
            .map_err(|e| anyhow!("catch-up failed: {e}"))?;
        ensure!(
            report.ending == Ending::CaughtUp,
            "catch-up ended {report:?}"
        );
    }
    let elapsed = start.elapsed();
    let frames = handles
        .gateway
        .frames(&connection.connection_id)
        .into_iter()
        .map(|text| {
            Ok(Received {
                at: start,
                bytes: text.len(),
                frame: serde_json::from_str(&text)
                    .with_context(|| format!("frame {}", &text[..text.len().min(80)]))?,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut d = tally(elapsed, &frames, &backlog)?;
    (d.depth, d.chain) = trace::depth(&tape.take());
    Ok(d)
}

async fn run_memory(config: &Config) -> anyhow::Result<Vec<CaseFigures>> {
    let rtt = config.memory_rtt;
    let mut out = Vec::new();
    for case in &config.memory {
        let mut pairs = Pairs::new(case.baseline);
        for pair in 0..config.pairs {
            let mut courier = [Delivery::default(), Delivery::default()];
            let mut baseline = [Delivery::default(), Delivery::default()];
            for i in counterbalanced(pair) {
                let d = [rtt.0, rtt.1][i];
                courier[i] = memory_once(case, d, false).await?;
                if case.baseline {
                    baseline[i] = memory_once(case, d, true).await?;
                }
            }
            pairs.push(courier, case.baseline.then_some(baseline), rtt);
        }
        let f = pairs.figures(Backend::Memory, case, rtt, 1);
        tracing::info!(case = %case.label(), courier = ?f.courier.slopes, baseline = ?f.baseline.as_ref().map(|b| &b.slopes), design = f.design(), "in-memory catch-up case done");
        out.push(f);
    }
    Ok(out)
}

/// The order of a pair's two delays: small then large, then large then
/// small in the next pair (ABBA), so that whatever drifts along a run
/// (warm caches, a neighbour's load, the previous run's garbage) falls on
/// both delays alike instead of always on the first.
fn counterbalanced(pair: usize) -> [usize; 2] {
    if pair.is_multiple_of(2) {
        [0, 1]
    } else {
        [1, 0]
    }
}

/// Checks what the client got against the backlog (every message exactly
/// once, in seq order per conversation) and counts frames and bytes.
fn tally(elapsed: Duration, frames: &[Received], backlog: &Backlog) -> anyhow::Result<Delivery> {
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
                seen.entry(conversation_id)
                    .or_default()
                    .extend(messages.iter().map(|m| m.seq.get()));
            }
            ServerFrame::CaughtUp { messages, .. } => {
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

/// Runs every case of `config`: moto, then in memory, then packing. Asserts
/// deliveries (every message once, in order) and the packing bound.
pub async fn run(config: &Config) -> anyhow::Result<(Vec<CaseFigures>, Vec<PackingFigures>)> {
    let mut bench = Bench::start().await?;
    let mut cases = run_moto(&mut bench, config).await?;
    cases.extend(run_memory(config).await?);

    let mut packing = Vec::new();
    for &(n, m, body_bytes) in &config.packing {
        let c = bench.case(n, m, body_bytes, Settings::default()).await?;
        let delivery = bench.courier(&c).await?;
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
        let frame_bytes = c.case.settings().delivery.max_frame_bytes;
        let bound = c.case.n + c.delivery.message_bytes.div_ceil(frame_bytes);
        ensure!(
            c.delivery.message_frames <= bound,
            "packing: {} frames for N={} and {} bytes, bound {bound}",
            c.delivery.message_frames,
            c.case.n,
            c.delivery.message_bytes
        );
    }
    bench.ws.close();
    Ok((cases, packing))
}

/// What the smoke run asserts: every slope computable, every frame count
/// as designed, and on the in-memory backend the tape's longest chain equal
/// to the design's depth (structure, never times).
pub fn check_structure(cases: &[CaseFigures]) -> anyhow::Result<()> {
    for c in cases {
        let label = format!("{} {}", c.backend.label(), c.case.label());
        let all = c
            .courier
            .slopes
            .iter()
            .chain(c.baseline.iter().flat_map(|b| b.slopes.iter()));
        for s in all {
            ensure!(s.is_finite(), "{label}: slope {s} not computable");
        }
        ensure!(!c.courier.slopes.is_empty(), "{label}: no pair");
        ensure!(
            c.frames * c.case.n == c.delivery.message_frames,
            "{label}: {} frames for {} conversations, not the same number each",
            c.delivery.message_frames,
            c.case.n
        );
        ensure!(
            c.courier.depth == c.tape_design(),
            "{label}: {} sequential calls on the tape ({}), design {}",
            c.courier.depth,
            trace::fold(&c.courier.chain),
            c.tape_design()
        );
        if let Some(b) = &c.baseline {
            // On moto the baseline's DeleteItem bypasses the tape.
            let want = match c.backend {
                Backend::Memory => c.baseline_tape_design(),
                Backend::Moto => c.baseline_tape_design() - c.case.n,
            };
            ensure!(
                b.depth == want,
                "{label}: baseline {} sequential calls ({}), want {want}",
                b.depth,
                trace::fold(&b.chain)
            );
        }
    }
    Ok(())
}

/// Rows for the table.
pub fn report(cases: &[CaseFigures], packing: &[PackingFigures]) -> Report {
    let mut r = Report::new();
    const S: &str = "catch-up depth";
    for c in cases {
        let design = c.design();
        let formula = format!(
            "1 + {}·({} page{} + {} frame{}) + 1",
            c.waves(),
            c.pages,
            if c.pages == 1 { "" } else { "s" },
            c.frames,
            if c.frames == 1 { "" } else { "s" }
        );
        let mut value = format!(
            "Courier {} RTTs over {} pairs (RTT {:.0} / {:.0} ms), design {design} = {formula}; tape: {}",
            c.courier.text(),
            c.courier.slopes.len(),
            ms(c.rtt.0),
            ms(c.rtt.1),
            trace::fold(&c.courier.chain),
        );
        if let Some(b) = &c.baseline {
            let (m, lo, hi) = spread(&c.ratios);
            value.push_str(&format!(
                "; fair baseline {} RTTs, design {}; baseline ÷ Courier {m:.2} ({lo:.2}–{hi:.2})",
                b.text(),
                c.baseline_design(),
            ));
        }
        let met = (c.courier.median() - design as f64).abs() <= 0.5 + 0.05 * design as f64;
        r.add(
            S,
            format!("{}, {}", c.backend.label(), c.case.label()),
            value,
            format!("slope = design {design} (± 0.5 + 5 %)"),
            Verdict::of(met),
        );
    }
    if cases.iter().any(|c| c.backend == Backend::Moto) {
        r.note("catch-up depth on moto: at most 4 requests at once. moto serves one request at a time, so an added delay overlaps its queue and a slope there reads low once the queue is long (10 parallel range reads read 3.45 against 4; issue 16 measured 1.29 round trips at 300 conversations, below the bound of 2 it was measuring); depth at larger N comes from the in-memory parallel backend.");
    }
    if cases.iter().any(|c| c.backend == Backend::Memory) {
        r.note("catch-up depth in memory: the memory store answers a range in one call, so its \"several pages\" case has P = 1 and shows only the frames; the pages are counted on moto.");
    }
    const P: &str = "frames";
    for (n, m, body, frame_bytes, d) in cases
        .iter()
        .filter(|c| c.backend == Backend::Moto)
        .map(|c| {
            (
                c.case.n,
                c.case.m,
                c.case.body_bytes,
                c.case.settings().delivery.max_frame_bytes,
                &c.delivery,
            )
        })
        .chain(
            packing
                .iter()
                .map(|p| (p.n, p.m, p.body_bytes, DEFAULT_FRAME_BYTES, &p.delivery)),
        )
    {
        let bound = n + d.message_bytes.div_ceil(frame_bytes);
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
            format!("≤ N + ⌈bytes/{} KB⌉ = {bound}", frame_bytes / 1024),
            Verdict::of(d.message_frames <= bound),
        );
    }
    r
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memory_cases_have_the_designed_depth() {
        let config = Config::smoke();
        let cases = run_memory(&config).await.unwrap();
        check_structure(&cases).unwrap();
        let designs: Vec<(usize, Option<usize>)> = cases
            .iter()
            .map(|c| (c.design(), c.baseline.as_ref().map(|_| c.baseline_design())))
            .collect();
        // One frame each; 2 frames; 1 page (memory) + 20 frames; 3 waves.
        assert_eq!(
            designs,
            [(4, Some(32)), (5, Some(6)), (23, Some(24)), (8, Some(32))]
        );
        assert_eq!(report(&cases, &[]).rows.len(), cases.len());
    }
}
