//! The functions' telemetry as Lambda would capture it: the real handlers
//! (the functions' `lib.rs`) run under the real logging and metrics setup
//! (`courier_aws::telemetry::Telemetry`, JSON logs at info, the EMF
//! exporter), each invocation wrapped in `Telemetry::flushed` as the
//! functions' `main` does, writing to a captured buffer instead of stdout.
//! The backends are the in-memory adapters, whose fault switches produce
//! every event the metrics count.
//!
//! - `every_metric_reaches_the_logs_as_cloudwatch_emf`: the EMF lines parse
//!   as CloudWatch reads them and carry the metrics of
//!   `courier_core::telemetry::METRICS`, with no user id, connection id,
//!   token or body in them.
//! - `a_connects_correlation_id_is_in_its_catch_ups_lines` (and a send's in
//!   its deliveries').
//! - `the_architecture_doc_names_every_metric`: the operators' table in
//!   docs/architecture.md stays in step with `METRICS`.
//!
//! One process installs the global logger and recorder once, so the tests
//! take turns (`SERIAL`) on one captured buffer, and every metric carries
//! the one `Function` value installed: `catch-up`, the dimension the
//! template's alarm on `CatchUpTimeMs` uses. In Lambda each function is its
//! own process with its own name.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use aws_lambda_events::apigw::ApiGatewayWebsocketProxyRequest;
use aws_lambda_events::encodings::Body;
use courier_aws::telemetry::{LogSettings, Telemetry};
use courier_core::adapters::memory::MemoryStore;
use courier_core::adapters::rate_limit::MemoryRateLimiter;
use courier_core::app::{App, MemoryHandles, Settings};
use courier_core::config::{PushConfig, PushPreview, RateLimitConfig};
use courier_core::domain::now_millis;
use courier_core::domain::{ClientMsgId, ConnectionId, ConversationId, Message, Seq, UserId};
use courier_core::ports::{AppendOutcome, MessageStore, NewMessage, StoreError};
use courier_core::protocol::ServerFrame;
use courier_core::telemetry::{self as metric, Kind, METRICS};
use lambda_runtime::{Context, LambdaEvent};
use serde_json::{Value, json};

/// The `Function` value this process installs.
const FUNCTION: &str = "catch-up";
const TRACE: &str = "Root=1-6750f00d-0123456789abcdef01234567;Parent=53995c3f42cd8ad8;Sampled=1";

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn take(&self) -> String {
        String::from_utf8(std::mem::take(&mut *self.0.lock().unwrap())).unwrap()
    }
}

static TELEMETRY: OnceLock<(Telemetry, Captured)> = OnceLock::new();
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn telemetry() -> &'static (Telemetry, Captured) {
    TELEMETRY.get_or_init(|| {
        let out = Captured::default();
        let writer = out.clone();
        let t = Telemetry::install(FUNCTION, &LogSettings::json_info(), move || writer.clone())
            .unwrap();
        (t, out)
    })
}

fn unique(name: &str) -> String {
    format!(
        "{name}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

/// A WebSocket route event as API Gateway sends it.
struct Route<'a> {
    user: &'a str,
    device: &'a str,
    connection: &'a str,
    connected_at: i64,
}

impl Route<'_> {
    fn event(
        &self,
        route: &str,
        request_id: &str,
        body: Option<Value>,
    ) -> LambdaEvent<ApiGatewayWebsocketProxyRequest> {
        let mut e = json!({
            "requestContext": {
                "routeKey": route,
                "eventType": match route { "$connect" => "CONNECT", "$disconnect" => "DISCONNECT", _ => "MESSAGE" },
                "stage": "local",
                "connectedAt": self.connected_at,
                "requestTimeEpoch": now_millis(),
                "requestId": request_id,
                "connectionId": self.connection,
                "apiId": "a1b2c3d4e5",
                "domainName": "a1b2c3d4e5.execute-api.us-east-1.amazonaws.com",
                "identity": {"sourceIp": "127.0.0.1"},
                "authorizer": {"user_id": self.user, "principalId": self.user, "device_id": self.device},
            },
            "isBase64Encoded": false,
        });
        if let Some(b) = body {
            e["body"] = Value::String(b.to_string());
        }
        LambdaEvent::new(serde_json::from_value(e).unwrap(), traced())
    }
}

