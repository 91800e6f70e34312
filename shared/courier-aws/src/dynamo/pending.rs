//! [`PendingStore`]: one row per (user, conversation) holding the range
//! `first_undelivered_seq ..= last_seq` the user has not acked.
//!
//! Sends widen the row (in the append transaction, or by `record`), acks and
//! catch-up narrow or delete it, and they race. DynamoDB's update language
//! has no `max`/`min`, so each move is a conditional write that applies only
//! if it still moves the row the right way, and a write that lost the race
//! is read back rather than forced.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;

use courier_core::domain::{ConversationId, PendingDelivery, Seq, UserId, now_millis};
use courier_core::ports::{AckOutcome, PendingStore, StoreError};

use super::DynamoStore;
use super::items::{Item, attr, n, parse_pending, s};
use super::retry::{failure, is_condition_failure};

impl DynamoStore {
    fn pending_key(user: &UserId, conversation: &ConversationId) -> Item {
        HashMap::from([
            (attr::USER_ID.to_owned(), s(user.as_str())),
            (attr::CONVERSATION_ID.to_owned(), s(conversation.as_str())),
        ])
    }

    /// A conditional UpdateItem on a pending row: true if it applied, false if
    /// its condition failed.
    async fn update_pending_if(
        &self,
        op: &'static str,
        user: &UserId,
        conversation: &ConversationId,
        update: &str,
        condition: &str,
        values: &[(&str, AttributeValue)],
    ) -> Result<bool, StoreError> {
        self.retrying(op, || {
            let mut req = self
                .client
                .update_item()
                .table_name(&self.tables.pending)
                .set_key(Some(Self::pending_key(user, conversation)))
                .update_expression(update)
                .condition_expression(condition);
            // DynamoDB refuses names an expression does not use.
            for (alias, name) in [
                ("#user", attr::USER_ID),
                ("#first", attr::FIRST_UNDELIVERED_SEQ),
                ("#last", attr::LAST_SEQ),
                ("#updated", attr::UPDATED_AT),
            ] {
                if update.contains(alias) || condition.contains(alias) {
                    req = req.expression_attribute_names(alias, name);
                }
            }
            for (k, v) in values {
                req = req.expression_attribute_values(*k, v.clone());
            }
            async move {
                match req.send().await {
                    Ok(_) => Ok(true),
                    Err(e) if is_condition_failure(&e) => Ok(false),
                    Err(e) => Err(failure(op, e)),
                }
            }
        })
        .await
    }

    /// A conditional DeleteItem on a pending row: true if it deleted.
    async fn delete_pending_if(
        &self,
        op: &'static str,
        user: &UserId,
        conversation: &ConversationId,
        condition: &str,
        values: &[(&str, AttributeValue)],
    ) -> Result<bool, StoreError> {
        self.retrying(op, || {
            let mut req = self
                .client
                .delete_item()
                .table_name(&self.tables.pending)
                .set_key(Some(Self::pending_key(user, conversation)))
                .condition_expression(condition);
            for (alias, name) in [
                ("#first", attr::FIRST_UNDELIVERED_SEQ),
                ("#last", attr::LAST_SEQ),
            ] {
                if condition.contains(alias) {
                    req = req.expression_attribute_names(alias, name);
                }
            }
            for (k, v) in values {
                req = req.expression_attribute_values(*k, v.clone());
            }
            async move {
                match req.send().await {
                    Ok(_) => Ok(true),
                    Err(e) if is_condition_failure(&e) => Ok(false),
                    Err(e) => Err(failure(op, e)),
                }
            }
        })
        .await
    }
}

/// Rounds of `record` before giving up: each lost round means an ack deleted
/// the row between two of our writes, which takes a client acking as fast as
/// we write.
const RECORD_ROUNDS: usize = 8;

#[async_trait]
impl PendingStore for DynamoStore {
    async fn list(&self, user: &UserId) -> Result<Vec<PendingDelivery>, StoreError> {
        self.query_all(
            "Query pending",
            &self.tables.pending,
            "#u = :u",
            &[("#u", attr::USER_ID)],
            &[(":u", s(user.as_str()))],
            None,
        )
        .await?
        .iter()
        .map(parse_pending)
        .collect()
    }

