//! The HTTP and WebSocket server: one port, every API Courier's functions
//! and clients talk to.
//!
//! - `GET /` or `GET /{stage}` (WebSocket upgrade): the API Gateway
//!   WebSocket API. The authorizer and `$connect` both run *before* the
//!   `101`, so a refusal is an HTTP status at the handshake (401 for
//!   `Unauthorized`, 403 for a Deny policy, the `$connect` status otherwise),
//!   as on AWS. Each client frame is one route invocation, run concurrently
//!   like Lambda invocations; a route's response body goes back to the
//!   socket.
//! - `POST|GET|DELETE /{stage}/@connections/{id}`: the Management API, with
//!   the status codes and `x-amzn-ErrorType` error bodies
//!   `aws-sdk-apigatewaymanagement` parses.
//! - `POST /2015-03-31/functions/{name}/invocations`: the Lambda Invoke API,
//!   enough of it for `aws-sdk-lambda`'s `invoke` (`Event` → 202 and run in
//!   the background, `RequestResponse` → 200 with the result or
//!   `X-Amz-Function-Error`).
//! - `GET /_local/...`: what tests and the demo inspect (recorded pushes,
//!   pending rows, registry entries, open connections). Not an AWS API.
//! - `GET /` without an `Upgrade` header, `/courier.js`, `/app.js`,
//!   `/_local/token`: the story page and what it runs on ([`crate::page`]).
//!
//! Limits are API Gateway's: frames over 32 KB and messages over 128 KB
//! close the socket with 1009, posts over 128 KB answer 413, an idle
//! connection closes after 10 minutes and any connection after 2 hours
//! (both configurable, so tests can shorten them).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::apigw::ApiGatewayProxyResponse;
use aws_lambda_events::encodings::Body as EventBody;
use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use courier_core::domain::{UserId, now_millis};
use courier_core::ports::{ConnectionRegistry, PendingStore, PostError};
use futures::SinkExt;
use lambda_runtime::LambdaEvent;
use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::connections::{ConnectionTable, LocalGateway, Outbound};
use crate::events::{self, ApiInfo, ConnectionFacts, Frame, Handshake};
use crate::invoke::{InvokeError, Invoker, LocalTrigger, lambda_context, run_guarded};
use crate::pushes::RecordingNotifier;
use crate::routes::{self, Route, Routes};

/// API Gateway's limits and timeouts, each overridable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayConfig {
    pub api: ApiInfo,
    /// Closes a connection that sent nothing for this long.
    pub idle_timeout: Duration,
    /// Closes any connection this long after it opened.
    pub max_connection_duration: Duration,
    /// Largest WebSocket frame a client may send.
    pub max_frame_bytes: usize,
    /// Largest message (frames reassembled) a client may send.
    pub max_message_bytes: usize,
    /// Largest `@connections` post.
    pub max_post_bytes: usize,
    /// API Gateway's integration timeout: a route handler running longer
    /// is answered with an error frame (the handler itself keeps running
    /// up to its function timeout, as a Lambda would).
    pub integration_timeout: Duration,
    /// What `/_local/token` mints the page's tokens with; `None` turns it off.
    pub local_tokens: Option<crate::page::LocalTokens>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            api: ApiInfo::default(),
            idle_timeout: Duration::from_secs(600),
            max_connection_duration: Duration::from_secs(2 * 3600),
            max_frame_bytes: 32 * 1024,
            max_message_bytes: 128 * 1024,
            max_post_bytes: courier_core::protocol::MAX_POST_BYTES,
            integration_timeout: Duration::from_secs(29),
            local_tokens: None,
        }
    }
}

/// What `/_local/...` may look into; each part is optional.
#[derive(Clone, Default)]
pub struct Inspect {
    pub pushes: Option<RecordingNotifier>,
    pub pending: Option<Arc<dyn PendingStore>>,
    pub registry: Option<Arc<dyn ConnectionRegistry>>,
}

/// The parts that exist before the handlers: the connection table and the
/// invoker. The handlers' ports (the in-process `Gateway` and
/// `CatchUpTrigger`) are made from them, then the handlers, then the server.
#[derive(Clone)]
pub struct Core {
    pub config: GatewayConfig,
    pub connections: Arc<ConnectionTable>,
    pub invoker: Invoker,
}

