//! Running functions as Lambda would: a fresh `Context` with a deadline, the
//! function timeout enforced, a panic turned into a function error, and
//! `Event` invocations run in the background.
//!
//! [`Invoker`] serves the Lambda Invoke API (`server/invoke_api.rs`) and the
//! in-process [`LocalTrigger`], the `CatchUpTrigger` port of the embedded
//! mode. Both go through the same path, so an asynchronous catch-up started
//! by `connect` runs the same way whether the `connect` handler reached it
//! through the real `aws-sdk-lambda` adapter or in process.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use courier_core::ports::{CatchUpRequest, CatchUpTrigger, TriggerError};
use lambda_runtime::{Context, LambdaEvent};
use serde_json::Value;
use tracing::Instrument;

use crate::events::ApiInfo;
use crate::routes::{HandlerError, Routes};

/// Why an invocation did not produce a result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvokeError {
    #[error("function not found: {0}")]
    NotFound(String),
    /// The function ran and failed (Lambda's `Unhandled` function error).
    #[error("{error_type}: {message}")]
    Function { error_type: String, message: String },
}

impl InvokeError {
    /// The `{"errorMessage", "errorType"}` payload Lambda returns with
    /// `X-Amz-Function-Error`.
    pub fn payload(&self) -> Value {
        match self {
            InvokeError::NotFound(name) => serde_json::json!({
                "errorMessage": format!("Function not found: {name}"),
                "errorType": "ResourceNotFoundException",
            }),
            InvokeError::Function {
                error_type,
                message,
            } => serde_json::json!({"errorMessage": message, "errorType": error_type}),
        }
    }
}

/// `errorType` of a handler's `Err`: the boxed error's concrete type is
/// lost behind `lambda_runtime::Error`, so one name covers them.
pub const HANDLER_ERROR: &str = "Runtime.HandlerError";

/// A `Context` like the one the Lambda runtime builds for an invocation.
pub fn lambda_context(api: &ApiInfo, function: &str, timeout: Duration) -> Context {
    let mut ctx = Context::default();
    ctx.request_id = uuid::Uuid::new_v4().to_string();
    let now = u64::try_from(courier_core::domain::now_millis()).unwrap_or(0);
    ctx.deadline = now + u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX / 2);
    ctx.invoked_function_arn = api.function_arn(function);
    ctx
}

/// Runs one invocation of `function`: in its own task, so a panic is a
/// function error and not a dead gateway, and cut off at `timeout` as
/// Lambda does.
pub async fn run_guarded<T, F>(function: &str, timeout: Duration, fut: F) -> Result<T, InvokeError>
where
    T: Send + 'static,
    F: Future<Output = Result<T, HandlerError>> + Send + 'static,
{
    let mut task = tokio::spawn(fut.instrument(tracing::info_span!("function", name = %function)));
    match tokio::time::timeout(timeout, &mut task).await {
        Ok(Ok(Ok(v))) => Ok(v),
        Ok(Ok(Err(e))) => Err(InvokeError::Function {
            error_type: HANDLER_ERROR.into(),
            message: e.to_string(),
        }),
        Ok(Err(join)) => Err(InvokeError::Function {
            error_type: "Runtime.Panic".into(),
            message: if join.is_panic() {
                "the function panicked".into()
            } else {
                "the function was cancelled".into()
            },
        }),
        Err(_) => {
            // Lambda stops a function at its timeout; so does this: the
            // handler is dropped at its next await, not left running.
            task.abort();
            Err(InvokeError::Function {
                error_type: "Sandbox.Timedout".into(),
                message: format!("Task timed out after {:.2} seconds", timeout.as_secs_f64()),
            })
        }
    }
}

/// `catch-up`, `arn:aws:lambda:…:function:catch-up`, `catch-up:$LATEST` and
/// `000000000000:function:catch-up` all name the same function.
pub fn function_name(raw: &str) -> &str {
    let name = match raw.rfind(":function:") {
        Some(i) => &raw[i + ":function:".len()..],
        None => raw,
    };
    name.split(':').next().unwrap_or(name)
}

/// Invokes functions of a route table installed after construction (the
/// handlers need the trigger, and the trigger needs the handlers).
#[derive(Clone, Default)]
pub struct Invoker {
    routes: Arc<OnceLock<Arc<Routes>>>,
    api: Arc<OnceLock<ApiInfo>>,
}

