//! The route table: which handler answers which route key, and which
//! function name the Invoke API knows it by.
//!
//! The gateway never names a Courier crate here. It holds handlers as boxed
//! closures over the very event types Lambda hands the functions
//! (`ApiGatewayCustomAuthorizerRequestTypeRequest`,
//! `ApiGatewayWebsocketProxyRequest`, plain JSON), so the real handlers are
//! plugged in by [`crate::wiring`] and tests plug in their own. Every route
//! handler is also registered as a function (its event as JSON in, its
//! response as JSON out), so `aws lambda invoke` style calls reach it too,
//! exactly as on AWS where a route's integration is an ordinary function.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::apigw::{
    ApiGatewayCustomAuthorizerRequestTypeRequest, ApiGatewayCustomAuthorizerResponse,
    ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest,
};
use futures::FutureExt;
use futures::future::BoxFuture;
use lambda_runtime::LambdaEvent;
use serde_json::Value;

/// What a handler may fail with: `lambda_runtime`'s boxed error, so the
/// handlers' own signatures fit unchanged.
pub type HandlerError = lambda_runtime::Error;

pub type AuthorizerFn = Arc<
    dyn Fn(
            LambdaEvent<ApiGatewayCustomAuthorizerRequestTypeRequest>,
        ) -> BoxFuture<'static, Result<ApiGatewayCustomAuthorizerResponse, HandlerError>>
        + Send
        + Sync,
>;

pub type RouteFn = Arc<
    dyn Fn(
            LambdaEvent<ApiGatewayWebsocketProxyRequest>,
        ) -> BoxFuture<'static, Result<ApiGatewayProxyResponse, HandlerError>>
        + Send
        + Sync,
>;

pub type FunctionFn = Arc<
    dyn Fn(LambdaEvent<Value>) -> BoxFuture<'static, Result<Value, HandlerError>> + Send + Sync,
>;

/// The route keys API Gateway itself defines.
pub const CONNECT: &str = "$connect";
pub const DISCONNECT: &str = "$disconnect";
pub const DEFAULT: &str = "$default";

/// One route: the function behind it and the handler to call.
#[derive(Clone)]
pub struct Route {
    pub function: String,
    pub handler: RouteFn,
}

/// The authorizer: its function name and handler.
#[derive(Clone)]
pub struct Authorizer {
    pub function: String,
    pub handler: AuthorizerFn,
}

/// Every route and function the gateway serves.
#[derive(Clone, Default)]
pub struct Routes {
    authorizer: Option<Authorizer>,
    routes: HashMap<String, Route>,
    functions: HashMap<String, FunctionFn>,
    timeouts: HashMap<String, Duration>,
}

/// Used when a function was given no timeout (tests' own routes). Not
/// Lambda's 3 s default, so a slow test handler is not cut off; Courier's
/// functions all get theirs from `wiring::FUNCTION_TIMEOUTS`.
pub const DEFAULT_FUNCTION_TIMEOUT: Duration = Duration::from_secs(30);

impl Routes {
    pub fn new() -> Self {
        Self::default()
    }

    /// The `$connect` REQUEST authorizer.
    pub fn authorizer<F, Fut>(mut self, function: &str, f: F) -> Self
    where
        F: Fn(LambdaEvent<ApiGatewayCustomAuthorizerRequestTypeRequest>) -> Fut
            + Send
            + Sync
            + 'static,
        Fut: Future<Output = Result<ApiGatewayCustomAuthorizerResponse, HandlerError>>
            + Send
            + 'static,
    {
        let handler: AuthorizerFn = Arc::new(move |e| f(e).boxed());
        self.functions
            .insert(function.to_owned(), typed_function(handler.clone()));
        self.authorizer = Some(Authorizer {
            function: function.to_owned(),
            handler,
        });
        self
    }