impl Core {
    pub fn new(config: GatewayConfig) -> Self {
        let connections = Arc::new(ConnectionTable::new(config.max_post_bytes));
        Self {
            config,
            connections,
            invoker: Invoker::new(),
        }
    }

    /// The `Gateway` port over this gateway's connections, in process.
    pub fn gateway(&self) -> LocalGateway {
        LocalGateway::new(self.connections.clone())
    }

    /// The `CatchUpTrigger` port: an `Event` invocation of `function`.
    pub fn trigger(&self, function: &str) -> LocalTrigger {
        LocalTrigger::new(self.invoker.clone(), function)
    }
}

struct Shared {
    config: GatewayConfig,
    routes: Arc<Routes>,
    connections: Arc<ConnectionTable>,
    invoker: Invoker,
    inspect: Inspect,
}

/// A gateway serving in the background.
pub struct RunningGateway {
    pub addr: SocketAddr,
    pub stage: String,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl RunningGateway {
    /// `ws://127.0.0.1:PORT`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// `http://127.0.0.1:PORT`: the Invoke API's endpoint.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What `MANAGEMENT_ENDPOINT` is on AWS: the stage URL.
    pub fn management_endpoint(&self) -> String {
        format!("http://{}/{}", self.addr, self.stage)
    }

    /// Stops accepting and waits for the server task.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Serves until the server fails (or ctrl-c, as wired by the binary).
    pub async fn wait(mut self) -> std::io::Result<()> {
        match self.task.take() {
            Some(task) => task.await.map_err(std::io::Error::other)?,
            None => Ok(()),
        }
    }
}

impl Drop for RunningGateway {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Serves `routes` on `listener` in the background.
pub async fn serve(
    core: Core,
    routes: Routes,
    inspect: Inspect,
    listener: tokio::net::TcpListener,
) -> std::io::Result<RunningGateway> {
    let addr = listener.local_addr()?;
    let mut config = core.config.clone();
    if config.api.domain_name == ApiInfo::default().domain_name {
        config.api.domain_name = addr.to_string();
    }
    let routes = Arc::new(routes);
    core.invoker.install(routes.clone(), config.api.clone());
    let stage = config.api.stage.clone();
    let shared = Arc::new(Shared {
        config,
        routes,
        connections: core.connections.clone(),
        invoker: core.invoker.clone(),
        inspect,
    });
    let app = router(shared);
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            let _ = rx.await;
        })
        .await
    });
    tracing::info!(%addr, %stage, "courier-local listening");
    Ok(RunningGateway {
        addr,
        stage,
        shutdown: Some(tx),
        task: Some(task),
    })
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/courier.js", get(crate::page::courier_js))
        .route("/app.js", get(crate::page::app_js))
        .route("/_local/token", get(local_token))
        .route("/{stage}", get(websocket_on_stage))
        .route(
            "/{stage}/@connections/{id}",
            post(post_to_connection)
                .get(get_connection)
                .delete(delete_connection),
        )
        .route("/2015-03-31/functions/{name}/invocations", post(invoke))
        .route("/_local/pushes", get(local_pushes))
        .route("/_local/pending/{user}", get(local_pending))
        .route("/_local/registry/{user}", get(local_registry))
        .route("/_local/connections", get(local_connections))
        // Bodies past 128 KB must reach the handlers to be answered 413 the
        // way API Gateway does, not by axum's generic limit.
        .layer(DefaultBodyLimit::max(8 * 1024 * 1024))
        .with_state(shared)
}

// ---------------------------------------------------------------- WebSocket

async fn websocket_on_stage(
    state: State<Arc<Shared>>,
    Path(stage): Path<String>,
    peer: ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    query: RawQuery,
    ws: WebSocketUpgrade,
) -> Response {
    if stage != state.config.api.stage {
        return (
            StatusCode::FORBIDDEN,
            axum::Json(json!({"message": "Forbidden"})),
        )
            .into_response();
    }
    websocket(state, peer, headers, query, ws).await
}

