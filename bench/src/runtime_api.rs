//! A stand-in of the Lambda Runtime API, enough to run a function binary
//! the way Lambda does and time it.
//!
//! The binary is started with `AWS_LAMBDA_RUNTIME_API` pointing here. It
//! polls `GET /2018-06-01/runtime/invocation/next`; the stand-in hands out
//! the queued events one by one (and holds the poll open when the queue is
//! empty, as Lambda does between invocations), and records when each poll
//! arrived and when each `/response` or `/error` came back. Those instants,
//! against the instant the process was spawned, are the start-up figures.
//!
//! The same listener also answers the two AWS APIs the functions call
//! besides DynamoDB and Redis, so that none of them needs a real service to
//! finish an invocation: `POST /{stage}/@connections/{id}` (200, counting
//! posts and bytes) and the Lambda Invoke API (202), for `connect`'s
//! asynchronous invoke of catch-up.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::Value;
use tokio::sync::Notify;

/// How one invocation went.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub request_id: String,
    /// When the binary polled for it (`GET …/next`).
    pub polled_at: Instant,
    /// When the response or error came back.
    pub done_at: Option<Instant>,
    /// `Ok(response body)` or `Err(error body)`.
    pub outcome: Option<Result<Value, String>>,
}

#[derive(Default)]
struct Inner {
    queue: VecDeque<Value>,
    invocations: Vec<Invocation>,
    /// Polls received, including those still held open.
    polls: Vec<Instant>,
    init_error: Option<String>,
    posts: usize,
    post_bytes: usize,
    invokes: usize,
}

#[derive(Clone, Default)]
struct Shared {
    inner: Arc<Mutex<Inner>>,
    changed: Arc<Notify>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running stand-in.
pub struct RuntimeApi {
    pub addr: SocketAddr,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RuntimeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The deadline handed to every invocation: Lambda's 15-minute maximum, so
/// no function cuts its work short for the benchmark.
const DEADLINE: Duration = Duration::from_secs(900);

impl RuntimeApi {
    pub async fn start() -> anyhow::Result<RuntimeApi> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Shared::default();
        let app = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route(
                "/2018-06-01/runtime/invocation/{id}/response",
                post(response),
            )
            .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .route("/{stage}/@connections/{id}", post(connection_post))
            .route("/2015-03-31/functions/{name}/invocations", post(invoke))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(RuntimeApi { addr, shared, task })
    }

    /// `host:port`, for `AWS_LAMBDA_RUNTIME_API`.
    pub fn runtime_api(&self) -> String {
        self.addr.to_string()
    }

    /// `http://host:port/local`, for `MANAGEMENT_ENDPOINT`.
    pub fn management_endpoint(&self) -> String {
        format!("http://{}/local", self.addr)
    }

    /// `http://host:port`, for `LAMBDA_ENDPOINT`.
    pub fn lambda_endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn push(&self, event: Value) {
        self.shared.lock().queue.push_back(event);
        self.shared.changed.notify_waiters();
    }

    pub fn invocations(&self) -> Vec<Invocation> {
        self.shared.lock().invocations.clone()
    }

    pub fn polls(&self) -> Vec<Instant> {
        self.shared.lock().polls.clone()
    }

    pub fn init_error(&self) -> Option<String> {
        self.shared.lock().init_error.clone()
    }

    /// `@connections` posts answered, and their bytes.
    pub fn posts(&self) -> (usize, usize) {
        let i = self.shared.lock();
        (i.posts, i.post_bytes)
    }

    pub fn invokes(&self) -> usize {
        self.shared.lock().invokes
    }

    /// Waits until `count` invocations are done, or the time is up, or
    /// `alive` says the process exited.
    pub async fn wait_done(
        &self,
        count: usize,
        timeout: Duration,
        mut alive: impl FnMut() -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.shared.changed.notified();
            {
                let i = self.shared.lock();
                if let Some(e) = &i.init_error {
                    anyhow::bail!("init error: {e}");
                }
                let done = i.invocations.iter().filter(|v| v.done_at.is_some()).count();
                if done >= count {
                    return Ok(());
                }
            }
            if !alive() {
                anyhow::bail!("the function exited before {count} invocation(s) were done");
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                anyhow::bail!("{count} invocation(s) not done within {timeout:?}");
            }
            let _ = tokio::time::timeout(left.min(Duration::from_millis(50)), notified).await;
        }
    }
}

async fn next(State(s): State<Shared>) -> Response {
    let polled_at = Instant::now();
    s.lock().polls.push(polled_at);
    s.changed.notify_waiters();
    let event = loop {
        let notified = s.changed.notified();
        if let Some(e) = s.lock().queue.pop_front() {
            break e;
        }
        notified.await;
    };
    let request_id = uuid::Uuid::new_v4().to_string();
    let deadline_ms = courier_core::domain::now_millis()
        + i64::try_from(DEADLINE.as_millis()).unwrap_or(i64::MAX);
    s.lock().invocations.push(Invocation {
        request_id: request_id.clone(),
        polled_at,
        done_at: None,
        outcome: None,
    });
    let mut headers = HeaderMap::new();
    let put = |h: &mut HeaderMap, k: &'static str, v: &str| {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(k, v);
        }
    };
    put(&mut headers, "lambda-runtime-aws-request-id", &request_id);
    put(
        &mut headers,
        "lambda-runtime-deadline-ms",
        &deadline_ms.to_string(),
    );
    put(
        &mut headers,
        "lambda-runtime-invoked-function-arn",
        "arn:aws:lambda:us-east-1:000000000000:function:bench",
    );
    put(
        &mut headers,
        "lambda-runtime-trace-id",
        "Root=1-00000000-000000000000000000000000;Sampled=0",
    );
    put(&mut headers, "content-type", "application/json");
    (StatusCode::OK, headers, event.to_string()).into_response()
}

fn finish(s: &Shared, id: &str, outcome: Result<Value, String>) {
    let now = Instant::now();
    let mut i = s.lock();
    if let Some(v) = i.invocations.iter_mut().find(|v| v.request_id == id) {
        v.done_at = Some(now);
        v.outcome = Some(outcome);
    }
    drop(i);
    s.changed.notify_waiters();
}

async fn response(State(s): State<Shared>, Path(id): Path<String>, body: Bytes) -> StatusCode {
    let value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    finish(&s, &id, Ok(value));
    StatusCode::ACCEPTED
}

async fn error(State(s): State<Shared>, Path(id): Path<String>, body: Bytes) -> StatusCode {
    finish(&s, &id, Err(String::from_utf8_lossy(&body).into_owned()));
    StatusCode::ACCEPTED
}

async fn init_error(State(s): State<Shared>, body: Bytes) -> StatusCode {
    s.lock().init_error = Some(String::from_utf8_lossy(&body).into_owned());
    s.changed.notify_waiters();
    StatusCode::ACCEPTED
}

async fn connection_post(State(s): State<Shared>, body: Bytes) -> StatusCode {
    let mut i = s.lock();
    i.posts += 1;
    i.post_bytes += body.len();
    StatusCode::OK
}

async fn invoke(State(s): State<Shared>) -> StatusCode {
    s.lock().invokes += 1;
    StatusCode::ACCEPTED
}
