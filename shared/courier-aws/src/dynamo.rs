//! The DynamoDB adapter: messages, conversations, idempotency records,
//! pending deliveries and devices (DESIGN §3), behind [`MessageStore`],
//! [`ConversationStore`], [`PendingStore`] and [`DeviceStore`].
//!
//! The in-memory adapter is the reference: every method here answers what
//! `adapters::memory` answers for the same history, and the conformance suite
//! in `tests/tests/store_conformance.rs` runs the same cases against both.
//! Where DynamoDB has no single operation for a rule, the rule is a
//! conditional write (or a short chain of them) so that no interleaving of
//! concurrent callers can break it:
//!
//! - [`MessageStore::append`] is one `TransactWriteItems`: the conversation's
//!   `last_seq` moves from `seq - 1` to `seq` only if the sender is a member,
//!   the message and the idempotency record are put only if absent, and every
//!   recipient's pending row is widened. A cancelled transaction wrote nothing;
//!   its cancellation reasons (plus one consistent read of the idempotency
//!   record, since DynamoDB need not report every failed condition) tell
//!   `Duplicate`, `NotAMember` and `SeqConflict` apart.
//! - [`PendingStore::ack`] deletes on `last_seq <= seq`, else raises the
//!   cursor on `first_undelivered_seq <= seq AND last_seq > seq`: a message
//!   that lands in between fails the first condition, a cursor never goes down
//!   because of the second.
//! - [`PendingStore::record`] has no `max`/`min` in DynamoDB's update language,
//!   so it raises `last_seq` on `last_seq < seq`, then lowers
//!   `first_undelivered_seq` on `first_undelivered_seq > seq`, retrying if an
//!   ack deleted the row in between.
//!
//! Layout decisions (DESIGN §3 leaves them to us):
//!
//! - Idempotency records live in their own table keyed by
//!   `{conversation}#{sender}#{client_msg_id}` (ids cannot contain `#`), with a
//!   TTL attribute `expires_at` far past any client's retry window, rather
//!   than relying on DynamoDB's 10-minute `ClientRequestToken` window.
//! - `members` is a string set, so `contains(members, :sender)` is the
//!   membership check inside the transaction. Sets are unordered: `get`
//!   returns members sorted. An empty member list is stored without the
//!   attribute (DynamoDB has no empty sets) and reads back empty.
//! - Devices are keyed by `token` (a token belongs to one user at a time; a
//!   put moves it) with a keys-only GSI `by_user` on `user_id`. GSIs are only
//!   eventually consistent, so `for_user` confirms each token with a
//!   strongly consistent `BatchGetItem` on the table: a device that just moved
//!   to another user is never returned for the old one (no preview pushed to
//!   the wrong person); one registered a moment ago may be missed once.
//!
//! Every read is strongly consistent and follows `LastEvaluatedKey`.
//! Throttling, transaction conflicts, 5xx answers and network failures are
//! retried here with jittered exponential backoff ([`RetryPolicy`]) and then
//! surface as [`StoreError::Throttled`] or [`StoreError::Unavailable`]. An item
//! that does not have the shape this code writes is [`StoreError::Corrupt`],
//! never a panic.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::client::Waiters;
use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::error::{BuildError, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, CancellationReason, GlobalSecondaryIndex,
    KeySchemaElement, KeyType, KeysAndAttributes, Projection, ProjectionType, Put,
    ReturnValuesOnConditionCheckFailure, ScalarAttributeType, TimeToLiveSpecification,
    TimeToLiveStatus, TransactWriteItem, Update,
};
use aws_smithy_types::error::display::DisplayErrorContext;
use rand::Rng;
use tracing::{debug, warn};

use courier_core::config::TableNames;
use courier_core::domain::{
    ClientMsgId, Conversation, ConversationId, Device, Message, Millis, PendingDelivery, Platform,
    Seq, UserId, now_millis,
};
use courier_core::ports::{
    AckOutcome, AppendOutcome, ConversationStore, DeviceStore, MessageStore, NewMessage,
    PendingStore, StoreError,
};