    /// A WebSocket route served by `function`.
    pub fn route<F, Fut>(mut self, route_key: &str, function: &str, f: F) -> Self
    where
        F: Fn(LambdaEvent<ApiGatewayWebsocketProxyRequest>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<ApiGatewayProxyResponse, HandlerError>> + Send + 'static,
    {
        let handler: RouteFn = Arc::new(move |e| f(e).boxed());
        self.functions
            .entry(function.to_owned())
            .or_insert_with(|| typed_function(handler.clone()));
        self.routes.insert(
            route_key.to_owned(),
            Route {
                function: function.to_owned(),
                handler,
            },
        );
        self
    }

    /// A function reachable through the Invoke API (and by
    /// [`Routes::route_to_function`]).
    pub fn function<F, Fut>(mut self, name: &str, f: F) -> Self
    where
        F: Fn(LambdaEvent<Value>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, HandlerError>> + Send + 'static,
    {
        self.functions
            .insert(name.to_owned(), Arc::new(move |e| f(e).boxed()));
        self
    }

    /// A route whose integration is a JSON-in, JSON-out function already
    /// registered with [`Routes::function`] (catch-up serves the `sync`
    /// route this way). Its result is read as a proxy response when it has
    /// a `statusCode`; anything else is a 200 without a route response.
    pub fn route_to_function(mut self, route_key: &str, function: &str) -> Self {
        let Some(f) = self.functions.get(function).cloned() else {
            tracing::warn!(
                route_key,
                function,
                "route names an unknown function; not added"
            );
            return self;
        };
        let handler: RouteFn =
            Arc::new(move |event: LambdaEvent<ApiGatewayWebsocketProxyRequest>| {
                let f = f.clone();
                async move {
                    let (payload, context) = event.into_parts();
                    let value =
                        f(LambdaEvent::new(serde_json::to_value(payload)?, context)).await?;
                    Ok(proxy_response_of(value))
                }
                .boxed()
            });
        self.routes.insert(
            route_key.to_owned(),
            Route {
                function: function.to_owned(),
                handler,
            },
        );
        self
    }

    /// How long `function` may run before it is cut off, as Lambda's
    /// function timeout.
    pub fn timeout(mut self, function: &str, timeout: Duration) -> Self {
        self.timeouts.insert(function.to_owned(), timeout);
        self
    }

    /// [`Routes::timeout`] for each `(function, timeout)`.
    pub fn timeouts(self, timeouts: &[(&str, Duration)]) -> Self {
        timeouts
            .iter()
            .fold(self, |routes, (f, t)| routes.timeout(f, *t))
    }

    pub fn get_authorizer(&self) -> Option<&Authorizer> {
        self.authorizer.as_ref()
    }

    /// The route for `route_key` exactly.
    pub fn get(&self, route_key: &str) -> Option<&Route> {
        self.routes.get(route_key)
    }

    /// Route selection for a client frame as API Gateway does it: the key
    /// if a route has it, else `$default` (if there is one). A frame can
    /// never select `$connect` or `$disconnect` (`"action":"$disconnect"`
    /// goes to `$default`): those run only on the connection's own events.
    pub fn select(&self, route_key: Option<&str>) -> Option<(&str, &Route)> {
        route_key
            .filter(|k| !k.starts_with('$'))
            .and_then(|k| self.routes.get_key_value(k))
            .or_else(|| self.routes.get_key_value(DEFAULT))
            .map(|(k, r)| (k.as_str(), r))
    }

    pub fn get_function(&self, name: &str) -> Option<&FunctionFn> {
        self.functions.get(name)
    }

    pub fn function_timeout(&self, name: &str) -> Duration {
        self.timeouts
            .get(name)
            .copied()
            .unwrap_or(DEFAULT_FUNCTION_TIMEOUT)
    }

    /// Every route key served, sorted.
    pub fn route_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.routes.keys().cloned().collect();
        keys.sort();
        keys
    }

    pub fn function_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.functions.keys().cloned().collect();
        names.sort();
        names
    }
}

/// A typed handler seen as a JSON function (for the Invoke API).
type Typed<E, R> =
    Arc<dyn Fn(LambdaEvent<E>) -> BoxFuture<'static, Result<R, HandlerError>> + Send + Sync>;

fn typed_function<E, R>(handler: Typed<E, R>) -> FunctionFn
where
    E: serde::de::DeserializeOwned + Send + 'static,
    R: serde::Serialize + Send + 'static,
{
    Arc::new(move |event: LambdaEvent<Value>| {
        let handler = handler.clone();
        async move {
            let (payload, context) = event.into_parts();
            let typed: E = serde_json::from_value(payload)?;
            let out = handler(LambdaEvent::new(typed, context)).await?;
            Ok(serde_json::to_value(out)?)
        }
        .boxed()
    })
}

/// A function's JSON result read the way API Gateway reads a Lambda proxy
/// integration's answer.
pub fn proxy_response_of(value: Value) -> ApiGatewayProxyResponse {
    if value.get("statusCode").is_some()
        && let Ok(r) = serde_json::from_value::<ApiGatewayProxyResponse>(value)
    {
        return r;
    }
    let mut r = ApiGatewayProxyResponse::default();
    r.status_code = 200;
    r
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ok_route() -> Routes {
        Routes::new()
            .route("sendMessage", "send-message", |_e| async {
                Ok(courier_aws::edge::status(200))
            })
            .route(DEFAULT, "default", |_e| async {
                Ok(courier_aws::edge::status(200))
            })
    }

    #[test]
    fn unknown_and_missing_keys_fall_back_to_default() {
        let routes = ok_route();
        assert_eq!(routes.select(Some("sendMessage")).unwrap().0, "sendMessage");
        assert_eq!(routes.select(Some("fly")).unwrap().0, DEFAULT);
        assert_eq!(routes.select(None).unwrap().0, DEFAULT);
        assert!(Routes::new().select(Some("x")).is_none());
    }

    #[test]
    fn a_frame_never_selects_connect_or_disconnect() {
        let routes = ok_route()
            .route("$connect", "connect", |_e| async {
                Ok(courier_aws::edge::status(200))
            })
            .route("$disconnect", "disconnect", |_e| async {
                Ok(courier_aws::edge::status(200))
            });
        for key in ["$connect", "$disconnect", "$default"] {
            assert_eq!(routes.select(Some(key)).unwrap().0, DEFAULT, "{key}");
        }
        assert_eq!(routes.get("$disconnect").unwrap().function, "disconnect");
    }

    #[test]
    fn every_route_is_also_an_invocable_function() {
        let routes = ok_route();
        assert_eq!(routes.function_names(), vec!["default", "send-message"]);
    }

    #[tokio::test]
    async fn a_json_function_serves_a_route_with_its_proxy_response() {
        let routes = Routes::new()
            .function("catch-up", |e: LambdaEvent<Value>| async move {
                let route = e.payload["requestContext"]["routeKey"].clone();
                Ok(serde_json::json!({"statusCode": 200, "body": route}))
            })
            .route_to_function("sync", "catch-up");
        let event: ApiGatewayWebsocketProxyRequest = serde_json::from_value(serde_json::json!({
            "requestContext": {"routeKey": "sync", "connectedAt": 1, "requestTimeEpoch": 1},
            "isBase64Encoded": false
        }))
        .unwrap();
        let route = routes.get("sync").unwrap();
        let r = (route.handler)(LambdaEvent::new(event, Default::default()))
            .await
            .unwrap();
        assert_eq!(r.status_code, 200);
        assert!(
            matches!(r.body, Some(aws_lambda_events::encodings::Body::Text(ref t)) if t == "sync")
        );
    }
}
