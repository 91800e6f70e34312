//! [`PendingStore`]: one row per (user, conversation) holding the range
//! `first_undelivered_seq ..= last_seq` some device of the user may not have,
//! and a `cursors` map: per device, the highest seq it holds.
//!
//! Sends widen the row (in the append transaction, or by `record`), acks and
//! catch-up raise one device's cursor and delete the row once every linked
//! device is past `last_seq`, and they race. DynamoDB's update language has
//! no `max`/`min`, so each move is a conditional write that applies only if
//! it still moves the row the right way, and a write that lost the race is
//! read back rather than forced.
//!
//! An ack is two writes. The first raises the device's cursor: DynamoDB
//! cannot set `cursors.device` while `cursors` is absent, nor create the map
//! and set a key of it in one expression (overlapping paths), so there are
//! two variants, one for a row with the map and one for a row without it,
//! each conditioned on its own case; the item a refusal hands back
//! (`ALL_OLD`) says whether the other variant is worth trying. The second
//! write deletes the row, conditioned on the `last_seq` and on the cursors
//! the first write returned (`ALL_NEW`): a message stored in between, or a
//! late `record` that dropped the cursors, keeps it.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};

use courier_core::domain::{ConversationId, DeviceId, PendingDelivery, Seq, UserId, now_millis};
use courier_core::ports::{AckOutcome, PendingStore, StoreError};

use super::DynamoStore;
use super::items::{Item, attr, n, parse_pending, s, sk};
use super::retry::{failure, is_condition_failure};

/// Aliases of the attributes the expressions here use. DynamoDB refuses
/// names an expression does not use, so each request names only those its
/// expressions mention.
const ALIASES: [(&str, &str); 5] = [
    ("#user", attr::USER_ID),
    ("#first", attr::FIRST_UNDELIVERED_SEQ),
    ("#last", attr::LAST_SEQ),
    ("#updated", attr::UPDATED_AT),
    ("#cursors", attr::CURSORS),
];

fn used_aliases(expressions: &[&str]) -> Vec<(&'static str, &'static str)> {
    ALIASES
        .into_iter()
        .filter(|(alias, _)| expressions.iter().any(|e| e.contains(alias)))
        .collect()
}

/// What a conditional update did.
enum Written {
    /// It applied; the item as it is now.
    Applied(Item),
    /// Its condition failed; the item as it was (`None`: there is none).
    Refused(Option<Item>),
}

/// One conditional update of a pending row: the expressions, plus the
/// names (device ids) and values they use beyond [`ALIASES`].
struct Update<'a> {
    op: &'static str,
    update: &'a str,
    condition: String,
    names: Vec<(String, String)>,
    values: Vec<(&'static str, AttributeValue)>,
}

impl DynamoStore {
    fn pending_key(user: &UserId, conversation: &ConversationId) -> Item {
        HashMap::from([
            (attr::USER_ID.to_owned(), s(user.as_str())),
            (attr::CONVERSATION_ID.to_owned(), s(conversation.as_str())),
        ])
    }

    /// A conditional UpdateItem on a pending row, returning the item after
    /// it (applied) or before it (refused).
    async fn update_pending(
        &self,
        user: &UserId,
        conversation: &ConversationId,
        u: &Update<'_>,
    ) -> Result<Written, StoreError> {
        let op = u.op;
        self.retrying(op, || {
            let mut req = self
                .client
                .update_item()
                .table_name(&self.tables.pending)
                .set_key(Some(Self::pending_key(user, conversation)))
                .update_expression(u.update)
                .condition_expression(&u.condition)
                .return_values(ReturnValue::AllNew)
                .return_values_on_condition_check_failure(
                    ReturnValuesOnConditionCheckFailure::AllOld,
                );
            for (alias, name) in used_aliases(&[u.update, &u.condition]) {
                req = req.expression_attribute_names(alias, name);
            }
            for (alias, name) in &u.names {
                req = req.expression_attribute_names(alias, name);
            }
            for (k, v) in &u.values {
                req = req.expression_attribute_values(*k, v.clone());
            }
            async move {
                match req.send().await {
                    Ok(out) => Ok(Written::Applied(out.attributes.unwrap_or_default())),
                    Err(SdkError::ServiceError(se))
                        if matches!(
                            se.err(),
                            UpdateItemError::ConditionalCheckFailedException(_)
                        ) =>
                    {
                        let old = match se.err() {
                            UpdateItemError::ConditionalCheckFailedException(c) => {
                                c.item().filter(|i| !i.is_empty()).cloned()
                            }
                            _ => None,
                        };
                        Ok(Written::Refused(old))
                    }
                    Err(e) => Err(failure(op, e)),
                }
            }
        })
        .await
    }

