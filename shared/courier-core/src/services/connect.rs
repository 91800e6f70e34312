//! `$connect` and `$disconnect`: the device's link, the registry and the
//! catch-up trigger.
//!
//! Connect writes the registry *before* it triggers catch-up, and catch-up
//! reads pending strongly consistently; the send path writes pending *before*
//! it reads the registry. Whatever the interleaving, a message sent while the
//! recipient connects is seen by one of the two (docs/architecture.md,
//! delivery rules, no lost race).
//!
//! First the device is linked (its first connection) or marked as seen: a
//! device over `MAX_DEVICES` is not registered for live delivery, and its
//! catch-up tells the client so and closes the connection instead of
//! catching up (a `$connect` refusal would reach the client as a bare failed
//! handshake, with no reason to show). A store failure while linking does
//! not refuse the connection: the device then holds no rows back until its
//! next connect links it, which costs only other devices' pending rows
//! lingering, never a message.
//!
//! The catch-up request carries the connect's correlation id, so the
//! catch-up function logs under the same id as this one.
//!
//! No step may refuse the connection: Redis is a hint (a failed write only
//! costs live delivery until the next `ping` re-asserts the entry), and a
//! failed trigger is covered by the client, which sends `sync` when no
//! `caught_up` arrives. So failures are logged, and connect answers 200.

use tracing::{error, info, instrument, warn};

use crate::app::{App, Ports};
use crate::domain::{
    Connection, ConnectionId, ConversationId, CorrelationId, DeviceId, UserId, now_millis,
};
use crate::ports::{CatchUpOrigin, CatchUpRequest, LinkOutcome, Registered};
use crate::telemetry;

/// What connect managed to do; it never fails the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connected {
    /// The link write's outcome; `None` when the store failed.
    pub linked: Option<LinkOutcome>,
    /// The registry now holds this connection for its device.
    pub registered: bool,
    pub catch_up_triggered: bool,
}

/// Links the device, registers the connection, triggers the catch-up.
/// `open_conversation`: the conversation the app was opened on (a tapped
/// notification), whose frames the catch-up posts first. `correlation_id`
/// goes to the catch-up with the request (the caller's span carries it here).
#[instrument(skip_all, fields(user_id = %user, device_id = %connection.device_id, connection_id = %connection.connection_id))]
pub async fn connect(
    app: &App,
    user: &UserId,
    connection: &Connection,
    open_conversation: Option<ConversationId>,
    correlation_id: CorrelationId,
) -> Connected {
    let ports = &app.ports;
    let devices = &app.settings.devices;
    let now = now_millis();
    let linked = match ports
        .links
        .touch(
            user,
            &connection.device_id,
            now,
            devices.max_devices,
            devices.stale_before(now),
        )
        .await
    {
        Ok(outcome) => Some(outcome),
        Err(e) => {
            warn!(error = %e, "could not link the device; connecting anyway");
            None
        }
    };
    let over_limit = match linked {
        Some(LinkOutcome::TooMany { max }) => Some(max),
        _ => None,
    };
    let registered = if over_limit.is_some() {
        info!("device over MAX_DEVICES: not registered; catch-up will say so");
        false
    } else {
        match ports.registry.register(user, connection).await {
            Ok(Registered::Stored) => true,
            Ok(Registered::KeptNewer) => {
                info!("a newer connection of this device is registered; kept it");
                false
            }
            Err(e) => {
                telemetry::count(telemetry::REGISTRY_FALLBACKS, 1);
                warn!(error = %e, "registry write failed; connecting without live delivery");
                false
            }
        }
    };
    let request = CatchUpRequest {
        user_id: user.clone(),
        device_id: connection.device_id.clone(),
        connection_id: connection.connection_id.clone(),
        connected_at: connection.connected_at,
        open_conversation,
        device_limit: over_limit,
        origin: CatchUpOrigin::Connect,
        correlation_id: Some(correlation_id),
    };
    let catch_up_triggered = match ports.trigger.trigger(&request).await {
        Ok(()) => true,
        Err(e) => {
            error!(error = %e, "catch-up trigger failed; the client's sync will run it");
            false
        }
    };
    info!(?linked, registered, catch_up_triggered, "connected");
    Connected {
        linked,
        registered,
        catch_up_triggered,
    }
}

/// `ping`: re-asserts the connection's registry entry (a lost write heals
/// within one heartbeat). Never replaces a newer connection of the device.
#[instrument(skip_all, fields(user_id = %user, device_id = %connection.device_id, connection_id = %connection.connection_id))]
pub async fn reassert(ports: &Ports, user: &UserId, connection: &Connection) -> bool {
    match ports.registry.register(user, connection).await {
        Ok(r) => r == Registered::Stored,
        Err(e) => {
            telemetry::count(telemetry::REGISTRY_FALLBACKS, 1);
            warn!(error = %e, "registry write failed on ping");
            false
        }
    }
}

