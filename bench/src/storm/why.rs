//! Why a storm client had to send `sync`: what its `$connect`'s catch-up
//! was doing when the client gave up waiting.
//!
//! The local gateway runs an asynchronous invocation in the background and
//! only logs its failure (`courier_local::invoke`, as Lambda does; retries
//! are not emulated), and `$connect` accepts the socket even when the
//! trigger failed. Neither reaches the client, so the storm wraps the
//! catch-up function in the gateway's route table ([`CatchUps::wrap`]) and
//! records, per user, when the direct invocation (the one `$connect`
//! started; a `sync` comes through its route and is not recorded) began,
//! when it ended and how: the `ending` of its result, the handler's error,
//! or cut off at the function timeout. [`reason`] reads that record at the
//! instant of the client's first `sync`.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use courier_local::routes::Routes;
use courier_local::wiring::functions::CATCH_UP;
use futures::FutureExt;
use lambda_runtime::LambdaEvent;
use serde_json::Value;

/// How an invocation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// It posted `caught_up`.
    CaughtUp,
    /// It returned another `ending` (`gone`, `device_refused`).
    Other(String),
    /// The handler returned an error.
    Failed(String),
    /// Dropped before it returned: cut off at the function timeout.
    CutOff,
}

impl fmt::Display for Ending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ending::CaughtUp => f.write_str("caught_up"),
            Ending::Other(e) => write!(f, "ended {e}"),
            Ending::Failed(e) => write!(f, "failed: {e}"),
            Ending::CutOff => f.write_str("cut off at the function timeout"),
        }
    }
}

/// One user's `$connect` catch-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub started: Instant,
    pub ended: Option<(Instant, Ending)>,
}

/// The catch-ups `$connect` started, by user.
#[derive(Debug, Default)]
pub struct CatchUps {
    calls: Mutex<HashMap<String, Call>>,
    running: AtomicUsize,
}

impl CatchUps {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// `routes` with the catch-up function recording its direct
    /// invocations here. The `sync` route keeps the function it was given
    /// when the table was built, so syncs are not recorded.
    pub fn wrap(self: &Arc<Self>, routes: Routes) -> Routes {
        let Some(inner) = routes.get_function(CATCH_UP).cloned() else {
            return routes;
        };
        let me = self.clone();
        routes.function(CATCH_UP, move |event: LambdaEvent<Value>| {
            let user = direct_invocation_user(&event.payload);
            let guard = user.map(|u| me.start(u));
            let call = inner(event);
            async move {
                let result = call.await;
                if let Some(g) = guard {
                    g.end(match &result {
                        Ok(v) => match v.get("ending").and_then(Value::as_str) {
                            Some("caught_up") => Ending::CaughtUp,
                            Some(other) => Ending::Other(other.to_owned()),
                            None => Ending::Other("without an ending".to_owned()),
                        },
                        Err(e) => Ending::Failed(headline(&e.to_string())),
                    });
                }
                result
            }
            .boxed()
        })
    }

    fn start(self: &Arc<Self>, user: String) -> Running {
        self.running.fetch_add(1, Ordering::SeqCst);
        let started = Instant::now();
        self.lock().entry(user.clone()).or_insert(Call {
            started,
            ended: None,
        });
        Running {
            catch_ups: self.clone(),
            user,
            ended: false,
        }
    }

    /// Invocations begun and not yet ended.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

    pub fn call(&self, user: &str) -> Option<Call> {
        self.lock().get(user).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Call>> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// An error's chain up to its first parenthesis, at most 100 characters:
/// enough to tell the reasons apart in one table row.
fn headline(error: &str) -> String {
    let short = error.split(" (").next().unwrap_or(error);
    short.chars().take(100).collect()
}

/// `user_id` of a catch-up request `$connect` sent; `None` for a route
/// event (a `sync`).
fn direct_invocation_user(payload: &Value) -> Option<String> {
    if payload.get("requestContext").is_some() {
        return None;
    }
    payload.get("user_id")?.as_str().map(str::to_owned)
}

/// An invocation under way; dropped without [`Running::end`], it was cut
/// off (the gateway aborts a function at its timeout).
struct Running {
    catch_ups: Arc<CatchUps>,
    user: String,
    ended: bool,
}

impl Running {
    fn end(mut self, ending: Ending) {
        self.finish(ending);
    }

    fn finish(&mut self, ending: Ending) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        if let Some(c) = self.catch_ups.lock().get_mut(&self.user) {
            c.ended.get_or_insert((Instant::now(), ending));
        }
        self.catch_ups.running.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.finish(Ending::CutOff);
    }
}

/// Why a client sent its first `sync`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    /// An `error` frame came before the sync.
    ErrorFrame(String),
    /// `$connect` never invoked catch-up (its trigger failed).
    NeverInvoked,
    /// The invocation had not begun when the client gave up.
    NotStarted,
    /// Still running when the client gave up; how it ended after.
    StillRunning(String),
    /// It had ended without `caught_up` before the sync.
    EndedWithout(String),
    /// It had posted `caught_up`, which the client had not read yet.
    CaughtUpUnread,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::ErrorFrame(code) => write!(f, "an error frame ({code}) came first"),
            Reason::NeverInvoked => f.write_str("connect never invoked catch-up"),
            Reason::NotStarted => f.write_str("catch-up not yet started"),
            Reason::StillRunning(then) => write!(f, "catch-up still running (then {then})"),
            Reason::EndedWithout(how) => write!(f, "catch-up {how}"),
            Reason::CaughtUpUnread => f.write_str("caught_up posted, not yet read"),
        }
    }
}

