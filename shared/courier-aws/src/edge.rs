//! The edge every handler shares: reading an API Gateway WebSocket event,
//! answering it, and the span its work runs in (its correlation id).
//!
//! Identity comes from one place only, the authorizer context API Gateway
//! attaches to every route of a connection (`requestContext.authorizer`).
//! A body that claims a `user_id` is never read for identity. A route event
//! without that context means the API is misconfigured (a route reachable
//! without the authorizer), so it is a server fault (`Err`), not a client
//! mistake.

use std::future::Future;

use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use aws_lambda_events::encodings::Body;
use courier_core::app::App;
use courier_core::domain::{ConnectionId, ConversationId, CorrelationId, DeviceId, Millis, UserId};
use courier_core::protocol::{ErrorCode, FrameError, Request, ServerFrame};
use courier_core::services::{Answer, Reply, fault};
use tracing::Instrument;

/// The authorizer context key that carries the user id.
pub const USER_ID_KEY: &str = "user_id";
/// The authorizer context key that carries the device id.
pub const DEVICE_ID_KEY: &str = "device_id";
/// The connect URL's query parameter naming the conversation the app was
/// opened on (a tapped notification).
pub const OPEN_CONVERSATION_PARAM: &str = "conversation_id";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EdgeError {
    #[error("event has no authorizer context user_id: is the route behind the authorizer?")]
    MissingIdentity,
    #[error("authorizer context user_id is invalid: {0}")]
    InvalidIdentity(String),
    #[error("event has no valid requestContext.connectionId")]
    MissingConnection,
    #[error("authorizer context device_id is invalid: {0}")]
    InvalidDevice(String),
}

/// What a handler needs from a WebSocket route event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsRequest {
    pub user_id: UserId,
    /// The device the authorizer validated; `default` when the connection
    /// named none (an authorizer from before devices, or a client that
    /// sends no `device=`).
    pub device_id: DeviceId,
    pub connection_id: ConnectionId,
    /// API Gateway's `connectedAt` (ms); `None` if the event did not carry
    /// it (a positive value).
    pub connected_at: Option<Millis>,
    pub route_key: String,
    /// The frame's text; `None` for `$connect`/`$disconnect` and binary frames.
    pub body: Option<String>,
    /// True when the frame was binary (API Gateway base64-encodes it).
    pub binary: bool,
}

/// The connection id of any WebSocket event, identity or not.
pub fn connection_id(event: &ApiGatewayWebsocketProxyRequest) -> Result<ConnectionId, EdgeError> {
    event
        .request_context
        .connection_id
        .as_deref()
        .and_then(|c| ConnectionId::parse(c).ok())
        .ok_or(EdgeError::MissingConnection)
}

/// The id a route event's work is logged under: API Gateway's request id
/// (it names the frame in API Gateway's own logs too), else a fresh one.
pub fn correlation_id(event: &ApiGatewayWebsocketProxyRequest) -> CorrelationId {
    CorrelationId::from_request_id(event.request_context.request_id.as_deref())
}

/// The span a route event's handler runs in ([`crate::telemetry::correlated`]).
pub fn span(
    event: &ApiGatewayWebsocketProxyRequest,
    context: &lambda_runtime::Context,
) -> tracing::Span {
    crate::telemetry::correlated(&correlation_id(event), context)
}

/// The user id the authorizer put in the context.
pub fn user_id(event: &ApiGatewayWebsocketProxyRequest) -> Result<UserId, EdgeError> {
    let raw = event
        .request_context
        .authorizer
        .fields
        .get(USER_ID_KEY)
        .and_then(|v| v.as_str())
        .ok_or(EdgeError::MissingIdentity)?;
    UserId::parse(raw).map_err(|e| EdgeError::InvalidIdentity(e.to_string()))
}

