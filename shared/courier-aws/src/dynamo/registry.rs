//! [`ConnectionRegistry`] on DynamoDB (`REGISTRY_BACKEND=dynamodb`): the
//! registry of a stage that has nothing running at rest (no VPC, no NAT, no
//! cache), so it costs nothing idle.
//!
//! One item per connected device in the table `REGISTRY_TABLE`: partition
//! key `user_id`, sort key `device_id`, then `connection_id`,
//! `connected_at` (epoch milliseconds, `0` when unknown, as Redis stores
//! it) and `expires_at` (epoch seconds, the table's TTL attribute).
//!
//! The rules are [`MemoryRegistry`](courier_core::adapters::memory::MemoryRegistry)'s
//! and the Redis Lua scripts', each one conditional write:
//!
//! - `register` is a `PutItem` whose condition is exactly
//!   [`replaces`](courier_core::adapters::memory::replaces): no item, an
//!   expired one, the same connection (a `ping`), or one opened earlier
//!   (ties: the larger connection id wins; DynamoDB compares strings by
//!   their UTF-8 bytes, as Rust and Redis do). A failed condition is
//!   [`Registered::KeptNewer`]. Every write sets `expires_at` afresh.
//! - `lookup` is one strongly consistent `Query` of the user's partition,
//!   in device order. DynamoDB's TTL deletes lazily (days late), so items
//!   past `expires_at` are dropped here, and `register` treats them as
//!   absent.
//! - `remove_if` is a `DeleteItem` on `connection_id = :id`, so a stale
//!   `$disconnect` or a late 410 never removes a newer connection.
//!
//! `expires_at` is in whole seconds, rounded up, so an entry lives at least
//! `REGISTRY_TTL_SECS` and at most a second more (Redis: to the
//! millisecond).
//!
//! Bounded like the Redis registry: the store's client and retry policy,
//! and every call, retries included, cut off at
//! [`DynamoRegistryConfig::timeout`] with a [`RegistryError`], which the
//! services treat as "offline".

use std::collections::HashMap;
use std::future::Future;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::retry::RetryConfig;

use courier_core::config::DynamoRegistryConfig;
use courier_core::domain::{Connection, ConnectionId, DeviceId, Millis, UserId, now_millis};
use courier_core::ports::{ConnectionRegistry, Registered, RegistryError, StoreError};

use super::items::{Item, attr, get_id, get_n, n, s};
use super::retry::{failure, is_condition_failure};
use super::{DynamoStore, RetryPolicy};

const TABLE: &str = "registry";

/// Stores unless the device's item holds a newer live connection: no item
/// or an expired one, then `replaces` (the same connection, an earlier
/// `connected_at`, or an equal one and a smaller id). An item without the
/// attributes this code writes never blocks its device (as a garbled Redis
/// value is overwritten).
const REGISTER_CONDITION: &str = "attribute_not_exists(#user) OR #expires <= :now \
     OR attribute_not_exists(#conn) OR attribute_not_exists(#at) \
     OR #conn = :conn OR #at < :at OR (#at = :at AND #conn < :conn)";

/// [`ConnectionRegistry`] over one DynamoDB table.
#[derive(Clone)]
pub struct DynamoRegistry {
    client: Client,
    config: DynamoRegistryConfig,
    retry: RetryPolicy,
}

impl std::fmt::Debug for DynamoRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamoRegistry")
            .field("config", &self.config)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

/// When an entry written at `now` expires: epoch seconds, rounded up, so it
/// never lives less than `ttl`.
fn expires_at(now: Millis, ttl: std::time::Duration) -> i64 {
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    now.saturating_add(ttl_ms)
        .saturating_add(999)
        .div_euclid(1000)
}

/// Whether an item expiring at `expires_at` (seconds) is gone at `now`
/// (milliseconds). `register`'s `#expires <= :now` with `:now` in whole
/// seconds, rounded down, says the same.
fn expired(expires_at: i64, now: Millis) -> bool {
    expires_at <= now.div_euclid(1000)
}