/// A Lambda context carrying an X-Ray trace header, as with active tracing.
fn traced() -> Context {
    let mut c = Context::default();
    c.xray_trace_id = Some(TRACE.to_owned());
    c
}

fn reply(r: &aws_lambda_events::apigw::ApiGatewayProxyResponse) -> ServerFrame {
    match &r.body {
        Some(Body::Text(t)) => serde_json::from_str(t).unwrap(),
        other => panic!("no reply: {other:?}"),
    }
}

/// A message store whose appends let other tasks run first, so concurrent
/// sends read the same `last_seq` and all but one lose the race.
struct Contended(MemoryStore);

#[async_trait]
impl MessageStore for Contended {
    async fn append(&self, new: &NewMessage) -> Result<AppendOutcome, StoreError> {
        tokio::task::yield_now().await;
        self.0.append(new).await
    }
    async fn find_sent(
        &self,
        c: &ConversationId,
        sender: &UserId,
        id: &ClientMsgId,
    ) -> Result<Option<Message>, StoreError> {
        self.0.find_sent(c, sender, id).await
    }
    async fn range(
        &self,
        c: &ConversationId,
        from: Seq,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        self.0.range(c, from, limit).await
    }
}

/// Two users, a conversation, bob's phone registered for push; every
/// handler call goes through `Telemetry::flushed`.
struct World {
    app: App,
    h: MemoryHandles,
    limiter: Arc<MemoryRateLimiter>,
    alice: String,
    bob: String,
    alice_conn: String,
    conversation: ConversationId,
    device_token: String,
    bodies: Vec<String>,
}

impl World {
    async fn new() -> Self {
        let h = MemoryHandles::new();
        let mut ports = h.ports();
        ports.messages = Arc::new(Contended(h.store.clone()));
        let mut settings = Settings {
            push: PushConfig {
                preview: PushPreview::Full,
                apns_app_arn: None,
                apns_sandbox_app_arn: None,
                fcm_app_arn: Some("arn:aws:sns:us-east-1:123456789012:app/GCM/courier".into()),
            },
            ..Settings::default()
        };
        settings.delivery.open_window = Duration::from_millis(1_500);
        settings.delivery.open_retry_base = Duration::from_millis(10);
        settings.catch_up.per_conversation_cap = 2;
        let limiter = Arc::new(MemoryRateLimiter::new(RateLimitConfig::default()));
        let app = App::new(ports, settings).with_rate_limiter(limiter.clone());
        let mut w = Self {
            app,
            h,
            limiter,
            alice: unique("alice"),
            bob: unique("bob"),
            alice_conn: unique("ca"),
            conversation: ConversationId::parse("placeholder").unwrap(),
            device_token: unique("DEVICETOKEN"),
            bodies: Vec::new(),
        };
        let (t, _) = telemetry();
        let r = t
            .flushed(conversations::handle(
                &w.app,
                w.alice_at().event(
                    "createConversation",
                    "r-create",
                    Some(json!({"action":"createConversation","members":[w.bob]})),
                ),
            ))
            .await
            .unwrap();
        let ServerFrame::Conversation {
            conversation_id, ..
        } = reply(&r)
        else {
            panic!("no conversation")
        };
        w.conversation = conversation_id;
        let phone = unique("phone-conn");
        let r = t
            .flushed(devices::handle(
                &w.app,
                w.bob_at("phone", &phone, now_millis()).event(
                    "registerDevice",
                    "r-device",
                    Some(
                        json!({"action":"registerDevice","platform":"fcm","token":w.device_token}),
                    ),
                ),
            ))
            .await
            .unwrap();
        assert!(matches!(reply(&r), ServerFrame::DeviceRegistered { .. }));
        w
    }