/// Attribute names, written once so a typo cannot split a table in two.
pub mod attr {
    pub const CONVERSATION_ID: &str = "conversation_id";
    pub const SEQ: &str = "seq";
    pub const MESSAGE_ID: &str = "message_id";
    pub const CLIENT_MSG_ID: &str = "client_msg_id";
    pub const SENDER_ID: &str = "sender_id";
    pub const BODY: &str = "body";
    pub const SENT_AT: &str = "sent_at";
    pub const USER_ID: &str = "user_id";
    pub const FIRST_UNDELIVERED_SEQ: &str = "first_undelivered_seq";
    pub const LAST_SEQ: &str = "last_seq";
    pub const UPDATED_AT: &str = "updated_at";
    pub const MEMBERS: &str = "members";
    pub const CREATED_AT: &str = "created_at";
    pub const IDEMPOTENCY_KEY: &str = "idempotency_key";
    pub const EXPIRES_AT: &str = "expires_at";
    pub const TOKEN: &str = "token";
    pub const PLATFORM: &str = "platform";
    pub const ENDPOINT_ARN: &str = "endpoint_arn";
}

/// The devices table's index from user to tokens.
pub const DEVICES_BY_USER_INDEX: &str = "by_user";

/// Actions one `TransactWriteItems` may hold.
const MAX_TRANSACT_ACTIONS: usize = 100;

/// Keys one `BatchGetItem` may ask for.
const MAX_BATCH_GET: usize = 100;

type Item = HashMap<String, AttributeValue>;

/// How hard the adapter retries throttling and transient faults before it
/// gives up with `Throttled` or `Unavailable`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Backoff before the second attempt; doubles each time.
    pub base_delay: Duration,
    /// Longest single backoff.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// Five attempts over at most ~1.5 s: long enough to ride out a burst of
    /// throttling, short enough to stay well inside API Gateway's 29 s.
    fn default() -> Self {
        Self {
            max_attempts: 5,
            base_delay: Duration::from_millis(25),
            max_delay: Duration::from_millis(800),
        }
    }
}

impl RetryPolicy {
    /// Full jitter: a random delay up to the exponential bound, so callers
    /// that were throttled together do not come back together.
    fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(1u32.checked_shl(attempt).unwrap_or(u32::MAX))
            .min(self.max_delay);
        let max_ms = u64::try_from(exp.as_millis()).unwrap_or(u64::MAX).max(1);
        Duration::from_millis(rand::rng().random_range(0..=max_ms))
    }
}

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

/// Why one attempt failed: worth another try, or not.
#[derive(Debug)]
enum Failure {
    Retry(StoreError),
    Fatal(StoreError),
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Fatal(e)
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

    /// Runs `attempt` until it succeeds, fails for good, or the retry budget
    /// is spent.
    async fn retrying<T, F, Fut>(&self, op: &'static str, mut attempt: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let mut n = 0;
        loop {
            match attempt().await {
                Ok(v) => return Ok(v),
                Err(Failure::Retry(e)) if n + 1 < self.retry.max_attempts => {
                    let delay = self.retry.delay(n);
                    debug!(op, attempt = n + 1, ?delay, error = %e, "dynamodb: retrying");
                    tokio::time::sleep(delay).await;
                    n += 1;
                }
                Err(Failure::Retry(e)) => {
                    warn!(op, attempts = n + 1, error = %e, "dynamodb: giving up after retries");
                    return Err(e);
                }
                Err(Failure::Fatal(e)) => return Err(e),
            }
        }
    }

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
                        // Missing item, non-member and stale seq all fail here;
                        // ALL_OLD hands back the item to tell which.
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
        let token = std::sync::Mutex::new(uuid::Uuid::new_v4().to_string());
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
            // past seq.
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

#[async_trait]
impl DeviceStore for DynamoStore {
    async fn put(&self, device: &Device) -> Result<(), StoreError> {
        let item = device_item(device);
        self.retrying("PutItem device", || {
            let req = self
                .client
                .put_item()
                .table_name(&self.tables.devices)
                .set_item(Some(item.clone()));
            async move {
                req.send()
                    .await
                    .map(|_| ())
                    .map_err(|e| failure("PutItem device", e))
            }
        })
        .await
    }

    async fn by_token(&self, token: &str) -> Result<Option<Device>, StoreError> {
        let key = HashMap::from([(attr::TOKEN.to_owned(), s(token))]);
        self.get_item("GetItem device", &self.tables.devices, key)
            .await?
            .map(|item| parse_device(&item))
            .transpose()
    }

