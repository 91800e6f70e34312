//! What only the DynamoDB adapter has to get right: retrying throttling and
//! server faults with bounded backoff (against a scripted fake endpoint that
//! answers like DynamoDB), and refusing malformed items as `Corrupt` instead
//! of panicking (items written behind its back into moto).

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_dynamodb::types::AttributeValue;
use courier_aws::dynamo::{DynamoStore, RetryPolicy};
use courier_core::config::TableNames;
use courier_core::domain::{ClientMsgId, ConversationId, Message, Seq, UserId};
use courier_core::ports::{
    AppendOutcome, ConversationStore, DeviceStore, LinkStore, MessageStore, NewMessage,
    PendingStore, StoreError,
};
use courier_tests::{dynamo_client, fresh_tables, init_test_logging};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A canned HTTP answer: status and JSON body.
#[derive(Clone)]
struct Answer(u16, &'static str);

const THROTTLED: Answer = Answer(
    400,
    r#"{"__type":"com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException","message":"slow down"}"#,
);
const INTERNAL: Answer = Answer(
    500,
    r#"{"__type":"com.amazonaws.dynamodb.v20120810#InternalServerError","message":"oops"}"#,
);
const INVALID: Answer = Answer(
    400,
    r#"{"__type":"com.amazon.coral.validate#ValidationException","message":"bad request"}"#,
);
const CONFLICT: Answer = Answer(
    400,
    r#"{"__type":"com.amazonaws.dynamodb.v20120810#TransactionCanceledException","message":"Transaction cancelled","CancellationReasons":[{"Code":"TransactionConflict","Message":"conflict"},{"Code":"None"},{"Code":"None"}]}"#,
);
const EMPTY_OK: Answer = Answer(200, "{}");

/// A loopback HTTP server that answers request n with `script[n]` (the last
/// entry repeats) and counts requests and the client request tokens it saw.
struct FakeDynamo {
    endpoint: String,
    requests: Arc<AtomicUsize>,
    bodies: Arc<std::sync::Mutex<Vec<String>>>,
}

async fn fake_dynamo(script: Vec<Answer>) -> FakeDynamo {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(AtomicUsize::new(0));
    let bodies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let script = Arc::new(script);
    let (count, seen) = (requests.clone(), bodies.clone());
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let (script, count, seen) = (script.clone(), count.clone(), seen.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    // Headers, then Content-Length bytes of body.
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map(|v| v.trim().parse().unwrap())
                        .unwrap_or(0);
                    while buf.len() < head_end + len {
                        let mut chunk = [0u8; 4096];
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body = String::from_utf8_lossy(&buf[head_end..head_end + len]).into_owned();
                    buf.drain(..head_end + len);
                    seen.lock().unwrap().push(body);
                    let n = count.fetch_add(1, Ordering::SeqCst);
                    let Answer(status, json) = script[n.min(script.len() - 1)].clone();
                    let response = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/x-amz-json-1.0\r\n\
                         content-length: {}\r\n\r\n{json}",
                        json.len()
                    );
                    if sock.write_all(response.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    FakeDynamo {
        endpoint,
        requests,
        bodies,
    }
}

/// A store on the fake endpoint, from a client with the SDK's standard
/// retries on (three attempts): the store must switch those off, so every
/// request counted is one of the adapter's own attempts.
fn store_on(endpoint: &str) -> DynamoStore {
    init_test_logging();
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "test"))
        .retry_config(RetryConfig::standard().with_max_attempts(3))
        .build();
    DynamoStore::new(Client::from_conf(config), TableNames::with_prefix("fake")).with_retry_policy(
        RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_millis(2),
            max_delay: Duration::from_millis(10),
        },
    )
}

fn conv() -> ConversationId {
    ConversationId::parse("c1").unwrap()
}