    fn alice_at(&self) -> Route<'_> {
        Route {
            user: &self.alice,
            device: "laptop",
            connection: &self.alice_conn,
            connected_at: now_millis() - 60_000,
        }
    }

    fn bob_at<'a>(&'a self, device: &'a str, connection: &'a str, connected_at: i64) -> Route<'a> {
        Route {
            user: &self.bob,
            device,
            connection,
            connected_at,
        }
    }

    /// alice sends a new body (or `key`'s again) through `app`; the reply.
    async fn send_with(&mut self, app: &App, key: &str, request_id: &str) -> ServerFrame {
        let body = unique("BODY");
        self.bodies.push(body.clone());
        let event = self.alice_at().event(
            "sendMessage",
            request_id,
            Some(json!({"action":"sendMessage","conversation_id":self.conversation,"client_msg_id":key,"body":body})),
        );
        let r = telemetry()
            .0
            .flushed(send_message::handle(app, event))
            .await
            .unwrap();
        reply(&r)
    }

    async fn send(&mut self, key: &str, request_id: &str) -> ServerFrame {
        let app = self.app.clone();
        self.send_with(&app, key, request_id).await
    }

    /// bob's `$connect` on `connection`, then the catch-up it triggered;
    /// the catch-up's frames.
    async fn connect_and_catch_up(
        &self,
        connection: &str,
        connected_at: i64,
        request_id: &str,
    ) -> Vec<String> {
        let (t, _) = telemetry();
        let event = self
            .bob_at("phone", connection, connected_at)
            .event("$connect", request_id, None);
        t.flushed(connect::handle(&self.app, event)).await.unwrap();
        let request = serde_json::to_value(self.h.trigger.requests().last().unwrap()).unwrap();
        t.flushed(catch_up::handle(
            &self.app,
            LambdaEvent::new(request, traced()),
        ))
        .await
        .unwrap();
        self.h
            .gateway
            .frames(&ConnectionId::parse(connection).unwrap())
    }

    /// Strings that must never be in a metric.
    fn secrets(&self) -> Vec<String> {
        let mut s = vec![
            self.alice.clone(),
            self.bob.clone(),
            self.alice_conn.clone(),
            self.device_token.clone(),
            self.conversation.to_string(),
        ];
        s.extend(self.bodies.iter().cloned());
        s
    }
}

/// One EMF document, checked against CloudWatch's specification: `_aws`
/// with a millisecond `Timestamp` and `CloudWatchMetrics`, each directive a
/// `Namespace`, `Dimensions` as arrays of dimension sets whose every name is
/// a top-level string, and `Metrics` with `Name` and `Unit` whose every
/// value is a top-level number or array of numbers (at most 100).
#[derive(Debug)]
struct Emf {
    namespace: String,
    dimensions: Vec<Vec<String>>,
    /// Name → (unit, values).
    metrics: BTreeMap<String, (String, Vec<f64>)>,
    doc: serde_json::Map<String, Value>,
}