fn registry_err(e: StoreError) -> RegistryError {
    RegistryError(format!("dynamodb registry: {e}"))
}

impl DynamoRegistry {
    /// As [`DynamoStore::new`]: the SDK's own retries off on its copy of
    /// `client`, the store's [`RetryPolicy`] instead.
    pub fn new(client: Client, config: DynamoRegistryConfig) -> Self {
        let conf = client
            .config()
            .to_builder()
            .retry_config(RetryConfig::disabled())
            .build();
        Self {
            client: Client::from_conf(conf),
            config,
            retry: RetryPolicy::default(),
        }
    }

    pub fn with_retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// On `store`'s very client (one connection pool: the first registry
    /// call of an execution environment costs no second TLS handshake) and
    /// retry policy.
    pub fn beside(store: &DynamoStore, config: DynamoRegistryConfig) -> Self {
        Self {
            client: store.client.clone(),
            config,
            retry: store.retry,
        }
    }

    pub fn config(&self) -> &DynamoRegistryConfig {
        &self.config
    }

    /// `call` within the configured timeout; any failure a [`RegistryError`].
    async fn bounded<T>(
        &self,
        op: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, RegistryError> {
        match tokio::time::timeout(self.config.timeout, call).await {
            Ok(r) => r.map_err(registry_err),
            Err(_) => Err(RegistryError(format!(
                "dynamodb registry: {op} timed out after {:?}",
                self.config.timeout
            ))),
        }
    }

    fn key(user: &UserId, device: &DeviceId) -> Item {
        HashMap::from([
            (attr::USER_ID.to_owned(), s(user.as_str())),
            (attr::DEVICE_ID.to_owned(), s(device.as_str())),
        ])
    }

    fn parse(item: &Item) -> Result<(Connection, i64), StoreError> {
        let at: Millis = get_n(item, attr::CONNECTED_AT, TABLE)?;
        let connection = Connection {
            device_id: get_id(item, attr::DEVICE_ID, TABLE, DeviceId::parse)?,
            connection_id: get_id(item, attr::CONNECTION_ID, TABLE, ConnectionId::parse)?,
            connected_at: Some(at).filter(|at| *at > 0),
        };
        Ok((connection, get_n(item, attr::EXPIRES_AT, TABLE)?))
    }
}

#[async_trait]
impl ConnectionRegistry for DynamoRegistry {
    async fn register(
        &self,
        user: &UserId,
        connection: &Connection,
    ) -> Result<Registered, RegistryError> {
        const OP: &str = "PutItem registry";
        let now = now_millis();
        let at = connection.connected_at.unwrap_or(0);
        let mut item = Self::key(user, &connection.device_id);
        item.extend([
            (
                attr::CONNECTION_ID.to_owned(),
                s(connection.connection_id.as_str()),
            ),
            (attr::CONNECTED_AT.to_owned(), n(at)),
            (
                attr::EXPIRES_AT.to_owned(),
                n(expires_at(now, self.config.ttl)),
            ),
        ]);
        let stored = self.retry.run(OP, || {
            let req = self
                .client
                .put_item()
                .table_name(&self.config.table)
                .set_item(Some(item.clone()))
                .condition_expression(REGISTER_CONDITION)
                .expression_attribute_names("#user", attr::USER_ID)
                .expression_attribute_names("#expires", attr::EXPIRES_AT)
                .expression_attribute_names("#conn", attr::CONNECTION_ID)
                .expression_attribute_names("#at", attr::CONNECTED_AT)
                .expression_attribute_values(":now", n(now.div_euclid(1000)))
                .expression_attribute_values(":conn", s(connection.connection_id.as_str()))
                .expression_attribute_values(":at", n(at));
            async move {
                match req.send().await {
                    Ok(_) => Ok(true),
                    Err(e) if is_condition_failure(&e) => Ok(false),
                    Err(e) => Err(failure(OP, e)),
                }
            }
        });
        Ok(if self.bounded(OP, stored).await? {
            Registered::Stored
        } else {
            Registered::KeptNewer
        })
    }

