//! What one catch-up records, seen through a recorder of the test's own
//! (the `metrics` facade's thread-local one, so no exporter is involved):
//! `CatchUpTimeMs` only for the catch-up `$connect` starts, never for a
//! `sync`, which can come at any point of a connection's life.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use courier_core::app::App;
use courier_core::domain::{
    ClientMsgId, Connection, ConnectionId, Conversation, ConversationId, CorrelationId, DeviceId,
    Seq, UserId, now_millis,
};
use courier_core::ports::{CatchUpOrigin, CatchUpRequest};
use courier_core::services::{catch_up, send};
use courier_core::telemetry;
use metrics::{
    Counter, CounterFn, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};

/// Every value recorded, by metric name (counters as their increments).
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<(String, f64)>>>);

struct Handle {
    name: String,
    seen: Seen,
}

impl HistogramFn for Handle {
    fn record(&self, value: f64) {
        self.seen.0.lock().unwrap().push((self.name.clone(), value));
    }
}

impl CounterFn for Handle {
    fn increment(&self, value: u64) {
        self.seen
            .0
            .lock()
            .unwrap()
            .push((self.name.clone(), value as f64));
    }
    fn absolute(&self, _: u64) {}
}

impl Recorder for Seen {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(Arc::new(Handle {
            name: key.name().to_owned(),
            seen: self.clone(),
        }))
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(Arc::new(Handle {
            name: key.name().to_owned(),
            seen: self.clone(),
        }))
    }
}

impl Seen {
    fn values(&self, name: &str) -> Vec<f64> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| *v)
            .collect()
    }
}

fn user(s: &str) -> UserId {
    UserId::parse(s).unwrap()
}

/// bob has two messages pending from alice and a connection opened
/// `opened_ms_ago`; the catch-up request for it from `origin`.
async fn world(origin: CatchUpOrigin, opened_ms_ago: i64) -> (App, CatchUpRequest) {
    let (app, h) = App::in_memory();
    let conversation = ConversationId::parse("c1").unwrap();
    app.ports
        .conversations
        .create(&Conversation {
            conversation_id: conversation.clone(),
            members: vec![user("alice"), user("bob")],
            last_seq: Seq(0),
            created_at: now_millis(),
        })
        .await
        .unwrap();
    for key in ["m1", "m2"] {
        send::send_message(
            &app,
            &user("alice"),
            &DeviceId::default(),
            &conversation,
            &ClientMsgId::parse(key).unwrap(),
            "hello",
            None,
        )
        .await
        .unwrap();
    }
    let connection = Connection {
        device_id: DeviceId::default(),
        connection_id: ConnectionId::parse("bob-conn").unwrap(),
        connected_at: Some(now_millis() - opened_ms_ago),
    };
    h.gateway.open(&connection.connection_id);
    let request = CatchUpRequest {
        user_id: user("bob"),
        device_id: connection.device_id,
        connection_id: connection.connection_id,
        connected_at: connection.connected_at,
        open_conversation: None,
        device_limit: None,
        origin,
        correlation_id: Some(CorrelationId::new()),
    };
    (app, request)
}

#[tokio::test]
async fn a_connects_catch_up_is_timed_from_the_connections_opening() {
    let (app, request) = world(CatchUpOrigin::Connect, 2_000).await;
    let seen = Seen::default();
    let _recording = metrics::set_default_local_recorder(&seen);
    let report = catch_up::catch_up(&app, &request, None, None)
        .await
        .unwrap();
    assert_eq!(report.messages, 2);
    let ms = seen.values(telemetry::CATCH_UP_TIME_MS);
    assert_eq!(ms.len(), 1, "{ms:?}");
    assert!((2_000.0..60_000.0).contains(&ms[0]), "{ms:?}");
    assert_eq!(seen.values(telemetry::CATCH_UP_MESSAGES), vec![2.0]);
    assert_eq!(seen.values(telemetry::CATCH_UP_CONVERSATIONS), vec![1.0]);
    assert_eq!(seen.values(telemetry::CATCH_UPS), vec![1.0]);
}

#[tokio::test]
async fn a_syncs_catch_up_is_counted_but_not_timed() {
    let (app, request) = world(CatchUpOrigin::Sync, 600_000).await;
    let seen = Seen::default();
    let _recording = metrics::set_default_local_recorder(&seen);
    catch_up::catch_up(&app, &request, None, None)
        .await
        .unwrap();
    assert_eq!(seen.values(telemetry::CATCH_UP_TIME_MS), Vec::<f64>::new());
    assert_eq!(seen.values(telemetry::CATCH_UP_MESSAGES), vec![2.0]);
    assert_eq!(seen.values(telemetry::CATCH_UPS), vec![1.0]);
}
