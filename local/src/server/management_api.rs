//! The `@connections` Management API over HTTP: `POST` (send), `GET`
//! (describe) and `DELETE` (close) on `/{stage}/@connections/{id}`.
//!
//! This is only the HTTP face of [`crate::connections::ConnectionTable`]; the
//! in-process `LocalGateway` port uses the same table, so both paths see the
//! same 410s. It exists so the real `ApiGatewayManagement` adapter, through
//! `aws-sdk-apigatewaymanagement`, can be pointed at this gateway
//! (`via_aws_apis`) and its error mapping tested on the wire: `GoneException`
//! for unknown *and* still-opening connections, `PayloadTooLargeException`
//! past 128 KB, each with the status and `x-amzn-ErrorType` AWS sends.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use courier_core::ports::PostError;
use serde_json::json;

use super::{Shared, aws_error};

fn post_error(e: PostError) -> Response {
    match e {
        PostError::Gone => aws_error(StatusCode::GONE, "GoneException", "Connection is gone"),
        PostError::PayloadTooLarge => aws_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PayloadTooLargeException",
            "Payload too large",
        ),
        PostError::Unavailable(m) => aws_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerErrorException",
            &m,
        ),
    }
}

fn wrong_stage(s: &Shared, stage: &str) -> Option<Response> {
    (stage != s.config.api.stage)
        .then(|| aws_error(StatusCode::FORBIDDEN, "ForbiddenException", "Forbidden"))
}

pub(super) async fn post_to_connection(
    State(s): State<Arc<Shared>>,
    Path((stage, id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    if let Some(r) = wrong_stage(&s, &stage) {
        return r;
    }
    match s.connections.post(&id, &body) {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => post_error(e),
    }
}

pub(super) async fn get_connection(
    State(s): State<Arc<Shared>>,
    Path((stage, id)): Path<(String, String)>,
) -> Response {
    if let Some(r) = wrong_stage(&s, &stage) {
        return r;
    }
    match s.connections.snapshot(&id) {
        Some(snap) => axum::Json(json!({
            "connectedAt": iso(snap.connected_at),
            "lastActiveAt": iso(snap.last_active_at),
            "identity": {"sourceIp": snap.source_ip, "userAgent": snap.user_agent},
        }))
        .into_response(),
        None => post_error(PostError::Gone),
    }
}

pub(super) async fn delete_connection(
    State(s): State<Arc<Shared>>,
    Path((stage, id)): Path<(String, String)>,
) -> Response {
    if let Some(r) = wrong_stage(&s, &stage) {
        return r;
    }
    match s.connections.close(&id) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => post_error(e),
    }
}

fn iso(at: i64) -> String {
    chrono::DateTime::from_timestamp_millis(at)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
