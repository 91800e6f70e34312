//! The DynamoDB adapter: messages, conversations, idempotency records,
//! pending deliveries, linked devices and push devices behind
//! [`MessageStore`], [`ConversationStore`], [`PendingStore`], [`LinkStore`]
//! and [`DeviceStore`] (the data model of `docs/architecture.md`).
//!
//! The in-memory adapter is the reference: every method here answers what
//! `adapters::memory` answers for the same history, and
//! `tests/tests/store_conformance.rs` runs the same cases against both.
//! DynamoDB has no lock and no `max`, so each rule below is a condition
//! expression (or a short chain of them) that no interleaving of concurrent
//! callers can get past.
//!
//! # Tables
//!
//! | table | key | holds |
//! |---|---|---|
//! | messages | `conversation_id`, `seq` | one message; `expires_at` when retention is limited |
//! | conversations | `conversation_id` | `last_seq`, `members` (string set), `created_at` |
//! | idempotency | `idempotency_key` = `{conversation}#{sender}#{client_msg_id}` | the seq a send got; TTL `expires_at` |
//! | pending deliveries | `user_id`, `conversation_id` | the user's partition: pending rows, links, memberships (below) |
//! | devices | `token`, GSI [`DEVICES_BY_USER_INDEX`] on `user_id` (keys only) | a push endpoint |
//!
//! A user's partition of pending deliveries holds everything read per user,
//! told apart by the sort key:
//!
//! | sort key | item |
//! |---|---|
//! | `{conversation}` | pending row: `first_undelivered_seq ..= last_seq`, `cursors` (device → highest seq held) |
//! | `#d#{device}` | linked device: `device_id`, `linked_at`, `last_seen_at` |
//! | `#d` | `count` of the linked devices |
//! | `#m#{conversation}` | membership, for `list_for` (`listConversations`) |
//!
//! No new tables: a user's links and memberships are small and read by the
//! user's own requests, so they sit where the user's other items are. `#`
//! (0x23) sorts below every character a conversation id may start with (the
//! smallest, `-`, is 0x2D), so `PendingStore::list` reads the key range from
//! `-` on and never reads (nor pays for) a link or membership item.
//!
//! - Idempotency has its own table (ids cannot hold `#`) with a TTL far past
//!   any client's retry window, rather than DynamoDB's 10-minute
//!   `ClientRequestToken` window.
//! - `members` is a string set so the append checks membership in the same
//!   transaction (`contains`). Sets are unordered, so reads sort; DynamoDB has
//!   no empty set, so no members means no attribute.
//! - A device token belongs to one user at a time (a put moves it). The GSI
//!   is eventually consistent, so `for_user` re-reads each token from the
//!   table: a device that just moved is never pushed to its old owner; one
//!   registered a moment ago may be missed once.
//!
//! # Which condition keeps which invariant
//!
//! - Append, one `TransactWriteItems` (`append.rs`): `last_seq = seq - 1 AND
//!   contains(members, sender)` on the conversation — seqs stay gap-free and
//!   unique, and only members post; `attribute_not_exists` on the idempotency
//!   record — a retried `client_msg_id` is stored once; on the message — a
//!   stored message is never overwritten. A retry after a timeout reuses the
//!   `ClientRequestToken`, so an attempt that did commit reads as success.
//!   A cancelled transaction wrote nothing; its reasons, plus one consistent
//!   read of the idempotency record, tell `Duplicate`, `NotAMember` and
//!   `SeqConflict` apart.
//! - Create conversation, one transaction with a membership item per member:
//!   `attribute_not_exists` on the conversation — never resets a live
//!   conversation's `last_seq`, nor lists it for anyone new.
//! - Ack and settle (`pending.rs`): raise the device's cursor only while its
//!   start (`max(first, cursor + 1)`) is at most the acked seq — a late ack
//!   never moves it back down — and, for settle, at least `from` — a seq
//!   recorded below what catch-up posted stays pending. The row goes only on
//!   `last_seq = :read AND cursors.d >= :read` for every linked device — a
//!   message stored after the row was read keeps it, and so does a `record`
//!   that dropped the cursors.
//! - Record (`pending.rs`): raise `last_seq` on `last_seq < seq`, then lower
//!   `first_undelivered_seq` (and drop the cursors) on
//!   `first_undelivered_seq > seq`, another round if an ack deleted the row
//!   in between.
//! - Link a device (`links.rs`), one transaction: `attribute_not_exists` on
//!   the link, `count < max` on the counter — two new devices cannot both
//!   take the last place. Unlink deletes the link and decrements the counter
//!   in one transaction, so the counter is the number of links.
//!
//! # Files
//!
//! `retry.rs` sorts SDK errors and retries the transient ones; `transact.rs`
//! runs the transactions other than the append; `items.rs` maps attribute
//! values to domain types and back (and names the sort keys of the user's
//! partition); `append.rs`, `conversations.rs`, `pending.rs`, `links.rs` and
//! `devices.rs` implement one port each; `tables.rs` creates the tables. This
//! file holds the store and the reads they share. `registry.rs` is the
//! connection registry on its own table ([`DynamoRegistry`],
//! `REGISTRY_BACKEND=dynamodb`), on the same client and retry policy.
//!
//! Every read is strongly consistent and follows `LastEvaluatedKey`.
//! Throttling, transaction conflicts, 5xx answers and network failures are
//! retried with jittered exponential backoff ([`RetryPolicy`]), then surface
//! as [`StoreError::Throttled`] or [`StoreError::Unavailable`]. An item
//! without the shape this code writes is [`StoreError::Corrupt`], never a
//! panic.

mod append;
mod backfill;
mod conversations;
mod devices;
mod items;
mod links;
mod pending;
mod registry;
mod retry;
mod tables;
mod transact;

