//! What a client sees when its frame hits a server fault.
//!
//! A handler returns `Err` on a server fault, so Lambda counts it (metrics,
//! alarms). API Gateway then answers the caller's socket with its own
//! `{"message":"Internal server error",…}` — a frame without a `type`, and
//! without the `client_msg_id`/`request_id` the client needs to know *which*
//! frame failed. So before returning `Err` the handler posts a protocol
//! `error` frame (`code: internal`) to the caller's connection through the
//! Management API: one extra call, only on faults. The client retries the
//! frame it names (a send is idempotent) and ignores the untyped one.
//!
//! Best effort: the connection is open (it just sent us a frame), so there is
//! no 410 window to wait out, and if the post fails too — the gateway may be
//! what is broken — the `Err` is still returned and logged.

use tracing::{error, warn};

use crate::app::Ports;
use crate::domain::{ConnectionId, UserId};
use crate::protocol::{ErrorCode, ServerFrame};

/// The message a client gets for any server fault; internals never leave.
pub const INTERNAL_MESSAGE: &str = "internal error; retry the request";

/// The `internal` error frame for a fault while handling a client frame.
pub fn internal_frame(client_msg_id: Option<String>, request_id: Option<String>) -> ServerFrame {
    ServerFrame::Error {
        code: ErrorCode::Internal,
        message: INTERNAL_MESSAGE.to_owned(),
        client_msg_id,
        request_id,
    }
}

/// Posts `internal_frame(..)` to the caller's connection; logs a failure.
pub async fn report_fault(
    ports: &Ports,
    connection: &ConnectionId,
    client_msg_id: Option<String>,
    request_id: Option<String>,
) {
    let frame = internal_frame(client_msg_id, request_id).to_json();
    if let Err(e) = ports.gateway.post(connection, frame.as_bytes()).await {
        warn!(connection_id = %connection, error = %e, "could not tell the client about a fault");
    }
}

/// The end of a handler that hit a server fault: logs `error`, tells the
/// client (see the module doc) and returns the error for Lambda to count.
pub async fn fail<E>(
    ports: &Ports,
    user: &UserId,
    connection: &ConnectionId,
    client_msg_id: Option<String>,
    request_id: Option<String>,
    error: E,
) -> Box<dyn std::error::Error + Send + Sync>
where
    E: std::error::Error + Send + Sync + 'static,
{
    error!(user_id = %user, connection_id = %connection, error = %error, "request failed");
    report_fault(ports, connection, client_msg_id, request_id).await;
    Box::new(error)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fault_frame_names_the_failed_request() {
        let (ports, h) = Ports::in_memory();
        let c = ConnectionId::parse("conn-1").unwrap();
        h.gateway.open(&c);
        report_fault(&ports, &c, Some("m1".into()), Some("r1".into())).await;
        let frames = h.gateway.frames(&c);
        assert_eq!(frames.len(), 1);
        let f: ServerFrame = serde_json::from_str(&frames[0]).unwrap();
        assert_eq!(f, internal_frame(Some("m1".into()), Some("r1".into())));
    }

    #[tokio::test]
    async fn fail_returns_the_error_even_when_the_post_fails() {
        let (ports, h) = Ports::in_memory();
        h.gateway.set_down(true);
        let c = ConnectionId::parse("conn-1").unwrap();
        let user = UserId::parse("alice").unwrap();
        let cause = crate::ports::StoreError::Unavailable("dynamodb down".into());
        let e = fail(&ports, &user, &c, None, Some("r1".into()), cause.clone()).await;
        assert_eq!(e.to_string(), cause.to_string());
        assert!(h.gateway.frames(&c).is_empty());
    }
}
