//! Posting frames to a user's live connection, with the delivery rules' (docs/architecture.md) 410 rule.
//!
//! API Gateway answers 410 both for a connection that is gone and for one
//! whose `$connect` has not returned yet — and a sender (or catch-up) can find
//! a connection in the registry in exactly that moment. So a 410 from a
//! connection younger than the open window is retried with jittered,
//! doubling backoff; only a 410 past the window means gone, and then the
//! registry entry is removed *if it still holds that connection* (a newer
//! connection of the same user is never touched).
//!
//! Every path that posts (catch-up, live delivery on send, receipts) goes
//! through [`post_frames`], so the rule lives in one place.

use std::time::{Duration, Instant};

use futures::future::join_all;
use tracing::{debug, warn};

use crate::app::Ports;
use crate::backoff::Backoff;
use crate::config::DeliveryConfig;
use crate::domain::{Connection, DeviceId, UserId, now_millis};
use crate::ports::PostError;
use crate::telemetry;

/// Longest pause between two attempts at a not-yet-open connection.
const MAX_RETRY_DELAY: Duration = Duration::from_millis(400);

/// How a post of frames ended, when it did not fail outright.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Posted {
    /// Every frame was accepted by API Gateway (not proof the client got it).
    All,
    /// The connection is gone (410 past the open window) after `delivered`
    /// frames. The registry entry was removed if it still held it.
    Gone { delivered: usize },
}

/// Posting failed for a reason other than a gone connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("post failed after {delivered} frame(s): {error}")]
pub struct PostFailed {
    pub delivered: usize,
    pub error: PostError,
}

/// When a 410 stops meaning "not open yet" for `connection`.
fn open_deadline(connection: &Connection, window: Duration, first_attempt: Instant) -> Instant {
    let Some(connected_at) = connection.connected_at else {
        // No connectedAt: measure the window from our first attempt.
        return first_attempt + window;
    };
    let age_ms = (now_millis() - connected_at).max(0);
    let age = Duration::from_millis(u64::try_from(age_ms).unwrap_or(0));
    match window.checked_sub(age) {
        Some(left) => first_attempt + left,
        None => first_attempt,
    }
}

/// Equal jitter (a wait in the upper half of the window): spreads retries of
/// concurrent posters, and never retries at once a connection that needs
/// time to open.
fn backoff(base: Duration, attempt: u32) -> Duration {
    Backoff::equal(base, MAX_RETRY_DELAY).delay(attempt)
}

/// Posts `frames` in order to `user`'s `connection`.
pub async fn post_frames(
    ports: &Ports,
    config: &DeliveryConfig,
    user: &UserId,
    connection: &Connection,
    frames: &[String],
) -> Result<Posted, PostFailed> {
    let first_attempt = Instant::now();
    let deadline = open_deadline(connection, config.open_window, first_attempt);
    let mut attempt = 0u32;
    let mut delivered = 0usize;
    while delivered < frames.len() {
        match ports
            .gateway
            .post(&connection.connection_id, frames[delivered].as_bytes())
            .await
        {
            Ok(()) => {
                delivered += 1;
                attempt = 0;
            }
            Err(PostError::Gone) if Instant::now() < deadline => {
                let pause = backoff(config.open_retry_base, attempt).min(
                    deadline
                        .saturating_duration_since(Instant::now())
                        .max(Duration::from_millis(1)),
                );
                debug!(connection_id = %connection.connection_id, attempt, ?pause, "410 inside the open window; retrying");
                telemetry::count(telemetry::GONE_RETRIES, 1);
                attempt += 1;
                tokio::time::sleep(pause).await;
            }
            Err(PostError::Gone) => {
                telemetry::count(telemetry::GONE_CONNECTIONS, 1);
                forget_connection(ports, user, connection).await;
                return Ok(Posted::Gone { delivered });
            }
            Err(error) => return Err(PostFailed { delivered, error }),
        }
    }
    Ok(Posted::All)
}

/// Removes the device's registry entry if it still holds `connection`.
/// Failures are logged: the registry is a hint, and a stale entry costs one
/// more 410.
pub async fn forget_connection(ports: &Ports, user: &UserId, connection: &Connection) {
    match ports
        .registry
        .remove_if(user, &connection.device_id, &connection.connection_id)
        .await
    {
        Ok(removed) => {
            debug!(user_id = %user, connection_id = %connection.connection_id, removed, "connection gone")
        }
        Err(e) => {
            telemetry::count(telemetry::REGISTRY_FALLBACKS, 1);
            warn!(user_id = %user, connection_id = %connection.connection_id, error = %e, "could not remove gone connection from the registry")
        }
    }
}

/// How a live delivery attempt to one connection (or to a user, summed up
/// by [`LiveReport::summary`]) ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Live {
    /// API Gateway accepted every frame.
    Delivered,
    /// The registry has no connection for the user (or none but the
    /// excluded device).
    Offline,
    /// The registry's connection was gone (410 past the open window).
    Gone,
    /// The registry could not be read: treated as offline (Redis is a hint).
    RegistryUnavailable,
    /// Posting failed for another reason (throttled, 5xx): not delivered.
    Failed(PostError),
}

impl Live {
    pub fn delivered(&self) -> bool {
        matches!(self, Live::Delivered)
    }
}

/// What a live delivery to every connected device of one user did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LiveReport {
    /// Each connected device tried, with how its post ended.
    pub devices: Vec<(DeviceId, Live)>,
    /// The registry could not be read: no device was tried.
    pub registry_unavailable: bool,
}

impl LiveReport {
    /// At least one device got the frames.
    pub fn delivered(&self) -> bool {
        self.devices.iter().any(|(_, l)| l.delivered())
    }