    async fn for_user(&self, user: &UserId) -> Result<Vec<Device>, StoreError> {
        let mut tokens = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let page = self
                .retrying("Query devices by_user", || {
                    let req = self
                        .client
                        .query()
                        .table_name(&self.tables.devices)
                        .index_name(DEVICES_BY_USER_INDEX)
                        .key_condition_expression("#u = :u")
                        .expression_attribute_names("#u", attr::USER_ID)
                        .expression_attribute_values(":u", s(user.as_str()))
                        .set_exclusive_start_key(start.clone());
                    async move {
                        req.send()
                            .await
                            .map_err(|e| failure("Query devices by_user", e))
                    }
                })
                .await?;
            for item in page.items.unwrap_or_default() {
                tokens.push(get_s(&item, attr::TOKEN, "devices")?.to_owned());
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        tokens.sort();
        tokens.dedup();
        let mut devices = Vec::with_capacity(tokens.len());
        for chunk in tokens.chunks(MAX_BATCH_GET) {
            for item in self.batch_get_devices(chunk).await? {
                let device = parse_device(&item)?;
                // The index may lag a move to another user.
                if &device.user_id == user {
                    devices.push(device);
                }
            }
        }
        devices.sort_by(|a, b| a.token.cmp(&b.token));
        Ok(devices)
    }

    async fn delete(&self, token: &str) -> Result<(), StoreError> {
        self.retrying("DeleteItem device", || {
            let req = self
                .client
                .delete_item()
                .table_name(&self.tables.devices)
                .key(attr::TOKEN, s(token));
            async move {
                req.send()
                    .await
                    .map(|_| ())
                    .map_err(|e| failure("DeleteItem device", e))
            }
        })
        .await
    }
}

impl DynamoStore {
    /// Strongly consistent reads of device items by token, unprocessed keys
    /// retried with the same backoff as throttling.
    async fn batch_get_devices(&self, tokens: &[String]) -> Result<Vec<Item>, StoreError> {
        let table = self.tables.devices.as_str();
        let mut keys: Vec<Item> = tokens
            .iter()
            .map(|t| HashMap::from([(attr::TOKEN.to_owned(), s(t))]))
            .collect();
        let mut found = Vec::new();
        let mut round = 0;
        while !keys.is_empty() {
            let request = KeysAndAttributes::builder()
                .set_keys(Some(std::mem::take(&mut keys)))
                .consistent_read(true)
                .build()
                .map_err(build_err)?;
            let out = self
                .retrying("BatchGetItem devices", || {
                    let req = self
                        .client
                        .batch_get_item()
                        .request_items(table, request.clone());
                    async move {
                        req.send()
                            .await
                            .map_err(|e| failure("BatchGetItem devices", e))
                    }
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
                    return Err(StoreError::Throttled(
                        "BatchGetItem devices: keys left unprocessed".into(),
                    ));
                }
                tokio::time::sleep(self.retry.delay(round)).await;
            }
        }
        Ok(found)
    }
}

fn build_err(e: BuildError) -> StoreError {
    StoreError::Unavailable(format!("request could not be built: {e}"))
}

fn key(name: &str, kind: KeyType) -> Result<KeySchemaElement, StoreError> {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(kind)
        .build()
        .map_err(build_err)
}

fn def(name: &str, kind: ScalarAttributeType) -> Result<AttributeDefinition, StoreError> {
    AttributeDefinition::builder()
        .attribute_name(name)
        .attribute_type(kind)
        .build()
        .map_err(build_err)
}

/// Creates Courier's five tables (on-demand) if they do not exist yet, and
/// turns on TTL where records expire. Existing tables are left as they are,
/// so the local gateway and the test harness can call this on every start.
pub async fn create_tables(client: &Client, tables: &TableNames) -> Result<(), StoreError> {
    use KeyType::{Hash, Range};
    use ScalarAttributeType::{N, S};

    let messages = client
        .create_table()
        .table_name(&tables.messages)
        .key_schema(key(attr::CONVERSATION_ID, Hash)?)
        .key_schema(key(attr::SEQ, Range)?)
        .attribute_definitions(def(attr::CONVERSATION_ID, S)?)
        .attribute_definitions(def(attr::SEQ, N)?);
    let pending = client
        .create_table()
        .table_name(&tables.pending)
        .key_schema(key(attr::USER_ID, Hash)?)
        .key_schema(key(attr::CONVERSATION_ID, Range)?)
        .attribute_definitions(def(attr::USER_ID, S)?)
        .attribute_definitions(def(attr::CONVERSATION_ID, S)?);
    let conversations = client
        .create_table()
        .table_name(&tables.conversations)
        .key_schema(key(attr::CONVERSATION_ID, Hash)?)
        .attribute_definitions(def(attr::CONVERSATION_ID, S)?);
    let idempotency = client
        .create_table()
        .table_name(&tables.idempotency)
        .key_schema(key(attr::IDEMPOTENCY_KEY, Hash)?)
        .attribute_definitions(def(attr::IDEMPOTENCY_KEY, S)?);
    let devices = client
        .create_table()
        .table_name(&tables.devices)
        .key_schema(key(attr::TOKEN, Hash)?)
        .attribute_definitions(def(attr::TOKEN, S)?)
        .attribute_definitions(def(attr::USER_ID, S)?)
        .global_secondary_indexes(
            GlobalSecondaryIndex::builder()
                .index_name(DEVICES_BY_USER_INDEX)
                .key_schema(key(attr::USER_ID, Hash)?)
                .projection(
                    Projection::builder()
                        .projection_type(ProjectionType::KeysOnly)
                        .build(),
                )
                .build()
                .map_err(build_err)?,
        );

    for request in [messages, pending, conversations, idempotency, devices] {
        match request
            .billing_mode(BillingMode::PayPerRequest)
            .send()
            .await
        {
            Ok(_) => {}
            Err(e) if e.code() == Some("ResourceInUseException") => {}
            Err(e) => return Err(sdk_err("CreateTable", e)),
        }
    }
    // DynamoDB creates tables asynchronously; writes and TTL changes fail
    // until a table is ACTIVE (moto's are at once).
    for table in [
        &tables.messages,
        &tables.pending,
        &tables.conversations,
        &tables.idempotency,
        &tables.devices,
    ] {
        client
            .wait_until_table_exists()
            .table_name(table)
            .wait(Duration::from_secs(300))
            .await
            .map_err(|e| {
                StoreError::Unavailable(format!(
                    "table {table} did not become active: {}",
                    DisplayErrorContext(&e)
                ))
            })?;
    }
    enable_ttl(client, &tables.idempotency, attr::EXPIRES_AT).await
}

async fn enable_ttl(client: &Client, table: &str, attribute: &str) -> Result<(), StoreError> {
    let current = client
        .describe_time_to_live()
        .table_name(table)
        .send()
        .await
        .map_err(|e| sdk_err("DescribeTimeToLive", e))?;
    let status = current
        .time_to_live_description()
        .and_then(|d| d.time_to_live_status());
    if matches!(
        status,
        Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling)
    ) {
        return Ok(());
    }
    client
        .update_time_to_live()
        .table_name(table)
        .time_to_live_specification(
            TimeToLiveSpecification::builder()
                .enabled(true)
                .attribute_name(attribute)
                .build()
                .map_err(build_err)?,
        )
        .send()
        .await
        .map_err(|e| sdk_err("UpdateTimeToLive", e))?;
    Ok(())
}

fn is_condition_failure<E: ProvideErrorMetadata>(e: &SdkError<E, HttpResponse>) -> bool {
    e.code() == Some("ConditionalCheckFailedException")
}

/// Sorts an SDK error into "try again" (throttling, conflicts, 5xx, network)
/// and "give up".
fn failure<E>(op: &'static str, e: SdkError<E, HttpResponse>) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match &e {
        SdkError::ConstructionFailure(_) => Failure::Fatal(StoreError::Unavailable(format!(
            "{op}: {}",
            DisplayErrorContext(&e)
        ))),
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            Failure::Retry(StoreError::Unavailable(format!(
                "{op}: {}",
                DisplayErrorContext(&e)
            )))
        }
        _ => {
            let code = e.code().unwrap_or("Unknown");
            let text = format!("{op}: {code}: {}", e.message().unwrap_or(""));
            let status = e.raw_response().map(|r| r.status().as_u16()).unwrap_or(0);
            match code {
                "ProvisionedThroughputExceededException"
                | "ThrottlingException"
                | "RequestLimitExceeded"
                | "TransactionConflictException"
                | "TransactionInProgressException" => Failure::Retry(StoreError::Throttled(text)),
                "InternalServerError" | "ServiceUnavailable" => {
                    Failure::Retry(StoreError::Unavailable(text))
                }
                _ if status >= 500 => Failure::Retry(StoreError::Unavailable(text)),
                _ => Failure::Fatal(StoreError::Unavailable(text)),
            }
        }
    }
}

