//! [`LinkStore`]: a user's linked devices, as items in the user's partition
//! of `pending_deliveries` (sort key `#d#{device}`), beside a counter item
//! (sort key `#d`, attribute `count`) that holds how many there are.
//!
//! The limit is kept by the counter: linking is one transaction that puts
//! the link item (`attribute_not_exists`) and adds one to the counter on
//! `count < max`, and unlinking deletes the item and subtracts one in one
//! transaction, so the counter is always the number of link items and two
//! new devices racing for the last place cannot both get it. A plain count
//! of the items could not be a condition.
//!
//! Stale devices (last seen before `stale_before`) do not count: a new
//! device first lists the links, refuses if the live ones fill the limit,
//! and otherwise unlinks every stale one before it links itself, which is
//! what the in-memory store does in one step.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{Delete, Put, TransactWriteItem, Update};

use courier_core::domain::{DeviceId, LinkedDevice, Millis, UserId};
use courier_core::ports::{LinkOutcome, LinkStore, StoreError};

use super::DynamoStore;
use super::items::{Item, attr, link_item, n, parse_link, s, sk};
use super::retry::build_err;

/// Rounds of "list, evict, link" before giving up: a round is lost only to
/// another new device of the same user taking a place in between, or to the
/// device linking itself concurrently.
const LINK_ROUNDS: usize = 4;

/// What one attempt to link a new device did.
enum Linking {
    Linked,
    /// The link item exists: the device linked itself concurrently.
    AlreadyLinked,
    /// The counter is at `max`.
    Full,
}

impl DynamoStore {
    fn user_key(user: &UserId, sort_key: String) -> Item {
        HashMap::from([
            (attr::USER_ID.to_owned(), s(user.as_str())),
            (attr::CONVERSATION_ID.to_owned(), s(sort_key)),
        ])
    }

    /// `last_seen_at = now` on an existing link, never moving it back.
    async fn see(&self, user: &UserId, device: &DeviceId, now: Millis) -> Result<bool, StoreError> {
        let key = Self::user_key(user, sk::link(device));
        self.retrying("UpdateItem link seen", || {
            let req = self
                .client
                .update_item()
                .table_name(&self.tables.pending)
                .set_key(Some(key.clone()))
                .update_expression("SET #seen = :now")
                .condition_expression("attribute_exists(#dev) AND #seen <= :now")
                .expression_attribute_names("#seen", attr::LAST_SEEN_AT)
                .expression_attribute_names("#dev", attr::DEVICE_ID)
                .expression_attribute_values(":now", n(now));
            async move {
                match req.send().await {
                    Ok(_) => Ok(true),
                    Err(e) if super::retry::is_condition_failure(&e) => Ok(false),
                    Err(e) => Err(super::retry::failure("UpdateItem link seen", e)),
                }
            }
        })
        .await
    }

    async fn link(
        &self,
        user: &UserId,
        device: &DeviceId,
        now: Millis,
        max: usize,
    ) -> Result<Linking, StoreError> {
        let link = LinkedDevice {
            device_id: device.clone(),
            linked_at: now,
            last_seen_at: now,
        };
        let put = Put::builder()
            .table_name(&self.tables.pending)
            .set_item(Some(link_item(user, &link)))
            .condition_expression("attribute_not_exists(#c)")
            .expression_attribute_names("#c", attr::CONVERSATION_ID)
            .build()
            .map_err(build_err)?;
        let count = Update::builder()
            .table_name(&self.tables.pending)
            .set_key(Some(Self::user_key(user, sk::LINK_COUNTER.to_owned())))
            .update_expression("ADD #count :one")
            .condition_expression("attribute_not_exists(#count) OR #count < :max")
            .expression_attribute_names("#count", attr::COUNT)
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":max", n(max))
            .build()
            .map_err(build_err)?;
        let actions = vec![
            TransactWriteItem::builder().put(put).build(),
            TransactWriteItem::builder().update(count).build(),
        ];
        Ok(
            match self.transact("TransactWriteItems link", actions).await? {
                None => Linking::Linked,
                Some(refused) if refused.failed(0) => Linking::AlreadyLinked,
                Some(_) => Linking::Full,
            },
        )
    }
}

#[async_trait]
impl LinkStore for DynamoStore {
    async fn touch(
        &self,
        user: &UserId,
        device: &DeviceId,
        now: Millis,
        max: usize,
        stale_before: Millis,
    ) -> Result<LinkOutcome, StoreError> {
        for _ in 0..LINK_ROUNDS {
            // The common case, every connect of a linked device: one write.
            if self.see(user, device, now).await? {
                return Ok(LinkOutcome::Seen);
            }
            let links = LinkStore::list(self, user).await?;
            // Linked, and seen later than `now` already (or linked by a
            // concurrent touch since the write above).
            if links.iter().any(|l| &l.device_id == device) {
                return Ok(LinkOutcome::Seen);
            }
            let (stale, live): (Vec<_>, Vec<_>) = links
                .into_iter()
                .partition(|l| l.last_seen_at < stale_before);
            if live.len() >= max {
                return Ok(LinkOutcome::TooMany { max });
            }
            for l in &stale {
                self.unlink(user, &l.device_id).await?;
            }
            match self.link(user, device, now, max).await? {
                Linking::Linked => return Ok(LinkOutcome::Linked),
                // Next round: seen, or listed.
                Linking::AlreadyLinked => {}
                // Another new device took the place since the list: the next
                // list tells whether any is left.
                Linking::Full => {}
            }
        }
        Err(StoreError::Throttled(format!(
            "links of {user} kept changing under touch()"
        )))
    }

    async fn list(&self, user: &UserId) -> Result<Vec<LinkedDevice>, StoreError> {
        // `#d#` and not `#d`: the counter is not a link. The sort key is
        // `#d#{device}`, so the items come in device order.
        self.query_all(
            "Query links",
            &self.tables.pending,
            "#u = :u AND begins_with(#c, :prefix)",
            &[("#u", attr::USER_ID), ("#c", attr::CONVERSATION_ID)],
            &[(":u", s(user.as_str())), (":prefix", s(sk::LINK_PREFIX))],
            None,
        )
        .await?
        .iter()
        .map(parse_link)
        .collect()
    }

    async fn unlink(&self, user: &UserId, device: &DeviceId) -> Result<bool, StoreError> {
        let delete = Delete::builder()
            .table_name(&self.tables.pending)
            .set_key(Some(Self::user_key(user, sk::link(device))))
            .condition_expression("attribute_exists(#c)")
            .expression_attribute_names("#c", attr::CONVERSATION_ID)
            .build()
            .map_err(build_err)?;
        let count = Update::builder()
            .table_name(&self.tables.pending)
            .set_key(Some(Self::user_key(user, sk::LINK_COUNTER.to_owned())))
            .update_expression("ADD #count :minus_one")
            .expression_attribute_names("#count", attr::COUNT)
            .expression_attribute_values(":minus_one", n(-1))
            .build()
            .map_err(build_err)?;
        let actions = vec![
            TransactWriteItem::builder().delete(delete).build(),
            TransactWriteItem::builder().update(count).build(),
        ];
        Ok(self
            .transact("TransactWriteItems unlink", actions)
            .await?
            .is_none())
    }
}