    /// Whether `device` got the frames.
    pub fn reached(&self, device: &DeviceId) -> bool {
        self.devices
            .iter()
            .any(|(d, l)| d == device && l.delivered())
    }

    /// The devices that got the frames.
    pub fn reached_devices(&self) -> Vec<DeviceId> {
        self.devices
            .iter()
            .filter(|(_, l)| l.delivered())
            .map(|(d, _)| d.clone())
            .collect()
    }

    /// One outcome for the user: delivered if any device was; else the
    /// registry's failure, the first post failure, gone, or offline.
    pub fn summary(&self) -> Live {
        if self.delivered() {
            return Live::Delivered;
        }
        if self.registry_unavailable {
            return Live::RegistryUnavailable;
        }
        if let Some(failed) = self
            .devices
            .iter()
            .find(|(_, l)| matches!(l, Live::Failed(_)))
        {
            return failed.1.clone();
        }
        if self.devices.iter().any(|(_, l)| *l == Live::Gone) {
            return Live::Gone;
        }
        Live::Offline
    }
}

/// Looks the user up in the registry and posts `frames` to every connected
/// device but `except` (the sender's own device), in parallel: live latency
/// does not grow with the number of devices, and the 410 rule applies to
/// each connection on its own.
pub async fn deliver_live(
    ports: &Ports,
    config: &DeliveryConfig,
    user: &UserId,
    frames: &[String],
    except: Option<&DeviceId>,
) -> LiveReport {
    let connections = match ports.registry.lookup(user).await {
        Ok(c) => c,
        Err(e) => {
            telemetry::count(telemetry::REGISTRY_FALLBACKS, 1);
            warn!(user_id = %user, error = %e, "registry unavailable; treating user as offline");
            return LiveReport {
                devices: Vec::new(),
                registry_unavailable: true,
            };
        }
    };
    let posts = connections
        .iter()
        .filter(|c| Some(&c.device_id) != except)
        .map(|connection| async move {
            let live = match post_frames(ports, config, user, connection, frames).await {
                Ok(Posted::All) => Live::Delivered,
                Ok(Posted::Gone { .. }) => Live::Gone,
                Err(f) => {
                    warn!(user_id = %user, device_id = %connection.device_id, error = %f, "live delivery failed");
                    Live::Failed(f.error)
                }
            };
            (connection.device_id.clone(), live)
        });
    LiveReport {
        devices: join_all(posts).await,
        registry_unavailable: false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::domain::ConnectionId;

    fn setup() -> (Ports, crate::app::MemoryHandles, DeliveryConfig) {
        let (ports, handles) = Ports::in_memory();
        let config = DeliveryConfig {
            open_window: Duration::from_millis(600),
            open_retry_base: Duration::from_millis(10),
            ..DeliveryConfig::default()
        };
        (ports, handles, config)
    }

    fn conn(id: &str, connected_at: i64) -> Connection {
        Connection {
            connection_id: ConnectionId::parse(id).unwrap(),
            connected_at: Some(connected_at),
            device_id: Default::default(),
        }
    }

    #[tokio::test]
    async fn gone_inside_open_window_is_retried_until_open() {
        let (ports, h, config) = setup();
        let c = conn("c1", now_millis());
        h.gateway
            .open_after(&c.connection_id, Duration::from_millis(200));
        let user = UserId::parse("bob").unwrap();
        let frames = vec!["a".to_owned(), "b".to_owned()];
        let r = post_frames(&ports, &config, &user, &c, &frames)
            .await
            .unwrap();
        assert_eq!(r, Posted::All);
        assert_eq!(h.gateway.frames(&c.connection_id), frames);
    }

    #[tokio::test]
    async fn gone_past_open_window_removes_only_that_connection() {
        let (ports, h, config) = setup();
        let user = UserId::parse("bob").unwrap();
        let old = conn("old", now_millis() - 10_000);
        let newer = conn("new", now_millis());
        h.registry_register(&user, &old).await;
        let r = post_frames(&ports, &config, &user, &old, &["x".into()])
            .await
            .unwrap();
        assert_eq!(r, Posted::Gone { delivered: 0 });
        assert_eq!(ports.registry.lookup(&user).await.unwrap(), vec![]);

        // A 410 for the old connection must not remove a newer one.
        h.registry_register(&user, &newer).await;
        let r = post_frames(&ports, &config, &user, &old, &["x".into()])
            .await
            .unwrap();
        assert_eq!(r, Posted::Gone { delivered: 0 });
        assert_eq!(ports.registry.lookup(&user).await.unwrap(), vec![newer]);
    }

    #[tokio::test]
    async fn registry_down_means_offline_not_failure() {
        let (ports, h, config) = setup();
        h.registry.set_down(true);
        let user = UserId::parse("bob").unwrap();
        let live = deliver_live(&ports, &config, &user, &["x".into()], None).await;
        assert_eq!(live.summary(), Live::RegistryUnavailable);
    }

    impl crate::app::MemoryHandles {
        async fn registry_register(&self, user: &UserId, c: &Connection) {
            use crate::ports::ConnectionRegistry;
            self.registry.register(user, c).await.unwrap();
        }
    }

    #[test]
    fn open_retry_waits_keep_a_floor_and_a_cap() {
        let base = Duration::from_millis(25);
        for attempt in 0..40 {
            let d = backoff(base, attempt);
            let window = (base * 2u32.saturating_pow(attempt)).min(MAX_RETRY_DELAY);
            assert!(d >= window / 2, "attempt {attempt}: {d:?}");
            assert!(d <= MAX_RETRY_DELAY, "attempt {attempt}: {d:?}");
        }
    }
}