/// `GET /`: the WebSocket API, or, for a browser's plain GET (no `Upgrade`
/// header), the story page. A broken upgrade still gets its rejection.
async fn root(
    state: State<Arc<Shared>>,
    peer: ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    query: RawQuery,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    match ws {
        Ok(ws) => websocket(state, peer, headers, query, ws).await,
        Err(_) if !headers.contains_key(http::header::UPGRADE) => crate::page::index(),
        Err(rejection) => rejection.into_response(),
    }
}

/// The handshake: authorizer, then `$connect`, then the upgrade.
async fn websocket(
    State(s): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    ws: WebSocketUpgrade,
) -> Response {
    let mut facts = ConnectionFacts {
        connection_id: events::new_id(),
        connected_at: now_millis(),
        handshake: Handshake::new(&headers, query.as_deref(), peer.ip()),
        authorizer: Map::new(),
    };
    if let Some(authorizer) = s.routes.get_authorizer() {
        match authorize(&s, authorizer, &facts).await {
            Ok(context) => facts.authorizer = context,
            Err(refusal) => {
                tracing::info!(
                    connection_id = %facts.connection_id,
                    status = refusal.0.as_u16(),
                    "handshake refused by the authorizer"
                );
                return refusal.into_response();
            }
        }
    }

    let id = facts.connection_id.clone();
    let rx = s.connections.insert_opening(
        &id,
        facts.connected_at,
        &facts.handshake.source_ip,
        facts.handshake.user_agent.as_deref(),
    );
    let mut protocol: Option<HeaderValue> = None;
    if let Some(route) = s.routes.get(routes::CONNECT) {
        let request_id = events::new_id();
        let outcome = match events::connect_event(&s.config.api, &facts, &request_id) {
            Ok(event) => call_route(&s, route, event).await,
            Err(e) => Err(InvokeError::Function {
                error_type: "Gateway.Event".into(),
                message: e.to_string(),
            }),
        };
        match outcome {
            Ok(r) if (200..300).contains(&r.status_code) => {
                protocol = r.headers.get(http::header::SEC_WEBSOCKET_PROTOCOL).cloned();
            }
            Ok(r) => {
                s.connections.remove(&id);
                tracing::info!(connection_id = %id, status = r.status_code, "$connect refused the connection");
                let status = u16::try_from(r.status_code)
                    .ok()
                    .and_then(|c| StatusCode::from_u16(c).ok())
                    .filter(|c| !c.is_success())
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                return (
                    status,
                    axum::Json(json!({"message": status.canonical_reason()})),
                )
                    .into_response();
            }
            Err(e) => {
                s.connections.remove(&id);
                tracing::warn!(connection_id = %id, error = %e, "$connect failed");
                return (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    axum::Json(json!({"message": "Internal server error"})),
                )
                    .into_response();
            }
        }
    }
    s.connections.mark_open(&id);
    tracing::info!(
        connection_id = %id,
        user = ?facts.authorizer.get(courier_aws::edge::USER_ID_KEY),
        "connection open"
    );

    let facts = Arc::new(facts);
    let mut ws = ws
        .max_frame_size(s.config.max_frame_bytes)
        .max_message_size(s.config.max_message_bytes);
    if let Some(p) = protocol.and_then(|p| p.to_str().ok().map(str::to_owned)) {
        ws = ws.protocols([p]);
    }
    let failed = (s.clone(), facts.clone());
    ws.on_failed_upgrade(move |e| {
        let (s, facts) = failed;
        tracing::warn!(error = %e, "upgrade failed after $connect");
        s.connections.remove(&facts.connection_id);
        tokio::spawn(disconnect(
            s,
            facts,
            1006,
            "Connection upgrade failed".into(),
        ));
    })
    .on_upgrade(move |socket| run_socket(s, facts, rx, socket))
}

/// A handshake refusal: the status and body API Gateway answers with.
struct Refusal(StatusCode, &'static str);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.0, axum::Json(json!({"message": self.1}))).into_response()
    }
}