#[tokio::test]
async fn throttling_is_retried_a_bounded_number_of_times_then_reported() {
    let fake = fake_dynamo(vec![THROTTLED]).await;
    let store = store_on(&fake.endpoint);
    let err = ConversationStore::get(&store, &conv()).await.unwrap_err();
    assert!(matches!(err, StoreError::Throttled(_)), "{err:?}");
    assert_eq!(
        fake.requests.load(Ordering::SeqCst),
        4,
        "max_attempts in all"
    );
}

#[tokio::test]
async fn throttling_that_passes_is_invisible_to_the_caller() {
    let fake = fake_dynamo(vec![THROTTLED, INTERNAL, EMPTY_OK]).await;
    let store = store_on(&fake.endpoint);
    let got = ConversationStore::get(&store, &conv()).await.unwrap();
    assert_eq!(got, None);
    assert_eq!(fake.requests.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn server_errors_are_retried_then_unavailable() {
    let fake = fake_dynamo(vec![INTERNAL]).await;
    let store = store_on(&fake.endpoint);
    let err = PendingStore::list(&store, &UserId::parse("bob").unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert_eq!(fake.requests.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let fake = fake_dynamo(vec![INVALID]).await;
    let store = store_on(&fake.endpoint);
    let err = store.by_token("tok").await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Unavailable(m) if m.contains("ValidationException")),
        "{err:?}"
    );
    assert_eq!(fake.requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn unreachable_endpoint_is_unavailable_not_a_hang() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let store = store_on(&format!("http://127.0.0.1:{port}"));
    let err = ConversationStore::get(&store, &conv()).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
}

fn new_message() -> NewMessage {
    NewMessage {
        message: Message {
            conversation_id: conv(),
            seq: Seq(1),
            message_id: "m1".into(),
            client_msg_id: ClientMsgId::parse("k1").unwrap(),
            sender_id: UserId::parse("alice").unwrap(),
            body: "hi".into(),
            sent_at: 1,
        },
        pending_for: vec![UserId::parse("bob").unwrap()],
        idempotency_expires_at: 2,
        message_expires_at: None,
    }
}

#[tokio::test]
async fn transaction_conflicts_are_retried_with_a_fresh_token() {
    let fake = fake_dynamo(vec![CONFLICT, CONFLICT, EMPTY_OK]).await;
    let store = store_on(&fake.endpoint);
    assert_eq!(
        store.append(&new_message()).await.unwrap(),
        AppendOutcome::Stored
    );
    assert_eq!(fake.requests.load(Ordering::SeqCst), 3);
    let tokens: Vec<String> = fake
        .bodies
        .lock()
        .unwrap()
        .iter()
        .map(|b| {
            let v: serde_json::Value = serde_json::from_str(b).unwrap();
            v["ClientRequestToken"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(tokens.len(), 3);
    assert!(
        tokens[0] != tokens[1] && tokens[1] != tokens[2],
        "cancelled attempts wrote nothing"
    );
}

#[tokio::test]
async fn a_lost_answer_is_retried_with_the_same_token() {
    let fake = fake_dynamo(vec![INTERNAL, EMPTY_OK]).await;
    let store = store_on(&fake.endpoint);
    assert_eq!(
        store.append(&new_message()).await.unwrap(),
        AppendOutcome::Stored
    );
    let bodies = fake.bodies.lock().unwrap().clone();
    let token = |b: &str| {
        let v: serde_json::Value = serde_json::from_str(b).unwrap();
        v["ClientRequestToken"].as_str().unwrap().to_owned()
    };
    assert_eq!(bodies.len(), 2);
    assert_eq!(
        token(&bodies[0]),
        token(&bodies[1]),
        "DynamoDB dedups a committed retry"
    );
}

#[tokio::test]
async fn malformed_items_are_corrupt_not_panics() {
    let tables = fresh_tables().await;
    let client = dynamo_client().await;
    let store = DynamoStore::new(client.clone(), tables.clone());
    let put = |table: &str, item: Vec<(&str, AttributeValue)>| {
        let item: HashMap<String, AttributeValue> =
            item.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        client
            .put_item()
            .table_name(table)
            .set_item(Some(item))
            .send()
    };
    let s = |v: &str| AttributeValue::S(v.into());
    let n = |v: &str| AttributeValue::N(v.into());

    // A message whose sent_at is a string and whose body is missing.
    put(
        &tables.messages,
        vec![
            ("conversation_id", s("c1")),
            ("seq", n("1")),
            ("message_id", s("m1")),
            ("client_msg_id", s("k1")),
            ("sender_id", s("alice")),
            ("sent_at", s("yesterday")),
        ],
    )
    .await
    .unwrap();
    let err = store.range(&conv(), Seq(1), 10).await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");

    // A pending row whose cursor is a string.
    put(
        &tables.pending,
        vec![
            ("user_id", s("bob")),
            ("conversation_id", s("c1")),
            ("first_undelivered_seq", s("one")),
            ("last_seq", n("3")),
            ("updated_at", n("0")),
        ],
    )
    .await
    .unwrap();
    let bob = UserId::parse("bob").unwrap();
    assert!(matches!(
        PendingStore::list(&store, &bob).await,
        Err(StoreError::Corrupt(_))
    ));
    assert!(matches!(
        PendingStore::get(&store, &bob, &conv()).await,
        Err(StoreError::Corrupt(_))
    ));

    // A conversation whose members are a list, not a set, and whose counter
    // is negative.
    put(
        &tables.conversations,
        vec![
            ("conversation_id", s("c1")),
            ("members", AttributeValue::L(vec![s("alice")])),
            ("last_seq", n("-4")),
            ("created_at", n("0")),
        ],
    )
    .await
    .unwrap();
    assert!(matches!(
        ConversationStore::get(&store, &conv()).await,
        Err(StoreError::Corrupt(_))
    ));

    // A device on a platform this code never writes.
    put(
        &tables.devices,
        vec![
            ("token", s("tok")),
            ("user_id", s("bob")),
            ("platform", s("blackberry")),
            ("endpoint_arn", s("arn")),
            ("updated_at", n("0")),
        ],
    )
    .await
    .unwrap();
    assert!(matches!(
        store.by_token("tok").await,
        Err(StoreError::Corrupt(_))
    ));
    assert!(matches!(
        store.for_user(&bob).await,
        Err(StoreError::Corrupt(_))
    ));

    // In carol's partition: a pending row whose cursors hold a string, a
    // link without last_seen_at, a membership of an invalid id.
    let carol = UserId::parse("carol").unwrap();
    put(
        &tables.pending,
        vec![
            ("user_id", s("carol")),
            ("conversation_id", s("c1")),
            ("first_undelivered_seq", n("1")),
            ("last_seq", n("3")),
            ("updated_at", n("0")),
            (
                "cursors",
                AttributeValue::M(HashMap::from([("phone".to_owned(), s("2"))])),
            ),
        ],
    )
    .await
    .unwrap();
    assert!(matches!(
        PendingStore::get(&store, &carol, &conv()).await,
        Err(StoreError::Corrupt(_))
    ));
    put(
        &tables.pending,
        vec![
            ("user_id", s("carol")),
            ("conversation_id", s("#d#phone")),
            ("device_id", s("phone")),
            ("linked_at", n("0")),
        ],
    )
    .await
    .unwrap();
    assert!(matches!(
        LinkStore::list(&store, &carol).await,
        Err(StoreError::Corrupt(_))
    ));
    put(
        &tables.pending,
        vec![("user_id", s("carol")), ("conversation_id", s("#m#a b"))],
    )
    .await
    .unwrap();
    assert!(matches!(
        ConversationStore::list_for(&store, &carol, None, 10).await,
        Err(StoreError::Corrupt(_))
    ));
}

/// `MESSAGE_RETENTION_DAYS`: the stored message carries the TTL attribute the
/// table's TTL is enabled on; without retention it carries none.
#[tokio::test]
async fn messages_carry_the_ttl_attribute_only_with_retention() {
    let tables = fresh_tables().await;
    let client = dynamo_client().await;
    let store = DynamoStore::new(client.clone(), tables.clone());
    let alice = UserId::parse("alice").unwrap();
    let bob = UserId::parse("bob").unwrap();
    ConversationStore::create(
        &store,
        &courier_core::domain::Conversation {
            conversation_id: conv(),
            members: vec![alice.clone(), bob.clone()],
            last_seq: Seq(0),
            created_at: 0,
        },
    )
    .await
    .unwrap();
    let mut first = new_message();
    first.message_expires_at = Some(1_900_000_000);
    assert_eq!(store.append(&first).await.unwrap(), AppendOutcome::Stored);
    let mut second = new_message();
    second.message.seq = Seq(2);
    second.message.client_msg_id = ClientMsgId::parse("k2").unwrap();
    assert_eq!(store.append(&second).await.unwrap(), AppendOutcome::Stored);

    let expires_at = |seq: &str| {
        let client = client.clone();
        let table = tables.messages.clone();
        let seq = seq.to_owned();
        async move {
            client
                .get_item()
                .table_name(table)
                .key("conversation_id", AttributeValue::S(conv().to_string()))
                .key("seq", AttributeValue::N(seq))
                .consistent_read(true)
                .send()
                .await
                .unwrap()
                .item
                .unwrap()
                .get("expires_at")
                .cloned()
        }
    };
    assert_eq!(
        expires_at("1").await,
        Some(AttributeValue::N("1900000000".into()))
    );
    assert_eq!(expires_at("2").await, None);
    // The TTL attribute does not disturb reading the message back.
    assert_eq!(store.range(&conv(), Seq(1), 10).await.unwrap().len(), 2);
}

/// Conversations created before the memberships index have no membership
/// items (played here by deleting them behind the store's back), so
/// `listConversations` misses them; the backfill writes them for every
/// member, and running it again changes nothing.
#[tokio::test]
async fn backfill_lists_conversations_created_before_memberships() {
    init_test_logging();
    let tables = fresh_tables().await;
    let client = dynamo_client().await;
    let store = DynamoStore::new(client.clone(), tables.clone());
    let (alice, bob, carol) = (
        UserId::parse("alice").unwrap(),
        UserId::parse("bob").unwrap(),
        UserId::parse("carol").unwrap(),
    );
    let old = [
        ("c-old-1", vec![alice.clone(), bob.clone()]),
        ("c-old-2", vec![alice.clone(), bob.clone(), carol.clone()]),
    ];
    for (id, members) in &old {
        let conversation = courier_core::domain::Conversation {
            conversation_id: ConversationId::parse(id).unwrap(),
            members: members.clone(),
            last_seq: Seq::ZERO,
            created_at: 1,
        };
        assert!(store.create(&conversation).await.unwrap());
        courier_tests::forget_memberships(&client, &tables, id, members).await;
    }
    let listed = |user: UserId| {
        let store = &store;
        async move {
            let (page, _) = store.list_for(&user, None, 100).await.unwrap();
            page.into_iter()
                .map(|c| c.conversation_id.to_string())
                .collect::<Vec<_>>()
        }
    };
    assert!(
        listed(bob.clone()).await.is_empty(),
        "the old ones are unlisted"
    );

    let done = store.backfill_memberships().await.unwrap();
    assert_eq!((done.conversations, done.memberships), (2, 5));
    assert_eq!(listed(alice.clone()).await, ["c-old-1", "c-old-2"]);
    assert_eq!(listed(bob.clone()).await, ["c-old-1", "c-old-2"]);
    assert_eq!(listed(carol.clone()).await, ["c-old-2"]);
    // Pending rows and links are untouched; a second run writes the same.
    assert!(PendingStore::list(&store, &bob).await.unwrap().is_empty());
    assert!(LinkStore::list(&store, &bob).await.unwrap().is_empty());
    let again = store.backfill_memberships().await.unwrap();
    assert_eq!(again, done);
    assert_eq!(listed(carol).await, ["c-old-2"]);
}