fn parse_emf(line: &str) -> Emf {
    let doc: serde_json::Map<String, Value> =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    let aws = doc["_aws"].as_object().expect("_aws is an object");
    let ts = aws["Timestamp"]
        .as_i64()
        .expect("_aws.Timestamp is an integer");
    assert!(
        (ts - now_millis()).abs() < 600_000,
        "Timestamp is epoch ms: {ts}"
    );
    let directives = aws["CloudWatchMetrics"]
        .as_array()
        .expect("CloudWatchMetrics");
    assert_eq!(directives.len(), 1, "{line}");
    let d = directives[0].as_object().unwrap();
    let namespace = d["Namespace"].as_str().expect("Namespace").to_owned();
    let dimensions: Vec<Vec<String>> = d["Dimensions"]
        .as_array()
        .expect("Dimensions is an array of dimension sets")
        .iter()
        .map(|set| {
            set.as_array()
                .expect("a dimension set is an array")
                .iter()
                .map(|n| {
                    let n = n.as_str().expect("a dimension name is a string");
                    assert!(
                        doc.get(n).is_some_and(Value::is_string),
                        "dimension {n} has no top-level string value: {line}"
                    );
                    n.to_owned()
                })
                .collect()
        })
        .collect();
    assert!(!dimensions.is_empty());
    let mut metrics = BTreeMap::new();
    for m in d["Metrics"].as_array().expect("Metrics") {
        let name = m["Name"].as_str().expect("Metrics[].Name").to_owned();
        let unit = m["Unit"].as_str().expect("Metrics[].Unit").to_owned();
        let values = match doc.get(&name) {
            Some(Value::Number(n)) => vec![n.as_f64().unwrap()],
            Some(Value::Array(a)) => {
                assert!(!a.is_empty() && a.len() <= 100, "{name}: {line}");
                a.iter().map(|v| v.as_f64().expect("numeric")).collect()
            }
            other => panic!("metric {name} has no top-level value ({other:?}): {line}"),
        };
        metrics.insert(name, (unit, values));
    }
    Emf {
        namespace,
        dimensions,
        metrics,
        doc,
    }
}