/// An SDK error of a one-off call (table creation) as a store error.
fn sdk_err<E>(op: &'static str, e: SdkError<E, HttpResponse>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match failure(op, e) {
        Failure::Retry(e) | Failure::Fatal(e) => e,
    }
}

// --- items ------------------------------------------------------------------

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn idempotency_key(
    conversation: &ConversationId,
    sender: &UserId,
    client_msg_id: &ClientMsgId,
) -> String {
    format!("{conversation}#{sender}#{client_msg_id}")
}

fn message_item(m: &Message) -> Item {
    HashMap::from([
        (
            attr::CONVERSATION_ID.to_owned(),
            s(m.conversation_id.as_str()),
        ),
        (attr::SEQ.to_owned(), n(m.seq.get())),
        (attr::MESSAGE_ID.to_owned(), s(m.message_id.as_str())),
        (attr::CLIENT_MSG_ID.to_owned(), s(m.client_msg_id.as_str())),
        (attr::SENDER_ID.to_owned(), s(m.sender_id.as_str())),
        (attr::BODY.to_owned(), s(m.body.as_str())),
        (attr::SENT_AT.to_owned(), n(m.sent_at)),
    ])
}

/// The message as the append stores it: with its TTL attribute when the
/// deployment keeps messages for a limited time.
fn stored_message_item(new: &NewMessage) -> Item {
    let mut item = message_item(&new.message);
    if let Some(at) = new.message_expires_at {
        item.insert(attr::EXPIRES_AT.to_owned(), n(at));
    }
    item
}

