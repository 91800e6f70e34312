//! The authorizer handler end to end: API Gateway events in, the policy or
//! error API Gateway acts on out. RS256 cases fetch a real JWKS over HTTP
//! from a loopback server; the sample events in `events/` are checked too.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use authorizer::{AuthorizerError, AuthorizerState, Decision, check_env, decide, handle};
use aws_lambda_events::apigw::{
    ApiGatewayCustomAuthorizerRequestTypeRequest, ApiGatewayCustomAuthorizerResponse,
};
use aws_lambda_events::http::HeaderValue;
use aws_lambda_events::iam::IamPolicyEffect;
use courier_aws::auth::testing::{
    JwksServer, RsaKey, claims, dead_url, jwks_json, now_plus, unsigned_token,
};
use courier_aws::auth::{
    AuthConfig, JwksConfig, OriginAllowlist, Rejection, mint_hs256, sign_hs256,
};
use courier_core::config::{ConfigError, Env};
use courier_core::domain::{DeviceId, UserId};
use lambda_runtime::{Context, LambdaEvent};
use serde_json::json;

const SECRET: &[u8] = b"handler-test-secret";
const ARN: &str = "arn:aws:execute-api:us-east-1:123456789012:abcdef1234/local/$connect";

fn events_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../events")
}

fn request(
    token: Option<&str>,
    origin: Option<&str>,
) -> ApiGatewayCustomAuthorizerRequestTypeRequest {
    let query = token.map_or(json!({}), |t| json!({ "token": t }));
    request_with_query(query, origin)
}

/// A `$connect` with a valid token for `user` and `device=` when given.
fn device_request(
    user: &str,
    device: Option<&str>,
) -> ApiGatewayCustomAuthorizerRequestTypeRequest {
    let mut query = json!({ "token": sign_hs256(SECRET, &claims(user)) });
    if let Some(d) = device {
        query["device"] = d.into();
    }
    request_with_query(query, None)
}

fn request_with_query(
    query: serde_json::Value,
    origin: Option<&str>,
) -> ApiGatewayCustomAuthorizerRequestTypeRequest {
    let mut headers = serde_json::Map::new();
    headers.insert("Upgrade".into(), "websocket".into());
    if let Some(o) = origin {
        headers.insert("Origin".into(), o.into());
    }
    serde_json::from_value(json!({
        "type": "REQUEST",
        "methodArn": ARN,
        "headers": headers,
        "queryStringParameters": query,
        "requestContext": { "routeKey": "$connect", "eventType": "CONNECT", "connectionId": "abc=" }
    }))
    .unwrap()
}

fn event(
    request: ApiGatewayCustomAuthorizerRequestTypeRequest,
) -> LambdaEvent<ApiGatewayCustomAuthorizerRequestTypeRequest> {
    LambdaEvent::new(request, Context::default())
}

fn hs_state() -> AuthorizerState {
    AuthorizerState::new(&AuthConfig::hs256(SECRET)).unwrap()
}

fn jwks_state(url: &str, tune: impl FnOnce(&mut JwksConfig)) -> AuthorizerState {
    let mut jwks = JwksConfig::new(url).unwrap();
    tune(&mut jwks);
    AuthorizerState::new(&AuthConfig {
        hs256_secret: None,
        jwks: Some(jwks),
        ..AuthConfig::hs256(Vec::new())
    })
    .unwrap()
}

/// An Allow for `user` on the device `default` (no `device=`).
fn assert_allows(response: &ApiGatewayCustomAuthorizerResponse, user: &str) {
    assert_allows_device(response, user, "default");
}

fn assert_allows_device(response: &ApiGatewayCustomAuthorizerResponse, user: &str, device: &str) {
    assert_eq!(response.principal_id.as_deref(), Some(user));
    let statement = &response.policy_document.statement[0];
    assert_eq!(statement.effect, IamPolicyEffect::Allow);
    assert_eq!(statement.action, vec!["execute-api:Invoke"]);
    assert_eq!(statement.resource, vec![ARN]);
    assert_eq!(
        response.context,
        json!({ "user_id": user, "device_id": device })
    );
}