#[tokio::test]
async fn every_metric_reaches_the_logs_as_cloudwatch_emf() {
    let _turn = SERIAL.lock().await;
    let (t, captured) = telemetry();
    captured.take();
    let mut w = World::new().await;

    // bob offline: stored and pushed; a retried send is replayed.
    assert!(matches!(
        w.send("k1", "r-s1").await,
        ServerFrame::Sent { .. }
    ));
    assert!(matches!(
        w.send("k2", "r-s2").await,
        ServerFrame::Sent { .. }
    ));
    assert!(matches!(
        w.send("k3", "r-s3").await,
        ServerFrame::Sent { .. }
    ));
    assert!(matches!(
        w.send("k1", "r-s1b").await,
        ServerFrame::Sent { .. }
    ));
    // The registry down (taken as offline), the push service down, the
    // rate limiter down (let through).
    w.h.registry.set_down(true);
    w.h.notifier.set_down(true);
    w.limiter.set_down(true);
    assert!(matches!(
        w.send("k4", "r-s4").await,
        ServerFrame::Sent { .. }
    ));
    w.h.registry.set_down(false);
    w.h.notifier.set_down(false);
    w.limiter.set_down(false);
    // Over the rate limit.
    let tight = w
        .app
        .clone()
        .with_rate_limiter(Arc::new(MemoryRateLimiter::new(RateLimitConfig {
            per_sec: 0.01,
            burst: 1,
        })));
    assert!(matches!(
        w.send_with(&tight, "k5", "r-s5").await,
        ServerFrame::Sent { .. }
    ));
    assert!(matches!(
        w.send_with(&tight, "k6", "r-s6").await,
        ServerFrame::Error { .. }
    ));
    // Concurrent sends to one conversation: all but one lose the first race.
    let events: Vec<_> = (0..4)
        .map(|i| {
            let body = unique("BODY");
            w.bodies.push(body.clone());
            w.alice_at().event(
                "sendMessage",
                &format!("r-c{i}"),
                Some(json!({"action":"sendMessage","conversation_id":w.conversation,"client_msg_id":format!("c{i}"),"body":body})),
            )
        })
        .collect();
    let app = &w.app;
    let replies = t
        .flushed(futures::future::join_all(
            events.into_iter().map(|e| send_message::handle(app, e)),
        ))
        .await;
    assert!(
        replies
            .iter()
            .all(|r| matches!(reply(r.as_ref().unwrap()), ServerFrame::Sent { .. }))
    );

    // bob's phone connects; its socket answers 410 for a moment (the open
    // window), so the catch-up retries; the cap of 2 makes a `more` frame.
    let phone = unique("phone-conn");
    let phone_id = ConnectionId::parse(&phone).unwrap();
    w.h.gateway
        .open_after(&phone_id, Duration::from_millis(150));
    let frames = w
        .connect_and_catch_up(&phone, now_millis(), "r-connect")
        .await;
    assert!(
        frames.iter().any(|f| f.contains("\"caught_up\"")),
        "{frames:?}"
    );
    assert!(frames.iter().any(|f| f.contains("\"more\"")), "{frames:?}");

    // bob's laptop: registered an hour ago, its socket long gone.
    let laptop = unique("laptop-conn");
    let laptop_event = w
        .bob_at("laptop", &laptop, now_millis() - 3_600_000)
        .event("$connect", "r-laptop", None);
    t.flushed(connect::handle(&w.app, laptop_event))
        .await
        .unwrap();
    assert!(matches!(
        w.send("k7", "r-s7").await,
        ServerFrame::Sent { .. }
    ));

    let text = captured.take();
    let emf: Vec<Emf> = text
        .lines()
        .filter(|l| l.contains("\"_aws\""))
        .map(parse_emf)
        .collect();
    assert!(!emf.is_empty(), "no EMF line in:\n{text}");

    let mut seen: BTreeMap<String, (String, Vec<f64>)> = BTreeMap::new();
    let mut outcomes: BTreeSet<(String, String)> = BTreeSet::new();
    for e in &emf {
        assert_eq!(e.namespace, metric::NAMESPACE);
        assert_eq!(e.doc[metric::FUNCTION], FUNCTION);
        for set in &e.dimensions {
            assert_eq!(set[0], metric::FUNCTION, "{:?}", e.doc);
            for d in set {
                assert!(
                    d == metric::FUNCTION || d == metric::OUTCOME,
                    "unbounded dimension {d}: {:?}",
                    e.doc
                );
            }
        }
        // Nothing but the directive, the dimensions and the values.
        for key in e.doc.keys() {
            assert!(
                key == "_aws"
                    || key == metric::FUNCTION
                    || key == metric::OUTCOME
                    || e.metrics.contains_key(key),
                "unexpected key {key}: {:?}",
                e.doc
            );
        }
        for (name, (unit, values)) in &e.metrics {
            let declared = METRICS
                .iter()
                .find(|m| m.name == name)
                .unwrap_or_else(|| panic!("{name} is not in METRICS"));
            assert_eq!(unit, &format!("{:?}", declared.unit), "{name}");
            if let Some(o) = e.doc.get(metric::OUTCOME) {
                let o = o.as_str().unwrap();
                assert!(declared.outcomes.contains(&o), "{name}: outcome {o}");
                outcomes.insert((name.clone(), o.to_owned()));
            }
            let entry = seen
                .entry(name.clone())
                .or_insert((unit.clone(), Vec::new()));
            entry.1.extend(values);
        }
    }

    // The alarm's metric: exactly these names, one dimension set.
    let time = emf
        .iter()
        .find(|e| e.metrics.contains_key(metric::CATCH_UP_TIME_MS))
        .expect("CatchUpTimeMs emitted");
    assert_eq!(time.dimensions, vec![vec![metric::FUNCTION.to_owned()]]);
    let (unit, ms) = &time.metrics[metric::CATCH_UP_TIME_MS];
    assert_eq!(unit, "Milliseconds");
    assert!(
        // 150 ms of 410s, less the clock's millisecond rounding.
        ms.iter().all(|v| *v >= 140.0 && *v < 60_000.0),
        "from the opening, through the 410s: {ms:?}"
    );

    let sum = |name: &str| -> f64 {
        seen.get(name)
            .map(|(_, v)| v.iter().sum())
            .unwrap_or_else(|| panic!("{name} not emitted; EMF lines:\n{}", emf_lines(&text)))
    };
    assert_eq!(sum(metric::CATCH_UP_CONVERSATIONS), 1.0);
    assert_eq!(sum(metric::CATCH_UP_MESSAGES), 2.0, "the cap");
    assert_eq!(sum(metric::CATCH_UP_MORE_FRAMES), 1.0);
    assert!(sum(metric::CATCH_UP_FRAMES) >= 3.0);
    assert_eq!(sum(metric::CATCH_UP_UNREACHED), 0.0);
    assert!(sum(metric::GONE_RETRIES) >= 1.0);
    assert!(sum(metric::GONE_CONNECTIONS) >= 1.0);
    assert!(sum(metric::REGISTRY_FALLBACKS) >= 1.0);
    assert!(sum(metric::PUSHES_SENT) >= 3.0);
    assert!(sum(metric::PUSHES_FAILED) >= 1.0);
    assert_eq!(sum(metric::RATE_LIMITED), 1.0);
    assert_eq!(sum(metric::RATE_LIMITER_FALLBACKS), 1.0);
    assert!(sum(metric::SEQ_CONFLICTS) >= 1.0);
    assert!(sum(metric::SEND_RETRIES) >= 1.0);
    assert_eq!(sum(metric::IDEMPOTENT_REPLAYS), 1.0);
    assert!(outcomes.contains(&(metric::CATCH_UPS.to_owned(), "caught_up".to_owned())));
    assert!(outcomes.contains(&(metric::PUSHES_FAILED.to_owned(), "unavailable".to_owned())));
    // Every metric but the one a 64-conflict pile-up makes was seen.
    for m in METRICS {
        if m.name != metric::SEND_CONTENTION {
            assert!(seen.contains_key(m.name), "{} never emitted", m.name);
        }
        if m.kind == Kind::Histogram {
            assert_eq!(m.outcomes.len(), 0, "{}", m.name);
        }
    }

    // No user id, connection id, token, conversation or body in a metric.
    for line in text.lines().filter(|l| l.contains("\"_aws\"")) {
        for secret in w.secrets() {
            assert!(!line.contains(&secret), "{secret} in {line}");
        }
        assert!(!line.contains(&phone) && !line.contains(&laptop), "{line}");
    }
    if std::env::var_os("TEST_LOG").is_some() {
        eprintln!("{}", emf_lines(&text));
    }
    eprintln!(
        "outcome: {} EMF lines, {} metrics, CatchUpTimeMs {ms:?}",
        emf.len(),
        seen.len()
    );
}