fn idempotency_item(new: &NewMessage) -> Item {
    let m = &new.message;
    HashMap::from([
        (
            attr::IDEMPOTENCY_KEY.to_owned(),
            s(idempotency_key(
                &m.conversation_id,
                &m.sender_id,
                &m.client_msg_id,
            )),
        ),
        (
            attr::CONVERSATION_ID.to_owned(),
            s(m.conversation_id.as_str()),
        ),
        (attr::SENDER_ID.to_owned(), s(m.sender_id.as_str())),
        (attr::CLIENT_MSG_ID.to_owned(), s(m.client_msg_id.as_str())),
        (attr::SEQ.to_owned(), n(m.seq.get())),
        (attr::MESSAGE_ID.to_owned(), s(m.message_id.as_str())),
        (attr::SENT_AT.to_owned(), n(m.sent_at)),
        (attr::EXPIRES_AT.to_owned(), n(new.idempotency_expires_at)),
    ])
}

fn conversation_item(c: &Conversation) -> Item {
    let mut item = HashMap::from([
        (
            attr::CONVERSATION_ID.to_owned(),
            s(c.conversation_id.as_str()),
        ),
        (attr::LAST_SEQ.to_owned(), n(c.last_seq.get())),
        (attr::CREATED_AT.to_owned(), n(c.created_at)),
    ]);
    let mut members: Vec<String> = c.members.iter().map(|m| m.as_str().to_owned()).collect();
    members.sort();
    members.dedup();
    if !members.is_empty() {
        item.insert(attr::MEMBERS.to_owned(), AttributeValue::Ss(members));
    }
    item
}

fn device_item(d: &Device) -> Item {
    HashMap::from([
        (attr::TOKEN.to_owned(), s(d.token.as_str())),
        (attr::USER_ID.to_owned(), s(d.user_id.as_str())),
        (attr::PLATFORM.to_owned(), s(d.platform.as_str())),
        (attr::ENDPOINT_ARN.to_owned(), s(d.endpoint_arn.as_str())),
        (attr::UPDATED_AT.to_owned(), n(d.updated_at)),
    ])
}

