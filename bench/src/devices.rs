//! Several devices per user (DESIGN.md §8): what they cost on the critical
//! paths, as round trips.
//!
//! All three figures run the services in process on the in-memory adapters,
//! with port calls held a fixed delay d before they run
//! (`trace::traced_delayed`): a backend with a fixed round trip and
//! unlimited parallelism, as DynamoDB and API Gateway are at these sizes.
//! There, the time a run takes grows by d for every call on its longest
//! chain of dependent calls, so the **depth** of a path is the slope of its
//! wall time between two delays, `(T(d2) − T(d1)) / (d2 − d1)`: the service
//! time of the code itself (CPU, in-memory stores) is in both runs and
//! cancels. Runs at d1 and d2 are interleaved in pairs, one slope per pair;
//! the median is reported with its min–max over the pairs. The tape's own
//! count of the longest chain of sequential calls (`trace::depth`) is given
//! beside it: the slope measures, the tape explains.
//!
//! 1. **Catch-up of one device.** A user with 1 linked device, and one with
//!    3 (the other two offline, each holding a cursor in every pending row);
//!    N conversations × 3 messages pending for the device that connects.
//!    Open → `caught_up` accepted. The design's depth is 4 (pending query →
//!    range reads → posts → `caught_up`); the claim is that the 3-device
//!    user's depth equals the 1-device user's: the cursors come with the
//!    rows, so reading them adds no round trip. `PENDING_CLEAR=post` is run
//!    too: there catch-up also lists the linked devices (beside the pending
//!    query) and settles after the posts.
//! 2. **Live fan-out.** One recipient with 1 and with 5 connected devices;
//!    `send_message` → the last device's frame accepted by the gateway. Only
//!    the gateway's calls are delayed, so the slope counts sequential posts:
//!    1 when the posts go out together. Beside it, the obvious loop a
//!    competent engineer writes first — read the registry, then `for`
//!    each connection, `post(...).await` — whose slope is one post per
//!    device, and Courier's own `deliver_live`, the same scope as that loop.
//! 3. **The tapped conversation first.** 100 conversations pending for a
//!    device; catch-up start → the first frame of conversation X accepted,
//!    with `open_conversation = Some(X)` and without, at one delay, runs
//!    interleaved. X is the last conversation in the order the pending query
//!    returns them, so without the parameter nothing favours it. 3 messages
//!    per conversation (every conversation reads at once) and 50 (catch-up's
//!    byte budget lets about 45 read at once at the defaults, so the rest
//!    queue). The bound with the parameter is 3 delays: pending query, X's
//!    range read, X's post.
//!
//! Every run starts on fresh in-memory stores (`PENDING_CLEAR=post` settles
//! what it posted, so a second run would find less to deliver).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure};
use async_trait::async_trait;
use courier_core::app::{App, MemoryHandles, Ports, Settings};
use courier_core::config::PendingClear;
use courier_core::domain::{
    ClientMsgId, Connection, ConnectionId, Conversation, ConversationId, CorrelationId, DeviceId,
    Message, Seq, UserId, now_millis,
};
use courier_core::ports::{CatchUpRequest, ConnectionInfo, Gateway, PostError};
use courier_core::protocol::{ServerFrame, WireMessage};
use courier_core::services::catch_up::{self, Ending};
use courier_core::services::{Answer, connect, delivery, send};

use crate::report::{Report, Verdict};
use crate::seed::{self, Spec};
use crate::stats::{ms, spread};
use crate::trace::{self, Tape};

/// What to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// The two injected delays of each pair.
    pub d1: Duration,
    pub d2: Duration,
    /// Pairs per case (catch-up depth, fan-out), and interleaved repetitions
    /// per variant of the tapped-conversation figure.
    pub pairs: usize,
    /// Conversations pending in the catch-up depth cases.
    pub catch_up_sizes: Vec<usize>,
    /// Linked devices of the users compared (the first is the baseline).
    pub linked: Vec<usize>,
    pub modes: Vec<PendingClear>,
    /// Connected devices of the recipients compared (the first is the
    /// baseline).
    pub fan_out: Vec<usize>,
    /// Conversations pending in the tapped-conversation figure, and the
    /// messages in each, per case.
    pub tapped_conversations: usize,
    pub tapped_messages: Vec<usize>,
    /// The delay of the tapped-conversation figure.
    pub tapped_delay: Duration,
}

