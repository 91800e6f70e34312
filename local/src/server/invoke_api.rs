//! The Lambda Invoke API over HTTP:
//! `POST /2015-03-31/functions/{name}/invocations`.
//!
//! Enough of it for `aws-sdk-lambda`'s `invoke`: `Event` answers 202 and runs
//! the function in the background, `RequestResponse` answers 200 with the
//! result (or the error payload and `X-Amz-Function-Error`), `DryRun` 204 if
//! the function exists. It is here so `connect`'s real `LambdaTrigger` can
//! start catch-up through the SDK, exactly as in production. Running the
//! function (context, deadline, timeout, panics) is [`crate::invoke`]; this
//! module only translates HTTP.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{Shared, aws_error};
use crate::invoke::InvokeError;

/// Invokes `name` the way the `X-Amz-Invocation-Type` header asks.
pub(super) async fn invoke(
    State(s): State<Arc<Shared>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let payload: Value = if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(_) => {
                return aws_error(
                    StatusCode::BAD_REQUEST,
                    "InvalidRequestContentException",
                    "Could not parse request body into json",
                );
            }
        }
    };
    let kind = headers
        .get("x-amz-invocation-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("RequestResponse");
    let not_found = |name: &str| {
        aws_error(
            StatusCode::NOT_FOUND,
            "ResourceNotFoundException",
            &format!("Function not found: {}", s.config.api.function_arn(name)),
        )
    };
    match kind {
        "Event" => match s.invoker.invoke_event(&name, payload) {
            Ok(()) => StatusCode::ACCEPTED.into_response(),
            Err(_) => not_found(&name),
        },
        "DryRun" => {
            let exists = s
                .routes
                .get_function(crate::invoke::function_name(&name))
                .is_some();
            if exists {
                StatusCode::NO_CONTENT.into_response()
            } else {
                not_found(&name)
            }
        }
        "RequestResponse" => match s.invoker.invoke(&name, payload).await {
            Ok(v) => executed(axum::Json(v).into_response()),
            Err(InvokeError::NotFound(n)) => not_found(&n),
            Err(e) => {
                let mut r = executed(axum::Json(e.payload()).into_response());
                r.headers_mut().insert(
                    "X-Amz-Function-Error",
                    HeaderValue::from_static("Unhandled"),
                );
                r
            }
        },
        other => aws_error(
            StatusCode::BAD_REQUEST,
            "InvalidParameterValueException",
            &format!("Unsupported invocation type {other}"),
        ),
    }
}

fn executed(mut r: Response) -> Response {
    r.headers_mut().insert(
        "X-Amz-Executed-Version",
        HeaderValue::from_static("$LATEST"),
    );
    r
}
