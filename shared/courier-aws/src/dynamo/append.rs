//! [`MessageStore`]: the append transaction, and reads of stored messages.
//!
//! An append is one `TransactWriteItems` of, in this order (the order
//! [`read_cancellation`] reads the reasons by): the conversation's `last_seq`
//! bump, the message, the idempotency record, and one update per recipient's
//! pending row. All of it commits or none of it does, so a stored message
//! always has its seq claimed, its idempotency record and its pending rows.
//!
//! A refusal is explained afterwards by reads, with the in-memory store's
//! precedence: a duplicate wins over everything, then a missing conversation
//! or membership, then the seq.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use async_trait::async_trait;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    CancellationReason, Put, ReturnValuesOnConditionCheckFailure, TransactWriteItem, Update,
};
use tracing::debug;

use courier_core::domain::{ClientMsgId, ConversationId, Message, Seq, UserId, now_millis};
use courier_core::ports::{AppendOutcome, ConversationStore, MessageStore, NewMessage, StoreError};

use super::DynamoStore;
use super::items::{
    Item, attr, get_n, idempotency_item, idempotency_key, n, parse_conversation, parse_message, s,
    stored_message_item,
};
use super::retry::{Failure, build_err, failure};

/// Actions one `TransactWriteItems` may hold.
const MAX_TRANSACT_ACTIONS: usize = 100;

impl DynamoStore {
    /// The idempotency record of a send and, if it still exists, its message.
    async fn lookup_sent(
        &self,
        conversation: &ConversationId,
        sender: &UserId,
        client_msg_id: &ClientMsgId,
    ) -> Result<Option<(Seq, Option<Message>)>, StoreError> {
        let key = HashMap::from([(
            attr::IDEMPOTENCY_KEY.to_owned(),
            s(idempotency_key(conversation, sender, client_msg_id)),
        )]);
        let Some(record) = self
            .get_item("GetItem idempotency", &self.tables.idempotency, key)
            .await?
        else {
            return Ok(None);
        };
        let seq = Seq(get_n(&record, attr::SEQ, "idempotency")?);
        let message = self.get_message(conversation, seq).await?;
        Ok(Some((seq, message)))
    }

    async fn get_message(
        &self,
        conversation: &ConversationId,
        seq: Seq,
    ) -> Result<Option<Message>, StoreError> {
        let key = HashMap::from([
            (attr::CONVERSATION_ID.to_owned(), s(conversation.as_str())),
            (attr::SEQ.to_owned(), n(seq.get())),
        ]);
        self.get_item("GetItem message", &self.tables.messages, key)
            .await?
            .map(|item| parse_message(&item))
            .transpose()
    }

    /// Why an append could not happen, read back after its transaction was
    /// cancelled (or when its seq cannot follow anything). Same precedence as
    /// the in-memory store: a duplicate wins over everything, then a missing
    /// conversation or membership, then the seq.
    async fn explain_refusal(
        &self,
        new: &NewMessage,
        conversation_item: Option<Item>,
    ) -> Result<AppendOutcome, StoreError> {
        let m = &new.message;
        match self
            .lookup_sent(&m.conversation_id, &m.sender_id, &m.client_msg_id)
            .await?
        {
            Some((_, Some(original))) => return Ok(AppendOutcome::Duplicate(original)),
            Some((seq, None)) => {
                return Err(StoreError::Corrupt(format!(
                    "idempotency record points at seq {seq} of {}, which does not exist",
                    m.conversation_id
                )));
            }
            None => {}
        }
        let conversation = match conversation_item {
            Some(item) => Some(parse_conversation(&item)?),
            None => ConversationStore::get(self, &m.conversation_id).await?,
        };
        let Some(conversation) = conversation else {
            return Ok(AppendOutcome::NotAMember);
        };
        if !conversation.is_member(&m.sender_id) {
            return Ok(AppendOutcome::NotAMember);
        }
        if conversation.last_seq.next() == m.seq {
            // Every condition holds now, yet the transaction was refused: the
            // state moved in between. The caller re-reads and retries.
            debug!(conversation = %m.conversation_id, seq = %m.seq, "append refused, state moved since");
        }
        Ok(AppendOutcome::SeqConflict)
    }