/// Removes the device's registry entry only if it still holds this
/// connection: a late `$disconnect` of an old socket must not unregister the
/// new one.
#[instrument(skip_all, fields(user_id = %user, device_id = %device, connection_id = %connection_id))]
pub async fn disconnect(
    ports: &Ports,
    user: &UserId,
    device: &DeviceId,
    connection_id: &ConnectionId,
) -> bool {
    match ports.registry.remove_if(user, device, connection_id).await {
        Ok(removed) => {
            info!(removed, "disconnected");
            removed
        }
        Err(e) => {
            // The entry expires with its TTL, and a post to it answers 410.
            telemetry::count(telemetry::REGISTRY_FALLBACKS, 1);
            warn!(error = %e, "registry delete failed on disconnect");
            false
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::ports::{ConnectionRegistry, LinkStore};

    fn conn(device: &str, id: &str, at: i64) -> Connection {
        Connection {
            device_id: DeviceId::parse(device).unwrap(),
            connection_id: ConnectionId::parse(id).unwrap(),
            connected_at: Some(at),
        }
    }

    fn bob() -> UserId {
        UserId::parse("bob").unwrap()
    }

    #[tokio::test]
    async fn connect_links_registers_then_triggers_catch_up() {
        let (app, h) = App::in_memory();
        let c = conn("phone", "c1", now_millis());
        let open = ConversationId::parse("c9").unwrap();
        let id = CorrelationId::new();
        let r = connect(&app, &bob(), &c, Some(open.clone()), id.clone()).await;
        assert_eq!(r.linked, Some(LinkOutcome::Linked));
        assert!(r.registered && r.catch_up_triggered);
        assert_eq!(h.registry.lookup(&bob()).await.unwrap(), vec![c.clone()]);
        let reqs = h.trigger.requests();
        assert_eq!(reqs.len(), 1);
        assert_eq!(reqs[0].connection_id, c.connection_id);
        assert_eq!(reqs[0].device_id, c.device_id);
        assert_eq!(reqs[0].connected_at, c.connected_at);
        assert_eq!(reqs[0].open_conversation, Some(open));
        assert_eq!(reqs[0].device_limit, None);
        assert_eq!(reqs[0].origin, CatchUpOrigin::Connect);
        assert_eq!(reqs[0].correlation_id, Some(id));
        // A second connection of the same device is a sighting, not a link.
        let again = connect(
            &app,
            &bob(),
            &conn("phone", "c2", now_millis() + 1),
            None,
            CorrelationId::new(),
        )
        .await;
        assert_eq!(again.linked, Some(LinkOutcome::Seen));
    }

    #[tokio::test]
    async fn redis_down_still_connects_and_triggers_catch_up() {
        let (app, h) = App::in_memory();
        h.registry.set_down(true);
        let r = connect(
            &app,
            &bob(),
            &conn("phone", "c1", now_millis()),
            None,
            CorrelationId::new(),
        )
        .await;
        assert!(!r.registered);
        assert!(r.catch_up_triggered);
        assert_eq!(h.trigger.requests().len(), 1);
    }

    #[tokio::test]
    async fn a_device_over_the_limit_is_not_registered_and_catch_up_is_told() {
        let (mut app, h) = App::in_memory();
        app.settings.devices.max_devices = 2;
        let now = now_millis();
        for (i, d) in ["phone", "laptop"].iter().enumerate() {
            let r = connect(
                &app,
                &bob(),
                &conn(d, &format!("c{i}"), now),
                None,
                CorrelationId::new(),
            )
            .await;
            assert_eq!(r.linked, Some(LinkOutcome::Linked));
        }
        let r = connect(
            &app,
            &bob(),
            &conn("tablet", "c3", now),
            None,
            CorrelationId::new(),
        )
        .await;
        assert_eq!(r.linked, Some(LinkOutcome::TooMany { max: 2 }));
        assert!(!r.registered);
        assert_eq!(h.trigger.requests()[2].device_limit, Some(2));
        assert_eq!(h.registry.lookup(&bob()).await.unwrap().len(), 2);
        assert_eq!(h.store.list(&bob()).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_late_connect_of_an_older_connection_keeps_the_newer_one() {
        let (app, h) = App::in_memory();
        let now = now_millis();
        let newer = conn("phone", "new", now);
        let older = conn("phone", "old", now - 5_000);
        connect(&app, &bob(), &newer, None, CorrelationId::new()).await;
        let r = connect(&app, &bob(), &older, None, CorrelationId::new()).await;
        assert!(!r.registered);
        assert_eq!(
            h.registry.lookup(&bob()).await.unwrap(),
            vec![newer.clone()]
        );
        // Its disconnect then removes nothing.
        assert!(!disconnect(&app.ports, &bob(), &older.device_id, &older.connection_id).await);
        assert_eq!(h.registry.lookup(&bob()).await.unwrap(), vec![newer]);
    }

    #[tokio::test]
    async fn devices_are_registered_side_by_side_and_removed_one_by_one() {
        let (app, h) = App::in_memory();
        let now = now_millis();
        let phone = conn("phone", "p1", now);
        let laptop = conn("laptop", "l1", now);
        connect(&app, &bob(), &phone, None, CorrelationId::new()).await;
        connect(&app, &bob(), &laptop, None, CorrelationId::new()).await;
        assert_eq!(
            h.registry.lookup(&bob()).await.unwrap(),
            vec![laptop.clone(), phone.clone()]
        );
        // The phone's connection id under the laptop's device: not removed.
        assert!(!disconnect(&app.ports, &bob(), &laptop.device_id, &phone.connection_id).await);
        assert!(disconnect(&app.ports, &bob(), &phone.device_id, &phone.connection_id).await);
        assert_eq!(h.registry.lookup(&bob()).await.unwrap(), vec![laptop]);
    }

    #[tokio::test]
    async fn ping_heals_a_lost_registry_write() {
        let (app, h) = App::in_memory();
        let c = conn("phone", "c1", now_millis());
        h.registry.set_down(true);
        assert!(
            !connect(&app, &bob(), &c, None, CorrelationId::new())
                .await
                .registered
        );
        h.registry.set_down(false);
        assert_eq!(h.registry.lookup(&bob()).await.unwrap(), vec![]);
        assert!(reassert(&app.ports, &bob(), &c).await);
        assert_eq!(h.registry.lookup(&bob()).await.unwrap(), vec![c]);
    }
}