    async fn lookup(&self, user: &UserId) -> Result<Vec<Connection>, RegistryError> {
        const OP: &str = "Query registry";
        let read = async {
            let mut items = Vec::new();
            let mut start: Option<Item> = None;
            loop {
                let page = self
                    .retry
                    .run(OP, || {
                        let req = self
                            .client
                            .query()
                            .table_name(&self.config.table)
                            .key_condition_expression("#user = :user")
                            .expression_attribute_names("#user", attr::USER_ID)
                            .expression_attribute_values(":user", s(user.as_str()))
                            .consistent_read(true)
                            .set_exclusive_start_key(start.clone());
                        async move { req.send().await.map_err(|e| failure(OP, e)) }
                    })
                    .await?;
                items.extend(page.items.unwrap_or_default());
                match page.last_evaluated_key {
                    Some(k) if !k.is_empty() => start = Some(k),
                    _ => break,
                }
            }
            Ok(items)
        };
        let items = self.bounded(OP, read).await?;
        let now = now_millis();
        let mut out = Vec::with_capacity(items.len());
        for item in &items {
            let (connection, expires_at) = Self::parse(item).map_err(registry_err)?;
            if !expired(expires_at, now) {
                out.push(connection);
            }
        }
        // The sort key orders them already; the port promises device order
        // whatever the table's collation.
        out.sort_by(|a, b| a.device_id.cmp(&b.device_id));
        Ok(out)
    }

    async fn remove_if(
        &self,
        user: &UserId,
        device: &DeviceId,
        connection_id: &ConnectionId,
    ) -> Result<bool, RegistryError> {
        const OP: &str = "DeleteItem registry";
        let key = Self::key(user, device);
        let deleted = self.retry.run(OP, || {
            let req = self
                .client
                .delete_item()
                .table_name(&self.config.table)
                .set_key(Some(key.clone()))
                .condition_expression("#conn = :conn")
                .expression_attribute_names("#conn", attr::CONNECTION_ID)
                .expression_attribute_values(":conn", s(connection_id.as_str()));
            async move {
                match req.send().await {
                    Ok(_) => Ok(true),
                    Err(e) if is_condition_failure(&e) => Ok(false),
                    Err(e) => Err(failure(OP, e)),
                }
            }
        });
        self.bounded(OP, deleted).await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn expiry_is_whole_seconds_rounded_up_and_never_short() {
        let now = 1_795_000_000_250;
        assert_eq!(expires_at(now, Duration::from_secs(7500)), 1_795_007_501);
        assert_eq!(
            expires_at(1_795_000_000_000, Duration::from_secs(1)),
            1_795_000_001
        );
        for ttl_ms in [1, 400, 999, 1000, 1001, 2600] {
            let e = expires_at(now, Duration::from_millis(ttl_ms));
            let ttl = i64::try_from(ttl_ms).unwrap();
            // Alive through `ttl` after the write, gone a second past it.
            assert!(!expired(e, now + ttl - 1), "{ttl_ms}");
            assert!(expired(e, now + ttl + 1000), "{ttl_ms}");
        }
    }

    #[test]
    fn an_item_of_another_shape_is_an_error() {
        let mut item = DynamoRegistry::key(
            &UserId::parse("bob").unwrap(),
            &DeviceId::parse("phone").unwrap(),
        );
        item.insert(attr::CONNECTION_ID.to_owned(), s("abc="));
        item.insert(attr::CONNECTED_AT.to_owned(), n(0));
        assert!(DynamoRegistry::parse(&item).is_err(), "no expires_at");
        item.insert(attr::EXPIRES_AT.to_owned(), n(1));
        let (c, e) = DynamoRegistry::parse(&item).unwrap();
        assert_eq!((c.connected_at, e), (None, 1), "0 reads as unknown");
        item.insert(attr::CONNECTION_ID.to_owned(), s("bad id"));
        assert!(DynamoRegistry::parse(&item).is_err());
    }
}