    fn append_actions(
        &self,
        new: &NewMessage,
        expected: Seq,
    ) -> Result<Vec<TransactWriteItem>, StoreError> {
        let m = &new.message;
        let now = now_millis();
        let mut actions = Vec::with_capacity(3 + new.pending_for.len());

        actions.push(
            TransactWriteItem::builder()
                .update(
                    Update::builder()
                        .table_name(&self.tables.conversations)
                        .key(attr::CONVERSATION_ID, s(m.conversation_id.as_str()))
                        .update_expression("SET #last_seq = :new")
                        // Two senders that read the same last_seq cannot both
                        // take seq, and a non-member cannot post. A missing
                        // item fails too; ALL_OLD hands back the item to tell
                        // which.
                        .condition_expression(
                            "#last_seq = :expected AND contains(#members, :sender)",
                        )
                        .expression_attribute_names("#last_seq", attr::LAST_SEQ)
                        .expression_attribute_names("#members", attr::MEMBERS)
                        .expression_attribute_values(":new", n(m.seq.get()))
                        .expression_attribute_values(":expected", n(expected.get()))
                        .expression_attribute_values(":sender", s(m.sender_id.as_str()))
                        .return_values_on_condition_check_failure(
                            ReturnValuesOnConditionCheckFailure::AllOld,
                        )
                        .build()
                        .map_err(build_err)?,
                )
                .build(),
        );
        actions.push(
            TransactWriteItem::builder()
                .put(
                    Put::builder()
                        .table_name(&self.tables.messages)
                        .set_item(Some(stored_message_item(new)))
                        // Never overwrites a stored message, should last_seq
                        // and the messages ever disagree.
                        .condition_expression("attribute_not_exists(#seq)")
                        .expression_attribute_names("#seq", attr::SEQ)
                        .build()
                        .map_err(build_err)?,
                )
                .build(),
        );
        actions.push(
            TransactWriteItem::builder()
                .put(
                    Put::builder()
                        .table_name(&self.tables.idempotency)
                        .set_item(Some(idempotency_item(new)))
                        // A retried client_msg_id is stored once.
                        .condition_expression("attribute_not_exists(#key)")
                        .expression_attribute_names("#key", attr::IDEMPOTENCY_KEY)
                        .return_values_on_condition_check_failure(
                            ReturnValuesOnConditionCheckFailure::AllOld,
                        )
                        .build()
                        .map_err(build_err)?,
                )
                .build(),
        );
        // One action per item: DynamoDB refuses a transaction that touches an
        // item twice.
        let mut seen = HashSet::new();
        for user in new.pending_for.iter().filter(|u| seen.insert(*u)) {
            actions.push(
                TransactWriteItem::builder()
                    .update(
                        Update::builder()
                            .table_name(&self.tables.pending)
                            .key(attr::USER_ID, s(user.as_str()))
                            .key(attr::CONVERSATION_ID, s(m.conversation_id.as_str()))
                            // seq is the conversation's newest, so it is the
                            // max; an existing row's first is already <= seq.
                            .update_expression(
                                "SET #last = :seq, #first = if_not_exists(#first, :seq), #updated = :now",
                            )
                            .expression_attribute_names("#last", attr::LAST_SEQ)
                            .expression_attribute_names("#first", attr::FIRST_UNDELIVERED_SEQ)
                            .expression_attribute_names("#updated", attr::UPDATED_AT)
                            .expression_attribute_values(":seq", n(m.seq.get()))
                            .expression_attribute_values(":now", n(now))
                            .build()
                            .map_err(build_err)?,
                    )
                    .build(),
            );
        }
        if actions.len() > MAX_TRANSACT_ACTIONS {
            return Err(StoreError::Unavailable(format!(
                "append to {} needs {} transaction actions, DynamoDB allows {MAX_TRANSACT_ACTIONS}",
                m.conversation_id,
                actions.len()
            )));
        }
        Ok(actions)
    }
}

/// What a cancelled append transaction said.
enum Cancelled {
    /// A condition failed; the conversation item, if DynamoDB returned it.
    Condition(Option<Item>),
    /// Conflict or throttling on some item: try again.
    Retry(StoreError),
    Fatal(StoreError),
}

/// Reads the reasons of a cancelled append. Index 0 is the conversation
/// update, 1 the message, 2 the idempotency record, then pending rows.
fn read_cancellation(reasons: &[CancellationReason]) -> Cancelled {
    let code = |r: &CancellationReason| r.code().unwrap_or("None").to_owned();
    if let Some(r) = reasons.iter().find(|r| {
        matches!(
            r.code(),
            Some(
                "TransactionConflict"
                    | "ThrottlingError"
                    | "ProvisionedThroughputExceeded"
                    | "RequestLimitExceeded"
            )
        )
    }) {
        return Cancelled::Retry(StoreError::Throttled(format!(
            "TransactWriteItems cancelled: {}",
            code(r)
        )));
    }
    let failed = |i: usize| {
        reasons
            .get(i)
            .is_some_and(|r| r.code() == Some("ConditionalCheckFailed"))
    };
    if failed(0) || failed(2) {
        let conversation = reasons
            .first()
            .filter(|_| failed(0))
            .and_then(|r| r.item.clone());
        return Cancelled::Condition(conversation);
    }
    if failed(1) {
        return Cancelled::Fatal(StoreError::Corrupt(
            "a message already holds the seq after the conversation's last_seq".into(),
        ));
    }
    let all: Vec<String> = reasons.iter().map(code).collect();
    Cancelled::Fatal(StoreError::Unavailable(format!(
        "TransactWriteItems cancelled: [{}]",
        all.join(", ")
    )))
}

