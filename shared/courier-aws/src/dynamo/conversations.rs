//! [`ConversationStore`]: a conversation is created once and then changed
//! only by the append transaction (its `last_seq`).

use std::collections::HashMap;

use async_trait::async_trait;

use courier_core::domain::{Conversation, ConversationId};
use courier_core::ports::{ConversationStore, StoreError};

use super::DynamoStore;
use super::items::{attr, conversation_item, parse_conversation, s};
use super::retry::{failure, is_condition_failure};

#[async_trait]
impl ConversationStore for DynamoStore {
    async fn create(&self, conversation: &Conversation) -> Result<bool, StoreError> {
        let item = conversation_item(conversation);
        self.retrying("PutItem conversation", || {
            let req = self
                .client
                .put_item()
                .table_name(&self.tables.conversations)
                .set_item(Some(item.clone()))
                // A second create never resets a live conversation's last_seq
                // or members.
                .condition_expression("attribute_not_exists(#c)")
                .expression_attribute_names("#c", attr::CONVERSATION_ID);
            async move {
                match req.send().await {
                    Ok(_) => Ok(true),
                    Err(e) if is_condition_failure(&e) => Ok(false),
                    Err(e) => Err(failure("PutItem conversation", e)),
                }
            }
        })
        .await
    }

    async fn get(&self, id: &ConversationId) -> Result<Option<Conversation>, StoreError> {
        let key = HashMap::from([(attr::CONVERSATION_ID.to_owned(), s(id.as_str()))]);
        self.get_item("GetItem conversation", &self.tables.conversations, key)
            .await?
            .map(|item| parse_conversation(&item))
            .transpose()
    }
}
