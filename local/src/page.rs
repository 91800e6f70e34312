//! The browser side of the local gateway: the story page, the JavaScript
//! client it runs on, and the tokens it logs in with.
//!
//! - `GET /` without an `Upgrade` header: the page (`clients/web/`), where
//!   alice, bob and carol chat side by side and bob can be taken offline and
//!   back (the WebSocket API keeps `GET /` with an upgrade; `server` routes).
//! - `GET /courier.js`, `/app.js`: the client library (`clients/js/`) and the
//!   page's script, as ES modules.
//! - `GET /_local/token?user=bob`: an HS256 token for a user, minted with the
//!   gateway's own secret, as `courier-local token --user bob` prints it.
//!
//! The files are embedded at compile time, so `cargo run -p courier-local`
//! serves them with no build step and no path to find at run time.
//!
//! The token endpoint is a login for whoever can reach it, so it answers
//! loopback callers only, and only when the gateway checks HS256 tokens
//! (with a JWKS there is no secret here to mint with).

use std::net::SocketAddr;
use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use courier_aws::auth::{AuthConfig, Secret};
use courier_core::domain::UserId;
use serde::Deserialize;
use serde_json::json;

const INDEX_HTML: &str = include_str!("../../clients/web/index.html");
const APP_JS: &str = include_str!("../../clients/web/app.js");
const COURIER_JS: &str = include_str!("../../clients/js/src/courier.js");

/// Lifetime of a page token: a working day, like `courier-local token`'s.
const TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// What `/_local/token` mints with: the secret and claims the authorizer
/// checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalTokens {
    pub secret: Secret,
    pub issuer: Option<String>,
    pub audience: Option<String>,
}

impl LocalTokens {
    /// From the authorizer's configuration; `None` without an HS256 secret.
    pub fn from_auth(auth: &AuthConfig) -> Option<Self> {
        auth.hs256_secret.as_ref().map(|secret| Self {
            secret: secret.clone(),
            issuer: auth.issuer.clone(),
            audience: auth.audience.clone(),
        })
    }

    pub fn mint(&self, user: &UserId) -> String {
        courier_aws::auth::mint_hs256(
            self.secret.expose(),
            user,
            TOKEN_TTL,
            self.issuer.as_deref(),
            self.audience.as_deref(),
        )
    }
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut r = body.into_response();
    let headers = r.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // A rebuilt gateway serves new files under the same names.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The story page.
pub fn index() -> Response {
    asset(INDEX_HTML, "text/html; charset=utf-8")
}

/// `GET /app.js`: the page's script.
pub async fn app_js() -> Response {
    asset(APP_JS, "text/javascript; charset=utf-8")
}

/// `GET /courier.js`: the client library.
pub async fn courier_js() -> Response {
    asset(COURIER_JS, "text/javascript; charset=utf-8")
}

/// The query of `/_local/token`.
#[derive(Debug, Deserialize)]
pub struct TokenQuery {
    pub user: Option<String>,
}

fn refuse(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({"message": message}))).into_response()
}

/// `GET /_local/token?user=bob` → `{"user":"bob","token":"…"}`.
pub fn token(tokens: Option<&LocalTokens>, peer: SocketAddr, query: &TokenQuery) -> Response {
    if !peer.ip().to_canonical().is_loopback() {
        return refuse(
            StatusCode::FORBIDDEN,
            "local tokens are for loopback callers only",
        );
    }
    let Some(tokens) = tokens else {
        return refuse(
            StatusCode::NOT_FOUND,
            "this gateway has no HS256 secret to mint local tokens with",
        );
    };
    let Some(raw) = query.user.as_deref() else {
        return refuse(StatusCode::BAD_REQUEST, "user is required: ?user=bob");
    };
    match UserId::parse(raw) {
        Ok(user) => axum::Json(json!({"user": user, "token": tokens.mint(&user)})).into_response(),
        Err(e) => refuse(StatusCode::BAD_REQUEST, &format!("user: {e}")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn tokens() -> LocalTokens {
        LocalTokens::from_auth(&AuthConfig::hs256("s3cret")).unwrap()
    }

    async fn body(r: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    fn q(user: Option<&str>) -> TokenQuery {
        TokenQuery {
            user: user.map(str::to_owned),
        }
    }

    #[tokio::test]
    async fn a_loopback_caller_gets_a_token_for_the_user() {
        let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let r = token(Some(&tokens()), peer, &q(Some("bob")));
        assert_eq!(r.status(), StatusCode::OK);
        let v = body(r).await;
        assert_eq!(v["user"], "bob");
        let jwt = v["token"].as_str().unwrap();
        assert_eq!(jwt.split('.').count(), 3);
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:5000".parse().unwrap();
        assert_eq!(
            token(Some(&tokens()), mapped, &q(Some("bob"))).status(),
            StatusCode::OK
        );
    }

    #[tokio::test]
    async fn others_are_refused_with_a_reason() {
        let lan: SocketAddr = "192.0.2.7:5000".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        assert_eq!(
            token(Some(&tokens()), lan, &q(Some("bob"))).status(),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            token(None, local, &q(Some("bob"))).status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            token(Some(&tokens()), local, &q(None)).status(),
            StatusCode::BAD_REQUEST
        );
        let bad = token(Some(&tokens()), local, &q(Some("bob smith")));
        assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
        assert!(
            body(bad).await["message"]
                .as_str()
                .unwrap()
                .starts_with("user:")
        );
    }

    #[test]
    fn the_embedded_files_are_the_page_and_the_modules() {
        assert!(INDEX_HTML.contains("<script type=\"module\" src=\"/app.js\">"));
        assert!(APP_JS.contains("from '/courier.js'"));
        assert!(COURIER_JS.contains("export class CourierClient"));
    }
}
