//! The `$connect` REQUEST authorizer (docs/architecture.md: the reconnect
//! flow, step 1; docs/protocol.md, Connecting: what it checks and the
//! handshake outcomes).
//!
//! API Gateway calls it with the WebSocket upgrade request (identity source
//! `route.request.querystring.token`); what it returns decides whether the
//! socket opens, and the `user_id` it puts in the context is the identity
//! every later route of the connection trusts ([`courier_aws::edge`]).
//!
//! How each outcome reaches the client. A WebSocket authorizer can only be
//! on `$connect`, its status is the HTTP answer to the upgrade, and API
//! Gateway maps what the function returns like this:
//!
//! | outcome | function returns | client sees |
//! |---|---|---|
//! | token valid, origin allowed | Allow policy on the `methodArn`, context `{user_id}` | 101, socket open |
//! | token missing, malformed, badly signed, expired, wrong `iss`/`aud`, … | `Err("Unauthorized")` | **401** |
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
//! The token itself is never logged; refusals are logged at info with their
//! typed reason only.

use aws_lambda_events::apigw::{
    ApiGatewayCustomAuthorizerPolicy, ApiGatewayCustomAuthorizerRequestTypeRequest,
    ApiGatewayCustomAuthorizerResponse,
};
use aws_lambda_events::http::header::ORIGIN;
use aws_lambda_events::iam::{IamPolicyEffect, IamPolicyStatement};
use courier_aws::auth::{AuthConfig, OriginAllowlist, Rejection, Verifier, VerifierError};
use courier_aws::edge::USER_ID_KEY;
use courier_core::config::{ConfigError, Env};
use courier_core::domain::UserId;
use lambda_runtime::LambdaEvent;
use serde_json::json;
use tracing::{info, instrument, warn};

/// The query string parameter that carries the JWT.
pub const TOKEN_PARAM: &str = "token";

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
    Allow(UserId),
    /// No acceptable token (401), or the keys are unavailable (500; see
    /// [`Rejection::is_server_fault`]).
    Unauthorized(Rejection),
    /// The `Origin` header is present and not allowed (403). Holds the
    /// origin as sent, cut to 100 characters, for the log.
    OriginRefused(String),
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
/// then the token.
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
    let token = request
        .query_string_parameters
        .first(TOKEN_PARAM)
        .or_else(|| {
            request
                .multi_value_query_string_parameters
                .first(TOKEN_PARAM)
        })
        .unwrap_or_default();
    match state.verifier.verify(token).await {
        Ok(user) => Decision::Allow(user),
        Err(rejection) => Decision::Unauthorized(rejection),
    }
}

/// The Lambda handler: [`decide`], then the answer API Gateway expects (see
/// the module docs for how each maps to a status).
#[instrument(skip_all, fields(request_id = %event.context.request_id))]
pub async fn handle(
    state: &AuthorizerState,
    event: LambdaEvent<ApiGatewayCustomAuthorizerRequestTypeRequest>,
) -> Result<ApiGatewayCustomAuthorizerResponse, lambda_runtime::Error> {
    let request = event.payload;
    let method_arn = request.method_arn.as_deref().filter(|a| !a.is_empty());
    match decide(state, &request).await {
        Decision::Allow(user) => {
            let arn = method_arn.ok_or(AuthorizerError::MissingMethodArn)?;
            info!(user_id = %user, "connection authorized");
            Ok(policy(
                user.as_str(),
                IamPolicyEffect::Allow,
                arn,
                json!({ USER_ID_KEY: user.as_str() }),
            ))
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
