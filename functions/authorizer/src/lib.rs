//! The `$connect` REQUEST authorizer (docs/architecture.md: the reconnect
//! flow, step 1; docs/protocol.md, Connecting: what it checks and the
//! handshake outcomes).
//!
//! API Gateway calls it with the WebSocket upgrade request (identity source
//! `route.request.querystring.token`); what it returns decides whether the
//! socket opens, and the `user_id` and `device_id` it puts in the context
//! are the identity every later route of the connection trusts
//! ([`courier_aws::edge`]). The user id is the token's `USER_ID_CLAIM`
//! (`sub` by default); the device id is the `device` query parameter
//! (1–64 of `[A-Za-z0-9._-]`, [`DeviceId`]), `default` when absent.
//!
//! How each outcome reaches the client. A WebSocket authorizer can only be
//! on `$connect`, its status is the HTTP answer to the upgrade, and API
//! Gateway maps what the function returns like this:
//!
//! | outcome | function returns | client sees |
//! |---|---|---|
//! | token valid, origin allowed, `device` absent or valid | Allow policy on the `methodArn`, context `{user_id, device_id}` | 101, socket open |
//! | token missing, malformed, badly signed, expired, wrong `iss`/`aud`, user-id claim missing or invalid, … | `Err("Unauthorized")` | **401** |
//! | `device` present but malformed (empty, too long, other characters) | `Err("Unauthorized")` | **401** |
//! | `Origin` not on `ALLOWED_ORIGINS` | Deny policy (principal `anonymous`) | **403** |
//! | JWKS unreachable and no usable cached copy | `Err("JWKS unavailable")` | **500** |
//!
//! The error text `Unauthorized` is the one API Gateway turns into 401; any
//! other error becomes 500 and a Deny policy 403. (Without a `token`
//! parameter at all, API Gateway answers 401 itself and never calls us; the
//! local gateway does call us, and gets the same 401.) 401 vs 403 matters to
//! native clients, which see the upgrade status: 401 means "get a new token
//! and retry", 403 "this client may not connect at all", 500 "retry later
//! with backoff" — an IdP outage must not send every client into a token
//! refresh loop, and the Lambda error metric counts it so an alarm can fire.
//! WebSocket APIs do not cache authorizer results, so a Deny is never
//! replayed for a later request.
//!
//! A malformed `device` is refused like a bad token (docs/protocol.md,
//! Connecting): it is a client bug, and a 403 would tell the client "never
//! retry" for what a fixed build cures.
//!
//! The token itself is never logged; refusals are logged at info with their
//! typed reason only (for a malformed `device`, why it is malformed, not the
//! text the client sent).

use aws_lambda_events::apigw::{
    ApiGatewayCustomAuthorizerPolicy, ApiGatewayCustomAuthorizerRequestTypeRequest,
    ApiGatewayCustomAuthorizerResponse,
};
use aws_lambda_events::http::header::ORIGIN;
use aws_lambda_events::iam::{IamPolicyEffect, IamPolicyStatement};
use courier_aws::auth::{AuthConfig, OriginAllowlist, Rejection, Verifier, VerifierError};
use courier_aws::edge::{DEVICE_ID_KEY, USER_ID_KEY};
use courier_core::config::{ConfigError, Env};
use courier_core::domain::{CorrelationId, DeviceId, InvalidValue, UserId};
use lambda_runtime::LambdaEvent;
use serde_json::json;
use tracing::{info, instrument, warn};

/// The query string parameter that carries the JWT.
pub const TOKEN_PARAM: &str = "token";

/// The query string parameter that names the device (optional).
pub const DEVICE_PARAM: &str = "device";

/// The principal of a Deny policy: no user was established.
pub const ANONYMOUS: &str = "anonymous";

/// The errors the handler returns. Their text is what API Gateway reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthorizerError {
    /// The exact text API Gateway maps to 401.
    #[error("Unauthorized")]
    Unauthorized,
    /// The IdP's keys cannot be had: our fault, 500.
    #[error("JWKS unavailable")]
    KeysUnavailable,
    /// API Gateway always sends a `methodArn`; without one there is nothing
    /// an Allow could name.
    #[error("authorizer event has no methodArn")]
    MissingMethodArn,
}

impl AuthorizerError {
    /// The handler's error as the local gateway needs it: which of these it
    /// was, or `None` for anything else (a 500 all the same).
    pub fn of(error: &lambda_runtime::Error) -> Option<&AuthorizerError> {
        error.downcast_ref::<AuthorizerError>()
    }
}

/// What the authorizer decided, before it is shaped for API Gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow {
        user: UserId,
        device: DeviceId,
    },
    /// No acceptable token (401), or the keys are unavailable (500; see
    /// [`Rejection::is_server_fault`]).
    Unauthorized(Rejection),
    /// The `Origin` header is present and not allowed (403). Holds the
    /// origin as sent, cut to 100 characters, for the log.
    OriginRefused(String),
    /// A valid token, but the `device` parameter is present and malformed
    /// (401). Holds the user, for the log, and why the device was refused.
    BadDevice {
        user: UserId,
        reason: InvalidValue,
    },
}

/// Built once per execution environment and borrowed by every invocation.
#[derive(Debug)]
pub struct AuthorizerState {
    verifier: Verifier,
    origins: Option<OriginAllowlist>,
}