fn corrupt(table: &str, name: &str, what: &str) -> StoreError {
    StoreError::Corrupt(format!("{table} item: attribute {name} {what}"))
}

fn get_s<'a>(item: &'a Item, name: &str, table: &str) -> Result<&'a str, StoreError> {
    match item.get(name) {
        Some(AttributeValue::S(v)) => Ok(v),
        Some(_) => Err(corrupt(table, name, "is not a string")),
        None => Err(corrupt(table, name, "is missing")),
    }
}

fn get_n<T: FromStr>(item: &Item, name: &str, table: &str) -> Result<T, StoreError> {
    match item.get(name) {
        Some(AttributeValue::N(v)) => v
            .parse()
            .map_err(|_| corrupt(table, name, "is not a number of the expected range")),
        Some(_) => Err(corrupt(table, name, "is not a number")),
        None => Err(corrupt(table, name, "is missing")),
    }
}

fn get_id<T>(
    item: &Item,
    name: &str,
    table: &str,
    parse: impl Fn(&str) -> Result<T, courier_core::domain::InvalidValue>,
) -> Result<T, StoreError> {
    parse(get_s(item, name, table)?).map_err(|e| corrupt(table, name, &format!("is invalid: {e}")))
}

fn parse_message(item: &Item) -> Result<Message, StoreError> {
    const T: &str = "messages";
    Ok(Message {
        conversation_id: get_id(item, attr::CONVERSATION_ID, T, ConversationId::parse)?,
        seq: Seq(get_n(item, attr::SEQ, T)?),
        message_id: get_s(item, attr::MESSAGE_ID, T)?.to_owned(),
        client_msg_id: get_id(item, attr::CLIENT_MSG_ID, T, ClientMsgId::parse)?,
        sender_id: get_id(item, attr::SENDER_ID, T, UserId::parse)?,
        body: get_s(item, attr::BODY, T)?.to_owned(),
        sent_at: get_n::<Millis>(item, attr::SENT_AT, T)?,
    })
}

