//! The events API Gateway hands to Lambda, built the way API Gateway fills
//! them.
//!
//! Each event is written as the JSON API Gateway sends and then parsed into
//! the `aws_lambda_events` type, so a handler sees exactly what it would see
//! behind a real API: the same field names, the same optional fields, the
//! same place for the authorizer's context (`requestContext.authorizer`). A
//! field the real service sets and a handler might read is set here too.

use std::collections::BTreeMap;
use std::net::IpAddr;

use aws_lambda_events::apigw::{
    ApiGatewayCustomAuthorizerRequestTypeRequest, ApiGatewayWebsocketProxyRequest,
};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use courier_core::domain::{Millis, now_millis};
use http::HeaderMap;
use rand::RngCore;
use serde_json::{Map, Value, json};

/// Where the emulated API lives: what goes into `requestContext` and ARNs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiInfo {
    pub api_id: String,
    pub stage: String,
    pub region: String,
    pub account_id: String,
    /// `Host` of the WebSocket URL, as API Gateway reports `domainName`.
    pub domain_name: String,
}

impl Default for ApiInfo {
    fn default() -> Self {
        Self {
            api_id: "courierlocal".into(),
            stage: "local".into(),
            region: "us-east-1".into(),
            account_id: "000000000000".into(),
            domain_name: "127.0.0.1:3001".into(),
        }
    }
}

impl ApiInfo {
    /// The `methodArn` an authorizer gets for `route_key`.
    pub fn method_arn(&self, route_key: &str) -> String {
        format!(
            "arn:aws:execute-api:{}:{}:{}/{}/{}",
            self.region, self.account_id, self.api_id, self.stage, route_key
        )
    }

    pub fn function_arn(&self, function: &str) -> String {
        format!(
            "arn:aws:lambda:{}:{}:function:{}",
            self.region, self.account_id, function
        )
    }
}

/// A fresh id in API Gateway's style (`L0SM9cOFvHcCIhw=`): 11 random bytes,
/// base64. The URL-safe alphabet keeps it inside `ConnectionId`'s characters
/// and lets it sit in an `@connections/{id}` path without escaping.
pub fn new_id() -> String {
    let mut bytes = [0u8; 11];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE.encode(bytes)
}

/// `requestTime` as API Gateway writes it: `09/Apr/2015:12:34:56 +0000`.
pub fn request_time(at: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(at)
        .unwrap_or_default()
        .format("%d/%b/%Y:%H:%M:%S %z")
        .to_string()
}

/// What the handshake request carried, kept for `$connect`, the authorizer
/// and `GET @connections`.
#[derive(Debug, Clone, Default)]
pub struct Handshake {
    /// Header name (as sent) → values.
    pub headers: BTreeMap<String, Vec<String>>,
    /// Query parameter → values, percent-decoded.
    pub query: BTreeMap<String, Vec<String>>,
    pub source_ip: String,
    pub user_agent: Option<String>,
}

impl Handshake {
    pub fn new(headers: &HeaderMap, raw_query: Option<&str>, source: IpAddr) -> Self {
        let mut h: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, value) in headers {
            if let Ok(v) = value.to_str() {
                h.entry(header_case(name.as_str()))
                    .or_default()
                    .push(v.to_owned());
            }
        }
        let mut q: BTreeMap<String, Vec<String>> = BTreeMap::new();
        if let Some(raw) = raw_query {
            for (k, v) in form_pairs(raw) {
                q.entry(k).or_default().push(v);
            }
        }
        let user_agent = headers
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Self {
            headers: h,
            query: q,
            source_ip: source.to_string(),
            user_agent,
        }
    }

    fn single(map: &BTreeMap<String, Vec<String>>) -> Value {
        // API Gateway's single-value maps keep the last value of a repeated key.
        let m: Map<String, Value> = map
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), Value::String(v.last()?.clone()))))
            .collect();
        Value::Object(m)
    }

    fn multi(map: &BTreeMap<String, Vec<String>>) -> Value {
        let m: Map<String, Value> = map.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        Value::Object(m)
    }

    fn query_or_null(&self, multi: bool) -> Value {
        if self.query.is_empty() {
            Value::Null
        } else if multi {
            Self::multi(&self.query)
        } else {
            Self::single(&self.query)
        }
    }
}

