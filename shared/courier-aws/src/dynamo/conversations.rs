//! [`ConversationStore`]: a conversation is created once and then changed
//! only by the append transaction (its `last_seq`).
//!
//! Creating one also writes a membership item per member into the member's
//! partition of `pending_deliveries` (sort key `#m#{conversation}`), in the
//! same transaction, so `list_for` is a query of one partition in
//! conversation-id order, and a conversation is never listed without
//! existing nor exists unlisted.

use std::collections::{BTreeSet, HashMap};

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{Put, TransactWriteItem};

use courier_core::domain::{Conversation, ConversationId, UserId};
use courier_core::ports::{ConversationStore, StoreError};

use super::DynamoStore;
use super::items::{
    attr, conversation_item, membership_item, parse_conversation, parse_membership, s, sk,
};
use super::retry::build_err;

/// The largest page `list_for` answers (and one `BatchGetItem`'s keys).
const MAX_PAGE: usize = 100;

#[async_trait]
impl ConversationStore for DynamoStore {
    async fn create(&self, conversation: &Conversation) -> Result<bool, StoreError> {
        let put = Put::builder()
            .table_name(&self.tables.conversations)
            .set_item(Some(conversation_item(conversation)))
            // A second create never resets a live conversation's last_seq
            // or members, nor lists it for someone else.
            .condition_expression("attribute_not_exists(#c)")
            .expression_attribute_names("#c", attr::CONVERSATION_ID)
            .build()
            .map_err(build_err)?;
        let mut actions = vec![TransactWriteItem::builder().put(put).build()];
        // One action per item: members are a set.
        let members: BTreeSet<&UserId> = conversation.members.iter().collect();
        for member in members {
            let put = Put::builder()
                .table_name(&self.tables.pending)
                .set_item(Some(membership_item(member, &conversation.conversation_id)))
                .build()
                .map_err(build_err)?;
            actions.push(TransactWriteItem::builder().put(put).build());
        }
        match self
            .transact("TransactWriteItems conversation", actions)
            .await?
        {
            None => Ok(true),
            Some(refused) if refused.failed(0) => Ok(false),
            Some(_) => Err(StoreError::Unavailable(
                "TransactWriteItems conversation: an unconditional put was refused".into(),
            )),
        }
    }

    async fn get(&self, id: &ConversationId) -> Result<Option<Conversation>, StoreError> {
        let key = HashMap::from([(attr::CONVERSATION_ID.to_owned(), s(id.as_str()))]);
        self.get_item("GetItem conversation", &self.tables.conversations, key)
            .await?
            .map(|item| parse_conversation(&item))
            .transpose()
    }

    async fn list_for(
        &self,
        user: &UserId,
        after: Option<&ConversationId>,
        limit: usize,
    ) -> Result<(Vec<Conversation>, Option<ConversationId>), StoreError> {
        let limit = limit.clamp(1, MAX_PAGE);
        // Starting after `#m#{after}` whether or not that item exists (the
        // user may have left it since): DynamoDB only compares keys.
        let start = after.map(|a| {
            HashMap::from([
                (attr::USER_ID.to_owned(), s(user.as_str())),
                (attr::CONVERSATION_ID.to_owned(), s(sk::membership(a))),
            ])
        });
        // One more than the page: whether there is a next page.
        let mut ids = self
            .query_after(
                "Query memberships",
                &self.tables.pending,
                "#u = :u AND begins_with(#c, :prefix)",
                &[("#u", attr::USER_ID), ("#c", attr::CONVERSATION_ID)],
                &[
                    (":u", s(user.as_str())),
                    (":prefix", s(sk::MEMBERSHIP_PREFIX)),
                ],
                start,
                Some(limit + 1),
            )
            .await?
            .iter()
            .map(parse_membership)
            .collect::<Result<Vec<_>, _>>()?;
        let more = ids.len() > limit;
        ids.truncate(limit);
        let keys = ids
            .iter()
            .map(|id| HashMap::from([(attr::CONVERSATION_ID.to_owned(), s(id.as_str()))]))
            .collect();
        let mut page = self
            .batch_get(
                "BatchGetItem conversations",
                &self.tables.conversations,
                keys,
            )
            .await?
            .iter()
            .map(parse_conversation)
            .collect::<Result<Vec<_>, _>>()?;
        page.sort_by(|a, b| a.conversation_id.cmp(&b.conversation_id));
        let next = if more { ids.last().cloned() } else { None };
        Ok((page, next))
    }
}