async fn assert_unauthorized(state: &AuthorizerState, token: Option<&str>) {
    let err = handle(state, event(request(token, None)))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "Unauthorized", "API Gateway's 401 text");
    assert_eq!(
        AuthorizerError::of(&err),
        Some(&AuthorizerError::Unauthorized)
    );
}

#[tokio::test]
async fn valid_hs256_token_gets_an_allow_policy_with_the_user_in_context() {
    let token = mint_hs256(
        SECRET,
        &UserId::parse("bob").unwrap(),
        Duration::from_secs(60),
        None,
        None,
    );
    let response = handle(&hs_state(), event(request(Some(&token), None)))
        .await
        .unwrap();
    assert_allows(&response, "bob");
    // The wire shape API Gateway reads.
    let wire = serde_json::to_value(&response).unwrap();
    assert_eq!(wire["principalId"], "bob");
    assert_eq!(wire["policyDocument"]["Version"], "2012-10-17");
    assert_eq!(wire["policyDocument"]["Statement"][0]["Effect"], "Allow");
    assert_eq!(wire["context"]["user_id"], "bob");
    assert_eq!(wire["context"]["device_id"], "default");
}

#[tokio::test]
async fn device_parameter_goes_into_the_context_beside_the_user() {
    let state = hs_state();
    for device in ["phone", "laptop-2", "A.b_c-9", &"d".repeat(64)] {
        let response = handle(&state, event(device_request("bob", Some(device))))
            .await
            .unwrap();
        assert_allows_device(&response, "bob", device);
        let wire = serde_json::to_value(&response).unwrap();
        assert_eq!(wire["context"]["device_id"], *device);
    }
}

#[tokio::test]
async fn absent_device_parameter_is_the_default_device() {
    let decision = decide(&hs_state(), &device_request("bob", None)).await;
    assert_eq!(
        decision,
        Decision::Allow {
            user: UserId::parse("bob").unwrap(),
            device: DeviceId::default(),
        }
    );
    let response = handle(&hs_state(), event(device_request("bob", None)))
        .await
        .unwrap();
    assert_eq!(response.context["device_id"], "default");
}

#[tokio::test]
async fn device_in_the_multi_value_query_string_is_read_too() {
    let token = sign_hs256(SECRET, &claims("bob"));
    let raw: ApiGatewayCustomAuthorizerRequestTypeRequest = serde_json::from_value(json!({
        "methodArn": ARN,
        "multiValueQueryStringParameters": { "token": [token], "device": ["tablet"] },
        "requestContext": {}
    }))
    .unwrap();
    let response = handle(&hs_state(), event(raw)).await.unwrap();
    assert_allows_device(&response, "bob", "tablet");
}

#[tokio::test]
async fn malformed_device_is_refused_with_401_and_its_reason() {
    let state = hs_state();
    let too_long = "d".repeat(65);
    for (name, device) in [
        ("empty", ""),
        ("too long", too_long.as_str()),
        ("space", "my phone"),
        ("slash", "a/b"),
        ("hash", "phone#1"),
        ("colon", "phone:1"),
        ("non-ascii", "téléphone"),
    ] {
        match decide(&state, &device_request("bob", Some(device))).await {
            Decision::BadDevice { user, reason } => {
                assert_eq!(user.as_str(), "bob", "{name}");
                assert_eq!(reason.field, "device_id", "{name}");
            }
            other => panic!("{name}: expected BadDevice, got {other:?}"),
        }
        let err = handle(&state, event(device_request("bob", Some(device))))
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "Unauthorized", "{name}: API Gateway's 401");
        assert_eq!(
            AuthorizerError::of(&err),
            Some(&AuthorizerError::Unauthorized),
            "{name}"
        );
    }
}

#[tokio::test]
async fn a_bad_token_is_refused_for_the_token_whatever_the_device() {
    let r = request_with_query(json!({"token": "not-a-jwt", "device": "bad device"}), None);
    assert!(matches!(
        decide(&hs_state(), &r).await,
        Decision::Unauthorized(Rejection::Malformed(_))
    ));
}