impl Config {
    pub fn full() -> Self {
        Self {
            d1: Duration::from_millis(10),
            d2: Duration::from_millis(40),
            pairs: 7,
            catch_up_sizes: vec![10, 100],
            linked: vec![1, 3],
            modes: vec![PendingClear::Ack, PendingClear::Post],
            fan_out: vec![1, 5],
            tapped_conversations: 100,
            tapped_messages: vec![3, 50],
            tapped_delay: Duration::from_millis(20),
        }
    }

    /// One pair, small sizes: the smoke run asserts the tape's structure.
    pub fn smoke() -> Self {
        Self {
            d1: Duration::from_millis(2),
            d2: Duration::from_millis(6),
            pairs: 1,
            catch_up_sizes: vec![10],
            linked: vec![1, 3],
            modes: vec![PendingClear::Ack, PendingClear::Post],
            fan_out: vec![1, 5],
            tapped_conversations: 10,
            tapped_messages: vec![3],
            tapped_delay: Duration::from_millis(5),
        }
    }
}

/// Messages per conversation in the catch-up depth cases.
const CATCH_UP_MESSAGES: usize = 3;
const BODY_BYTES: usize = 100;
/// The design's catch-up depth: pending query → range reads → posts →
/// `caught_up`.
pub const DESIGN_DEPTH: usize = 4;

/// Slopes of one case, one per pair, in delays (round trips).
#[derive(Debug, Clone, Default)]
pub struct Slopes {
    pub slopes: Vec<f64>,
    /// Wall times at d2.
    pub at_d2: Vec<Duration>,
    /// The tape's longest chain of sequential calls, at d2.
    pub depth: usize,
    pub chain: Vec<&'static str>,
}

impl Slopes {
    /// One pair: wall times `t1` at delay `d1` and `t2` at `d2`.
    pub fn push(&mut self, t1: Duration, t2: Duration, d1: Duration, d2: Duration) {
        self.slopes
            .push((t2.as_secs_f64() - t1.as_secs_f64()) / (d2 - d1).as_secs_f64());
        self.at_d2.push(t2);
    }

    pub fn median(&self) -> f64 {
        spread(&self.slopes).0
    }

    /// `median (min–max)` over the pairs.
    pub fn text(&self) -> String {
        let (m, lo, hi) = spread(&self.slopes);
        format!("{m:.2} ({lo:.2}–{hi:.2})")
    }
}

#[derive(Debug, Clone)]
pub struct CatchUpCase {
    pub mode: PendingClear,
    pub n: usize,
    pub linked: usize,
    pub slopes: Slopes,
}

#[derive(Debug, Clone)]
pub struct FanOutCase {
    pub devices: usize,
    /// `send_message` → last device's frame.
    pub send: Slopes,
    /// Courier's `deliver_live` alone, and the sequential loop.
    pub live: Slopes,
    pub sequential: Slopes,
}

#[derive(Debug, Clone)]
pub struct TappedCase {
    pub conversations: usize,
    pub messages: usize,
    pub delay: Duration,
    /// Catch-up start → X's first frame, with and without the parameter,
    /// and the whole catch-up (→ `caught_up`) for each.
    pub with: Vec<Duration>,
    pub without: Vec<Duration>,
    pub with_total: Vec<Duration>,
    pub without_total: Vec<Duration>,
    /// without ÷ with, per repetition.
    pub ratios: Vec<f64>,
}

#[derive(Debug, Clone, Default)]
pub struct Figures {
    pub d1: Duration,
    pub d2: Duration,
    pub catch_up: Vec<CatchUpCase>,
    pub fan_out: Vec<FanOutCase>,
    pub tapped: Vec<TappedCase>,
}

/// The in-memory gateway with the time every post was accepted.
struct Stamped {
    inner: Arc<dyn Gateway>,
    log: Arc<Mutex<Vec<(ConnectionId, Instant, String)>>>,
}

impl Stamped {
    fn around(inner: Arc<dyn Gateway>) -> (Arc<Stamped>, FrameLog) {
        let log = Arc::new(Mutex::new(Vec::new()));
        (
            Arc::new(Stamped {
                inner,
                log: log.clone(),
            }),
            FrameLog(log),
        )
    }
}

/// What [`Stamped`] recorded.
#[derive(Clone)]
struct FrameLog(Arc<Mutex<Vec<(ConnectionId, Instant, String)>>>);