/// Runs the REQUEST authorizer; `Ok` is the context for
/// `requestContext.authorizer`.
async fn authorize(
    s: &Shared,
    authorizer: &routes::Authorizer,
    facts: &ConnectionFacts,
) -> Result<Map<String, Value>, Refusal> {
    let request_id = events::new_id();
    let event = events::authorizer_request(&s.config.api, facts, &request_id).map_err(|e| {
        tracing::error!(error = %e, "could not build the authorizer event");
        Refusal(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error")
    })?;
    let timeout = s
        .routes
        .function_timeout(&authorizer.function)
        .min(s.config.integration_timeout);
    let ctx = lambda_context(&s.config.api, &authorizer.function, timeout);
    let started = std::time::Instant::now();
    let outcome = run_guarded(
        &authorizer.function,
        timeout,
        (authorizer.handler)(LambdaEvent::new(event, ctx)),
    )
    .await;
    let response = match outcome {
        Ok(r) => r,
        // API Gateway's contract: an authorizer error whose message is
        // exactly "Unauthorized" is a 401; any other error a 500.
        Err(InvokeError::Function { message, .. }) if message == "Unauthorized" => {
            return Err(Refusal(StatusCode::UNAUTHORIZED, "Unauthorized"));
        }
        Err(e) => {
            tracing::warn!(error = %e, "authorizer failed");
            return Err(Refusal(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal server error",
            ));
        }
    };
    let response = serde_json::to_value(&response).unwrap_or(Value::Null);
    let method_arn = s.config.api.method_arn(routes::CONNECT);
    if !policy_allows(&response, &method_arn) {
        return Err(Refusal(StatusCode::FORBIDDEN, "Forbidden"));
    }
    let mut context = Map::new();
    if let Some(p) = response.get("principalId").and_then(Value::as_str) {
        context.insert("principalId".into(), json!(p));
    }
    if let Some(Value::Object(fields)) = response.get("context") {
        for (k, v) in fields {
            context.insert(k.clone(), v.clone());
        }
    }
    context.insert(
        "integrationLatency".into(),
        json!(u64::try_from(started.elapsed().as_millis()).unwrap_or(0)),
    );
    Ok(context)
}

/// IAM evaluation as far as an authorizer policy goes: an explicit Deny
/// matching the method wins, else a matching Allow is needed.
fn policy_allows(response: &Value, method_arn: &str) -> bool {
    let doc = &response["policyDocument"];
    let statements = doc
        .get("Statement")
        .or_else(|| doc.get("statement"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut allowed = false;
    for st in &statements {
        let effect = st
            .get("Effect")
            .or_else(|| st.get("effect"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let resources: Vec<String> = match st.get("Resource").or_else(|| st.get("resource")) {
            Some(Value::String(r)) => vec![r.clone()],
            Some(Value::Array(rs)) => rs
                .iter()
                .filter_map(|r| r.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        };
        if !resources.iter().any(|r| glob_match(r, method_arn)) {
            continue;
        }
        if effect.eq_ignore_ascii_case("deny") {
            return false;
        }
        if effect.eq_ignore_ascii_case("allow") {
            allowed = true;
        }
    }
    allowed
}

/// `*` matches any run of characters, as in IAM resource ARNs.
fn glob_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let mut rest = text;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            match rest.strip_prefix(part) {
                Some(r) => rest = r,
                None => return false,
            }
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            match rest.find(part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
    }
    true
}

/// Calls a route's handler as API Gateway's integration would.
async fn call_route(
    s: &Shared,
    route: &Route,
    event: aws_lambda_events::apigw::ApiGatewayWebsocketProxyRequest,
) -> Result<ApiGatewayProxyResponse, InvokeError> {
    let function_timeout = s.routes.function_timeout(&route.function);
    let ctx = lambda_context(&s.config.api, &route.function, function_timeout);
    let fut = (route.handler)(LambdaEvent::new(event, ctx));
    run_guarded(
        &route.function,
        function_timeout.min(s.config.integration_timeout),
        fut,
    )
    .await
}

/// Why the socket loop ended: the close code and reason `$disconnect` gets.
struct Ended(u16, String);

async fn run_socket(
    s: Arc<Shared>,
    facts: Arc<ConnectionFacts>,
    mut rx: mpsc::UnboundedReceiver<Outbound>,
    mut socket: WebSocket,
) {
    let idle_timeout = s.config.idle_timeout;
    let idle = tokio::time::sleep(idle_timeout);
    tokio::pin!(idle);
    let lifetime = tokio::time::sleep(s.config.max_connection_duration);
    tokio::pin!(lifetime);
    let id = facts.connection_id.clone();

    let Ended(code, reason) = loop {
        tokio::select! {
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    idle.as_mut().reset(tokio::time::Instant::now() + idle_timeout);
                    s.connections.touch(&id);
                    tokio::spawn(dispatch(s.clone(), facts.clone(), Frame::Text(text.to_string())));
                }
                Some(Ok(Message::Binary(data))) => {
                    idle.as_mut().reset(tokio::time::Instant::now() + idle_timeout);
                    s.connections.touch(&id);
                    tokio::spawn(dispatch(s.clone(), facts.clone(), Frame::Binary(data.to_vec())));
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(frame))) => {
                    break match frame {
                        Some(f) => Ended(f.code, f.reason.to_string()),
                        None => Ended(1005, "Client closed without a status code".into()),
                    };
                }
                Some(Err(e)) if is_too_big(&e) => {
                    tracing::info!("client frame over the limit: closing with 1009");
                    let _ = socket.send(close(1009, "Message too big")).await;
                    break Ended(1009, "Message too big".into());
                }
                Some(Err(_)) | None => break Ended(1006, "Connection closed abnormally".into()),
            },
            out = rx.recv() => match out {
                Some(Outbound::Text(t)) => {
                    if socket.send(Message::Text(t.into())).await.is_err() {
                        break Ended(1006, "Connection closed abnormally".into());
                    }
                }
                Some(Outbound::Binary(b)) => {
                    if socket.send(Message::Binary(b.into())).await.is_err() {
                        break Ended(1006, "Connection closed abnormally".into());
                    }
                }
                Some(Outbound::Close { code, reason }) => {
                    let _ = socket.send(close(code, &reason)).await;
                    break Ended(code, reason);
                }
                None => break Ended(1001, "Going away".into()),
            },
            () = &mut idle => {
                tracing::info!("idle timeout: closing");
                let _ = socket.send(close(1001, "Going away")).await;
                break Ended(1001, "Going away".into());
            }
            () = &mut lifetime => {
                tracing::info!("maximum connection duration: closing");
                let _ = socket.send(close(1001, "Going away")).await;
                break Ended(1001, "Going away".into());
            }
        }
    };
    // Posts answer 410 from here on, before `$disconnect` runs, as on AWS.
    s.connections.remove(&id);
    let _ = tokio::time::timeout(Duration::from_secs(1), socket.close()).await;
    tracing::info!(code, "connection closed");
    disconnect(s, facts, code, reason).await;
}

fn close(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

/// A read that failed because the client's frame or message was over the
/// configured size (tungstenite's capacity error).
fn is_too_big(e: &axum::Error) -> bool {
    use std::error::Error as _;
    use tokio_tungstenite::tungstenite::Error as WsError;
    matches!(
        e.source().and_then(|s| s.downcast_ref::<WsError>()),
        Some(WsError::Capacity(_))
    )
}

async fn disconnect(s: Arc<Shared>, facts: Arc<ConnectionFacts>, code: u16, reason: String) {
    let Some(route) = s.routes.get(routes::DISCONNECT) else {
        return;
    };
    let request_id = events::new_id();
    match events::disconnect_event(&s.config.api, &facts, code, &reason, &request_id) {
        Ok(event) => {
            if let Err(e) = call_route(&s, route, event).await {
                tracing::warn!(error = %e, connection_id = %facts.connection_id, "$disconnect failed");
            }
        }
        Err(e) => tracing::error!(error = %e, "could not build the $disconnect event"),
    }
}

/// One client frame: route selection, the handler, the route response.
async fn dispatch(s: Arc<Shared>, facts: Arc<ConnectionFacts>, frame: Frame) {
    let id = &facts.connection_id;
    let request_id = events::new_id();
    let action = frame.action();
    let Some((route_key, route)) = s.routes.select(action.as_deref()) else {
        // No route and no $default: API Gateway's answer.
        s.connections
            .reply(id, gateway_error("Forbidden", id, &request_id));
        return;
    };
    let event = match events::message_event(&s.config.api, &facts, route_key, &frame, &request_id) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %e, "could not build the message event");
            s.connections
                .reply(id, gateway_error("Internal server error", id, &request_id));
            return;
        }
    };
    tracing::debug!(route_key, "route");
    match call_route(&s, route, event).await {
        Ok(r) => {
            let text = match r.body {
                Some(EventBody::Text(t)) => Some(t),
                Some(EventBody::Binary(b)) => Some(String::from_utf8_lossy(&b).into_owned()),
                _ => None,
            };
            if let Some(text) = text {
                s.connections.reply(id, text);
            }
        }
        Err(InvokeError::Function { error_type, .. }) if error_type == "Sandbox.Timedout" => {
            s.connections.reply(
                id,
                gateway_error("Endpoint request timed out", id, &request_id),
            );
        }
        Err(e) => {
            tracing::warn!(route_key, error = %e, "route handler failed");
            s.connections
                .reply(id, gateway_error("Internal server error", id, &request_id));
        }
    }
}