fn cognito_state() -> AuthorizerState {
    AuthorizerState::new(&AuthConfig {
        user_id_claim: "cognito:username".into(),
        ..AuthConfig::hs256(SECRET)
    })
    .unwrap()
}

#[tokio::test]
async fn user_id_claim_names_the_claim_that_becomes_user_id() {
    let token = sign_hs256(
        SECRET,
        &json!({
            "sub": "0b7e5c1d-uuid-of-the-idp",
            "cognito:username": "alice",
            "exp": now_plus(60)
        }),
    );
    let r = request_with_query(json!({"token": token, "device": "phone"}), None);
    let response = handle(&cognito_state(), event(r)).await.unwrap();
    assert_allows_device(&response, "alice", "phone");
}

#[tokio::test]
async fn missing_or_invalid_user_id_claim_is_refused_with_401_and_the_claim_named() {
    let state = cognito_state();
    let cases = [
        (
            "only sub",
            claims("bob"),
            "user-id claim cognito:username missing",
        ),
        (
            "not a string",
            json!({"cognito:username": 42, "exp": now_plus(60)}),
            "user-id claim cognito:username missing",
        ),
        (
            "not a user id",
            json!({"cognito:username": "alice smith", "exp": now_plus(60)}),
            "user-id claim cognito:username is not a valid user id",
        ),
    ];
    for (name, c, reason) in cases {
        let token = sign_hs256(SECRET, &c);
        match decide(&state, &request(Some(&token), None)).await {
            Decision::Unauthorized(r) => {
                assert!(r.to_string().starts_with(reason), "{name}: {r}");
            }
            other => panic!("{name}: expected a refusal, got {other:?}"),
        }
        assert_unauthorized(&state, Some(&token)).await;
    }
}

#[tokio::test]
async fn bad_tokens_are_answered_with_unauthorized_401() {
    let state = hs_state();
    let cases: Vec<(&str, Option<String>)> = vec![
        ("missing", None),
        ("empty", Some(String::new())),
        ("malformed", Some("not-a-jwt".into())),
        (
            "expired",
            Some(sign_hs256(
                SECRET,
                &json!({"sub": "bob", "exp": now_plus(-3600)}),
            )),
        ),
        (
            "wrong signature",
            Some(sign_hs256(b"another-secret", &claims("bob"))),
        ),
        ("alg none", Some(unsigned_token(&claims("bob")))),
        (
            "nbf in the future",
            Some(sign_hs256(
                SECRET,
                &json!({"sub": "bob", "exp": now_plus(7200), "nbf": now_plus(3600)}),
            )),
        ),
        (
            "sub not a user id",
            Some(sign_hs256(
                SECRET,
                &json!({"sub": "bob alice", "exp": now_plus(60)}),
            )),
        ),
    ];
    for (name, token) in cases {
        let decision = decide(&state, &request(token.as_deref(), None)).await;
        assert!(
            matches!(decision, Decision::Unauthorized(_)),
            "{name}: {decision:?}"
        );
        assert_unauthorized(&state, token.as_deref()).await;
    }
}

#[tokio::test]
async fn each_bad_token_is_refused_for_its_own_reason() {
    let state = hs_state();
    let reason = |t: Option<String>| {
        let state = &state;
        async move {
            match decide(state, &request(t.as_deref(), None)).await {
                Decision::Unauthorized(r) => r,
                other => panic!("expected a refusal, got {other:?}"),
            }
        }
    };
    assert_eq!(reason(None).await, Rejection::MissingToken);
    assert!(matches!(
        reason(Some("x.y".into())).await,
        Rejection::Malformed(_)
    ));
    assert_eq!(
        reason(Some(sign_hs256(
            SECRET,
            &json!({"sub": "bob", "exp": now_plus(-3600)})
        )))
        .await,
        Rejection::Expired
    );
    assert_eq!(
        reason(Some(sign_hs256(b"nope", &claims("bob")))).await,
        Rejection::BadSignature
    );
    assert!(matches!(
        reason(Some(unsigned_token(&claims("bob")))).await,
        Rejection::AlgorithmNotAllowed(_)
    ));
}