impl Invoker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes `routes` the functions this invoker runs; only the first call
    /// counts.
    pub fn install(&self, routes: Arc<Routes>, api: ApiInfo) {
        let _ = self.routes.set(routes);
        let _ = self.api.set(api);
    }

    /// A `RequestResponse` invocation: waits for the result.
    pub async fn invoke(&self, name: &str, payload: Value) -> Result<Value, InvokeError> {
        let name = function_name(name);
        let (Some(routes), Some(api)) = (self.routes.get(), self.api.get()) else {
            return Err(InvokeError::NotFound(name.to_owned()));
        };
        let Some(f) = routes.get_function(name).cloned() else {
            return Err(InvokeError::NotFound(name.to_owned()));
        };
        let timeout = routes.function_timeout(name);
        let ctx = lambda_context(api, name, timeout);
        run_guarded(name, timeout, f(LambdaEvent::new(payload, ctx))).await
    }

    /// An `Event` invocation: checks the function exists, then runs it in
    /// the background; its failure is only logged, as Lambda's async
    /// invokes are (retries are not emulated).
    pub fn invoke_event(&self, name: &str, payload: Value) -> Result<(), InvokeError> {
        let name = function_name(name).to_owned();
        let known = self
            .routes
            .get()
            .is_some_and(|r| r.get_function(&name).is_some());
        if !known {
            return Err(InvokeError::NotFound(name));
        }
        let me = self.clone();
        tokio::spawn(async move {
            match me.invoke(&name, payload).await {
                Ok(_) => tracing::debug!(function = %name, "async invocation done"),
                Err(e) => tracing::warn!(function = %name, error = %e, "async invocation failed"),
            }
        });
        Ok(())
    }
}

/// The `CatchUpTrigger` port in process: an `Event` invocation of the
/// catch-up function through [`Invoker`].
#[derive(Clone)]
pub struct LocalTrigger {
    invoker: Invoker,
    function: String,
}

impl LocalTrigger {
    pub fn new(invoker: Invoker, function: impl Into<String>) -> Self {
        Self {
            invoker,
            function: function.into(),
        }
    }
}

#[async_trait]
impl CatchUpTrigger for LocalTrigger {
    async fn trigger(&self, request: &CatchUpRequest) -> Result<(), TriggerError> {
        let payload = serde_json::to_value(request).map_err(|e| TriggerError(e.to_string()))?;
        self.invoker
            .invoke_event(&self.function, payload)
            .map_err(|e| TriggerError(e.to_string()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Sends on drop: proves a future was dropped (cancelled) without
    /// waiting a fixed time and assuming nothing happened.
    struct Dropped(Option<tokio::sync::oneshot::Sender<()>>);

    impl Drop for Dropped {
        fn drop(&mut self) {
            if let Some(tx) = self.0.take() {
                let _ = tx.send(());
            }
        }
    }

    #[tokio::test]
    async fn a_timed_out_handler_is_cancelled_not_left_running() {
        let (tx, dropped) = tokio::sync::oneshot::channel();
        let finished = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = finished.clone();
        let handler = async move {
            let _guard = Dropped(Some(tx));
            tokio::time::sleep(Duration::from_secs(3600)).await;
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok::<(), HandlerError>(())
        };
        let r = run_guarded("slow", Duration::from_millis(20), handler).await;
        assert!(
            matches!(&r, Err(InvokeError::Function { error_type, .. }) if error_type == "Sandbox.Timedout"),
            "{r:?}"
        );
        tokio::time::timeout(Duration::from_secs(10), dropped)
            .await
            .expect("the handler was dropped when its time ran out")
            .expect("the guard sent on drop");
        assert!(!finished.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[test]
    fn function_names_from_arns_and_qualifiers() {
        assert_eq!(function_name("catch-up"), "catch-up");
        assert_eq!(
            function_name("arn:aws:lambda:us-east-1:000000000000:function:catch-up"),
            "catch-up"
        );
        assert_eq!(function_name("catch-up:$LATEST"), "catch-up");
        assert_eq!(
            function_name("000000000000:function:catch-up:live"),
            "catch-up"
        );
    }

    #[tokio::test]
    async fn panics_and_timeouts_are_function_errors() {
        let e = run_guarded::<Value, _>("p", Duration::from_secs(1), async {
            panic!("boom");
        })
        .await
        .unwrap_err();
        assert!(
            matches!(e, InvokeError::Function { ref error_type, .. } if error_type == "Runtime.Panic")
        );
        let e = run_guarded::<Value, _>("t", Duration::from_millis(20), async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok(Value::Null)
        })
        .await
        .unwrap_err();
        assert!(
            matches!(e, InvokeError::Function { ref error_type, .. } if error_type == "Sandbox.Timedout")
        );
    }

    #[tokio::test]
    async fn the_trigger_runs_the_named_function_in_the_background() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let routes = Routes::new().function("catch-up", move |e: LambdaEvent<Value>| {
            let tx = tx.clone();
            async move {
                tx.send((e.payload, e.context.deadline)).unwrap();
                Ok(Value::Null)
            }
        });
        let invoker = Invoker::new();
        invoker.install(Arc::new(routes), ApiInfo::default());
        let trigger = LocalTrigger::new(invoker.clone(), "catch-up");
        let req = CatchUpRequest {
            user_id: courier_core::domain::UserId::parse("bob").unwrap(),
            connection_id: courier_core::domain::ConnectionId::parse("abc=").unwrap(),
            connected_at: Some(5),
            device_id: Default::default(),
            open_conversation: None,
            device_limit: None,
            origin: Default::default(),
            correlation_id: None,
        };
        trigger.trigger(&req).await.unwrap();
        let (payload, deadline) = rx.recv().await.unwrap();
        assert_eq!(payload["user_id"], "bob");
        assert!(deadline > 0);
        let missing = LocalTrigger::new(invoker, "nope");
        assert!(missing.trigger(&req).await.is_err());
    }
}