    async fn get(
        &self,
        user: &UserId,
        conversation: &ConversationId,
    ) -> Result<Option<PendingDelivery>, StoreError> {
        self.get_item(
            "GetItem pending",
            &self.tables.pending,
            Self::pending_key(user, conversation),
        )
        .await?
        .map(|item| parse_pending(&item))
        .transpose()
    }

    async fn record(
        &self,
        user: &UserId,
        conversation: &ConversationId,
        seq: Seq,
    ) -> Result<(), StoreError> {
        for _ in 0..RECORD_ROUNDS {
            let values = [(":seq", n(seq.get())), (":now", n(now_millis()))];
            // Create the row, or raise last_seq to seq. An existing row's
            // first is <= its last < seq, so keeping it is the min.
            // `#last < :seq`: a late record of an older seq never lowers last.
            if self
                .update_pending_if(
                    "UpdateItem pending raise",
                    user,
                    conversation,
                    "SET #last = :seq, #first = if_not_exists(#first, :seq), #updated = :now",
                    "attribute_not_exists(#user) OR #last < :seq",
                    &values,
                )
                .await?
            {
                return Ok(());
            }
            // The row exists with last_seq >= seq: lower the cursor if it is
            // past seq. `attribute_exists`: if an ack deleted the row since,
            // this must not create one holding a cursor and no last_seq.
            if self
                .update_pending_if(
                    "UpdateItem pending lower",
                    user,
                    conversation,
                    "SET #first = :seq, #updated = :now",
                    "attribute_exists(#user) AND #first > :seq",
                    &values,
                )
                .await?
            {
                return Ok(());
            }
            // Either the row already covers seq, or an ack deleted it since
            // the first write: only the latter needs another round.
            if PendingStore::get(self, user, conversation).await?.is_some() {
                return Ok(());
            }
        }
        Err(StoreError::Throttled(format!(
            "pending row of {user} in {conversation} kept changing under record()"
        )))
    }

    async fn ack(
        &self,
        user: &UserId,
        conversation: &ConversationId,
        seq: Seq,
    ) -> Result<AckOutcome, StoreError> {
        // Deleting only on last_seq <= seq: a message stored after the client
        // read the row raised last_seq, and keeps the row alive.
        if self
            .delete_pending_if(
                "DeleteItem pending ack",
                user,
                conversation,
                "#last <= :seq",
                &[(":seq", n(seq.get()))],
            )
            .await?
        {
            return Ok(AckOutcome::Cleared);
        }
        let next = seq.next();
        if self
            .update_pending_if(
                "UpdateItem pending ack",
                user,
                conversation,
                "SET #first = :next, #updated = :now",
                // first <= seq: the cursor only ever moves up.
                "attribute_exists(#user) AND #first <= :seq AND #last > :seq",
                &[
                    (":seq", n(seq.get())),
                    (":next", n(next.get())),
                    (":now", n(now_millis())),
                ],
            )
            .await?
        {
            return Ok(AckOutcome::Advanced);
        }
        Ok(AckOutcome::Stale)
    }

    async fn settle_posted(
        &self,
        user: &UserId,
        conversation: &ConversationId,
        from: Seq,
        through: Seq,
    ) -> Result<AckOutcome, StoreError> {
        // `#first >= :from` in both: a lower cursor is an older seq recorded
        // after catch-up read the row, not posted yet.
        if self
            .delete_pending_if(
                "DeleteItem pending settle",
                user,
                conversation,
                "#first >= :from AND #last <= :through",
                &[(":from", n(from.get())), (":through", n(through.get()))],
            )
            .await?
        {
            return Ok(AckOutcome::Cleared);
        }
        if self
            .update_pending_if(
                "UpdateItem pending settle",
                user,
                conversation,
                "SET #first = :next, #updated = :now",
                "attribute_exists(#user) AND #first >= :from AND #first <= :through \
                 AND #last > :through",
                &[
                    (":from", n(from.get())),
                    (":through", n(through.get())),
                    (":next", n(through.next().get())),
                    (":now", n(now_millis())),
                ],
            )
            .await?
        {
            return Ok(AckOutcome::Advanced);
        }
        Ok(AckOutcome::Stale)
    }
}