#[tokio::test]
async fn wrong_issuer_and_wrong_audience_are_unauthorized() {
    let state = AuthorizerState::new(&AuthConfig {
        issuer: Some("https://idp.courier.example".into()),
        audience: Some("courier-app".into()),
        ..AuthConfig::hs256(SECRET)
    })
    .unwrap();
    let good = json!({"sub": "bob", "exp": now_plus(60), "iss": "https://idp.courier.example", "aud": "courier-app"});
    let response = handle(
        &state,
        event(request(Some(&sign_hs256(SECRET, &good)), None)),
    )
    .await
    .unwrap();
    assert_allows(&response, "bob");

    let mut wrong_iss = good.clone();
    wrong_iss["iss"] = "https://evil.example".into();
    let mut wrong_aud = good.clone();
    wrong_aud["aud"] = "someone-else".into();
    for (c, why) in [
        (wrong_iss, Rejection::WrongIssuer),
        (wrong_aud, Rejection::WrongAudience),
    ] {
        let token = sign_hs256(SECRET, &c);
        assert_eq!(
            decide(&state, &request(Some(&token), None)).await,
            Decision::Unauthorized(why)
        );
        assert_unauthorized(&state, Some(&token)).await;
    }
}

#[tokio::test]
async fn rs256_token_from_the_jwks_is_allowed() {
    let key = RsaKey::generate("2026-11");
    let server = JwksServer::start(jwks_json(&[&key])).await;
    let state = jwks_state(&server.url, |_| {});
    let response = handle(
        &state,
        event(request(Some(&key.sign(&claims("carol"))), None)),
    )
    .await
    .unwrap();
    assert_allows(&response, "carol");
}

#[tokio::test]
async fn hs256_signed_with_the_public_key_is_unauthorized_when_only_jwks_is_configured() {
    let key = RsaKey::generate("2026-11");
    let server = JwksServer::start(jwks_json(&[&key])).await;
    let state = jwks_state(&server.url, |_| {});
    let attack = sign_hs256(key.public_pem.as_bytes(), &claims("bob"));
    assert!(matches!(
        decide(&state, &request(Some(&attack), None)).await,
        Decision::Unauthorized(Rejection::AlgorithmNotAllowed(_))
    ));
    assert_unauthorized(&state, Some(&attack)).await;
}

#[tokio::test]
async fn unknown_kid_refreshes_once_and_a_flood_of_kids_is_rate_limited() {
    let old = RsaKey::generate("old");
    let new = RsaKey::generate("new");
    let server = JwksServer::start(jwks_json(&[&old])).await;
    // The default 30 s interval: nothing in this test may fetch twice.
    let state = jwks_state(&server.url, |_| {});
    state.warm_up().await;
    assert_eq!(server.requests(), 1, "warm-up fetched the set");

    // Rotation published after our fetch, inside the rate-limit window:
    // the new kid is refused (no second fetch yet), and so is a flood.
    server.set_body(jwks_json(&[&old, &new]));
    assert_unauthorized(&state, Some(&new.sign(&claims("bob")))).await;
    for i in 0..30 {
        let token = old.sign_with_kid(Some(&format!("kid-{i}")), &claims("bob"));
        assert_unauthorized(&state, Some(&token)).await;
    }
    assert_eq!(
        server.requests(),
        1,
        "no fetch inside the rate-limit window"
    );
    assert_allows(
        &handle(
            &state,
            event(request(Some(&old.sign(&claims("bob"))), None)),
        )
        .await
        .unwrap(),
        "bob",
    );

    // A cold verifier with a short interval: the unknown kid triggers exactly
    // one refresh and then verifies.
    let server = JwksServer::start(jwks_json(&[&old])).await;
    let state = jwks_state(&server.url, |j| {
        j.min_refresh_interval = Duration::from_millis(200)
    });
    state.warm_up().await;
    server.set_body(jwks_json(&[&old, &new]));
    tokio::time::sleep(Duration::from_millis(250)).await;
    let response = handle(
        &state,
        event(request(Some(&new.sign(&claims("bob"))), None)),
    )
    .await
    .unwrap();
    assert_allows(&response, "bob");
    assert_eq!(server.requests(), 2, "exactly one refresh for the new kid");
}

