//! The HTTP and WebSocket server: one port, every API Courier's functions
//! and clients talk to.
//!
//! Each emulated API has its own module, because each copies a different
//! AWS service's contract and is read against that service's documentation:
//!
//! - [`websocket`]: `GET /` or `GET /{stage}` with an upgrade, API Gateway's
//!   WebSocket API. The authorizer and `$connect` both run *before* the
//!   `101`, so a refusal is an HTTP status at the handshake, as on AWS. Each
//!   client frame is one route invocation, run concurrently like Lambda
//!   invocations; a route's response body goes back to the socket.
//! - [`policy`]: the IAM evaluation the handshake applies to the
//!   authorizer's policy. Kept apart because it is pure and tested on its
//!   own, and knows nothing of HTTP.
//! - [`management_api`]: `POST|GET|DELETE /{stage}/@connections/{id}`, the
//!   Management API, with the status codes and `x-amzn-ErrorType` bodies
//!   `aws-sdk-apigatewaymanagement` parses. (The table it answers from is
//!   [`crate::connections`]; this module is only its HTTP face.)
//! - [`invoke_api`]: `POST /2015-03-31/functions/{name}/invocations`, enough
//!   of the Lambda Invoke API for `aws-sdk-lambda`'s `invoke`. (How a
//!   function is run is [`crate::invoke`]; this module is its HTTP face.)
//! - [`control`]: `GET /_local/...`, what tests and the demo inspect. Not an
//!   AWS API, so nothing else may depend on its shapes.
//!
//! This module holds what they share: the configuration, the state every
//! handler reads ([`Shared`]), the router and the running server. The story
//! page (`GET /` without an `Upgrade`, `/courier.js`, `/app.js`) is
//! [`crate::page`].
//!
//! Limits are API Gateway's: frames over 32 KB and messages over 128 KB
//! close the socket with 1009, posts over 128 KB answer 413, an idle
//! connection closes after 10 minutes and any connection after 2 hours
//! (all configurable, so tests can shorten them).

mod control;
mod invoke_api;
mod management_api;
mod policy;
mod websocket;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use courier_core::ports::{ConnectionRegistry, PendingStore};
use serde_json::json;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::connections::{ConnectionTable, LocalGateway};
use crate::events::ApiInfo;
use crate::invoke::{Invoker, LocalTrigger};
use crate::pushes::RecordingNotifier;
use crate::routes::Routes;

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

/// What every API's handlers read: one per server, behind an `Arc` as
/// axum's state.
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
    routes: Arc<Routes>,
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

    /// What this gateway serves: route keys, functions, their timeouts.
    pub fn routes(&self) -> &Routes {
        &self.routes
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
        routes: routes.clone(),
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
        routes,
        shutdown: Some(tx),
        task: Some(task),
    })
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(websocket::root))
        .route("/courier.js", get(crate::page::courier_js))
        .route("/app.js", get(crate::page::app_js))
        .route("/_local/token", get(control::token))
        .route("/{stage}", get(websocket::on_stage))
        .route(
            "/{stage}/@connections/{id}",
            post(management_api::post_to_connection)
                .get(management_api::get_connection)
                .delete(management_api::delete_connection),
        )
        .route(
            "/2015-03-31/functions/{name}/invocations",
            post(invoke_api::invoke),
        )
        .route("/_local/pushes", get(control::pushes))
        .route("/_local/pending/{user}", get(control::pending))
        .route("/_local/registry/{user}", get(control::registry))
        .route("/_local/connections", get(control::connections))
        // Bodies past 128 KB must reach the handlers to be answered 413 the
        // way API Gateway does, not by axum's generic limit.
        .layer(DefaultBodyLimit::max(8 * 1024 * 1024))
        .with_state(shared)
}

/// An error as restJson1 clients parse it: the type in `x-amzn-ErrorType`
/// and `__type`, the text in `message`. Both AWS APIs answer this way, so
/// the real SDKs' error parsing is exercised.
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