/// The frame API Gateway itself sends when an integration fails.
fn gateway_error(message: &str, connection_id: &str, request_id: &str) -> String {
    json!({"message": message, "connectionId": connection_id, "requestId": request_id}).to_string()
}

// ------------------------------------------------------------ @connections

/// An error as restJson1 clients parse it: the type in `x-amzn-ErrorType`
/// and `__type`, the text in `message`.
fn aws_error(status: StatusCode, error_type: &str, message: &str) -> Response {
    let mut r = (
        status,
        axum::Json(json!({"__type": error_type, "message": message})),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(error_type) {
        r.headers_mut().insert("x-amzn-ErrorType", v);
    }
    r
}

fn post_error(e: PostError) -> Response {
    match e {
        PostError::Gone => aws_error(StatusCode::GONE, "GoneException", "Connection is gone"),
        PostError::PayloadTooLarge => aws_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PayloadTooLargeException",
            "Payload too large",
        ),
        PostError::Unavailable(m) => aws_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerErrorException",
            &m,
        ),
    }
}

fn wrong_stage(s: &Shared, stage: &str) -> Option<Response> {
    (stage != s.config.api.stage)
        .then(|| aws_error(StatusCode::FORBIDDEN, "ForbiddenException", "Forbidden"))
}

async fn post_to_connection(
    State(s): State<Arc<Shared>>,
    Path((stage, id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    if let Some(r) = wrong_stage(&s, &stage) {
        return r;
    }
    match s.connections.post(&id, &body) {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => post_error(e),
    }
}

async fn get_connection(
    State(s): State<Arc<Shared>>,
    Path((stage, id)): Path<(String, String)>,
) -> Response {
    if let Some(r) = wrong_stage(&s, &stage) {
        return r;
    }
    match s.connections.snapshot(&id) {
        Some(snap) => axum::Json(json!({
            "connectedAt": iso(snap.connected_at),
            "lastActiveAt": iso(snap.last_active_at),
            "identity": {"sourceIp": snap.source_ip, "userAgent": snap.user_agent},
        }))
        .into_response(),
        None => post_error(PostError::Gone),
    }
}

async fn delete_connection(
    State(s): State<Arc<Shared>>,
    Path((stage, id)): Path<(String, String)>,
) -> Response {
    if let Some(r) = wrong_stage(&s, &stage) {
        return r;
    }
    match s.connections.close(&id) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => post_error(e),
    }
}

fn iso(at: i64) -> String {
    chrono::DateTime::from_timestamp_millis(at)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

// ----------------------------------------------------------- Invoke API

async fn invoke(
    State(s): State<Arc<Shared>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let payload: Value = if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(_) => {
                return aws_error(
                    StatusCode::BAD_REQUEST,
                    "InvalidRequestContentException",
                    "Could not parse request body into json",
                );
            }
        }
    };
    let kind = headers
        .get("x-amz-invocation-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("RequestResponse");
    let not_found = |name: &str| {
        aws_error(
            StatusCode::NOT_FOUND,
            "ResourceNotFoundException",
            &format!("Function not found: {}", s.config.api.function_arn(name)),
        )
    };
    match kind {
        "Event" => match s.invoker.invoke_event(&name, payload) {
            Ok(()) => StatusCode::ACCEPTED.into_response(),
            Err(_) => not_found(&name),
        },
        "DryRun" => {
            let exists = s
                .routes
                .get_function(crate::invoke::function_name(&name))
                .is_some();
            if exists {
                StatusCode::NO_CONTENT.into_response()
            } else {
                not_found(&name)
            }
        }
        "RequestResponse" => match s.invoker.invoke(&name, payload).await {
            Ok(v) => executed(axum::Json(v).into_response()),
            Err(InvokeError::NotFound(n)) => not_found(&n),
            Err(e) => {
                let mut r = executed(axum::Json(e.payload()).into_response());
                r.headers_mut().insert(
                    "X-Amz-Function-Error",
                    HeaderValue::from_static("Unhandled"),
                );
                r
            }
        },
        other => aws_error(
            StatusCode::BAD_REQUEST,
            "InvalidParameterValueException",
            &format!("Unsupported invocation type {other}"),
        ),
    }
}

fn executed(mut r: Response) -> Response {
    r.headers_mut().insert(
        "X-Amz-Executed-Version",
        HeaderValue::from_static("$LATEST"),
    );
    r
}

// ------------------------------------------------------------- /_local

async fn local_pushes(State(s): State<Arc<Shared>>) -> Response {
    match &s.inspect.pushes {
        Some(p) => axum::Json(p.sent()).into_response(),
        None => axum::Json(json!([])).into_response(),
    }
}

fn bad_user(raw: &str) -> Result<UserId, Box<Response>> {
    UserId::parse(raw).map_err(|e| {
        Box::new(
            (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({"message": e.to_string()})),
            )
                .into_response(),
        )
    })
}

