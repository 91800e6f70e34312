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
//! - `every_function_installs_telemetry_under_its_name_and_flushes_each_invocation`:
//!   each `main` does what the first test does around each handler.
//!
//! One process installs the global logger and recorder once, so the tests
//! take turns (`SERIAL`) on one captured buffer, and every metric carries
//! the one `Function` value installed: `catch-up`, the dimension the
//! template's alarm on `CatchUpTimeMs` uses. In Lambda each function is its
//! own process with its own name.

#![allow(clippy::unwrap_used)]

mod emf;
mod world;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use courier_core::adapters::rate_limit::MemoryRateLimiter;
use courier_core::config::RateLimitConfig;
use courier_core::domain::{ConnectionId, now_millis};
use courier_core::protocol::ServerFrame;
use courier_core::telemetry::{self as metric, Kind, METRICS};
use serde_json::{Value, json};

use emf::{Emf, emf_lines, parse_emf};
use world::{FUNCTION, SERIAL, World, reply, telemetry, unique};

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

/// Each function's `main` installs the telemetry under its package name
/// (the `Function` dimension: `catch-up` for the catch-up, as the alarm
/// expects) and wraps every handler call in `flushed`, so each invocation
/// writes its metrics.
#[test]
fn every_function_installs_telemetry_under_its_name_and_flushes_each_invocation() {
    let functions = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../functions");
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(&functions).unwrap() {
        let dir = entry.unwrap().path();
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        let name = dir.file_name().unwrap().to_str().unwrap().to_owned();
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "{name}: package name = folder name"
        );
        let main = std::fs::read_to_string(dir.join("src/main.rs")).unwrap();
        assert!(
            main.contains("telemetry::Telemetry::init(env!(\"CARGO_PKG_NAME\"))"),
            "{name}: main installs the telemetry under its package name"
        );
        assert!(
            main.contains("telemetry.flushed("),
            "{name}: every invocation is flushed"
        );
        checked.push(name);
    }
    checked.sort();
    assert_eq!(checked.len(), 9, "{checked:?}");
    assert!(checked.iter().any(|n| n == FUNCTION));
}
