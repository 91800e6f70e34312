//! The world the telemetry tests run in: the process's one telemetry
//! install on a captured buffer, API Gateway events, and two users with a
//! conversation, every handler call wrapped in `Telemetry::flushed` as the
//! functions' `main` does.

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
use lambda_runtime::{Context, LambdaEvent};
use serde_json::{Value, json};

/// The `Function` value this process installs.
pub const FUNCTION: &str = "catch-up";
pub const TRACE: &str =
    "Root=1-6750f00d-0123456789abcdef01234567;Parent=53995c3f42cd8ad8;Sampled=1";

#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

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
    pub fn take(&self) -> String {
        String::from_utf8(std::mem::take(&mut *self.0.lock().unwrap())).unwrap()
    }
}

pub static TELEMETRY: OnceLock<(Telemetry, Captured)> = OnceLock::new();
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub fn telemetry() -> &'static (Telemetry, Captured) {
    TELEMETRY.get_or_init(|| {
        let out = Captured::default();
        let writer = out.clone();
        let t = Telemetry::install(FUNCTION, &LogSettings::json_info(), move || writer.clone())
            .unwrap();
        (t, out)
    })
}

pub fn unique(name: &str) -> String {
    format!(
        "{name}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

/// A WebSocket route event as API Gateway sends it.
pub struct Route<'a> {
    user: &'a str,
    device: &'a str,
    connection: &'a str,
    connected_at: i64,
}

impl Route<'_> {
    pub fn event(
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
pub fn traced() -> Context {
    let mut c = Context::default();
    c.xray_trace_id = Some(TRACE.to_owned());
    c
}

pub fn reply(r: &aws_lambda_events::apigw::ApiGatewayProxyResponse) -> ServerFrame {
    match &r.body {
        Some(Body::Text(t)) => serde_json::from_str(t).unwrap(),
        other => panic!("no reply: {other:?}"),
    }
}

/// A message store whose appends let other tasks run first, so concurrent
/// sends read the same `last_seq` and all but one lose the race.
pub struct Contended(MemoryStore);

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
pub struct World {
    pub app: App,
    pub h: MemoryHandles,
    pub limiter: Arc<MemoryRateLimiter>,
    pub alice: String,
    pub bob: String,
    pub alice_conn: String,
    pub conversation: ConversationId,
    pub device_token: String,
    pub bodies: Vec<String>,
}

impl World {
    pub async fn new() -> Self {
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

    pub fn alice_at(&self) -> Route<'_> {
        Route {
            user: &self.alice,
            device: "laptop",
            connection: &self.alice_conn,
            connected_at: now_millis() - 60_000,
        }
    }

    pub fn bob_at<'a>(
        &'a self,
        device: &'a str,
        connection: &'a str,
        connected_at: i64,
    ) -> Route<'a> {
        Route {
            user: &self.bob,
            device,
            connection,
            connected_at,
        }
    }

    /// alice sends a new body (or `key`'s again) through `app`; the reply.
    pub async fn send_with(&mut self, app: &App, key: &str, request_id: &str) -> ServerFrame {
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

    pub async fn send(&mut self, key: &str, request_id: &str) -> ServerFrame {
        let app = self.app.clone();
        self.send_with(&app, key, request_id).await
    }

    /// bob's `$connect` on `connection`, then the catch-up it triggered;
    /// the catch-up's frames.
    pub async fn connect_and_catch_up(
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
    pub fn secrets(&self) -> Vec<String> {
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
