//! The DynamoDB adapter: messages, conversations, idempotency records,
//! pending deliveries and devices behind [`MessageStore`],
//! [`ConversationStore`], [`PendingStore`] and [`DeviceStore`] (the data
//! model of `docs/architecture.md`).
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
//! | pending deliveries | `user_id`, `conversation_id` | `first_undelivered_seq ..= last_seq` not yet acked |
//! | devices | `token`, GSI [`DEVICES_BY_USER_INDEX`] on `user_id` (keys only) | a push endpoint |
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
//! - Create conversation: `attribute_not_exists` — never resets a live
//!   conversation's `last_seq`.
//! - Ack and settle (`pending.rs`): delete only on `last_seq <= seq` — a
//!   message stored after the client read the row keeps it; otherwise raise
//!   the cursor only on `first_undelivered_seq <= seq` — a late ack never
//!   moves it back down. Settle also needs `first_undelivered_seq >= from`:
//!   a seq recorded below what catch-up posted stays pending.
//! - Record (`pending.rs`): raise `last_seq` on `last_seq < seq`, then lower
//!   `first_undelivered_seq` on `first_undelivered_seq > seq`, another round
//!   if an ack deleted the row in between.
//!
//! # Files
//!
//! `retry.rs` sorts SDK errors and retries the transient ones; `items.rs` maps
//! attribute values to domain types and back; `append.rs`, `conversations.rs`,
//! `pending.rs` and `devices.rs` implement one port each; `tables.rs` creates
//! the tables. This file holds the store and the reads they share.
//!
//! Every read is strongly consistent and follows `LastEvaluatedKey`.
//! Throttling, transaction conflicts, 5xx answers and network failures are
//! retried with jittered exponential backoff ([`RetryPolicy`]), then surface
//! as [`StoreError::Throttled`] or [`StoreError::Unavailable`]. An item
//! without the shape this code writes is [`StoreError::Corrupt`], never a
//! panic.

mod append;
mod conversations;
mod devices;
mod items;
mod pending;
mod retry;
mod tables;

use std::sync::Arc;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::types::AttributeValue;

use courier_core::config::TableNames;
use courier_core::ports::StoreError;
#[cfg(doc)]
use courier_core::ports::{ConversationStore, DeviceStore, MessageStore, PendingStore};

pub use items::attr;
pub use retry::RetryPolicy;
pub use tables::create_tables;

use items::Item;
use retry::failure;

/// The devices table's index from user to tokens.
pub const DEVICES_BY_USER_INDEX: &str = "by_user";

/// Messages, conversations, idempotency records, pending rows and devices in
/// DynamoDB. Cheap to clone (the SDK client is an `Arc` inside).
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
        let mut items = Vec::new();
        let mut start: Option<Item> = None;
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
}
