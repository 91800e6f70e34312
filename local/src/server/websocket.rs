//! API Gateway's WebSocket API: the handshake, the socket, the routes.
//!
//! A connection goes through what API Gateway puts it through, in order:
//! the REQUEST authorizer (its policy evaluated by [`super::policy`]), then
//! `$connect`, and only then the `101`. Until `$connect` has returned 200 the
//! connection sits in the table as *opening*, so posts to it answer 410;
//! that window is real on AWS and the delivery service's retry exists for
//! it, so it is reproduced rather than smoothed over.
//!
//! Each client frame is dispatched on its own task, as API Gateway invokes a
//! Lambda per frame without waiting for the previous one: a slow `sync` must
//! not hold up a `sendMessage` behind it. A route's answer is waited for at
//! most the smaller of its function timeout and the 29 s integration
//! timeout; past that the client gets API Gateway's own error frame
//! (`Endpoint request timed out`), not the handler's.
//!
//! When the socket ends, for whatever reason, the connection leaves the
//! table *before* `$disconnect` runs, so a post racing the close gets 410 as
//! it would on AWS.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::apigw::ApiGatewayProxyResponse;
use aws_lambda_events::encodings::Body as EventBody;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use courier_core::domain::now_millis;
use futures::SinkExt;
use lambda_runtime::LambdaEvent;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use super::Shared;
use super::policy::policy_allows;
use crate::connections::Outbound;
use crate::events::{self, ConnectionFacts, Frame, Handshake};
use crate::invoke::{InvokeError, lambda_context, run_guarded};
use crate::routes::{self, Route};

/// `GET /{stage}`: the URL form AWS hands out. Another stage name is a 403
/// there, so it is here too.
pub(super) async fn on_stage(
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
pub(super) async fn root(
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