fn parse_conversation(item: &Item) -> Result<Conversation, StoreError> {
    const T: &str = "conversations";
    let mut members = match item.get(attr::MEMBERS) {
        None => Vec::new(),
        Some(AttributeValue::Ss(ms)) => ms
            .iter()
            .map(|m| {
                UserId::parse(m)
                    .map_err(|e| corrupt(T, attr::MEMBERS, &format!("holds an invalid id: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => return Err(corrupt(T, attr::MEMBERS, "is not a string set")),
    };
    members.sort();
    Ok(Conversation {
        conversation_id: get_id(item, attr::CONVERSATION_ID, T, ConversationId::parse)?,
        members,
        last_seq: Seq(get_n(item, attr::LAST_SEQ, T)?),
        created_at: get_n(item, attr::CREATED_AT, T)?,
    })
}

fn parse_pending(item: &Item) -> Result<PendingDelivery, StoreError> {
    const T: &str = "pending_deliveries";
    Ok(PendingDelivery {
        user_id: get_id(item, attr::USER_ID, T, UserId::parse)?,
        conversation_id: get_id(item, attr::CONVERSATION_ID, T, ConversationId::parse)?,
        first_undelivered_seq: Seq(get_n(item, attr::FIRST_UNDELIVERED_SEQ, T)?),
        last_seq: Seq(get_n(item, attr::LAST_SEQ, T)?),
        updated_at: get_n(item, attr::UPDATED_AT, T)?,
    })
}

fn parse_device(item: &Item) -> Result<Device, StoreError> {
    const T: &str = "devices";
    Ok(Device {
        user_id: get_id(item, attr::USER_ID, T, UserId::parse)?,
        platform: get_id(item, attr::PLATFORM, T, Platform::parse)?,
        token: get_s(item, attr::TOKEN, T)?.to_owned(),
        endpoint_arn: get_s(item, attr::ENDPOINT_ARN, T)?.to_owned(),
        updated_at: get_n(item, attr::UPDATED_AT, T)?,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn message() -> Message {
        Message {
            conversation_id: ConversationId::parse("c1").unwrap(),
            seq: Seq(42),
            message_id: "m-42".into(),
            client_msg_id: ClientMsgId::parse("k42").unwrap(),
            sender_id: UserId::parse("alice").unwrap(),
            body: "hey".into(),
            sent_at: 1_795_000_000_000,
        }
    }

    #[test]
    fn message_round_trips_through_its_item() {
        let m = message();
        assert_eq!(parse_message(&message_item(&m)).unwrap(), m);
    }

    #[test]
    fn unparsable_number_is_corrupt_not_a_panic() {
        let mut item = message_item(&message());
        item.insert(attr::SEQ.into(), AttributeValue::N("forty-two".into()));
        let e = parse_message(&item).unwrap_err();
        assert!(
            matches!(&e, StoreError::Corrupt(t) if t.contains("seq")),
            "{e}"
        );

        item.insert(attr::SEQ.into(), AttributeValue::N("-1".into()));
        assert!(matches!(parse_message(&item), Err(StoreError::Corrupt(_))));

        let mut pending = HashMap::from([
            (attr::USER_ID.to_owned(), s("bob")),
            (attr::CONVERSATION_ID.to_owned(), s("c1")),
            (attr::FIRST_UNDELIVERED_SEQ.to_owned(), n(1)),
            (attr::LAST_SEQ.to_owned(), AttributeValue::N("1e3".into())),
            (attr::UPDATED_AT.to_owned(), n(0)),
        ]);
        assert!(
            matches!(parse_pending(&pending), Err(StoreError::Corrupt(t)) if t.contains("last_seq"))
        );
        pending.insert(attr::LAST_SEQ.into(), n(3));
        assert_eq!(parse_pending(&pending).unwrap().last_seq, Seq(3));
    }

    #[test]
    fn wrong_type_and_missing_attributes_are_corrupt() {
        let mut item = message_item(&message());
        item.insert(attr::SEQ.into(), s("42"));
        assert!(
            matches!(parse_message(&item), Err(StoreError::Corrupt(t)) if t.contains("not a number"))
        );

        let mut item = message_item(&message());
        item.remove(attr::BODY);
        assert!(
            matches!(parse_message(&item), Err(StoreError::Corrupt(t)) if t.contains("body is missing"))
        );

        let mut item = message_item(&message());
        item.insert(attr::SENDER_ID.into(), s("not an id"));
        assert!(
            matches!(parse_message(&item), Err(StoreError::Corrupt(t)) if t.contains("sender_id"))
        );
    }

    #[test]
    fn conversation_members_are_a_set_read_back_sorted() {
        let c = Conversation {
            conversation_id: ConversationId::parse("c1").unwrap(),
            members: vec![
                UserId::parse("bob").unwrap(),
                UserId::parse("alice").unwrap(),
                UserId::parse("bob").unwrap(),
            ],
            last_seq: Seq(7),
            created_at: 5,
        };
        let back = parse_conversation(&conversation_item(&c)).unwrap();
        let names: Vec<&str> = back.members.iter().map(|m| m.as_str()).collect();
        assert_eq!(names, ["alice", "bob"]);
        assert_eq!(back.last_seq, Seq(7));

        let empty = Conversation {
            members: vec![],
            ..c
        };
        let item = conversation_item(&empty);
        assert!(
            !item.contains_key(attr::MEMBERS),
            "DynamoDB has no empty sets"
        );
        assert!(parse_conversation(&item).unwrap().members.is_empty());

        let mut bad = conversation_item(&empty);
        bad.insert(attr::MEMBERS.into(), AttributeValue::L(vec![s("alice")]));
        assert!(matches!(
            parse_conversation(&bad),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[test]
    fn unknown_platform_is_corrupt() {
        let d = Device {
            user_id: UserId::parse("bob").unwrap(),
            platform: Platform::Fcm,
            token: "tok".into(),
            endpoint_arn: "arn:x".into(),
            updated_at: 1,
        };
        assert_eq!(parse_device(&device_item(&d)).unwrap(), d);
        let mut item = device_item(&d);
        item.insert(attr::PLATFORM.into(), s("blackberry"));
        assert!(
            matches!(parse_device(&item), Err(StoreError::Corrupt(t)) if t.contains("platform"))
        );
    }

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

    #[test]
    fn backoff_is_bounded_and_jittered() {
        let p = RetryPolicy::default();
        for attempt in 0..40 {
            assert!(p.delay(attempt) <= p.max_delay);
        }
    }
}