impl FrameLog {
    fn take(&self) -> Vec<(ConnectionId, Instant, String)> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

#[async_trait]
impl Gateway for Stamped {
    async fn post(&self, connection: &ConnectionId, data: &[u8]) -> Result<(), PostError> {
        self.inner.post(connection, data).await?;
        let text = String::from_utf8_lossy(data).into_owned();
        self.log.lock().unwrap_or_else(|e| e.into_inner()).push((
            connection.clone(),
            Instant::now(),
            text,
        ));
        Ok(())
    }
    async fn get(&self, connection: &ConnectionId) -> Result<Option<ConnectionInfo>, PostError> {
        self.inner.get(connection).await
    }
    async fn delete(&self, connection: &ConnectionId) -> Result<(), PostError> {
        self.inner.delete(connection).await
    }
}

fn parse<T, E: std::fmt::Display>(
    kind: &str,
    raw: &str,
    f: impl Fn(&str) -> Result<T, E>,
) -> anyhow::Result<T> {
    f(raw).map_err(|e| anyhow!("{kind} {raw:?}: {e}"))
}

fn user(raw: &str) -> anyhow::Result<UserId> {
    parse("user", raw, UserId::parse)
}

fn device(raw: &str) -> anyhow::Result<DeviceId> {
    parse("device", raw, DeviceId::parse)
}

fn connection_id(raw: &str) -> anyhow::Result<ConnectionId> {
    parse("connection", raw, ConnectionId::parse)
}

/// One reader with `linked` devices (device 0 connected, the others linked
/// then gone, each holding a cursor at seq 1 in every row) and `n` × `m`
/// pending, on fresh in-memory stores.
struct Backlog {
    handles: MemoryHandles,
    settings: Settings,
    reader: UserId,
    connection: Connection,
    conversations: Vec<ConversationId>,
    messages: usize,
}

async fn backlog(mode: PendingClear, linked: usize, n: usize, m: usize) -> anyhow::Result<Backlog> {
    let handles = MemoryHandles::new();
    let mut settings = Settings::default();
    settings.delivery.pending_clear = mode;
    let app = App::new(handles.ports(), settings.clone());
    let reader = user("reader")?;
    let sender = user("sender")?;
    let mut connections = Vec::with_capacity(linked);
    for k in 0..linked {
        let c = Connection {
            device_id: device(&format!("device-{k}"))?,
            connection_id: connection_id(&format!("conn-{k}"))?,
            connected_at: Some(now_millis()),
        };
        let done = connect::connect(&app, &reader, &c, None, CorrelationId::new()).await;
        ensure!(done.registered, "device {k} not registered: {done:?}");
        connections.push(c);
    }
    let backlogs = seed::seed_memory(
        &handles.store,
        &[Spec {
            reader: &reader,
            sender: &sender,
            prefix: "c",
            conversations: n,
            messages_per_conversation: m,
            body_bytes: BODY_BYTES,
        }],
    )
    .await?;
    let conversations = backlogs
        .into_iter()
        .next()
        .map(|b| b.conversations)
        .unwrap_or_default();
    let ids: Vec<DeviceId> = connections.iter().map(|c| c.device_id.clone()).collect();
    for c in &connections[1..] {
        connect::disconnect(&app.ports, &reader, &c.device_id, &c.connection_id).await;
        for conversation in &conversations {
            app.ports
                .pending
                .ack(&reader, &c.device_id, conversation, Seq(1), &ids)
                .await?;
        }
    }
    let rows = app.ports.pending.list(&reader).await?;
    ensure!(
        rows.len() == n && rows.iter().all(|r| r.cursors.len() == linked - 1),
        "{} rows, cursors {:?}: want {n} rows with {} cursors each",
        rows.len(),
        rows.iter().map(|r| r.cursors.len()).collect::<Vec<_>>(),
        linked - 1
    );
    let connection = connections.swap_remove(0);
    handles.gateway.open(&connection.connection_id);
    Ok(Backlog {
        handles,
        settings,
        reader,
        connection,
        conversations,
        messages: m,
    })
}

/// One catch-up of the backlog's connected device with every port call held
/// `delay`.
struct CatchUpRun {
    elapsed: Duration,
    /// Start → the first `messages` frame of `watch`.
    watched: Option<Duration>,
    /// The conversation of the first `messages` frame accepted.
    first: Option<ConversationId>,
    depth: usize,
    chain: Vec<&'static str>,
}

async fn catch_up_once(
    b: &Backlog,
    delay: Duration,
    open: Option<ConversationId>,
    watch: Option<&ConversationId>,
) -> anyhow::Result<CatchUpRun> {
    let (gateway, log) = Stamped::around(Arc::new(b.handles.gateway.clone()));
    let tape = Tape::new();
    let ports = trace::traced_delayed(b.handles.ports().with_gateway(gateway), &tape, delay);
    let app = App::new(ports, b.settings.clone());
    let request = CatchUpRequest {
        user_id: b.reader.clone(),
        device_id: b.connection.device_id.clone(),
        connection_id: b.connection.connection_id.clone(),
        connected_at: b.connection.connected_at,
        open_conversation: open,
        device_limit: None,
        origin: Default::default(),
        correlation_id: None,
    };
    let start = Instant::now();
    let report = catch_up::catch_up(&app, &request, None, None)
        .await
        .map_err(|e| anyhow!("catch-up failed: {e}"))?;
    let elapsed = start.elapsed();
    let want = b.conversations.len() * b.messages;
    ensure!(
        report.ending == Ending::CaughtUp && report.messages == want,
        "catch-up ended {:?} with {} messages, {want} pending",
        report.ending,
        report.messages
    );
    let mut watched = None;
    let mut first = None;
    for (_, at, text) in log.take() {
        if let Ok(ServerFrame::Messages {
            conversation_id, ..
        }) = serde_json::from_str::<ServerFrame>(&text)
        {
            if watched.is_none() && Some(&conversation_id) == watch {
                watched = Some(at.saturating_duration_since(start));
            }
            first.get_or_insert(conversation_id);
        }
    }
    let (depth, chain) = trace::depth(&tape.take());
    Ok(CatchUpRun {
        elapsed,
        watched,
        first,
        depth,
        chain,
    })
}

async fn run_catch_up(config: &Config) -> anyhow::Result<Vec<CatchUpCase>> {
    let mut out = Vec::new();
    for &mode in &config.modes {
        for &n in &config.catch_up_sizes {
            for &linked in &config.linked {
                let mut slopes = Slopes::default();
                for _ in 0..config.pairs {
                    let b1 = backlog(mode, linked, n, CATCH_UP_MESSAGES).await?;
                    let r1 = catch_up_once(&b1, config.d1, None, None).await?;
                    let b2 = backlog(mode, linked, n, CATCH_UP_MESSAGES).await?;
                    let r2 = catch_up_once(&b2, config.d2, None, None).await?;
                    slopes.push(r1.elapsed, r2.elapsed, config.d1, config.d2);
                    (slopes.depth, slopes.chain) = (r2.depth, r2.chain);
                }
                tracing::info!(?mode, n, linked, slopes = ?slopes.slopes, depth = slopes.depth, "catch-up depth case done");
                out.push(CatchUpCase {
                    mode,
                    n,
                    linked,
                    slopes,
                });
            }
        }
    }
    Ok(out)
}

/// A recipient with `devices` connected, a sender, and their conversation.
struct FanOut {
    handles: MemoryHandles,
    sender: UserId,
    sender_device: DeviceId,
    recipient: UserId,
    connections: Vec<ConnectionId>,
    conversation: ConversationId,
}

async fn fan_out_setup(devices: usize) -> anyhow::Result<FanOut> {
    let handles = MemoryHandles::new();
    let app = App::new(handles.ports(), Settings::default());
    let sender = user("sender")?;
    let recipient = user("recipient")?;
    let conversation = parse("conversation", "fan", ConversationId::parse)?;
    ensure!(
        app.ports
            .conversations
            .create(&Conversation {
                conversation_id: conversation.clone(),
                members: vec![sender.clone(), recipient.clone()],
                last_seq: Seq::ZERO,
                created_at: now_millis(),
            })
            .await?
    );
    let mut connections = Vec::with_capacity(devices);
    for k in 0..devices {
        let c = Connection {
            device_id: device(&format!("device-{k}"))?,
            connection_id: connection_id(&format!("conn-{k}"))?,
            connected_at: Some(now_millis()),
        };
        handles.gateway.open(&c.connection_id);
        let done = connect::connect(&app, &recipient, &c, None, CorrelationId::new()).await;
        ensure!(done.registered, "device {k} not registered: {done:?}");
        connections.push(c.connection_id);
    }
    Ok(FanOut {
        handles,
        sender,
        sender_device: device("phone")?,
        recipient,
        connections,
        conversation,
    })
}

/// An App whose gateway calls alone are held `delay`, every call traced.
fn gateway_delayed(f: &FanOut, delay: Duration) -> (App, FrameLog, Arc<Tape>) {
    let (gateway, log) = Stamped::around(Arc::new(f.handles.gateway.clone()));
    let tape = Tape::new();
    let ports = f.handles.ports().with_gateway(gateway);
    let delayed = trace::traced_delayed(ports.clone(), &tape, delay);
    let mut traced = trace::traced(ports, &tape);
    traced.gateway = delayed.gateway;
    (App::new(traced, Settings::default()), log, tape)
}

/// Start → the last of the recipient's connections accepting its frame;
/// every connection must have got exactly one.
fn last_frame(f: &FanOut, log: &FrameLog, start: Instant) -> anyhow::Result<Duration> {
    let frames = log.take();
    let mut last = start;
    for c in &f.connections {
        let got: Vec<Instant> = frames
            .iter()
            .filter(|(to, _, _)| to == c)
            .map(|(_, at, _)| *at)
            .collect();
        ensure!(got.len() == 1, "{c} got {} frames, want 1", got.len());
        last = last.max(got[0]);
    }
    Ok(last.saturating_duration_since(start))
}

/// The baseline: the registry, then one post after the other. Benchmark
/// only.
async fn sequential_live(ports: &Ports, user: &UserId, frame: &str) -> anyhow::Result<()> {
    for c in ports.registry.lookup(user).await? {
        ports
            .gateway
            .post(&c.connection_id, frame.as_bytes())
            .await?;
    }
    Ok(())
}

/// Which of the three paths one fan-out run times.
#[derive(Clone, Copy)]
enum Path {
    Send,
    Live,
    Sequential,
}

struct FanOutRun {
    elapsed: Duration,
    /// Sequential gateway posts on the tape's longest chain.
    posts_in_chain: usize,
}

async fn fan_out_once(f: &FanOut, delay: Duration, path: Path) -> anyhow::Result<FanOutRun> {
    let (app, log, tape) = gateway_delayed(f, delay);
    let key = uuid::Uuid::new_v4().simple().to_string();
    let frame = ServerFrame::Messages {
        conversation_id: f.conversation.clone(),
        messages: vec![WireMessage::from(&Message {
            conversation_id: f.conversation.clone(),
            seq: Seq(1),
            message_id: key.clone(),
            client_msg_id: parse("client_msg_id", &key, ClientMsgId::parse)?,
            sender_id: f.sender.clone(),
            body: "hello".into(),
            sent_at: now_millis(),
        })],
    }
    .to_json();
    let start = Instant::now();
    match path {
        Path::Send => {
            let answer = send::send_message(
                &app,
                &f.sender,
                &f.sender_device,
                &f.conversation,
                &parse("client_msg_id", &key, ClientMsgId::parse)?,
                "hello",
                None,
            )
            .await
            .map_err(|e| anyhow!("send failed: {e}"))?;
            ensure!(
                matches!(answer, Answer::Done(ServerFrame::Sent { .. })),
                "send answered {answer:?}"
            );
        }
        Path::Live => {
            let report = delivery::deliver_live(
                &app.ports,
                &app.settings.delivery,
                &f.recipient,
                std::slice::from_ref(&frame),
                None,
            )
            .await;
            ensure!(report.devices.len() == f.connections.len());
        }
        Path::Sequential => sequential_live(&app.ports, &f.recipient, &frame).await?,
    }
    let elapsed = last_frame(f, &log, start)?;
    let (_, chain) = trace::depth(&tape.take());
    Ok(FanOutRun {
        elapsed,
        posts_in_chain: chain.iter().filter(|c| **c == "post").count(),
    })
}

async fn run_fan_out(config: &Config) -> anyhow::Result<Vec<FanOutCase>> {
    let mut out = Vec::new();
    for &devices in &config.fan_out {
        let f = fan_out_setup(devices).await?;
        let mut case = FanOutCase {
            devices,
            send: Slopes::default(),
            live: Slopes::default(),
            sequential: Slopes::default(),
        };
        // One warm-up of each path.
        for path in [Path::Send, Path::Live, Path::Sequential] {
            fan_out_once(&f, config.d1, path).await?;
        }
        for _ in 0..config.pairs {
            for (path, slopes) in [
                (Path::Send, &mut case.send),
                (Path::Live, &mut case.live),
                (Path::Sequential, &mut case.sequential),
            ] {
                let r1 = fan_out_once(&f, config.d1, path).await?;
                let r2 = fan_out_once(&f, config.d2, path).await?;
                slopes.push(r1.elapsed, r2.elapsed, config.d1, config.d2);
                slopes.depth = r2.posts_in_chain;
            }
        }
        tracing::info!(devices, send = ?case.send.slopes, sequential = ?case.sequential.slopes, "fan-out case done");
        out.push(case);
    }
    Ok(out)
}

async fn run_tapped(config: &Config) -> anyhow::Result<Vec<TappedCase>> {
    let mut out = Vec::new();
    for &m in &config.tapped_messages {
        let n = config.tapped_conversations;
        let mut case = TappedCase {
            conversations: n,
            messages: m,
            delay: config.tapped_delay,
            with: Vec::new(),
            without: Vec::new(),
            with_total: Vec::new(),
            without_total: Vec::new(),
            ratios: Vec::new(),
        };
        for _ in 0..config.pairs {
            let mut pair = [Duration::ZERO; 2];
            for (i, opened) in [true, false].into_iter().enumerate() {
                let b = backlog(PendingClear::Ack, 1, n, m).await?;
                // Last in the pending query's order: nothing favours it
                // without the parameter.
                let x = b
                    .conversations
                    .iter()
                    .max()
                    .cloned()
                    .ok_or_else(|| anyhow!("no conversations"))?;
                let open = opened.then(|| x.clone());
                let r = catch_up_once(&b, config.tapped_delay, open, Some(&x)).await?;
                let at = r.watched.ok_or_else(|| anyhow!("no frame of {x}"))?;
                if opened {
                    ensure!(
                        r.first.as_ref() == Some(&x),
                        "opened on {x}, the first frame was {:?}'s",
                        r.first
                    );
                    case.with.push(at);
                    case.with_total.push(r.elapsed);
                } else {
                    case.without.push(at);
                    case.without_total.push(r.elapsed);
                }
                pair[i] = at;
            }
            case.ratios
                .push(pair[1].as_secs_f64() / pair[0].as_secs_f64().max(1e-9));
        }
        tracing::info!(n, m, ratios = ?case.ratios, "tapped case done");
        out.push(case);
    }
    Ok(out)
}

pub async fn run(config: &Config) -> anyhow::Result<Figures> {
    Ok(Figures {
        d1: config.d1,
        d2: config.d2,
        catch_up: run_catch_up(config).await?,
        fan_out: run_fan_out(config).await?,
        tapped: run_tapped(config).await?,
    })
}

/// What the smoke run asserts: structure from the tape, never times.
pub fn check_structure(f: &Figures) -> anyhow::Result<()> {
    // `PENDING_CLEAR=post` is measured, not asserted: there a device of a
    // user whose other devices are behind re-reads the row after settling
    // (`pending get`), one round trip more than a single device pays.
    for c in f.catch_up.iter().filter(|c| c.mode == PendingClear::Ack) {
        let base = f
            .catch_up
            .iter()
            .find(|b| b.mode == c.mode && b.n == c.n && b.linked == 1)
            .ok_or_else(|| anyhow!("no 1-device case for {:?} N={}", c.mode, c.n))?;
        ensure!(
            c.slopes.depth == base.slopes.depth,
            "{:?} N={}: {} linked devices make {} sequential calls ({}), 1 makes {} ({})",
            c.mode,
            c.n,
            c.linked,
            c.slopes.depth,
            trace::fold(&c.slopes.chain),
            base.slopes.depth,
            trace::fold(&base.slopes.chain)
        );
        ensure!(
            c.slopes.depth == DESIGN_DEPTH,
            "ack mode N={}: {} sequential calls ({}), the design's depth is {DESIGN_DEPTH}",
            c.n,
            c.slopes.depth,
            trace::fold(&c.slopes.chain)
        );
    }
    for c in &f.fan_out {
        ensure!(
            c.send.depth == 1 && c.live.depth == 1,
            "{} devices: {} / {} sequential posts on send / deliver_live, want 1",
            c.devices,
            c.send.depth,
            c.live.depth
        );
        ensure!(
            c.sequential.depth == c.devices,
            "the sequential loop made {} sequential posts for {} devices",
            c.sequential.depth,
            c.devices
        );
    }
    ensure!(f.tapped.iter().all(|t| !t.with.is_empty()));
    Ok(())
}

/// Rows for the table.
pub fn report(f: &Figures) -> Report {
    let mut r = Report::new();
    const S: &str = "devices";
    let delays = format!("d = {:.0} / {:.0} ms", ms(f.d1), ms(f.d2));
    for c in &f.catch_up {
        let base = f
            .catch_up
            .iter()
            .find(|b| b.mode == c.mode && b.n == c.n && b.linked == 1);
        let mode = match c.mode {
            PendingClear::Ack => "ack",
            PendingClear::Post => "post",
        };
        let label = format!(
            "catch-up depth, {} linked device{}, N={} × {CATCH_UP_MESSAGES}, PENDING_CLEAR={mode}",
            c.linked,
            if c.linked == 1 { "" } else { "s" },
            c.n
        );
        let value = format!(
            "slope {} round trips over {} pairs ({delays}); tape: {} sequential calls ({}); T(d2) median {:.0} ms",
            c.slopes.text(),
            c.slopes.slopes.len(),
            c.slopes.depth,
            trace::fold(&c.slopes.chain),
            ms(crate::stats::median(&c.slopes.at_d2).unwrap_or_default())
        );
        match base {
            Some(b) if c.linked != 1 => {
                let same = c.slopes.depth == b.slopes.depth
                    && (c.slopes.median() - b.slopes.median()).abs() < 0.5;
                r.add(
                    S,
                    label,
                    format!(
                        "{value}; 1 device: slope {:.2}, {} calls",
                        b.slopes.median(),
                        b.slopes.depth
                    ),
                    "= 1 device's depth",
                    Verdict::of(same),
                );
            }
            _ => r.info(S, label, format!("{value}; design: {DESIGN_DEPTH} (ack)")),
        }
    }
    let one = f.fan_out.first();
    for c in &f.fan_out {
        let ratio = one.filter(|o| o.devices != c.devices).map(|o| {
            let ratios: Vec<f64> = c
                .send
                .at_d2
                .iter()
                .zip(&o.send.at_d2)
                .map(|(a, b)| a.as_secs_f64() / b.as_secs_f64().max(1e-9))
                .collect();
            let (m, lo, hi) = spread(&ratios);
            format!(
                "; T{}/T{} at d2 = {m:.2} ({lo:.2}–{hi:.2})",
                c.devices, o.devices
            )
        });
        let value = format!(
            "send_message → last device's frame: slope {} posts ({} on the tape){}; deliver_live alone {}; sequential for-loop {} ({} on the tape)",
            c.send.text(),
            c.send.depth,
            ratio.unwrap_or_default(),
            c.live.text(),
            c.sequential.text(),
            c.sequential.depth,
        );
        r.add(
            S,
            format!(
                "live fan-out to {} connected device(s), gateway post delayed ({delays})",
                c.devices
            ),
            value,
            "slope ≈ 1 post",
            Verdict::of(c.send.median() < 1.5),
        );
    }
    for t in &f.tapped {
        let d = t.delay.as_secs_f64();
        let med = |v: &[Duration]| crate::stats::median(v).unwrap_or_default();
        let (m, lo, hi) = spread(&t.ratios);
        r.info(
            S,
            format!(
                "tapped conversation's first frame, {} × {} pending, d = {:.0} ms",
                t.conversations,
                t.messages,
                ms(t.delay)
            ),
            format!(
                "with open_conversation {:.0} ms ({:.1} d), without {:.0} ms ({:.1} d): without/with = {m:.2} ({lo:.2}–{hi:.2}) over {} pairs; bound with it 3 d; whole catch-up with {:.1} d, without {:.1} d",
                ms(med(&t.with)),
                med(&t.with).as_secs_f64() / d,
                ms(med(&t.without)),
                med(&t.without).as_secs_f64() / d,
                t.ratios.len(),
                med(&t.with_total).as_secs_f64() / d,
                med(&t.without_total).as_secs_f64() / d,
            ),
        );
    }
    r
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn smoke_sizes_have_the_designed_structure() {
        let f = run(&Config::smoke()).await.unwrap();
        check_structure(&f).unwrap();
        assert_eq!(report(&f).rows.len(), 4 + 2 + 1);
    }
}