#[async_trait]
impl MessageStore for DynamoStore {
    #[tracing::instrument(skip_all, fields(conversation = %new.message.conversation_id, seq = %new.message.seq))]
    async fn append(&self, new: &NewMessage) -> Result<AppendOutcome, StoreError> {
        let m = &new.message;
        let Some(expected) = m.seq.get().checked_sub(1).map(Seq) else {
            // seq 0 follows nothing: no transaction could succeed.
            return self.explain_refusal(new, None).await;
        };
        let actions = self.append_actions(new, expected)?;
        // One token while the outcome is unknown (timeout, 5xx): if that
        // attempt did commit, DynamoDB answers the retry with success instead
        // of refusing it (within its 10-minute window). A cancelled attempt
        // surely wrote nothing, so its retry gets a fresh token rather than
        // the cached cancellation.
        let token = Mutex::new(uuid::Uuid::new_v4().to_string());
        let current_token = || token.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let refused = self
            .retrying("TransactWriteItems append", || {
                let req = self
                    .client
                    .transact_write_items()
                    .set_transact_items(Some(actions.clone()))
                    .client_request_token(current_token());
                let token = &token;
                async move {
                    let e = match req.send().await {
                        Ok(_) => return Ok(None),
                        Err(e) => e,
                    };
                    let reasons = match &e {
                        SdkError::ServiceError(se) => match se.err() {
                            TransactWriteItemsError::TransactionCanceledException(c) => {
                                Some(c.cancellation_reasons())
                            }
                            _ => None,
                        },
                        _ => None,
                    };
                    let Some(reasons) = reasons else {
                        return Err(failure("TransactWriteItems append", e));
                    };
                    match read_cancellation(reasons) {
                        Cancelled::Condition(item) => Ok(Some(item)),
                        Cancelled::Retry(err) => {
                            *token.lock().unwrap_or_else(|p| p.into_inner()) =
                                uuid::Uuid::new_v4().to_string();
                            Err(Failure::Retry(err))
                        }
                        Cancelled::Fatal(err) => Err(Failure::Fatal(err)),
                    }
                }
            })
            .await?;
        match refused {
            None => Ok(AppendOutcome::Stored),
            Some(conversation_item) => self.explain_refusal(new, conversation_item).await,
        }
    }

    async fn find_sent(
        &self,
        conversation: &ConversationId,
        sender: &UserId,
        client_msg_id: &ClientMsgId,
    ) -> Result<Option<Message>, StoreError> {
        Ok(self
            .lookup_sent(conversation, sender, client_msg_id)
            .await?
            .and_then(|(_, message)| message))
    }

    async fn range(
        &self,
        conversation: &ConversationId,
        from: Seq,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.query_all(
            "Query messages",
            &self.tables.messages,
            "#c = :c AND #seq >= :from",
            &[("#c", attr::CONVERSATION_ID), ("#seq", attr::SEQ)],
            &[(":c", s(conversation.as_str())), (":from", n(from.get()))],
            Some(limit),
        )
        .await?
        .iter()
        .map(parse_message)
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancellation_reasons_are_read_by_position() {
        let reason = |code: &str| CancellationReason::builder().code(code).build();
        let ok = reason("None");
        let ccf = reason("ConditionalCheckFailed");
        assert!(matches!(
            read_cancellation(&[ccf.clone(), ok.clone(), ok.clone()]),
            Cancelled::Condition(None)
        ));
        assert!(matches!(
            read_cancellation(&[ok.clone(), ok.clone(), ccf.clone()]),
            Cancelled::Condition(None)
        ));
        assert!(matches!(
            read_cancellation(&[ok.clone(), ccf.clone(), ok.clone()]),
            Cancelled::Fatal(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            read_cancellation(&[ccf, ok.clone(), reason("TransactionConflict")]),
            Cancelled::Retry(StoreError::Throttled(_))
        ));
        assert!(matches!(
            read_cancellation(&[ok.clone(), ok, reason("ValidationError")]),
            Cancelled::Fatal(StoreError::Unavailable(_))
        ));
    }
}
