//! `/_local/...`: what tests and the demo look into. Not an AWS API.
//!
//! AWS offers no way to see what a push notifier was asked to send or what
//! a user's pending rows are without going to the stores themselves; locally
//! the gateway holds those ports anyway, so it shows them. Each part of
//! [`super::Inspect`] is optional (pushes then read as none, pending and
//! registry answer 404), so a gateway serving test routes needs none. `/_local/token` mints a
//! development token for the story page ([`crate::page`]).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use courier_core::domain::UserId;
use serde_json::json;

use super::Shared;

pub(super) async fn pushes(State(s): State<Arc<Shared>>) -> Response {
    match &s.inspect.pushes {
        Some(p) => axum::Json(p.sent()).into_response(),
        None => axum::Json(json!([])).into_response(),
    }
}

fn bad_user(raw: &str) -> Result<UserId, Box<Response>> {
    UserId::parse(raw).map_err(|e| {
        Box::new(
            (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({"message": e.to_string()})),
            )
                .into_response(),
        )
    })
}

pub(super) async fn pending(State(s): State<Arc<Shared>>, Path(user): Path<String>) -> Response {
    let user = match bad_user(&user) {
        Ok(u) => u,
        Err(r) => return *r,
    };
    let Some(pending) = &s.inspect.pending else {
        return StatusCode::NOT_FOUND.into_response();
    };
    match pending.list(&user).await {
        Ok(rows) => axum::Json(rows).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"message": e.to_string()})),
        )
            .into_response(),
    }
}

pub(super) async fn registry(State(s): State<Arc<Shared>>, Path(user): Path<String>) -> Response {
    let user = match bad_user(&user) {
        Ok(u) => u,
        Err(r) => return *r,
    };
    let Some(registry) = &s.inspect.registry else {
        return StatusCode::NOT_FOUND.into_response();
    };
    match registry.lookup(&user).await {
        Ok(entry) => axum::Json(entry).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"message": e.to_string()})),
        )
            .into_response(),
    }
}

pub(super) async fn token(
    State(s): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(query): Query<crate::page::TokenQuery>,
) -> Response {
    crate::page::token(s.config.local_tokens.as_ref(), peer, &query)
}

pub(super) async fn connections(State(s): State<Arc<Shared>>) -> Response {
    axum::Json(s.connections.open_ids()).into_response()
}