/// The device id the authorizer put in the context (`default` if none).
pub fn device_id(event: &ApiGatewayWebsocketProxyRequest) -> Result<DeviceId, EdgeError> {
    match event
        .request_context
        .authorizer
        .fields
        .get(DEVICE_ID_KEY)
        .and_then(|v| v.as_str())
    {
        None => Ok(DeviceId::default()),
        Some(raw) => DeviceId::parse(raw).map_err(|e| EdgeError::InvalidDevice(e.to_string())),
    }
}

/// `$connect`'s `conversation_id=` parameter, if it names a valid id; a
/// malformed one is ignored (logged), never a refused connection.
pub fn open_conversation(event: &ApiGatewayWebsocketProxyRequest) -> Option<ConversationId> {
    let raw = event
        .query_string_parameters
        .first(OPEN_CONVERSATION_PARAM)?;
    match ConversationId::parse(raw) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::info!(error = %e, "ignoring a malformed conversation_id on the connect URL");
            None
        }
    }
}

impl WsRequest {
    /// The live connection this request came on.
    pub fn connection(&self) -> courier_core::domain::Connection {
        courier_core::domain::Connection {
            device_id: self.device_id.clone(),
            connection_id: self.connection_id.clone(),
            connected_at: self.connected_at,
        }
    }

    pub fn from_event(event: &ApiGatewayWebsocketProxyRequest) -> Result<Self, EdgeError> {
        let binary = event.is_base64_encoded;
        Ok(Self {
            user_id: user_id(event)?,
            device_id: device_id(event)?,
            connection_id: connection_id(event)?,
            connected_at: Some(event.request_context.connected_at).filter(|at| *at > 0),
            route_key: event.request_context.route_key.clone().unwrap_or_default(),
            body: if binary { None } else { event.body.clone() },
            binary,
        })
    }
}

/// `200` with `frame` as the route response (sent back to the caller's
/// socket when the route has a route response, `$default` selection).
pub fn reply(frame: Option<&ServerFrame>) -> ApiGatewayProxyResponse {
    let mut r = ApiGatewayProxyResponse::default();
    r.status_code = 200;
    r.body = frame.map(|f| Body::Text(f.to_json()));
    r
}

/// The client frame of a route event; `Err` is the reply the client gets
/// instead. A bad frame is an error frame and `Ok` for Lambda, never a
/// handler failure.
pub fn frame(ws: &WsRequest) -> Result<Request, Box<ApiGatewayProxyResponse>> {
    Request::parse(ws.body.as_deref().unwrap_or_default())
        .map_err(|e| Box::new(reply(Some(&e.to_frame()))))
}

/// The refusal of a frame whose action is not the route's own (API Gateway
/// routes on `action`, so only a misconfigured stage gets here).
pub fn wrong_route<T>(action: &str) -> Answer<T> {
    Answer::Refused(FrameError::new(
        ErrorCode::BadRequest,
        format!("this route takes {action} frames only"),
    ))
}

/// The skeleton of every route that takes a client frame: read the caller
/// and the frame from the event (a bad frame is answered with its `error`
/// frame), run `serve`, and map its outcome to the route response in one
/// place (the convention of `courier_core::services`):
///
/// - `Ok(answer)`: `200` with the answer's reply, if any; an `error` frame
///   gets the frame's `request_id` if the service did not set it.
/// - `Err(fault)`: logged, the typed `internal` frame naming the request
///   posted to the caller, and the fault returned for Lambda to count.
///
/// All of it runs in the event's [`span`]: everything the frame causes (a
/// send's live posts and pushes, a sync's catch-up) logs its
/// `correlation_id`.
pub async fn serve_frame<T, E, F, Fut>(
    app: &App,
    event: &ApiGatewayWebsocketProxyRequest,
    context: &lambda_runtime::Context,
    serve: F,
) -> Result<ApiGatewayProxyResponse, lambda_runtime::Error>
where
    T: Reply,
    E: std::error::Error + Send + Sync + 'static,
    F: FnOnce(WsRequest, Request) -> Fut,
    Fut: Future<Output = Result<Answer<T>, E>>,
{
    serve_frame_inner(app, event, serve)
        .instrument(span(event, context))
        .await
}