#[tokio::test]
async fn jwks_server_down_refuses_the_connection_without_panicking() {
    let key = RsaKey::generate("k");
    let state = jwks_state(&dead_url().await, |_| {});
    let err = handle(
        &state,
        event(request(Some(&key.sign(&claims("bob"))), None)),
    )
    .await
    .unwrap_err();
    assert_eq!(
        AuthorizerError::of(&err),
        Some(&AuthorizerError::KeysUnavailable)
    );
    assert_ne!(
        err.to_string(),
        "Unauthorized",
        "a server fault is a 500, not a 401"
    );
}

fn origin_state() -> AuthorizerState {
    AuthorizerState::new(&AuthConfig {
        allowed_origins: Some(OriginAllowlist::parse("https://app.courier.example").unwrap()),
        ..AuthConfig::hs256(SECRET)
    })
    .unwrap()
}

#[tokio::test]
async fn listed_origin_is_allowed_in_any_letter_case() {
    let token = sign_hs256(SECRET, &claims("bob"));
    let state = origin_state();
    for origin in ["https://app.courier.example", "HTTPS://App.Courier.Example"] {
        let response = handle(&state, event(request(Some(&token), Some(origin))))
            .await
            .unwrap();
        assert_allows(&response, "bob");
    }
}

#[tokio::test]
async fn unlisted_origin_gets_a_deny_policy_403_even_with_a_valid_token() {
    let token = sign_hs256(SECRET, &claims("bob"));
    let response = handle(
        &origin_state(),
        event(request(Some(&token), Some("https://evil.example"))),
    )
    .await
    .unwrap();
    assert_eq!(response.principal_id.as_deref(), Some("anonymous"));
    let statement = &response.policy_document.statement[0];
    assert_eq!(statement.effect, IamPolicyEffect::Deny);
    assert_eq!(statement.resource, vec![ARN]);
    assert_eq!(response.context, json!({}));
}

