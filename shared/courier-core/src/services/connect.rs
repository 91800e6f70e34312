//! `$connect` and `$disconnect`: the registry and the catch-up trigger.
//!
//! Connect writes the registry *before* it triggers catch-up, and catch-up
//! reads pending strongly consistently; the send path writes pending *before*
//! it reads the registry. Whatever the interleaving, a message sent while the
//! recipient connects is seen by one of the two (docs/architecture.md, delivery rules, no lost race).
//!
//! Neither step may refuse the connection: Redis is a hint (a failed write
//! only costs live delivery until the next connect), and a failed trigger is
//! covered by the client, which sends `sync` when no `caught_up` arrives. So
//! both failures are logged, and connect answers 200.

use tracing::{error, info, instrument, warn};

use crate::app::Ports;
use crate::domain::{Connection, ConnectionId, UserId};
use crate::ports::CatchUpRequest;

/// What connect managed to do; it never fails the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connected {
    pub registered: bool,
    pub catch_up_triggered: bool,
}

#[instrument(skip_all, fields(user_id = %user, connection_id = %connection.connection_id))]
pub async fn connect(ports: &Ports, user: &UserId, connection: &Connection) -> Connected {
    let registered = match ports.registry.register(user, connection).await {
        Ok(()) => true,
        Err(e) => {
            warn!(error = %e, "registry write failed; connecting without live delivery");
            false
        }
    };
    let request = CatchUpRequest {
        user_id: user.clone(),
        connection_id: connection.connection_id.clone(),
        connected_at: connection.connected_at,
    };
    let catch_up_triggered = match ports.trigger.trigger(&request).await {
        Ok(()) => true,
        Err(e) => {
            error!(error = %e, "catch-up trigger failed; the client's sync will run it");
            false
        }
    };
    info!(registered, catch_up_triggered, "connected");
    Connected {
        registered,
        catch_up_triggered,
    }
}

/// Removes the registry entry only if it still holds this connection: a
/// late `$disconnect` of an old socket must not unregister the new one.
#[instrument(skip_all, fields(user_id = %user, connection_id = %connection_id))]
pub async fn disconnect(ports: &Ports, user: &UserId, connection_id: &ConnectionId) -> bool {
    match ports.registry.remove_if(user, connection_id).await {
        Ok(removed) => {
            info!(removed, "disconnected");
            removed
        }
        Err(e) => {
            // The entry expires with its TTL, and a post to it answers 410.
            warn!(error = %e, "registry delete failed on disconnect");
            false
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::domain::now_millis;
    use crate::ports::ConnectionRegistry;

    fn conn(id: &str) -> Connection {
        Connection {
            connection_id: ConnectionId::parse(id).unwrap(),
            connected_at: Some(now_millis()),
        }
    }

    #[tokio::test]
    async fn connect_registers_then_triggers_catch_up() {
        let (ports, h) = Ports::in_memory();
        let bob = UserId::parse("bob").unwrap();
        let c = conn("c1");
        let r = connect(&ports, &bob, &c).await;
        assert!(r.registered && r.catch_up_triggered);
        assert_eq!(h.registry.lookup(&bob).await.unwrap(), Some(c.clone()));
        let reqs = h.trigger.requests();
        assert_eq!(reqs.len(), 1);
        assert_eq!(reqs[0].connection_id, c.connection_id);
        assert_eq!(reqs[0].connected_at, c.connected_at);
    }

    #[tokio::test]
    async fn redis_down_still_connects_and_triggers_catch_up() {
        let (ports, h) = Ports::in_memory();
        h.registry.set_down(true);
        let bob = UserId::parse("bob").unwrap();
        let r = connect(&ports, &bob, &conn("c1")).await;
        assert!(!r.registered);
        assert!(r.catch_up_triggered);
        assert_eq!(h.trigger.requests().len(), 1);
    }

    #[tokio::test]
    async fn stale_disconnect_keeps_the_newer_connection() {
        let (ports, h) = Ports::in_memory();
        let bob = UserId::parse("bob").unwrap();
        let old = conn("old");
        let new = conn("new");
        connect(&ports, &bob, &old).await;
        connect(&ports, &bob, &new).await;
        assert!(!disconnect(&ports, &bob, &old.connection_id).await);
        assert_eq!(h.registry.lookup(&bob).await.unwrap(), Some(new.clone()));
        assert!(disconnect(&ports, &bob, &new.connection_id).await);
        assert_eq!(h.registry.lookup(&bob).await.unwrap(), None);
    }
}