    /// [`DynamoStore::update_pending`] where only "did it apply" matters.
    async fn update_pending_if(
        &self,
        op: &'static str,
        user: &UserId,
        conversation: &ConversationId,
        update: &str,
        condition: &str,
        values: &[(&'static str, AttributeValue)],
    ) -> Result<bool, StoreError> {
        let u = Update {
            op,
            update,
            condition: condition.to_owned(),
            names: Vec::new(),
            values: values.to_vec(),
        };
        Ok(matches!(
            self.update_pending(user, conversation, &u).await?,
            Written::Applied(_)
        ))
    }

    /// A conditional DeleteItem on a pending row: true if it deleted.
    async fn delete_pending_if(
        &self,
        op: &'static str,
        user: &UserId,
        conversation: &ConversationId,
        condition: &str,
        names: &[(String, String)],
        values: &[(&str, AttributeValue)],
    ) -> Result<bool, StoreError> {
        self.retrying(op, || {
            let mut req = self
                .client
                .delete_item()
                .table_name(&self.tables.pending)
                .set_key(Some(Self::pending_key(user, conversation)))
                .condition_expression(condition);
            for (alias, name) in used_aliases(&[condition]) {
                req = req.expression_attribute_names(alias, name);
            }
            for (alias, name) in names {
                req = req.expression_attribute_names(alias, name);
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

    /// Raises `device`'s cursor to `through` if its start
    /// (`max(first, cursor + 1)`) lies in `from..=through`, in the variant
    /// for a row with (`map`) or without a `cursors` map.
    async fn raise_cursor(
        &self,
        user: &UserId,
        device: &DeviceId,
        conversation: &ConversationId,
        from: Seq,
        through: Seq,
        map: bool,
    ) -> Result<Written, StoreError> {
        let mut values = vec![(":through", n(through.get())), (":now", n(now_millis()))];
        // `from` 0 (an ack) bounds nothing: leave the clause out.
        let guard_from = from > Seq::ZERO;
        if guard_from {
            values.push((":from", n(from.get())));
        }
        let u = if map {
            let mut condition = String::from(
                "attribute_exists(#cursors) AND #first <= :through \
                 AND (attribute_not_exists(#cursors.#d) OR #cursors.#d < :through)",
            );
            if guard_from {
                // start >= from: the row starts there, or the device's
                // cursor is just below it.
                condition.push_str(" AND (#first >= :from OR #cursors.#d >= :held)");
                values.push((":held", n(from.get() - 1)));
            }
            Update {
                op: "UpdateItem pending cursor",
                update: "SET #cursors.#d = :through, #updated = :now",
                condition,
                names: vec![("#d".to_owned(), device.as_str().to_owned())],
                values,
            }
        } else {
            values.push((
                ":m",
                AttributeValue::M(HashMap::from([(
                    device.as_str().to_owned(),
                    n(through.get()),
                )])),
            ));
            Update {
                op: "UpdateItem pending cursors",
                update: "SET #cursors = :m, #updated = :now",
                condition: if guard_from {
                    "attribute_exists(#user) AND attribute_not_exists(#cursors) \
                     AND #first <= :through AND #first >= :from"
                } else {
                    "attribute_exists(#user) AND attribute_not_exists(#cursors) \
                     AND #first <= :through"
                }
                .to_owned(),
                names: Vec::new(),
                values,
            }
        };
        self.update_pending(user, conversation, &u).await
    }

    /// The shared body of `ack` and `settle_posted` (`from` 0 for an ack),
    /// the rules of the in-memory `advance_pending`.
    #[allow(clippy::too_many_arguments)]
    async fn advance(
        &self,
        user: &UserId,
        device: &DeviceId,
        conversation: &ConversationId,
        from: Seq,
        through: Seq,
        linked: &[DeviceId],
    ) -> Result<AckOutcome, StoreError> {
        let mut raised = None;
        'rounds: for _ in 0..CURSOR_ROUNDS {
            for map in [true, false] {
                match self
                    .raise_cursor(user, device, conversation, from, through, map)
                    .await?
                {
                    Written::Applied(row) => {
                        raised = Some(row);
                        break 'rounds;
                    }
                    Written::Refused(None) => return Ok(AckOutcome::Stale),
                    // The variant for this row's shape said no: the cursor
                    // is at `through` or past it, or outside `from`.
                    Written::Refused(Some(old)) if old.contains_key(attr::CURSORS) == map => {
                        return Ok(AckOutcome::Stale);
                    }
                    // The map appeared (another device's first ack) or went
                    // (a late record) since: the other variant decides.
                    Written::Refused(Some(_)) => {}
                }
            }
        }
        let Some(row) = raised else {
            return Err(StoreError::Throttled(format!(
                "pending row of {user} in {conversation} kept changing shape under an ack"
            )));
        };
        let row = parse_pending(&row)?;
        let mut holders: Vec<DeviceId> = linked.to_vec();
        holders.push(device.clone());
        holders.sort();
        holders.dedup();
        if !row.all_past(&holders) {
            return Ok(AckOutcome::Advanced);
        }
        // Every holder is past last_seq, so each has a cursor >= last_seq
        // (one without is at first - 1 < last). The delete re-checks exactly
        // that: a message stored since raised last_seq, a record since
        // dropped the cursors, and the row stays.
        let mut condition = String::from("#last = :last");
        let mut names = Vec::with_capacity(holders.len());
        for (i, d) in holders.iter().enumerate() {
            condition.push_str(&format!(" AND #cursors.#d{i} >= :last"));
            names.push((format!("#d{i}"), d.as_str().to_owned()));
        }
        if self
            .delete_pending_if(
                "DeleteItem pending cleared",
                user,
                conversation,
                &condition,
                &names,
                &[(":last", n(row.last_seq.get()))],
            )
            .await?
        {
            return Ok(AckOutcome::Cleared);
        }
        Ok(AckOutcome::Advanced)
    }
}

/// Rounds of the two cursor variants before giving up: each lost round means
/// the row gained and lost its `cursors` map between two of our writes.
const CURSOR_ROUNDS: usize = 4;

/// Rounds of `record` before giving up: each lost round means an ack deleted
/// the row between two of our writes, which takes a client acking as fast as
/// we write.
const RECORD_ROUNDS: usize = 8;

#[async_trait]
impl PendingStore for DynamoStore {
    async fn list(&self, user: &UserId) -> Result<Vec<PendingDelivery>, StoreError> {
        // A key range, not a filter: the user's links and memberships sort
        // below `PENDING_FROM` and are never read (nor paid for) here.
        self.query_all(
            "Query pending",
            &self.tables.pending,
            "#u = :u AND #c >= :lo",
            &[("#u", attr::USER_ID), ("#c", attr::CONVERSATION_ID)],
            &[(":u", s(user.as_str())), (":lo", s(sk::PENDING_FROM))],
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
            // The row exists with last_seq >= seq: lower first if it is
            // past seq, and drop every cursor (one past seq would skip it).
            // `attribute_exists`: if an ack deleted the row since, this must
            // not create one holding a first and no last_seq.
            if self
                .update_pending_if(
                    "UpdateItem pending lower",
                    user,
                    conversation,
                    "SET #first = :seq, #updated = :now REMOVE #cursors",
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
        device: &DeviceId,
        conversation: &ConversationId,
        seq: Seq,
        linked: &[DeviceId],
    ) -> Result<AckOutcome, StoreError> {
        // An ack is contiguous: it holds everything through seq, so no
        // lower bound on where the device starts.
        self.advance(user, device, conversation, Seq::ZERO, seq, linked)
            .await
    }

    async fn settle_posted(
        &self,
        user: &UserId,
        device: &DeviceId,
        conversation: &ConversationId,
        from: Seq,
        through: Seq,
        linked: &[DeviceId],
    ) -> Result<AckOutcome, StoreError> {
        self.advance(user, device, conversation, from, through, linked)
            .await
    }
}
