//! Memberships for conversations created before the memberships index:
//! `listConversations` reads a user's conversations from membership items
//! (`#m#{conversation}` in the user's partition of `pending_deliveries`),
//! which conversations created since write in their create transaction.
//! Older ones have none until this has run once.
//!
//! Idempotent and safe while the service runs: a membership item is its key
//! and nothing else, so writing one again changes nothing, and members never
//! change after a conversation is created. One Scan of `conversations`, page
//! by page (memory bounded by a page), and one PutItem per member.

use futures::StreamExt as _;

use courier_core::domain::{ConversationId, UserId};
use courier_core::ports::StoreError;

use super::DynamoStore;
use super::items::{membership_item, parse_conversation};
use super::retry::failure;

/// PutItems in flight at once: well under a table's per-partition write
/// rate, so the backfill never throttles the live service.
const PUTS_IN_FLIGHT: usize = 16;

/// What [`DynamoStore::backfill_memberships`] wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backfilled {
    pub conversations: usize,
    pub memberships: usize,
}

impl DynamoStore {
    /// Writes the membership item of every member of every conversation.
    pub async fn backfill_memberships(&self) -> Result<Backfilled, StoreError> {
        const SCAN: &str = "Scan conversations (backfill)";
        let mut done = Backfilled::default();
        let mut start = None;
        loop {
            let page = self
                .retrying(SCAN, || {
                    let req = self
                        .client
                        .scan()
                        .table_name(&self.tables.conversations)
                        .consistent_read(true)
                        .set_exclusive_start_key(start.clone());
                    async move { req.send().await.map_err(|e| failure(SCAN, e)) }
                })
                .await?;
            let mut pairs: Vec<(UserId, ConversationId)> = Vec::new();
            for item in page.items.unwrap_or_default() {
                let conversation = parse_conversation(&item)?;
                done.conversations += 1;
                pairs.extend(
                    conversation
                        .members
                        .into_iter()
                        .map(|m| (m, conversation.conversation_id.clone())),
                );
            }
            let written: Vec<Result<(), StoreError>> = futures::stream::iter(pairs)
                .map(|(member, conversation)| self.put_membership(member, conversation))
                .buffer_unordered(PUTS_IN_FLIGHT)
                .collect()
                .await;
            for w in written {
                w?;
                done.memberships += 1;
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return Ok(done),
            }
        }
    }

    async fn put_membership(
        &self,
        member: UserId,
        conversation: ConversationId,
    ) -> Result<(), StoreError> {
        const PUT: &str = "PutItem membership (backfill)";
        let item = membership_item(&member, &conversation);
        self.retrying(PUT, || {
            let req = self
                .client
                .put_item()
                .table_name(&self.tables.pending)
                .set_item(Some(item.clone()));
            async move { req.send().await.map(|_| ()).map_err(|e| failure(PUT, e)) }
        })
        .await
    }
}