/// `sec-websocket-key` → `Sec-WebSocket-Key`, as API Gateway passes headers
/// (hyper lower-cases them; handlers written against AWS expect this case).
fn header_case(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let lower = part.to_ascii_lowercase();
            match lower.as_str() {
                "websocket" => "WebSocket".to_owned(),
                _ => {
                    let mut c = lower.chars();
                    match c.next() {
                        Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
                        None => String::new(),
                    }
                }
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

fn form_pairs(raw: &str) -> Vec<(String, String)> {
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// `application/x-www-form-urlencoded` decoding; invalid escapes are kept
/// as they are rather than refused, as API Gateway does.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The per-connection facts every event of the connection repeats.
#[derive(Debug, Clone)]
pub struct ConnectionFacts {
    pub connection_id: String,
    pub connected_at: Millis,
    pub handshake: Handshake,
    /// What the authorizer allowed with: `principalId` and its context,
    /// as `requestContext.authorizer` carries them. Empty without one.
    pub authorizer: Map<String, Value>,
}

impl ConnectionFacts {
    fn request_context(
        &self,
        api: &ApiInfo,
        route_key: &str,
        event_type: &str,
        request_id: &str,
        now: Millis,
    ) -> Map<String, Value> {
        let mut identity = Map::new();
        identity.insert("sourceIp".into(), json!(self.handshake.source_ip));
        if let Some(ua) = &self.handshake.user_agent {
            identity.insert("userAgent".into(), json!(ua));
        }
        let mut ctx = Map::new();
        ctx.insert("routeKey".into(), json!(route_key));
        ctx.insert("eventType".into(), json!(event_type));
        ctx.insert("extendedRequestId".into(), json!(request_id));
        ctx.insert("requestTime".into(), json!(request_time(now)));
        ctx.insert("messageDirection".into(), json!("IN"));
        ctx.insert("stage".into(), json!(api.stage));
        ctx.insert("connectedAt".into(), json!(self.connected_at));
        ctx.insert("requestTimeEpoch".into(), json!(now));
        ctx.insert("identity".into(), Value::Object(identity));
        ctx.insert("requestId".into(), json!(request_id));
        ctx.insert("domainName".into(), json!(api.domain_name));
        ctx.insert("connectionId".into(), json!(self.connection_id));
        ctx.insert("apiId".into(), json!(api.api_id));
        if !self.authorizer.is_empty() {
            ctx.insert("authorizer".into(), Value::Object(self.authorizer.clone()));
        }
        ctx
    }
}

/// Why an event could not be built: a bug here, never the client's doing.
#[derive(Debug, thiserror::Error)]
#[error("event does not match its aws_lambda_events type: {0}")]
pub struct EventError(#[from] serde_json::Error);

/// The REQUEST authorizer's event for a `$connect`.
pub fn authorizer_request(
    api: &ApiInfo,
    facts: &ConnectionFacts,
    request_id: &str,
) -> Result<ApiGatewayCustomAuthorizerRequestTypeRequest, EventError> {
    let now = now_millis();
    let h = &facts.handshake;
    let mut ctx = facts.request_context(api, "$connect", "CONNECT", request_id, now);
    ctx.remove("authorizer");
    ctx.insert("accountId".into(), json!(api.account_id));
    let v = json!({
        "type": "REQUEST",
        "methodArn": api.method_arn("$connect"),
        "headers": Handshake::single(&h.headers),
        "multiValueHeaders": Handshake::multi(&h.headers),
        "queryStringParameters": h.query_or_null(false),
        "multiValueQueryStringParameters": h.query_or_null(true),
        "stageVariables": {},
        "requestContext": Value::Object(ctx),
    });
    Ok(serde_json::from_value(v)?)
}

/// The `$connect` route's event (headers and query included).
pub fn connect_event(
    api: &ApiInfo,
    facts: &ConnectionFacts,
    request_id: &str,
) -> Result<ApiGatewayWebsocketProxyRequest, EventError> {
    let now = now_millis();
    let h = &facts.handshake;
    let v = json!({
        "headers": Handshake::single(&h.headers),
        "multiValueHeaders": Handshake::multi(&h.headers),
        "queryStringParameters": h.query_or_null(false),
        "multiValueQueryStringParameters": h.query_or_null(true),
        "requestContext": Value::Object(facts.request_context(api, "$connect", "CONNECT", request_id, now)),
        "isBase64Encoded": false,
    });
    Ok(serde_json::from_value(v)?)
}

/// A frame the client sent, as a `MESSAGE` event for `route_key`. Binary
/// frames travel base64-encoded, as API Gateway passes them.
pub fn message_event(
    api: &ApiInfo,
    facts: &ConnectionFacts,
    route_key: &str,
    body: &Frame,
    request_id: &str,
) -> Result<ApiGatewayWebsocketProxyRequest, EventError> {
    let now = now_millis();
    let mut ctx = facts.request_context(api, route_key, "MESSAGE", request_id, now);
    ctx.insert("messageId".into(), json!(new_id()));
    let (body, binary) = match body {
        Frame::Text(t) => (t.clone(), false),
        Frame::Binary(b) => (STANDARD.encode(b), true),
    };
    let v = json!({
        "requestContext": Value::Object(ctx),
        "body": body,
        "isBase64Encoded": binary,
    });
    Ok(serde_json::from_value(v)?)
}

/// The `$disconnect` event, with the close code and reason API Gateway
/// reports.
pub fn disconnect_event(
    api: &ApiInfo,
    facts: &ConnectionFacts,
    status_code: u16,
    reason: &str,
    request_id: &str,
) -> Result<ApiGatewayWebsocketProxyRequest, EventError> {
    let now = now_millis();
    let mut ctx = facts.request_context(api, "$disconnect", "DISCONNECT", request_id, now);
    ctx.insert("disconnectStatusCode".into(), json!(status_code));
    ctx.insert("disconnectReason".into(), json!(reason));
    let v = json!({
        "headers": {
            "Host": api.domain_name,
            "x-api-key": "",
            "X-Forwarded-For": "",
            "x-restapi": "",
        },
        "multiValueHeaders": {
            "Host": [api.domain_name],
            "x-api-key": [""],
            "X-Forwarded-For": [""],
            "x-restapi": [""],
        },
        "requestContext": Value::Object(ctx),
        "isBase64Encoded": false,
    });
    Ok(serde_json::from_value(v)?)
}

/// A client frame's payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Text(String),
    Binary(Vec<u8>),
}

impl Frame {
    /// The route key `$request.body.action` selects: the frame's string
    /// `action`, or none (non-JSON, binary, no action) for `$default`.
    pub fn action(&self) -> Option<String> {
        match self {
            Frame::Text(t) => courier_core::protocol::action_of(t),
            Frame::Binary(_) => None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn facts() -> ConnectionFacts {
        let mut headers = HeaderMap::new();
        headers.insert("origin", "http://localhost:5173".parse().unwrap());
        headers.insert("sec-websocket-key", "abc".parse().unwrap());
        ConnectionFacts {
            connection_id: new_id(),
            connected_at: 1_795_000_000_000,
            handshake: Handshake::new(
                &headers,
                Some("token=a%2Eb.c&x=1&x=2"),
                "127.0.0.1".parse().unwrap(),
            ),
            authorizer: serde_json::from_value(json!({"principalId": "bob", "user_id": "bob"}))
                .unwrap(),
        }
    }

    #[test]
    fn ids_look_like_api_gateway_ids_and_parse_as_connection_ids() {
        let id = new_id();
        assert_eq!(id.len(), 16);
        assert!(id.ends_with('='));
        assert!(courier_core::domain::ConnectionId::parse(&id).is_ok());
        assert_ne!(new_id(), new_id());
    }

    #[test]
    fn authorizer_request_carries_token_headers_and_method_arn() {
        let api = ApiInfo::default();
        let r = authorizer_request(&api, &facts(), "req1").unwrap();
        assert_eq!(r.query_string_parameters.first("token"), Some("a.b.c"));
        assert_eq!(r.headers.get("origin").unwrap(), "http://localhost:5173");
        assert_eq!(
            r.method_arn.as_deref(),
            Some("arn:aws:execute-api:us-east-1:000000000000:courierlocal/local/$connect")
        );
        // The type keeps only the REST fields of the context (no eventType).
        assert_eq!(r.request_context.stage.as_deref(), Some("local"));
        assert_eq!(r.request_context.apiid.as_deref(), Some("courierlocal"));
    }

    #[test]
    fn route_events_carry_identity_through_the_shared_edge() {
        let api = ApiInfo::default();
        let f = facts();
        let e = message_event(&api, &f, "sendMessage", &Frame::Text("{}".into()), "r2").unwrap();
        let req = courier_aws::edge::WsRequest::from_event(&e).unwrap();
        assert_eq!(req.user_id.as_str(), "bob");
        assert_eq!(req.connection_id.as_str(), f.connection_id);
        assert_eq!(req.connected_at, Some(f.connected_at));
        assert_eq!(e.request_context.event_type.as_deref(), Some("MESSAGE"));
        assert_eq!(e.request_context.message_direction.as_deref(), Some("IN"));
        assert!(e.request_context.message_id.is_some());
        let c = connect_event(&api, &f, "r3").unwrap();
        assert_eq!(c.request_context.route_key.as_deref(), Some("$connect"));
        assert_eq!(c.query_string_parameters.first("x"), Some("2"));
        let d = disconnect_event(&api, &f, 1001, "Going away", "r4").unwrap();
        assert_eq!(d.request_context.disconnect_status_code, Some(1001));
        assert_eq!(d.request_context.event_type.as_deref(), Some("DISCONNECT"));
    }

    #[test]
    fn binary_frames_go_base64_to_default() {
        let api = ApiInfo::default();
        let frame = Frame::Binary(vec![0, 1, 2]);
        assert_eq!(frame.action(), None);
        let e = message_event(&api, &facts(), "$default", &frame, "r").unwrap();
        assert!(e.is_base64_encoded);
        assert_eq!(e.body.as_deref(), Some("AAEC"));
    }

    #[test]
    fn percent_decoding_keeps_bad_escapes() {
        assert_eq!(percent_decode("a%20b+c"), "a b c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(header_case("sec-websocket-key"), "Sec-WebSocket-Key");
        assert_eq!(header_case("x-forwarded-for"), "X-Forwarded-For");
    }
}