/// The reason, from the client's connect catch-up `call` as it stood at
/// its first sync, `synced_at`, and the first error frame it read before.
pub fn reason(call: Option<&Call>, synced_at: Instant, error_first: Option<&str>) -> Reason {
    if let Some(code) = error_first {
        return Reason::ErrorFrame(code.to_owned());
    }
    let Some(call) = call else {
        return Reason::NeverInvoked;
    };
    if call.started > synced_at {
        return Reason::NotStarted;
    }
    match &call.ended {
        Some((at, Ending::CaughtUp)) if *at <= synced_at => Reason::CaughtUpUnread,
        Some((at, ending)) if *at <= synced_at => Reason::EndedWithout(ending.to_string()),
        Some((_, ending)) => Reason::StillRunning(ending.to_string()),
        None => Reason::StillRunning("never ended".to_owned()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn call(start: Instant, end: Option<(Duration, Ending)>) -> Call {
        Call {
            started: start,
            ended: end.map(|(d, e)| (start + d, e)),
        }
    }

    #[test]
    fn the_reason_is_read_at_the_instant_of_the_sync() {
        let t0 = Instant::now();
        let sync = t0 + Duration::from_secs(4);
        let s = Duration::from_secs;
        assert_eq!(reason(None, sync, None), Reason::NeverInvoked);
        assert_eq!(
            reason(Some(&call(sync + s(1), None)), sync, None),
            Reason::NotStarted
        );
        assert_eq!(
            reason(Some(&call(t0, Some((s(6), Ending::CaughtUp)))), sync, None),
            Reason::StillRunning("caught_up".into())
        );
        assert_eq!(
            reason(Some(&call(t0, Some((s(1), Ending::CaughtUp)))), sync, None),
            Reason::CaughtUpUnread
        );
        assert_eq!(
            reason(
                Some(&call(t0, Some((s(1), Ending::Failed("boom".into()))))),
                sync,
                None
            ),
            Reason::EndedWithout("failed: boom".into())
        );
        assert_eq!(
            reason(Some(&call(t0, None)), sync, Some("internal")),
            Reason::ErrorFrame("internal".into())
        );
    }

    #[tokio::test]
    async fn the_wrapper_records_direct_invocations_only_and_a_cut_off() {
        let routes = Routes::new().function(CATCH_UP, |e: LambdaEvent<Value>| async move {
            if e.payload.get("hang").is_some() {
                std::future::pending::<()>().await;
            }
            Ok(serde_json::json!({"ending": "gone"}))
        });
        let catch_ups = CatchUps::new();
        let routes = catch_ups.wrap(routes);
        let f = routes.get_function(CATCH_UP).unwrap().clone();
        let ctx = lambda_runtime::Context::default();
        let direct = serde_json::json!({"user_id": "u1"});
        f(LambdaEvent::new(direct, ctx.clone())).await.unwrap();
        let route = serde_json::json!({"user_id": "u2", "requestContext": {}});
        f(LambdaEvent::new(route, ctx.clone())).await.unwrap();
        let hung = serde_json::json!({"user_id": "u3", "hang": true});
        let cut =
            tokio::time::timeout(Duration::from_millis(10), f(LambdaEvent::new(hung, ctx))).await;
        assert!(cut.is_err());
        let ending = |u: &str| catch_ups.call(u).and_then(|c| c.ended).map(|(_, e)| e);
        assert_eq!(ending("u1"), Some(Ending::Other("gone".into())));
        assert_eq!(catch_ups.call("u2"), None);
        assert_eq!(ending("u3"), Some(Ending::CutOff));
        assert_eq!(catch_ups.running(), 0);
    }
}
