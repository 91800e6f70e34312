//! Backlogs written straight into the tables: conversations, their
//! messages, and a pending row per reader.
//!
//! A benchmark needs thousands of stored messages (10,000 for the memory
//! figure, 1,000 readers for the storm). Going through the send path would
//! cost one `TransactWriteItems` each on a moto that serializes requests,
//! minutes of set-up for figures that do not measure sending. So items go
//! in with `BatchWriteItem`, 25 at a time, in the layout `DynamoStore`
//! writes (attribute names from `courier_aws::dynamo::attr`), and
//! [`Backlog::verify`] reads a sample back through `DynamoStore` itself, so
//! a drift between that layout and this one is a seeding error, not a
//! silently wrong figure.

use std::collections::HashMap;

use anyhow::{Context as _, bail, ensure};
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
use courier_aws::dynamo::{DynamoStore, attr};
use courier_core::config::TableNames;
use courier_core::domain::{ConversationId, Seq, UserId, now_millis};
use courier_core::ports::{ConversationStore, MessageStore, PendingStore};

/// Items one `BatchWriteItem` may carry.
const BATCH: usize = 25;

/// What [`seed`] wrote for one reader.
#[derive(Debug, Clone)]
pub struct Backlog {
    pub reader: UserId,
    pub sender: UserId,
    pub conversations: Vec<ConversationId>,
    pub messages_per_conversation: usize,
    pub body_bytes: usize,
}

impl Backlog {
    pub fn total_messages(&self) -> usize {
        self.conversations.len() * self.messages_per_conversation
    }

    /// Reads the reader's pending rows and one conversation back through
    /// the adapter the services use.
    pub async fn verify(&self, store: &DynamoStore) -> anyhow::Result<()> {
        let rows = store.list(&self.reader).await?;
        ensure!(
            rows.len() == self.conversations.len(),
            "seeded {} pending rows for {}, DynamoStore lists {}",
            self.conversations.len(),
            self.reader,
            rows.len()
        );
        if let Some(c) = self.conversations.first() {
            let got = store.range(c, Seq(1), usize::MAX).await?;
            ensure!(
                got.len() == self.messages_per_conversation,
                "seeded {} messages in {c}, DynamoStore reads {}",
                self.messages_per_conversation,
                got.len()
            );
            let conv = ConversationStore::get(store, c)
                .await?
                .with_context(|| format!("conversation {c} not readable"))?;
            ensure!(conv.is_member(&self.reader) && conv.is_member(&self.sender));
        }
        Ok(())
    }
}

/// What to seed.
#[derive(Debug, Clone)]
pub struct Spec<'a> {
    pub reader: &'a UserId,
    pub sender: &'a UserId,
    /// Conversation ids are `{prefix}-{i}`.
    pub prefix: &'a str,
    pub conversations: usize,
    pub messages_per_conversation: usize,
    pub body_bytes: usize,
}