#[tokio::test]
async fn origin_header_is_found_whatever_its_case_in_the_event() {
    let token = sign_hs256(SECRET, &claims("bob"));
    let state = origin_state();
    for name in ["origin", "ORIGIN", "Origin"] {
        let mut r = request(Some(&token), None);
        r.headers.insert(
            aws_lambda_events::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(
            matches!(decide(&state, &r).await, Decision::OriginRefused(_)),
            "{name}"
        );
    }
    // The raw event JSON, as API Gateway writes it.
    let raw: ApiGatewayCustomAuthorizerRequestTypeRequest = serde_json::from_value(json!({
        "methodArn": ARN,
        "headers": { "oRiGiN": "https://evil.example" },
        "queryStringParameters": { "token": token },
        "requestContext": {}
    }))
    .unwrap();
    assert!(matches!(
        decide(&state, &raw).await,
        Decision::OriginRefused(_)
    ));
}

#[tokio::test]
async fn absent_origin_is_allowed_because_native_clients_send_none() {
    let token = sign_hs256(SECRET, &claims("bob"));
    let response = handle(&origin_state(), event(request(Some(&token), None)))
        .await
        .unwrap();
    assert_allows(&response, "bob");
}

#[tokio::test]
async fn without_an_allowlist_any_origin_is_accepted() {
    let token = sign_hs256(SECRET, &claims("bob"));
    let response = handle(
        &hs_state(),
        event(request(Some(&token), Some("https://anywhere.example"))),
    )
    .await
    .unwrap();
    assert_allows(&response, "bob");
}

#[tokio::test]
async fn event_without_method_arn_is_a_server_fault_not_an_allow() {
    let token = sign_hs256(SECRET, &claims("bob"));
    let mut r = request(Some(&token), None);
    r.method_arn = None;
    let err = handle(&hs_state(), event(r)).await.unwrap_err();
    assert_eq!(
        AuthorizerError::of(&err),
        Some(&AuthorizerError::MissingMethodArn)
    );
}

#[tokio::test]
async fn sample_event_is_allowed_with_the_local_dev_secret() {
    let raw = std::fs::read_to_string(events_dir().join("authorizer.json")).unwrap();
    let request: ApiGatewayCustomAuthorizerRequestTypeRequest = serde_json::from_str(&raw).unwrap();
    let state = AuthorizerState::new(&AuthConfig::hs256("local-dev-secret")).unwrap();
    let response = handle(&state, event(request)).await.unwrap();
    assert_allows(&response, "bob");
}

#[tokio::test]
async fn expired_sample_event_is_unauthorized() {
    let raw = std::fs::read_to_string(events_dir().join("authorizer-expired.json")).unwrap();
    let request: ApiGatewayCustomAuthorizerRequestTypeRequest = serde_json::from_str(&raw).unwrap();
    let state = AuthorizerState::new(&AuthConfig::hs256("local-dev-secret")).unwrap();
    assert_eq!(
        decide(&state, &request).await,
        Decision::Unauthorized(Rejection::Expired)
    );
    let err = handle(&state, event(request)).await.unwrap_err();
    assert_eq!(err.to_string(), "Unauthorized");
}

#[test]
fn check_env_parses_what_the_function_reads() {
    let ok = |pairs: &'static [(&'static str, &'static str)]| {
        check_env(&Env(move |k: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }))
    };
    assert_eq!(ok(&[("JWT_SECRET", "s")]), Ok(()));
    assert_eq!(ok(&[]), Err(ConfigError::Missing("JWT_SECRET or JWKS_URL")));
    assert!(matches!(
        ok(&[("JWT_SECRET", "s"), ("ALLOWED_ORIGINS", "nope")]),
        Err(ConfigError::Invalid {
            name: "ALLOWED_ORIGINS",
            ..
        })
    ));
    assert_eq!(
        ok(&[("JWT_SECRET", "s"), ("USER_ID_CLAIM", "cognito:username")]),
        Ok(())
    );
    assert!(matches!(
        ok(&[("JWT_SECRET", "s"), ("USER_ID_CLAIM", "")]),
        Err(ConfigError::Invalid {
            name: "USER_ID_CLAIM",
            ..
        })
    ));
}

/// Everything the subscriber writes, at every level.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn tokens_never_reach_the_logs_but_deny_reasons_do() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let state = AuthorizerState::new(&AuthConfig {
        allowed_origins: Some(OriginAllowlist::parse("https://app.courier.example").unwrap()),
        ..AuthConfig::hs256(SECRET)
    })
    .unwrap();
    let good = sign_hs256(SECRET, &claims("bob"));
    let expired = sign_hs256(SECRET, &json!({"sub": "bob", "exp": now_plus(-3600)}));
    let forged = sign_hs256(b"wrong", &claims("mallory"));
    handle(&state, event(request(Some(&good), None)))
        .await
        .unwrap();
    handle(&state, event(request(Some(&expired), None)))
        .await
        .unwrap_err();
    handle(&state, event(request(Some(&forged), None)))
        .await
        .unwrap_err();
    handle(
        &state,
        event(request(Some(&good), Some("https://evil.example"))),
    )
    .await
    .unwrap();
    let bad_device = request_with_query(
        json!({"token": good, "device": "secret-looking device"}),
        None,
    );
    handle(&state, event(bad_device)).await.unwrap_err();

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    for token in [&good, &expired, &forged] {
        for part in token.split('.') {
            assert!(
                !text.contains(part),
                "a token part leaked into the logs:\n{text}"
            );
        }
    }
    assert!(text.contains("token expired"), "{text}");
    assert!(text.contains("signature does not verify"), "{text}");
    assert!(text.contains("origin not allowed"), "{text}");
    assert!(text.contains("connection authorized"), "{text}");
    assert!(text.contains("malformed device"), "{text}");
    assert!(
        !text.contains("secret-looking device"),
        "the device text the client sent is not logged:\n{text}"
    );
}