impl AuthorizerState {
    pub fn new(config: &AuthConfig) -> Result<Self, VerifierError> {
        Ok(Self {
            verifier: Verifier::new(config)?,
            origins: config.allowed_origins.clone(),
        })
    }

    /// Fetches the JWKS ahead of the first request (no-op for HS256).
    pub async fn warm_up(&self) {
        self.verifier.warm_up().await;
    }
}

/// Parses every variable the authorizer reads, as start-up does; the SAM
/// template test runs it against the template's environment.
pub fn check_env<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<(), ConfigError> {
    AuthConfig::from_env(env).map(|_| ())
}

/// Decides a `$connect`: the origin first (no crypto for a refused origin),
/// then the token, then the device (after the token, so a refusal for a
/// malformed `device` can name the user whose client sent it).
pub async fn decide(
    state: &AuthorizerState,
    request: &ApiGatewayCustomAuthorizerRequestTypeRequest,
) -> Decision {
    if let Some(allowlist) = &state.origins {
        // Browsers always send `Origin` on a WebSocket upgrade; native apps
        // send none. The list exists to stop other web pages from using a
        // browser's token, so only a present, unlisted origin is refused.
        let origin = request
            .headers
            .get(ORIGIN)
            .or_else(|| request.multi_value_headers.get(ORIGIN));
        if let Some(value) = origin {
            let allowed = value.to_str().is_ok_and(|o| allowlist.allows(o));
            if !allowed {
                let shown = String::from_utf8_lossy(value.as_bytes());
                return Decision::OriginRefused(shown.chars().take(100).collect());
            }
        }
    }
    let token = query_param(request, TOKEN_PARAM).unwrap_or_default();
    let user = match state.verifier.verify(token).await {
        Ok(user) => user,
        Err(rejection) => return Decision::Unauthorized(rejection),
    };
    match query_param(request, DEVICE_PARAM).map(DeviceId::parse) {
        None => Decision::Allow {
            user,
            device: DeviceId::default(),
        },
        Some(Ok(device)) => Decision::Allow { user, device },
        Some(Err(reason)) => Decision::BadDevice { user, reason },
    }
}

/// A query parameter's first value, wherever API Gateway put it.
fn query_param<'a>(
    request: &'a ApiGatewayCustomAuthorizerRequestTypeRequest,
    name: &str,
) -> Option<&'a str> {
    request
        .query_string_parameters
        .first(name)
        .or_else(|| request.multi_value_query_string_parameters.first(name))
}

/// The Lambda handler: [`decide`], then the answer API Gateway expects (see
/// the module docs for how each maps to a status). Its lines carry the
/// upgrade request's API Gateway request id as `correlation_id`.
#[instrument(skip_all, fields(
    request_id = %event.context.request_id,
    correlation_id = %CorrelationId::from_request_id(event.payload.request_context.request_id.as_deref()),
))]
pub async fn handle(
    state: &AuthorizerState,
    event: LambdaEvent<ApiGatewayCustomAuthorizerRequestTypeRequest>,
) -> Result<ApiGatewayCustomAuthorizerResponse, lambda_runtime::Error> {
    let request = event.payload;
    let method_arn = request.method_arn.as_deref().filter(|a| !a.is_empty());
    match decide(state, &request).await {
        Decision::Allow { user, device } => {
            let arn = method_arn.ok_or(AuthorizerError::MissingMethodArn)?;
            info!(user_id = %user, device_id = %device, "connection authorized");
            Ok(policy(
                user.as_str(),
                IamPolicyEffect::Allow,
                arn,
                json!({ USER_ID_KEY: user.as_str(), DEVICE_ID_KEY: device.as_str() }),
            ))
        }
        Decision::BadDevice { user, reason } => {
            info!(user_id = %user, %reason, "connection refused: malformed device");
            Err(AuthorizerError::Unauthorized.into())
        }
        Decision::Unauthorized(reason) if reason.is_server_fault() => {
            warn!(%reason, "connection refused: cannot verify tokens");
            Err(AuthorizerError::KeysUnavailable.into())
        }
        Decision::Unauthorized(reason) => {
            info!(%reason, "connection refused: unauthorized");
            Err(AuthorizerError::Unauthorized.into())
        }
        Decision::OriginRefused(origin) => {
            info!(%origin, "connection refused: origin not allowed");
            // Deny whatever was asked for; "*" when the event named nothing.
            Ok(policy(
                ANONYMOUS,
                IamPolicyEffect::Deny,
                method_arn.unwrap_or("*"),
                json!({}),
            ))
        }
    }
}

fn policy(
    principal: &str,
    effect: IamPolicyEffect,
    resource: &str,
    context: serde_json::Value,
) -> ApiGatewayCustomAuthorizerResponse {
    let mut statement = IamPolicyStatement::default();
    statement.action = vec!["execute-api:Invoke".to_owned()];
    statement.effect = effect;
    statement.resource = vec![resource.to_owned()];
    let mut document = ApiGatewayCustomAuthorizerPolicy::default();
    document.version = Some("2012-10-17".to_owned());
    document.statement = vec![statement];
    let mut response = ApiGatewayCustomAuthorizerResponse::default();
    response.principal_id = Some(principal.to_owned());
    response.policy_document = document;
    response.context = context;
    response
}