/// A body of exactly `len` bytes (at least the seq marker), ASCII so bytes
/// equal characters.
pub fn body(seq: usize, len: usize) -> String {
    let mut b = format!("m{seq} ");
    if b.len() < len {
        b.extend(std::iter::repeat_n('x', len - b.len()));
    }
    b
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

type Item = HashMap<String, AttributeValue>;

/// Items for the three tables.
#[derive(Default)]
struct Items {
    conversations: Vec<Item>,
    messages: Vec<Item>,
    pending: Vec<Item>,
}

/// Builds one reader's backlog: conversations (reader and sender as
/// members, `last_seq` = messages), messages `1..=messages`, and a pending
/// row `1..=messages` for the reader in each.
fn items(spec: &Spec<'_>, now: i64, out: &mut Items) -> anyhow::Result<Backlog> {
    let m = spec.messages_per_conversation;
    let mut conversations = Vec::with_capacity(spec.conversations);
    for i in 0..spec.conversations {
        let id = ConversationId::parse(&format!("{}-{i}", spec.prefix))
            .map_err(|e| anyhow::anyhow!("conversation id: {e}"))?;
        let mut members = vec![
            spec.reader.as_str().to_owned(),
            spec.sender.as_str().to_owned(),
        ];
        members.sort();
        out.conversations.push(Item::from([
            (attr::CONVERSATION_ID.into(), s(id.as_str())),
            (attr::LAST_SEQ.into(), n(m)),
            (attr::CREATED_AT.into(), n(now)),
            (attr::MEMBERS.into(), AttributeValue::Ss(members)),
        ]));
        for seq in 1..=m {
            out.messages.push(Item::from([
                (attr::CONVERSATION_ID.into(), s(id.as_str())),
                (attr::SEQ.into(), n(seq)),
                (attr::MESSAGE_ID.into(), s(uuid::Uuid::new_v4().to_string())),
                (
                    attr::CLIENT_MSG_ID.into(),
                    s(uuid::Uuid::new_v4().simple().to_string()),
                ),
                (attr::SENDER_ID.into(), s(spec.sender.as_str())),
                (attr::BODY.into(), s(body(seq, spec.body_bytes))),
                (attr::SENT_AT.into(), n(now)),
            ]));
        }
        if m > 0 {
            out.pending.push(Item::from([
                (attr::USER_ID.into(), s(spec.reader.as_str())),
                (attr::CONVERSATION_ID.into(), s(id.as_str())),
                (attr::FIRST_UNDELIVERED_SEQ.into(), n(1)),
                (attr::LAST_SEQ.into(), n(m)),
                (attr::UPDATED_AT.into(), n(now)),
            ]));
        }
        conversations.push(id);
    }
    Ok(Backlog {
        reader: spec.reader.clone(),
        sender: spec.sender.clone(),
        conversations,
        messages_per_conversation: m,
        body_bytes: spec.body_bytes,
    })
}

/// Writes one reader's backlog (see [`seed_many`]).
pub async fn seed(
    client: &Client,
    tables: &TableNames,
    spec: &Spec<'_>,
) -> anyhow::Result<Backlog> {
    let mut all = seed_many(client, tables, std::slice::from_ref(spec)).await?;
    all.pop().context("no backlog")
}

/// Writes the backlogs of many readers in as few batches as possible.
pub async fn seed_many(
    client: &Client,
    tables: &TableNames,
    specs: &[Spec<'_>],
) -> anyhow::Result<Vec<Backlog>> {
    let now = now_millis();
    let mut out = Items::default();
    let backlogs = specs
        .iter()
        .map(|spec| items(spec, now, &mut out))
        .collect::<anyhow::Result<Vec<_>>>()?;
    put_all(client, &tables.conversations, out.conversations).await?;
    put_all(client, &tables.messages, out.messages).await?;
    put_all(client, &tables.pending, out.pending).await?;
    Ok(backlogs)
}

/// Writes `backlog`'s pending rows again (`1..=messages` in each
/// conversation), as [`seed`] did: for a baseline that deleted them.
pub async fn reset_pending(
    client: &Client,
    tables: &TableNames,
    backlog: &Backlog,
) -> anyhow::Result<()> {
    let now = now_millis();
    let m = backlog.messages_per_conversation;
    let items = backlog
        .conversations
        .iter()
        .map(|id| {
            Item::from([
                (attr::USER_ID.into(), s(backlog.reader.as_str())),
                (attr::CONVERSATION_ID.into(), s(id.as_str())),
                (attr::FIRST_UNDELIVERED_SEQ.into(), n(1)),
                (attr::LAST_SEQ.into(), n(m)),
                (attr::UPDATED_AT.into(), n(now)),
            ])
        })
        .collect();
    put_all(client, &tables.pending, items).await
}

/// The pages DynamoDB (here: moto, which cuts a page at 1 MB as DynamoDB
/// does) answers a range read of `limit` messages of `conversation` from
/// seq 1 in: the round trips `DynamoStore::range` pays for it.
pub async fn range_pages(
    client: &Client,
    tables: &TableNames,
    conversation: &ConversationId,
    limit: usize,
) -> anyhow::Result<usize> {
    let mut pages = 0;
    let mut items = 0;
    let mut start = None;
    loop {
        let out = client
            .query()
            .table_name(&tables.messages)
            .key_condition_expression("#c = :c AND #seq >= :from")
            .expression_attribute_names("#c", attr::CONVERSATION_ID)
            .expression_attribute_names("#seq", attr::SEQ)
            .expression_attribute_values(":c", s(conversation.as_str()))
            .expression_attribute_values(":from", n(1))
            .consistent_read(true)
            .limit(i32::try_from(limit - items).unwrap_or(i32::MAX))
            .set_exclusive_start_key(start)
            .send()
            .await
            .context("Query messages (pages)")?;
        pages += 1;
        items += out.items.map_or(0, |i| i.len());
        match out.last_evaluated_key {
            Some(k) if !k.is_empty() && items < limit => start = Some(k),
            _ => return Ok(pages),
        }
    }
}

/// `BatchWriteItem` in chunks of 25, resubmitting unprocessed items.
pub async fn put_all(client: &Client, table: &str, items: Vec<Item>) -> anyhow::Result<()> {
    for chunk in items.chunks(BATCH) {
        let mut requests: Vec<WriteRequest> = chunk
            .iter()
            .map(|item| {
                PutRequest::builder()
                    .set_item(Some(item.clone()))
                    .build()
                    .map(|p| WriteRequest::builder().put_request(p).build())
            })
            .collect::<Result<_, _>>()?;
        for _attempt in 0..10 {
            let out = client
                .batch_write_item()
                .request_items(table, requests)
                .send()
                .await
                .with_context(|| format!("BatchWriteItem {table}"))?;
            requests = out
                .unprocessed_items
                .and_then(|mut u| u.remove(table))
                .unwrap_or_default();
            if requests.is_empty() {
                break;
            }
        }
        if !requests.is_empty() {
            bail!("{} items of {table} stayed unprocessed", requests.len());
        }
    }
    Ok(())
}

/// The same backlogs as [`seed_many`], in an in-memory store, through its
/// own `append` (one message at a time, pending row included).
pub async fn seed_memory(
    store: &courier_core::adapters::memory::MemoryStore,
    specs: &[Spec<'_>],
) -> anyhow::Result<Vec<Backlog>> {
    use courier_core::domain::{ClientMsgId, Conversation, Message};
    use courier_core::ports::{AppendOutcome, NewMessage};
    let now = now_millis();
    let mut out = Vec::with_capacity(specs.len());
    for spec in specs {
        let mut conversations = Vec::with_capacity(spec.conversations);
        for i in 0..spec.conversations {
            let id = ConversationId::parse(&format!("{}-{i}", spec.prefix))
                .map_err(|e| anyhow::anyhow!("conversation id: {e}"))?;
            let conversation = Conversation {
                conversation_id: id.clone(),
                members: vec![spec.reader.clone(), spec.sender.clone()],
                last_seq: Seq::ZERO,
                created_at: now,
            };
            ensure!(ConversationStore::create(store, &conversation).await?);
            for seq in 1..=spec.messages_per_conversation {
                let new = NewMessage {
                    message: Message {
                        conversation_id: id.clone(),
                        seq: Seq(seq as u64),
                        message_id: uuid::Uuid::new_v4().to_string(),
                        client_msg_id: ClientMsgId::parse(
                            &uuid::Uuid::new_v4().simple().to_string(),
                        )
                        .map_err(|e| anyhow::anyhow!("{e}"))?,
                        sender_id: spec.sender.clone(),
                        body: body(seq, spec.body_bytes),
                        sent_at: now,
                    },
                    pending_for: vec![spec.reader.clone()],
                    idempotency_expires_at: i64::MAX,
                    message_expires_at: None,
                };
                ensure!(store.append(&new).await? == AppendOutcome::Stored);
            }
            conversations.push(id);
        }
        out.push(Backlog {
            reader: spec.reader.clone(),
            sender: spec.sender.clone(),
            conversations,
            messages_per_conversation: spec.messages_per_conversation,
            body_bytes: spec.body_bytes,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_have_the_asked_length_and_their_seq() {
        assert_eq!(body(7, 100).len(), 100);
        assert!(body(7, 100).starts_with("m7 "));
        assert_eq!(body(12345, 2), "m12345 ");
    }
}