async fn local_pending(State(s): State<Arc<Shared>>, Path(user): Path<String>) -> Response {
    let user = match bad_user(&user) {
        Ok(u) => u,
        Err(r) => return *r,
    };
    let Some(pending) = &s.inspect.pending else {
        return StatusCode::NOT_FOUND.into_response();
    };
    match pending.list(&user).await {
        Ok(rows) => axum::Json(rows).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"message": e.to_string()})),
        )
            .into_response(),
    }
}

async fn local_registry(State(s): State<Arc<Shared>>, Path(user): Path<String>) -> Response {
    let user = match bad_user(&user) {
        Ok(u) => u,
        Err(r) => return *r,
    };
    let Some(registry) = &s.inspect.registry else {
        return StatusCode::NOT_FOUND.into_response();
    };
    match registry.lookup(&user).await {
        Ok(entry) => axum::Json(entry).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"message": e.to_string()})),
        )
            .into_response(),
    }
}

async fn local_token(
    State(s): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(query): Query<crate::page::TokenQuery>,
) -> Response {
    crate::page::token(s.config.local_tokens.as_ref(), peer, &query)
}

async fn local_connections(State(s): State<Arc<Shared>>) -> Response {
    axum::Json(s.connections.open_ids()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_are_evaluated_with_wildcards_and_deny_wins() {
        let arn = "arn:aws:execute-api:us-east-1:000000000000:courierlocal/local/$connect";
        let allow = json!({"policyDocument": {"Version": "2012-10-17", "Statement": [
            {"Action": "execute-api:Invoke", "Effect": "Allow", "Resource": arn}]}});
        assert!(policy_allows(&allow, arn));
        let wildcard = json!({"policyDocument": {"Statement": [
            {"Effect": "Allow", "Resource": ["arn:aws:execute-api:*:*:*/local/*"]}]}});
        assert!(policy_allows(&wildcard, arn));
        let other = json!({"policyDocument": {"Statement": [
            {"Effect": "Allow", "Resource": "arn:aws:execute-api:*:*:*/prod/*"}]}});
        assert!(!policy_allows(&other, arn));
        let deny = json!({"policyDocument": {"Statement": [
            {"Effect": "Allow", "Resource": "*"}, {"Effect": "Deny", "Resource": arn}]}});
        assert!(!policy_allows(&deny, arn));
        assert!(!policy_allows(&json!({}), arn));
    }

    #[test]
    fn glob_matches_like_iam() {
        assert!(glob_match("*", "anything"));
        assert!(glob_match("a*c", "abbbc"));
        assert!(!glob_match("a*c", "abbb"));
        assert!(glob_match("a*b*c", "a-b-c"));
        assert!(!glob_match("abc", "abcd"));
    }
}