async fn serve_frame_inner<T, E, F, Fut>(
    app: &App,
    event: &ApiGatewayWebsocketProxyRequest,
    serve: F,
) -> Result<ApiGatewayProxyResponse, lambda_runtime::Error>
where
    T: Reply,
    E: std::error::Error + Send + Sync + 'static,
    F: FnOnce(WsRequest, Request) -> Fut,
    Fut: Future<Output = Result<Answer<T>, E>>,
{
    let ws = WsRequest::from_event(event)?;
    let request = match frame(&ws) {
        Ok(r) => r,
        Err(reply) => return Ok(*reply),
    };
    let request_id = request.request_id.clone();
    let client_msg_id = request.frame.client_msg_id();
    let (user, connection) = (ws.user_id.clone(), ws.connection_id.clone());
    match serve(ws, request).await {
        Ok(answer) => {
            let mut frame = answer.into_reply();
            if let Some(ServerFrame::Error { request_id: r, .. }) = &mut frame
                && r.is_none()
            {
                r.clone_from(&request_id);
            }
            Ok(reply(frame.as_ref()))
        }
        Err(e) => {
            Err(fault::fail(&app.ports, &user, &connection, client_msg_id, request_id, e).await)
        }
    }
}

/// A bare status, as `$connect` and `$disconnect` answer.
pub fn status(code: i64) -> ApiGatewayProxyResponse {
    let mut r = ApiGatewayProxyResponse::default();
    r.status_code = code;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(json: &str) -> ApiGatewayWebsocketProxyRequest {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn identity_comes_from_the_authorizer_context_only() {
        let e = event(
            r#"{"requestContext":{"routeKey":"sendMessage","connectionId":"abc=","connectedAt":1795000000000,"requestTimeEpoch":1795000000100,
                "authorizer":{"user_id":"bob","principalId":"bob"}},
                "body":"{\"action\":\"sendMessage\",\"user_id\":\"mallory\"}","isBase64Encoded":false}"#,
        );
        let r = WsRequest::from_event(&e).unwrap();
        assert_eq!(r.user_id.as_str(), "bob");
        assert_eq!(r.connection_id.as_str(), "abc=");
        assert_eq!(r.connected_at, Some(1_795_000_000_000));
        assert_eq!(r.route_key, "sendMessage");
    }

    #[test]
    fn the_correlation_id_is_api_gateways_request_id_else_a_fresh_one() {
        let e = event(
            r#"{"requestContext":{"connectionId":"abc=","requestId":"Kc9dQHZoIAMFabc=","connectedAt":1,"requestTimeEpoch":1},"isBase64Encoded":false}"#,
        );
        assert_eq!(correlation_id(&e).as_str(), "Kc9dQHZoIAMFabc=");
        for raw in [
            r#"{"requestContext":{"connectionId":"abc=","connectedAt":1,"requestTimeEpoch":1},"isBase64Encoded":false}"#,
            r#"{"requestContext":{"connectionId":"abc=","requestId":"not an id","connectedAt":1,"requestTimeEpoch":1},"isBase64Encoded":false}"#,
        ] {
            let fresh = correlation_id(&event(raw));
            assert_eq!(fresh.as_str().len(), 32, "{fresh}");
            assert_ne!(fresh, correlation_id(&event(raw)), "a fresh one each time");
        }
    }

    #[test]
    fn missing_context_is_a_server_fault() {
        let e = event(
            r#"{"requestContext":{"connectionId":"abc=","connectedAt":1,"requestTimeEpoch":1},"isBase64Encoded":false}"#,
        );
        assert_eq!(WsRequest::from_event(&e), Err(EdgeError::MissingIdentity));
    }
}