use std::sync::Arc;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes};

use courier_core::config::TableNames;
use courier_core::ports::StoreError;
#[cfg(doc)]
use courier_core::ports::{ConversationStore, DeviceStore, LinkStore, MessageStore, PendingStore};

pub use backfill::Backfilled;
pub use items::attr;
pub use registry::DynamoRegistry;
pub use retry::RetryPolicy;
pub use tables::{create_registry_table, create_tables};

use items::Item;
use retry::{build_err, failure};

/// Keys one `BatchGetItem` may ask for.
const MAX_BATCH_GET: usize = 100;

/// The devices table's index from user to tokens.
pub const DEVICES_BY_USER_INDEX: &str = "by_user";

/// Messages, conversations, idempotency records, pending rows, links and
/// devices in DynamoDB. Cheap to clone (the SDK client is an `Arc` inside).
#[derive(Clone)]
pub struct DynamoStore {
    client: Client,
    tables: Arc<TableNames>,
    retry: RetryPolicy,
}

impl std::fmt::Debug for DynamoStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamoStore")
            .field("tables", &self.tables)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl DynamoStore {
    /// The store retries by itself ([`RetryPolicy`]), so it turns the SDK's
    /// own retry layer off on its copy of `client`: stacked, the two would
    /// multiply (five attempts of three requests each) and hold a caller far
    /// past the policy's bound.
    pub fn new(client: Client, tables: TableNames) -> Self {
        let config = client
            .config()
            .to_builder()
            .retry_config(RetryConfig::disabled())
            .build();
        Self {
            client: Client::from_conf(config),
            tables: Arc::new(tables),
            retry: RetryPolicy::default(),
        }
    }

    pub fn with_retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    pub fn tables(&self) -> &TableNames {
        &self.tables
    }

    /// A strongly consistent GetItem.
    async fn get_item(
        &self,
        op: &'static str,
        table: &str,
        key: Item,
    ) -> Result<Option<Item>, StoreError> {
        self.retrying(op, || {
            let req = self
                .client
                .get_item()
                .table_name(table)
                .set_key(Some(key.clone()))
                .consistent_read(true);
            async move {
                let out = req.send().await.map_err(|e| failure(op, e))?;
                Ok(out.item)
            }
        })
        .await
    }

    /// A strongly consistent Query of one partition, every page. `limit`
    /// bounds the items returned (None: all).
    async fn query_all(
        &self,
        op: &'static str,
        table: &str,
        key_condition: &str,
        names: &[(&str, &str)],
        values: &[(&str, AttributeValue)],
        limit: Option<usize>,
    ) -> Result<Vec<Item>, StoreError> {
        self.query_after(op, table, key_condition, names, values, None, limit)
            .await
    }

    /// [`DynamoStore::query_all`] from after the key `start` (which need not
    /// be an item that exists).
    #[allow(clippy::too_many_arguments)]
    async fn query_after(
        &self,
        op: &'static str,
        table: &str,
        key_condition: &str,
        names: &[(&str, &str)],
        values: &[(&str, AttributeValue)],
        mut start: Option<Item>,
        limit: Option<usize>,
    ) -> Result<Vec<Item>, StoreError> {
        let mut items = Vec::new();
        loop {
            let remaining = limit.map(|l| l.saturating_sub(items.len()));
            if remaining == Some(0) {
                break;
            }
            let page = self
                .retrying(op, || {
                    let mut req = self
                        .client
                        .query()
                        .table_name(table)
                        .key_condition_expression(key_condition)
                        .consistent_read(true)
                        .set_exclusive_start_key(start.clone());
                    for (k, v) in names {
                        req = req.expression_attribute_names(*k, *v);
                    }
                    for (k, v) in values {
                        req = req.expression_attribute_values(*k, v.clone());
                    }
                    if let Some(r) = remaining {
                        req = req.limit(i32::try_from(r).unwrap_or(i32::MAX));
                    }
                    async move { req.send().await.map_err(|e| failure(op, e)) }
                })
                .await?;
            items.extend(page.items.unwrap_or_default());
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        if let Some(l) = limit {
            items.truncate(l);
        }
        Ok(items)
    }

    /// Strongly consistent reads of up to 100 keys of one table, unprocessed
    /// keys retried with the same backoff as throttling. Items come back in
    /// no particular order; missing ones are left out.
    async fn batch_get(
        &self,
        op: &'static str,
        table: &str,
        keys: Vec<Item>,
    ) -> Result<Vec<Item>, StoreError> {
        let mut keys = keys;
        let mut found = Vec::new();
        let mut round = 0;
        while !keys.is_empty() {
            let request = KeysAndAttributes::builder()
                .set_keys(Some(std::mem::take(&mut keys)))
                .consistent_read(true)
                .build()
                .map_err(build_err)?;
            let out = self
                .retrying(op, || {
                    let req = self
                        .client
                        .batch_get_item()
                        .request_items(table, request.clone());
                    async move { req.send().await.map_err(|e| failure(op, e)) }
                })
                .await?;
            if let Some(mut responses) = out.responses {
                found.extend(responses.remove(table).unwrap_or_default());
            }
            if let Some(mut unprocessed) = out.unprocessed_keys {
                keys = unprocessed
                    .remove(table)
                    .map(|k| k.keys)
                    .unwrap_or_default();
            }
            if !keys.is_empty() {
                round += 1;
                if round >= self.retry.max_attempts {
                    return Err(StoreError::Throttled(format!(
                        "{op}: keys left unprocessed"
                    )));
                }
                tokio::time::sleep(self.retry.backoff().delay(round)).await;
            }
        }
        Ok(found)
    }
}