fn emf_lines(text: &str) -> String {
    text.lines()
        .filter(|l| l.contains("\"_aws\""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The log lines (JSON) whose spans carry `correlation_id = id`.
fn lines_under<'a>(logs: &'a [Value], id: &str) -> Vec<&'a Value> {
    logs.iter()
        .filter(|l| {
            l["spans"]
                .as_array()
                .is_some_and(|spans| spans.iter().any(|s| s["correlation_id"] == id))
        })
        .collect()
}

fn message(line: &Value) -> &str {
    line["fields"]["message"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn a_connects_correlation_id_is_in_its_catch_ups_lines() {
    let _turn = SERIAL.lock().await;
    let (_, captured) = telemetry();
    let mut w = World::new().await;
    assert!(matches!(
        w.send("k1", "r-offline").await,
        ServerFrame::Sent { .. }
    ));
    captured.take();

    // API Gateway's request id of the `$connect` is its correlation id.
    let connect_id = format!("{}=", unique("Kc9dQHZ"));
    let phone = unique("phone-conn");
    w.h.gateway.open(&ConnectionId::parse(&phone).unwrap());
    let frames = w
        .connect_and_catch_up(&phone, now_millis(), &connect_id)
        .await;
    assert!(frames.iter().any(|f| f.contains("\"caught_up\"")));
    let request = w.h.trigger.requests().last().unwrap().clone();
    assert_eq!(
        request.correlation_id.as_ref().map(|c| c.as_str()),
        Some(connect_id.as_str()),
        "the catch-up request carries it"
    );

    // A send whose live post to bob goes out and whose push fails.
    let send_id = format!("{}=", unique("Ks3ndXY"));
    // bob's first push device is his phone, which gets the message live; a
    // second one, never connected, gets the push, which fails.
    let r = telemetry()
        .0
        .flushed(devices::handle(
            &w.app,
            w.bob_at("tablet", &unique("tablet-conn"), now_millis())
                .event(
                    "registerDevice",
                    "r-device2",
                    Some(
                        json!({"action":"registerDevice","platform":"fcm","token":unique("TOKEN")}),
                    ),
                ),
        ))
        .await
        .unwrap();
    assert!(matches!(reply(&r), ServerFrame::DeviceRegistered { .. }));
    w.h.notifier.set_down(true);
    assert!(matches!(
        w.send("k2", &send_id).await,
        ServerFrame::Sent { .. }
    ));
    w.h.notifier.set_down(false);
    assert!(
        w.h.gateway
            .frames(&ConnectionId::parse(&phone).unwrap())
            .len()
            > frames.len()
    );

    let text = captured.take();
    let logs: Vec<Value> = text
        .lines()
        .filter(|l| !l.contains("\"_aws\""))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();

    let connect_lines = lines_under(&logs, &connect_id);
    let said: Vec<&str> = connect_lines.iter().map(|l| message(l)).collect();
    assert!(said.contains(&"connected"), "{said:?}\n{text}");
    assert!(
        said.contains(&"catch-up done"),
        "the catch-up's line: {said:?}\n{text}"
    );
    for line in &connect_lines {
        let spans = line["spans"].as_array().unwrap();
        let outer = spans
            .iter()
            .find(|s| s["correlation_id"] == connect_id.as_str())
            .unwrap();
        assert_eq!(
            outer["trace_id"], "1-6750f00d-0123456789abcdef01234567",
            "{line}"
        );
    }
    // Every line the catch-up logged is under the connect's id.
    for line in logs.iter().filter(|l| {
        l["spans"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["name"] == "catch_up"))
    }) {
        assert!(
            line["spans"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["correlation_id"] == connect_id.as_str()),
            "{line}"
        );
    }

    let send_lines = lines_under(&logs, &send_id);
    let said: Vec<&str> = send_lines.iter().map(|l| message(l)).collect();
    assert!(said.contains(&"delivered"), "{said:?}\n{text}");
    assert!(said.contains(&"push failed"), "{said:?}\n{text}");
    eprintln!(
        "outcome: {} lines under the connect's id (catch-up included), {} under the send's",
        connect_lines.len(),
        send_lines.len()
    );
}

#[test]
fn the_architecture_doc_names_every_metric() {
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/architecture.md"),
    )
    .unwrap();
    let section = doc
        .split("## Metrics and tracing")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("a metrics section");
    let rows: Vec<&str> = section.lines().filter(|l| l.starts_with("| `")).collect();
    assert_eq!(rows.len(), METRICS.len(), "one row per metric");
    for m in METRICS {
        let row = rows
            .iter()
            .find(|r| r.starts_with(&format!("| `{}` |", m.name)))
            .unwrap_or_else(|| panic!("{} has no row", m.name));
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        assert_eq!(cells[2], format!("{:?}", m.unit), "{}", m.name);
        assert!(cells[3].starts_with("`Function`"), "{}", m.name);
        assert_eq!(
            cells[3].contains("`Outcome`"),
            !m.outcomes.is_empty(),
            "{}",
            m.name
        );
        for o in m.outcomes {
            assert!(cells[3].contains(&format!("`{o}`")), "{}: {o}", m.name);
        }
    }
}
