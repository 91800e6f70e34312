//! One suite, two stores: every case here runs against the in-memory store
//! (the reference) and against the DynamoDB store on moto's server, and both
//! must give the same answers. A case is written once, generic over the port
//! traits; the `conformance!` macro at the bottom makes a `memory::` and a
//! `dynamo::` test of each.
//!
//! Over 700 lines: one suite, every case of every store port run on both
//! stores; splitting it would split the one contract.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_dynamodb::types::AttributeValue;
use courier_aws::dynamo::DynamoStore;
use courier_core::adapters::memory::MemoryStore;
use courier_core::config::TableNames;
use courier_core::domain::{
    ClientMsgId, Conversation, ConversationId, Device, DeviceId, Message, Platform, Seq, UserId,
};
use courier_core::ports::{
    AckOutcome, AppendOutcome, ConversationStore, DeviceStore, LinkOutcome, LinkStore,
    MessageStore, NewMessage, PendingStore,
};
use courier_tests::{dynamo_client, fresh_tables, init_test_logging};

trait Store:
    MessageStore
    + ConversationStore
    + PendingStore
    + LinkStore
    + DeviceStore
    + Clone
    + Send
    + Sync
    + 'static
{
}
impl<T> Store for T where
    T: MessageStore
        + ConversationStore
        + PendingStore
        + LinkStore
        + DeviceStore
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// A store under test, plus raw access to its tables when it is DynamoDB
/// (for the few checks that are about DynamoDB itself, like paging).
struct Backend<S> {
    store: S,
    raw: Option<(aws_sdk_dynamodb::Client, TableNames)>,
}

fn memory_backend() -> Backend<MemoryStore> {
    init_test_logging();
    Backend {
        store: MemoryStore::new(),
        raw: None,
    }
}

async fn dynamo_backend() -> Backend<DynamoStore> {
    init_test_logging();
    let tables = fresh_tables().await;
    let client = dynamo_client().await;
    Backend {
        store: DynamoStore::new(client.clone(), tables.clone()),
        raw: Some((client, tables)),
    }
}

// --- helpers -------------------------------------------------------------------

fn user(s: &str) -> UserId {
    UserId::parse(s).unwrap()
}

fn conv_id(s: &str) -> ConversationId {
    ConversationId::parse(s).unwrap()
}

fn dev(s: &str) -> DeviceId {
    DeviceId::parse(s).unwrap()
}

fn devs(names: &[&str]) -> Vec<DeviceId> {
    names.iter().map(|d| dev(d)).collect()
}

async fn create_conversation<S: Store>(store: &S, id: &str, members: &[&str]) -> ConversationId {
    let c = Conversation {
        conversation_id: conv_id(id),
        members: members.iter().map(|m| user(m)).collect(),
        last_seq: Seq::ZERO,
        created_at: 1_795_000_000_000,
    };
    assert!(ConversationStore::create(store, &c).await.unwrap());
    c.conversation_id
}

fn message(
    conv: &ConversationId,
    seq: u64,
    sender: &str,
    client_msg_id: &str,
    body: &str,
) -> Message {
    Message {
        conversation_id: conv.clone(),
        seq: Seq(seq),
        message_id: format!("msg-{client_msg_id}"),
        client_msg_id: ClientMsgId::parse(client_msg_id).unwrap(),
        sender_id: user(sender),
        body: body.to_owned(),
        sent_at: 1_795_000_000_000 + seq as i64,
    }
}

fn new_message(message: Message, pending_for: &[&str]) -> NewMessage {
    NewMessage {
        message,
        pending_for: pending_for.iter().map(|u| user(u)).collect(),
        idempotency_expires_at: 1_800_000_000,
        message_expires_at: None,
    }
}

/// What the send path does: read `last_seq`, append the next seq, re-read and
/// retry on a conflict (after a short random pause, so contenders spread
/// out). Returns the outcome that ended the loop.
async fn send<S: Store>(
    store: &S,
    conv: &ConversationId,
    sender: &str,
    client_msg_id: &str,
    body: &str,
    pending_for: &[&str],
) -> AppendOutcome {
    for conflicts in 0u64.. {
        if conflicts > 0 {
            let max_ms = (2 * conflicts).min(20);
            let pause = rand::random_range(0..=max_ms);
            tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
        }
        let last = ConversationStore::get(store, conv)
            .await
            .unwrap()
            .map(|c| c.last_seq)
            .unwrap_or(Seq::ZERO);
        let new = new_message(
            message(conv, last.get() + 1, sender, client_msg_id, body),
            pending_for,
        );
        match store.append(&new).await.unwrap() {
            AppendOutcome::SeqConflict => continue,
            other => return other,
        }
    }
    unreachable!("the conflict counter cannot run out")
}

async fn seqs<S: Store>(store: &S, conv: &ConversationId) -> Vec<u64> {
    store
        .range(conv, Seq(1), usize::MAX)
        .await
        .unwrap()
        .iter()
        .map(|m| m.seq.get())
        .collect()
}

async fn last_seq<S: Store>(store: &S, conv: &ConversationId) -> u64 {
    ConversationStore::get(store, conv)
        .await
        .unwrap()
        .unwrap()
        .last_seq
        .get()
}

async fn pending_range<S: Store>(
    store: &S,
    who: &str,
    conv: &ConversationId,
) -> Option<(u64, u64)> {
    PendingStore::get(store, &user(who), conv)
        .await
        .unwrap()
        .map(|p| (p.first_undelivered_seq.get(), p.last_seq.get()))
}

/// Where `device`'s catch-up would start, and the row's `last_seq`.
async fn start_for<S: Store>(
    store: &S,
    who: &str,
    device: &str,
    conv: &ConversationId,
) -> Option<(u64, u64)> {
    PendingStore::get(store, &user(who), conv)
        .await
        .unwrap()
        .map(|p| (p.start_for(&dev(device)).get(), p.last_seq.get()))
}

/// The row's cursors, device → seq held.
async fn cursors<S: Store>(store: &S, who: &str, conv: &ConversationId) -> BTreeMap<String, u64> {
    PendingStore::get(store, &user(who), conv)
        .await
        .unwrap()
        .map(|p| {
            p.cursors
                .into_iter()
                .map(|(d, s)| (d.to_string(), s.get()))
                .collect()
        })
        .unwrap_or_default()
}

// --- cases ---------------------------------------------------------------------

async fn append_stores_message_counter_idempotency_and_pending<S: Store>(b: Backend<S>) {
    let s = &b.store;
    let c = create_conversation(s, "conv_abc123", &["alice", "bob", "carol"]).await;
    let m = message(&c, 1, "alice", "k1", "hey");
    let out = s
        .append(&new_message(m.clone(), &["bob", "carol"]))
        .await
        .unwrap();
    assert_eq!(out, AppendOutcome::Stored);

    assert_eq!(last_seq(s, &c).await, 1);
    assert_eq!(s.range(&c, Seq(1), 10).await.unwrap(), vec![m.clone()]);
    let found = s
        .find_sent(&c, &user("alice"), &ClientMsgId::parse("k1").unwrap())
        .await
        .unwrap();
    assert_eq!(found, Some(m));
    assert_eq!(pending_range(s, "bob", &c).await, Some((1, 1)));
    assert_eq!(pending_range(s, "carol", &c).await, Some((1, 1)));
    assert_eq!(
        pending_range(s, "alice", &c).await,
        None,
        "no row for the sender"
    );

    let m2 = message(&c, 2, "bob", "k2", "hi alice");
    let out = s
        .append(&new_message(m2, &["alice", "carol"]))
        .await
        .unwrap();
    assert_eq!(out, AppendOutcome::Stored);
    assert_eq!(
        pending_range(s, "carol", &c).await,
        Some((1, 2)),
        "row widened"
    );
    assert_eq!(pending_range(s, "alice", &c).await, Some((2, 2)));
    assert_eq!(pending_range(s, "bob", &c).await, Some((1, 1)));
}

async fn append_with_stale_or_skipping_seq_is_a_conflict_and_writes_nothing<S: Store>(
    b: Backend<S>,
) {
    let s = &b.store;
    let c = create_conversation(s, "c1", &["alice", "bob"]).await;
    let first = message(&c, 1, "alice", "k1", "one");
    assert_eq!(
        s.append(&new_message(first.clone(), &["bob"]))
            .await
            .unwrap(),
        AppendOutcome::Stored
    );

    for seq in [1, 3, 0] {
        let racer = new_message(message(&c, seq, "bob", "k-racer", "racer"), &["alice"]);
        assert_eq!(
            s.append(&racer).await.unwrap(),
            AppendOutcome::SeqConflict,
            "seq {seq}"
        );
    }
    assert_eq!(last_seq(s, &c).await, 1);
    assert_eq!(s.range(&c, Seq(1), 10).await.unwrap(), vec![first]);
    assert_eq!(
        pending_range(s, "alice", &c).await,
        None,
        "no pending row from a refused append"
    );
    let racer = ClientMsgId::parse("k-racer").unwrap();
    assert_eq!(s.find_sent(&c, &user("bob"), &racer).await.unwrap(), None);
    // The refused client_msg_id is free: the retry with the right seq stores.
    let retry = new_message(message(&c, 2, "bob", "k-racer", "racer"), &["alice"]);
    assert_eq!(s.append(&retry).await.unwrap(), AppendOutcome::Stored);
}

async fn duplicate_client_msg_id_answers_the_original_message<S: Store>(b: Backend<S>) {
    let s = &b.store;
    let c = create_conversation(s, "c1", &["alice", "bob"]).await;
    let original = message(&c, 1, "alice", "k1", "hello??");
    assert_eq!(
        s.append(&new_message(original.clone(), &["bob"]))
            .await
            .unwrap(),
        AppendOutcome::Stored
    );
    assert_eq!(
        send(s, &c, "bob", "b1", "yo", &["alice"]).await,
        AppendOutcome::Stored
    );

    // The retry comes with the next seq (the client re-sent after others
    // spoke), with a stale seq, and with a different body: all answer seq 1.
    for (seq, body) in [(3, "hello??"), (1, "hello??"), (2, "edited"), (9, "x")] {
        let again = new_message(message(&c, seq, "alice", "k1", body), &["bob"]);
        assert_eq!(
            s.append(&again).await.unwrap(),
            AppendOutcome::Duplicate(original.clone()),
            "retry with seq {seq}"
        );
    }
    assert_eq!(last_seq(s, &c).await, 2, "nothing stored by duplicates");
    assert_eq!(seqs(s, &c).await, vec![1, 2]);
    assert_eq!(pending_range(s, "bob", &c).await, Some((1, 1)));

    // The key is (conversation, sender, client_msg_id): bob may use "k1" too.
    assert_eq!(
        send(s, &c, "bob", "k1", "mine", &["alice"]).await,
        AppendOutcome::Stored
    );
    assert_eq!(last_seq(s, &c).await, 3);
}

async fn append_to_missing_conversation_or_by_non_member_is_not_a_member<S: Store>(b: Backend<S>) {
    let s = &b.store;
    let missing = conv_id("nowhere");
    let new = new_message(message(&missing, 1, "alice", "k1", "hi"), &["bob"]);
    assert_eq!(s.append(&new).await.unwrap(), AppendOutcome::NotAMember);
    assert!(s.range(&missing, Seq(1), 10).await.unwrap().is_empty());
    assert_eq!(pending_range(s, "bob", &missing).await, None);
    assert_eq!(
        ConversationStore::get(s, &missing).await.unwrap(),
        None,
        "not created by append"
    );

    let c = create_conversation(s, "c1", &["alice", "bob"]).await;
    let intruder = new_message(
        message(&c, 1, "mallory", "m1", "let me in"),
        &["alice", "bob"],
    );
    assert_eq!(
        s.append(&intruder).await.unwrap(),
        AppendOutcome::NotAMember
    );
    // Even with a wrong seq, membership is reported first.
    let intruder = new_message(message(&c, 5, "mallory", "m2", "let me in"), &["alice"]);
    assert_eq!(
        s.append(&intruder).await.unwrap(),
        AppendOutcome::NotAMember
    );
    assert_eq!(last_seq(s, &c).await, 0);
    assert!(s.range(&c, Seq(1), 10).await.unwrap().is_empty());
    assert!(
        PendingStore::list(s, &user("alice"))
            .await
            .unwrap()
            .is_empty()
    );
    let m1 = ClientMsgId::parse("m1").unwrap();
    assert_eq!(s.find_sent(&c, &user("mallory"), &m1).await.unwrap(), None);
}

async fn concurrent_appends_get_gap_free_unique_seqs<S: Store>(b: Backend<S>) {
    const TASKS: usize = 8;
    const EACH: usize = 50;
    let s = b.store;
    let c = create_conversation(&s, "busy", &["alice", "bob"]).await;
    let mut handles = Vec::new();
    for t in 0..TASKS {
        let s = s.clone();
        let c = c.clone();
        handles.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            for i in 0..EACH {
                let out = send(&s, &c, "alice", &format!("t{t}-{i}"), "x", &["bob"]).await;
                assert_eq!(out, AppendOutcome::Stored);
                mine.push(format!("t{t}-{i}"));
            }
            mine
        }));
    }
    let mut sent = BTreeSet::new();
    for h in handles {
        sent.extend(h.await.unwrap());
    }
    let total = (TASKS * EACH) as u64;
    let messages = s.range(&c, Seq(1), usize::MAX).await.unwrap();
    let got: Vec<u64> = messages.iter().map(|m| m.seq.get()).collect();
    assert_eq!(
        got,
        (1..=total).collect::<Vec<_>>(),
        "seqs 1..={total}, no gap, no repeat"
    );
    let ids: BTreeSet<String> = messages
        .iter()
        .map(|m| m.client_msg_id.to_string())
        .collect();
    assert_eq!(ids, sent, "every send stored exactly once");
    assert_eq!(last_seq(&s, &c).await, total);
    assert_eq!(pending_range(&s, "bob", &c).await, Some((1, total)));
}

async fn range_is_ordered_and_honours_from_and_limit<S: Store>(b: Backend<S>) {
    let s = &b.store;
    let c = create_conversation(s, "c1", &["alice", "bob"]).await;
    let other = create_conversation(s, "c2", &["alice", "bob"]).await;
    for i in 1..=10 {
        assert_eq!(
            send(s, &c, "alice", &format!("k{i}"), &format!("m{i}"), &[]).await,
            AppendOutcome::Stored
        );
    }
    assert_eq!(
        send(s, &other, "bob", "x", "elsewhere", &[]).await,
        AppendOutcome::Stored
    );

    let all = s.range(&c, Seq(1), 100).await.unwrap();
    assert_eq!(
        all.iter().map(|m| m.seq.get()).collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>()
    );
    assert!(all.iter().all(|m| m.conversation_id == c));
    assert_eq!(all[2].body, "m3");
    let mid: Vec<u64> = s
        .range(&c, Seq(4), 3)
        .await
        .unwrap()
        .iter()
        .map(|m| m.seq.get())
        .collect();
    assert_eq!(mid, vec![4, 5, 6]);
    let tail: Vec<u64> = s
        .range(&c, Seq(9), 100)
        .await
        .unwrap()
        .iter()
        .map(|m| m.seq.get())
        .collect();
    assert_eq!(tail, vec![9, 10]);
    assert_eq!(
        s.range(&c, Seq(0), 1).await.unwrap().len(),
        1,
        "from 0 starts at the first"
    );
    assert!(s.range(&c, Seq(11), 100).await.unwrap().is_empty());
    assert!(s.range(&c, Seq(1), 0).await.unwrap().is_empty());
    assert!(
        s.range(&conv_id("unknown"), Seq(1), 10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn backlog_larger_than_one_dynamodb_page_is_read_in_full<S: Store>(b: Backend<S>) {
    const COUNT: u64 = 300;
    let s = &b.store;
    let c = create_conversation(s, "backlog", &["alice", "bob"]).await;
    let body = |i: u64| format!("{i:04}-{}", "x".repeat(8 * 1024));
    for i in 1..=COUNT {
        let m = message(&c, i, "alice", &format!("k{i}"), &body(i));
        assert_eq!(
            s.append(&new_message(m, &["bob"])).await.unwrap(),
            AppendOutcome::Stored
        );
    }

    if let Some((client, tables)) = &b.raw {
        // The premise: one Query page cannot hold this backlog.
        let page = client
            .query()
            .table_name(&tables.messages)
            .key_condition_expression("#c = :c")
            .expression_attribute_names("#c", "conversation_id")
            .expression_attribute_values(":c", AttributeValue::S(c.to_string()))
            .consistent_read(true)
            .send()
            .await
            .unwrap();
        assert!(
            page.last_evaluated_key.is_some(),
            "expected a truncated first page"
        );
        assert!(
            (page.count as u64) < COUNT,
            "first page held {}",
            page.count
        );
    }

    let all = s.range(&c, Seq(1), usize::MAX).await.unwrap();
    assert_eq!(all.len() as u64, COUNT);
    for (i, m) in (1..=COUNT).zip(&all) {
        assert_eq!(m.seq.get(), i);
        assert_eq!(m.body, body(i), "body of seq {i} intact");
    }
    let capped = s.range(&c, Seq(50), 200).await.unwrap();
    assert_eq!(capped.first().map(|m| m.seq.get()), Some(50));
    assert_eq!(capped.len(), 200);
    assert_eq!(capped.last().map(|m| m.seq.get()), Some(249));
    let rest = s.range(&c, Seq(250), 1000).await.unwrap();
    assert_eq!(rest.len(), 51);
}

async fn record_creates_and_widens_the_pending_row<S: Store>(b: Backend<S>) {
    let s = &b.store;
    let c = conv_id("c1");
    let bob = user("bob");
    s.record(&bob, &c, Seq(5)).await.unwrap();
    assert_eq!(pending_range(s, "bob", &c).await, Some((5, 5)));
    s.record(&bob, &c, Seq(8)).await.unwrap();
    assert_eq!(
        pending_range(s, "bob", &c).await,
        Some((5, 8)),
        "last_seq up"
    );
    s.record(&bob, &c, Seq(3)).await.unwrap();
    assert_eq!(
        pending_range(s, "bob", &c).await,
        Some((3, 8)),
        "first down"
    );
    s.record(&bob, &c, Seq(6)).await.unwrap();
    assert_eq!(
        pending_range(s, "bob", &c).await,
        Some((3, 8)),
        "inside: unchanged"
    );
    s.record(&bob, &c, Seq(8)).await.unwrap();
    assert_eq!(pending_range(s, "bob", &c).await, Some((3, 8)));

    let row = PendingStore::get(s, &bob, &c).await.unwrap().unwrap();
    assert_eq!(row.user_id, bob);
    assert_eq!(row.conversation_id, c);
    assert!(row.updated_at > 0);
}

async fn ack_clears_advances_or_is_stale_and_never_lowers_the_cursor<S: Store>(b: Backend<S>) {
    let s = &b.store;
    let c = conv_id("c1");
    let bob = user("bob");
    let phone = dev("phone");
    let only = devs(&["phone"]);
    assert_eq!(
        s.ack(&bob, &phone, &c, Seq(3), &only).await.unwrap(),
        AckOutcome::Stale,
        "no row"
    );

    s.record(&bob, &c, Seq(2)).await.unwrap();
    s.record(&bob, &c, Seq(10)).await.unwrap();
    assert_eq!(start_for(s, "bob", "phone", &c).await, Some((2, 10)));

    assert_eq!(
        s.ack(&bob, &phone, &c, Seq(5), &only).await.unwrap(),
        AckOutcome::Advanced
    );
    assert_eq!(start_for(s, "bob", "phone", &c).await, Some((6, 10)));
    assert_eq!(
        pending_range(s, "bob", &c).await,
        Some((2, 10)),
        "the row's range is the user's, the cursor the device's"
    );
    // An ack from before (a reordered or repeated frame) moves nothing back.
    for seq in [3, 4, 5] {
        assert_eq!(
            s.ack(&bob, &phone, &c, Seq(seq), &only).await.unwrap(),
            AckOutcome::Stale,
            "ack {seq}"
        );
    }
    assert_eq!(start_for(s, "bob", "phone", &c).await, Some((6, 10)));
    // Below first: covered already, whatever the cursor.
    assert_eq!(
        s.ack(&bob, &dev("laptop"), &c, Seq(1), &only)
            .await
            .unwrap(),
        AckOutcome::Stale
    );
    assert_eq!(
        s.ack(&bob, &phone, &c, Seq(6), &only).await.unwrap(),
        AckOutcome::Advanced
    );
    assert_eq!(start_for(s, "bob", "phone", &c).await, Some((7, 10)));

    assert_eq!(
        s.ack(&bob, &phone, &c, Seq(10), &only).await.unwrap(),
        AckOutcome::Cleared
    );
    assert_eq!(pending_range(s, "bob", &c).await, None);
    assert_eq!(
        s.ack(&bob, &phone, &c, Seq(10), &only).await.unwrap(),
        AckOutcome::Stale,
        "repeat is harmless"
    );

    // Past last_seq clears too; the acking device counts even unlisted.
    s.record(&bob, &c, Seq(12)).await.unwrap();
    assert_eq!(
        s.ack(&bob, &phone, &c, Seq(99), &[]).await.unwrap(),
        AckOutcome::Cleared
    );
    assert!(PendingStore::list(s, &bob).await.unwrap().is_empty());
}

async fn ack_below_last_seq_keeps_newer_messages<S: Store>(b: Backend<S>) {
    let s = &b.store;
    let c = create_conversation(s, "c1", &["alice", "bob"]).await;
    let (bob, phone) = (user("bob"), dev("phone"));
    let only = devs(&["phone"]);
    assert_eq!(
        send(s, &c, "alice", "k1", "one", &["bob"]).await,
        AppendOutcome::Stored
    );
    // Catch-up reads the row (1..=1) and posts seq 1; meanwhile seq 2 lands.
    let seen = PendingStore::get(s, &bob, &c).await.unwrap().unwrap();
    assert_eq!(
        (seen.first_undelivered_seq, seen.last_seq),
        (Seq(1), Seq(1))
    );
    assert_eq!(
        send(s, &c, "alice", "k2", "two", &["bob"]).await,
        AppendOutcome::Stored
    );

    assert_eq!(
        s.ack(&bob, &phone, &c, Seq(1), &only).await.unwrap(),
        AckOutcome::Advanced
    );
    assert_eq!(
        start_for(s, "bob", "phone", &c).await,
        Some((2, 2)),
        "seq 2 still pending"
    );
    // PENDING_CLEAR=post: catch-up settling what it posted from the row it
    // read must not wipe the newer message either.
    assert_eq!(
        s.settle_posted(
            &bob,
            &phone,
            &c,
            seen.first_undelivered_seq,
            seen.last_seq,
            &only
        )
        .await
        .unwrap(),
        AckOutcome::Stale
    );
    assert_eq!(start_for(s, "bob", "phone", &c).await, Some((2, 2)));

    assert_eq!(
        s.ack(&bob, &phone, &c, Seq(2), &only).await.unwrap(),
        AckOutcome::Cleared
    );
    assert_eq!(pending_range(s, "bob", &c).await, None);
    // A message after the clear starts a fresh row, without cursors.
    assert_eq!(
        send(s, &c, "alice", "k3", "three", &["bob"]).await,
        AppendOutcome::Stored
    );
    assert_eq!(pending_range(s, "bob", &c).await, Some((3, 3)));
    assert!(cursors(s, "bob", &c).await.is_empty());
}

async fn settle_posted_clears_only_what_was_posted<S: Store>(b: Backend<S>) {
    let s = &b.store;
    let c = conv_id("c1");
    let (bob, phone) = (user("bob"), dev("phone"));
    let only = devs(&["phone"]);
    assert_eq!(
        s.settle_posted(&bob, &phone, &c, Seq(1), Seq(1), &only)
            .await
            .unwrap(),
        AckOutcome::Stale,
        "no row"
    );
    s.record(&bob, &c, Seq(2)).await.unwrap();
    s.record(&bob, &c, Seq(4)).await.unwrap();
    // Posted 2..=3 of a row that now reaches 4: the cursor moves to 3.
    assert_eq!(
        s.settle_posted(&bob, &phone, &c, Seq(2), Seq(3), &only)
            .await
            .unwrap(),
        AckOutcome::Advanced
    );
    assert_eq!(start_for(s, "bob", "phone", &c).await, Some((4, 4)));
    // Posted 2..=3 again (a second catch-up with the old read): no change.
    assert_eq!(
        s.settle_posted(&bob, &phone, &c, Seq(2), Seq(3), &only)
            .await
            .unwrap(),
        AckOutcome::Stale
    );
    assert_eq!(start_for(s, "bob", "phone", &c).await, Some((4, 4)));
    // A retried send records seq 1 again after catch-up read 4..=4: posting
    // 4..=4 must not clear the row, seq 1 was never posted.
    s.record(&bob, &c, Seq(1)).await.unwrap();
    assert_eq!(
        s.settle_posted(&bob, &phone, &c, Seq(4), Seq(4), &only)
            .await
            .unwrap(),
        AckOutcome::Stale
    );
    assert_eq!(start_for(s, "bob", "phone", &c).await, Some((1, 4)));
    assert_eq!(
        s.settle_posted(&bob, &phone, &c, Seq(4), Seq(9), &only)
            .await
            .unwrap(),
        AckOutcome::Stale
    );
    assert_eq!(start_for(s, "bob", "phone", &c).await, Some((1, 4)));
    // Posted from 1 through 4: everything it holds.
    assert_eq!(
        s.settle_posted(&bob, &phone, &c, Seq(1), Seq(4), &only)
            .await
            .unwrap(),
        AckOutcome::Cleared
    );
    assert_eq!(pending_range(s, "bob", &c).await, None);
}

async fn each_device_acks_for_itself_and_the_row_goes_with_the_last<S: Store>(b: Backend<S>) {
    let s = &b.store;
    let c = create_conversation(s, "c1", &["alice", "bob"]).await;
    let bob = user("bob");
    let (phone, laptop) = (dev("phone"), dev("laptop"));
    let both = devs(&["laptop", "phone"]);
    for k in ["k1", "k2", "k3"] {
        assert_eq!(
            send(s, &c, "alice", k, "x", &["bob"]).await,
            AppendOutcome::Stored
        );
    }

    assert_eq!(
        s.ack(&bob, &phone, &c, Seq(3), &both).await.unwrap(),
        AckOutcome::Advanced,
        "the laptop has nothing yet"
    );
    assert_eq!(pending_range(s, "bob", &c).await, Some((1, 3)));
    assert_eq!(
        cursors(s, "bob", &c).await,
        BTreeMap::from([("phone".to_owned(), 3)])
    );
    assert_eq!(start_for(s, "bob", "laptop", &c).await, Some((1, 3)));
    // The phone's cursor never goes down, and repeating it changes nothing.
    for seq in [2, 3] {
        assert_eq!(
            s.ack(&bob, &phone, &c, Seq(seq), &both).await.unwrap(),
            AckOutcome::Stale
        );
    }
    assert_eq!(
        s.ack(&bob, &laptop, &c, Seq(2), &both).await.unwrap(),
        AckOutcome::Advanced
    );
    assert_eq!(
        cursors(s, "bob", &c).await,
        BTreeMap::from([("laptop".to_owned(), 2), ("phone".to_owned(), 3)])
    );
    assert_eq!(
        s.ack(&bob, &laptop, &c, Seq(3), &both).await.unwrap(),
        AckOutcome::Cleared
    );
    assert_eq!(pending_range(s, "bob", &c).await, None);

    // A message stored after a device read the row keeps it: the laptop
    // acks what it read (4), the phone already has 5.
    assert_eq!(
        send(s, &c, "alice", "k4", "x", &["bob"]).await,
        AppendOutcome::Stored
    );
    assert_eq!(
        s.ack(&bob, &phone, &c, Seq(4), &both).await.unwrap(),
        AckOutcome::Advanced
    );
    assert_eq!(
        send(s, &c, "alice", "k5", "x", &["bob"]).await,
        AppendOutcome::Stored
    );
    assert_eq!(
        s.ack(&bob, &phone, &c, Seq(5), &both).await.unwrap(),
        AckOutcome::Advanced
    );
    assert_eq!(
        s.ack(&bob, &laptop, &c, Seq(4), &both).await.unwrap(),
        AckOutcome::Advanced,
        "seq 5 is still the laptop's"
    );
    assert_eq!(start_for(s, "bob", "laptop", &c).await, Some((5, 5)));
    assert_eq!(start_for(s, "bob", "phone", &c).await, Some((6, 5)));
    // A cursor past last_seq is kept as acked.
    assert_eq!(
        s.ack(&bob, &phone, &c, Seq(9), &both).await.unwrap(),
        AckOutcome::Advanced
    );
    assert_eq!(cursors(s, "bob", &c).await.get("phone"), Some(&9));
    assert_eq!(
        s.ack(&bob, &laptop, &c, Seq(5), &both).await.unwrap(),
        AckOutcome::Cleared
    );
}

/// Sends land while two devices read the row and ack what they read: each
/// device must end up having read every seq (an ack that deleted the row
/// over a message stored after the read would lose it), and the row goes
/// once both hold the last one.
async fn concurrent_sends_and_acks_lose_no_message_for_any_device<S: Store>(b: Backend<S>) {
    const COUNT: u64 = 40;
    let s = b.store;
    let c = create_conversation(&s, "busy", &["alice", "bob"]).await;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = {
        let (s, c, done) = (s.clone(), c.clone(), done.clone());
        tokio::spawn(async move {
            for i in 1..=COUNT {
                let out = send(&s, &c, "alice", &format!("k{i}"), "x", &["bob"]).await;
                assert_eq!(out, AppendOutcome::Stored);
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        })
    };
    let readers: Vec<_> = ["laptop", "phone"]
        .into_iter()
        .map(|name| {
            let (s, c, done) = (s.clone(), c.clone(), done.clone());
            tokio::spawn(async move {
                let (bob, me) = (user("bob"), dev(name));
                let both = devs(&["laptop", "phone"]);
                let mut read = BTreeSet::new();
                loop {
                    let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                    let row = PendingStore::get(&s, &bob, &c).await.unwrap();
                    match row.filter(|r| r.start_for(&me) <= r.last_seq) {
                        Some(r) => {
                            read.extend(r.start_for(&me).get()..=r.last_seq.get());
                            s.ack(&bob, &me, &c, r.last_seq, &both).await.unwrap();
                        }
                        None if finished => return read,
                        None => tokio::time::sleep(std::time::Duration::from_millis(2)).await,
                    }
                }
            })
        })
        .collect();
    sender.await.unwrap();
    for r in readers {
        let read = r.await.unwrap();
        assert_eq!(
            read.into_iter().collect::<Vec<_>>(),
            (1..=COUNT).collect::<Vec<_>>(),
            "every seq read by every device"
        );
    }
    assert_eq!(
        pending_range(&s, "bob", &c).await,
        None,
        "both hold the last"
    );
}

async fn a_device_not_linked_any_more_does_not_hold_the_row<S: Store>(b: Backend<S>) {
    let s = &b.store;
    let c = conv_id("c1");
    let bob = user("bob");
    s.record(&bob, &c, Seq(1)).await.unwrap();
    s.record(&bob, &c, Seq(3)).await.unwrap();
    assert_eq!(
        s.ack(
            &bob,
            &dev("phone"),
            &c,
            Seq(3),
            &devs(&["phone", "laptop", "tablet"])
        )
        .await
        .unwrap(),
        AckOutcome::Advanced
    );
    // The tablet went past its TTL: only the phone and the laptop count.
    assert_eq!(
        s.ack(&bob, &dev("laptop"), &c, Seq(3), &devs(&["phone"]))
            .await
            .unwrap(),
        AckOutcome::Cleared,
        "the acking device counts without being listed"
    );
    assert_eq!(pending_range(s, "bob", &c).await, None);

    // Nobody else linked: one device's ack clears.
    s.record(&bob, &c, Seq(4)).await.unwrap();
    assert_eq!(
        s.ack(&bob, &dev("phone"), &c, Seq(4), &[]).await.unwrap(),
        AckOutcome::Cleared
    );
}

async fn settle_posted_moves_only_the_posting_device_and_keeps_its_from_guard<S: Store>(
    b: Backend<S>,
) {
    let s = &b.store;
    let c = conv_id("c1");
    let bob = user("bob");
    let (phone, laptop) = (dev("phone"), dev("laptop"));
    let both = devs(&["laptop", "phone"]);
    s.record(&bob, &c, Seq(1)).await.unwrap();
    s.record(&bob, &c, Seq(6)).await.unwrap();

    assert_eq!(
        s.settle_posted(&bob, &phone, &c, Seq(1), Seq(3), &both)
            .await
            .unwrap(),
        AckOutcome::Advanced
    );
    assert_eq!(start_for(s, "bob", "phone", &c).await, Some((4, 6)));
    assert_eq!(start_for(s, "bob", "laptop", &c).await, Some((1, 6)));
    // The phone starts at 4 now: a catch-up that read it from 5 did not
    // post 4, one that read it from 4 did.
    assert_eq!(
        s.settle_posted(&bob, &phone, &c, Seq(5), Seq(6), &both)
            .await
            .unwrap(),
        AckOutcome::Stale
    );
    // The laptop starts at 1: from 2 is not what it was posted.
    assert_eq!(
        s.settle_posted(&bob, &laptop, &c, Seq(2), Seq(6), &both)
            .await
            .unwrap(),
        AckOutcome::Stale
    );
    assert_eq!(
        s.settle_posted(&bob, &phone, &c, Seq(4), Seq(6), &both)
            .await
            .unwrap(),
        AckOutcome::Advanced
    );
    assert_eq!(
        s.settle_posted(&bob, &laptop, &c, Seq(1), Seq(6), &both)
            .await
            .unwrap(),
        AckOutcome::Cleared
    );
    assert_eq!(pending_range(s, "bob", &c).await, None);
}

async fn record_below_first_drops_every_cursor<S: Store>(b: Backend<S>) {
    let s = &b.store;
    let c = conv_id("c1");
    let bob = user("bob");
    let both = devs(&["laptop", "phone"]);
    s.record(&bob, &c, Seq(5)).await.unwrap();
    s.record(&bob, &c, Seq(8)).await.unwrap();
    s.ack(&bob, &dev("phone"), &c, Seq(6), &both).await.unwrap();
    s.ack(&bob, &dev("laptop"), &c, Seq(7), &both)
        .await
        .unwrap();
    // Inside the row, or above it: the cursors stay.
    s.record(&bob, &c, Seq(7)).await.unwrap();
    s.record(&bob, &c, Seq(9)).await.unwrap();
    assert_eq!(
        cursors(s, "bob", &c).await,
        BTreeMap::from([("laptop".to_owned(), 7), ("phone".to_owned(), 6)])
    );
    assert_eq!(pending_range(s, "bob", &c).await, Some((5, 9)));
    // Below first: a cursor past 3 would skip it, so all go.
    s.record(&bob, &c, Seq(3)).await.unwrap();
    assert!(cursors(s, "bob", &c).await.is_empty());
    assert_eq!(start_for(s, "bob", "phone", &c).await, Some((3, 9)));
    assert_eq!(start_for(s, "bob", "laptop", &c).await, Some((3, 9)));
    // And the next ack builds them again.
    assert_eq!(
        s.ack(&bob, &dev("phone"), &c, Seq(9), &both).await.unwrap(),
        AckOutcome::Advanced
    );
    assert_eq!(
        cursors(s, "bob", &c).await,
        BTreeMap::from([("phone".to_owned(), 9)])
    );
}

async fn pending_list_returns_every_row_of_the_user_only<S: Store>(b: Backend<S>) {
    let s = &b.store;
    let bob = user("bob");
    for (i, conv) in ["conv_abc123", "conv_def456", "conv_x"].iter().enumerate() {
        s.record(&bob, &conv_id(conv), Seq(10 * (i as u64 + 1)))
            .await
            .unwrap();
    }
    s.record(&user("carol"), &conv_id("conv_abc123"), Seq(1))
        .await
        .unwrap();
    let mut rows = PendingStore::list(s, &bob).await.unwrap();
    rows.sort_by(|a, b| a.conversation_id.cmp(&b.conversation_id));
    let got: Vec<(&str, u64)> = rows
        .iter()
        .map(|r| (r.conversation_id.as_str(), r.first_undelivered_seq.get()))
        .collect();
    assert_eq!(
        got,
        vec![("conv_abc123", 10), ("conv_def456", 20), ("conv_x", 30)]
    );
    assert!(rows.iter().all(|r| r.user_id == bob));
    assert!(
        PendingStore::list(s, &user("nobody"))
            .await
            .unwrap()
            .is_empty()
    );
}

async fn pending_list_never_returns_links_or_memberships<S: Store>(b: Backend<S>) {
    let s = &b.store;
    let bob = user("bob");
    for d in ["phone", "laptop"] {
        assert_eq!(
            s.touch(&bob, &dev(d), 1_000, 5, 0).await.unwrap(),
            LinkOutcome::Linked
        );
    }
    let c1 = create_conversation(s, "c1", &["alice", "bob"]).await;
    create_conversation(s, "-", &["bob"]).await;
    create_conversation(s, "zz", &["bob", "carol"]).await;
    assert_eq!(
        send(s, &c1, "alice", "k1", "hi", &["bob"]).await,
        AppendOutcome::Stored
    );
    s.record(&bob, &conv_id("-"), Seq(4)).await.unwrap();

    let mut rows: Vec<(String, u64)> = PendingStore::list(s, &bob)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.conversation_id.to_string(), r.last_seq.get()))
        .collect();
    rows.sort();
    assert_eq!(rows, [("-".to_owned(), 4), ("c1".to_owned(), 1)]);
    assert_eq!(LinkStore::list(s, &bob).await.unwrap().len(), 2);
    assert_eq!(
        ConversationStore::list_for(s, &bob, None, 10)
            .await
            .unwrap()
            .0
            .len(),
        3
    );

    if let Some((client, tables)) = &b.raw {
        // The premise: the partition does hold the other items.
        let all = client
            .query()
            .table_name(&tables.pending)
            .key_condition_expression("#u = :u")
            .expression_attribute_names("#u", "user_id")
            .expression_attribute_values(":u", AttributeValue::S("bob".into()))
            .consistent_read(true)
            .send()
            .await
            .unwrap();
        assert_eq!(
            all.count,
            2 + 2 + 1 + 3,
            "2 rows, 2 links, a counter, 3 memberships"
        );
    }
}

async fn conversation_create_twice_keeps_the_first<S: Store>(b: Backend<S>) {
    let s = &b.store;
    let first = Conversation {
        conversation_id: conv_id("c1"),
        members: vec![user("bob"), user("alice")],
        last_seq: Seq::ZERO,
        created_at: 1_795_000_000_000,
    };
    assert!(ConversationStore::create(s, &first).await.unwrap());
    let second = Conversation {
        members: vec![user("mallory")],
        created_at: 1,
        ..first.clone()
    };
    assert!(!ConversationStore::create(s, &second).await.unwrap());
    let got = ConversationStore::get(s, &first.conversation_id)
        .await
        .unwrap()
        .unwrap();
    let members: BTreeSet<&str> = got.members.iter().map(|m| m.as_str()).collect();
    assert_eq!(members, BTreeSet::from(["alice", "bob"]));
    assert_eq!(got.last_seq, Seq::ZERO);
    assert_eq!(got.created_at, first.created_at);
    assert_eq!(
        ConversationStore::get(s, &conv_id("c2")).await.unwrap(),
        None
    );
}

fn linked(outcome: &[LinkOutcome]) -> usize {
    outcome
        .iter()
        .filter(|o| **o == LinkOutcome::Linked)
        .count()
}

async fn link_names<S: Store>(store: &S, who: &str) -> Vec<String> {
    LinkStore::list(store, &user(who))
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.device_id.to_string())
        .collect()
}

async fn touch_links_a_new_device_sees_a_known_one_and_refuses_past_max<S: Store>(b: Backend<S>) {
    let s = &b.store;
    let bob = user("bob");
    assert_eq!(
        s.touch(&bob, &dev("phone"), 100, 2, 0).await.unwrap(),
        LinkOutcome::Linked
    );
    assert_eq!(
        s.touch(&bob, &dev("phone"), 200, 2, 0).await.unwrap(),
        LinkOutcome::Seen
    );
    // A touch with an older clock never moves last_seen_at back.
    assert_eq!(
        s.touch(&bob, &dev("phone"), 150, 2, 0).await.unwrap(),
        LinkOutcome::Seen
    );
    let links = LinkStore::list(s, &bob).await.unwrap();
    assert_eq!(links.len(), 1);
    assert_eq!(
        (links[0].linked_at, links[0].last_seen_at),
        (100, 200),
        "linked once, seen last at 200"
    );

    assert_eq!(
        s.touch(&bob, &dev("laptop"), 300, 2, 0).await.unwrap(),
        LinkOutcome::Linked
    );
    assert_eq!(
        s.touch(&bob, &dev("tablet"), 300, 2, 0).await.unwrap(),
        LinkOutcome::TooMany { max: 2 }
    );
    assert_eq!(
        link_names(s, "bob").await,
        ["laptop", "phone"],
        "device order"
    );
    // A known device is seen whatever the limit.
    assert_eq!(
        s.touch(&bob, &dev("phone"), 400, 1, 0).await.unwrap(),
        LinkOutcome::Seen
    );
    // Another user's devices are theirs.
    assert_eq!(
        s.touch(&user("carol"), &dev("tablet"), 300, 2, 0)
            .await
            .unwrap(),
        LinkOutcome::Linked
    );

    assert!(s.unlink(&bob, &dev("laptop")).await.unwrap());
    assert!(
        !s.unlink(&bob, &dev("laptop")).await.unwrap(),
        "unlinked already"
    );
    assert!(!s.unlink(&bob, &dev("never")).await.unwrap());
    assert_eq!(link_names(s, "bob").await, ["phone"]);
    assert_eq!(
        s.touch(&bob, &dev("tablet"), 500, 2, 0).await.unwrap(),
        LinkOutcome::Linked,
        "unlinking made room"
    );
    assert_eq!(link_names(s, "bob").await, ["phone", "tablet"]);
    assert!(LinkStore::list(s, &user("dave")).await.unwrap().is_empty());
}

async fn stale_devices_do_not_count_and_make_room_when_a_device_links<S: Store>(b: Backend<S>) {
    let s = &b.store;
    let bob = user("bob");
    for (d, at) in [("a", 100), ("b", 500), ("c", 600)] {
        assert_eq!(
            s.touch(&bob, &dev(d), at, 3, 0).await.unwrap(),
            LinkOutcome::Linked
        );
    }
    // The limit went down to 2: a is stale, b and c fill it. Refused, and
    // nothing is unlinked for a device that is not linked.
    assert_eq!(
        s.touch(&bob, &dev("d"), 1_000, 2, 300).await.unwrap(),
        LinkOutcome::TooMany { max: 2 }
    );
    assert_eq!(link_names(s, "bob").await, ["a", "b", "c"]);
    // Back at 3: a does not count, and goes when d links.
    assert_eq!(
        s.touch(&bob, &dev("d"), 1_000, 3, 300).await.unwrap(),
        LinkOutcome::Linked
    );
    assert_eq!(link_names(s, "bob").await, ["b", "c", "d"]);
    // Every stale device goes when one links, not just enough of them.
    assert_eq!(
        s.touch(&bob, &dev("e"), 2_000, 5, 700).await.unwrap(),
        LinkOutcome::Linked
    );
    assert_eq!(link_names(s, "bob").await, ["d", "e"]);
    // And the limit still holds after the evictions.
    for d in ["f", "g", "h"] {
        assert_eq!(
            s.touch(&bob, &dev(d), 2_000, 5, 700).await.unwrap(),
            LinkOutcome::Linked
        );
    }
    assert_eq!(
        s.touch(&bob, &dev("i"), 2_000, 5, 700).await.unwrap(),
        LinkOutcome::TooMany { max: 5 }
    );
}

async fn concurrent_new_devices_never_exceed_max<S: Store>(b: Backend<S>) {
    const MAX: usize = 3;
    let s = b.store;
    let bob = user("bob");
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let (s, bob) = (s.clone(), bob.clone());
            tokio::spawn(async move {
                s.touch(&bob, &dev(&format!("d{i}")), 1_000, MAX, 0)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }
    assert_eq!(linked(&outcomes), MAX, "{outcomes:?}");
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, LinkOutcome::Linked | LinkOutcome::TooMany { max: MAX })),
        "{outcomes:?}"
    );
    assert_eq!(LinkStore::list(&s, &bob).await.unwrap().len(), MAX);

    // One new device connecting four times at once is linked once.
    let carol = user("carol");
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let (s, carol) = (s.clone(), carol.clone());
            tokio::spawn(async move { s.touch(&carol, &dev("phone"), 1_000, 2, 0).await.unwrap() })
        })
        .collect();
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }
    assert_eq!(linked(&outcomes), 1, "{outcomes:?}");
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, LinkOutcome::Linked | LinkOutcome::Seen)),
        "{outcomes:?}"
    );
    assert_eq!(link_names(&s, "carol").await, ["phone"]);
    // Its one place was counted once: a second device still fits.
    assert_eq!(
        s.touch(&carol, &dev("laptop"), 1_000, 2, 0).await.unwrap(),
        LinkOutcome::Linked
    );
}

async fn list_for_pages_the_conversations_of_a_member_in_id_order<S: Store>(b: Backend<S>) {
    let s = &b.store;
    let bob = user("bob");
    let ids = |page: &[Conversation]| {
        page.iter()
            .map(|c| c.conversation_id.to_string())
            .collect::<Vec<_>>()
    };
    // Created out of order, some without bob.
    for (id, members) in [
        ("c05", &["bob", "alice"][..]),
        ("c02", &["bob"][..]),
        ("c07", &["alice", "bob"][..]),
        ("c03", &["alice"][..]),
        ("c01", &["bob", "bob"][..]),
        ("c06", &["carol", "bob"][..]),
        ("c04", &["bob"][..]),
    ] {
        create_conversation(s, id, members).await;
    }
    let (page, next) = ConversationStore::list_for(s, &bob, None, 2).await.unwrap();
    assert_eq!(ids(&page), ["c01", "c02"]);
    assert_eq!(next, Some(conv_id("c02")));
    assert_eq!(
        page[0],
        ConversationStore::get(s, &conv_id("c01"))
            .await
            .unwrap()
            .unwrap(),
        "whole conversations"
    );
    let (page, next) = ConversationStore::list_for(s, &bob, next.as_ref(), 2)
        .await
        .unwrap();
    assert_eq!(ids(&page), ["c04", "c05"]);
    let (page, next) = ConversationStore::list_for(s, &bob, next.as_ref(), 2)
        .await
        .unwrap();
    assert_eq!(ids(&page), ["c06", "c07"]);
    assert_eq!(next, None, "exactly the last page: no next");

    // After an id that is not one of bob's (or does not exist).
    let (page, next) = ConversationStore::list_for(s, &bob, Some(&conv_id("c03")), 10)
        .await
        .unwrap();
    assert_eq!(ids(&page), ["c04", "c05", "c06", "c07"]);
    assert_eq!(next, None);
    let (page, _) = ConversationStore::list_for(s, &bob, Some(&conv_id("c045")), 1)
        .await
        .unwrap();
    assert_eq!(ids(&page), ["c05"]);
    let (page, next) = ConversationStore::list_for(s, &bob, Some(&conv_id("c07")), 10)
        .await
        .unwrap();
    assert!(page.is_empty() && next.is_none());
    // The limit is clamped to 1..=100.
    let (page, next) = ConversationStore::list_for(s, &bob, None, 0).await.unwrap();
    assert_eq!(
        (ids(&page), next),
        (vec!["c01".to_owned()], Some(conv_id("c01")))
    );
    let (page, next) = ConversationStore::list_for(s, &bob, None, 1_000)
        .await
        .unwrap();
    assert_eq!(ids(&page).len(), 6);
    assert_eq!(next, None);

    let (page, _) = ConversationStore::list_for(s, &user("alice"), None, 10)
        .await
        .unwrap();
    assert_eq!(ids(&page), ["c03", "c05", "c07"]);
    let (page, next) = ConversationStore::list_for(s, &user("nobody"), None, 10)
        .await
        .unwrap();
    assert!(page.is_empty() && next.is_none());

    // A refused second create lists nothing for its would-be members.
    let again = Conversation {
        conversation_id: conv_id("c01"),
        members: vec![user("mallory")],
        last_seq: Seq::ZERO,
        created_at: 1,
    };
    assert!(!ConversationStore::create(s, &again).await.unwrap());
    let (page, _) = ConversationStore::list_for(s, &user("mallory"), None, 10)
        .await
        .unwrap();
    assert!(page.is_empty());
}

fn device(owner: &str, token: &str, platform: Platform) -> Device {
    Device {
        user_id: user(owner),
        platform,
        token: token.to_owned(),
        endpoint_arn: format!("arn:aws:sns:us-east-1:123456789012:endpoint/{token}"),
        updated_at: 1_795_000_000_000,
        device_id: Default::default(),
    }
}

async fn devices_are_found_by_token_and_user_and_a_token_can_move<S: Store>(b: Backend<S>) {
    let s = &b.store;
    let tokens = |ds: Vec<Device>| ds.into_iter().map(|d| d.token).collect::<Vec<_>>();
    let bob1 = device("bob", "tok-b1", Platform::Apns);
    let bob2 = device("bob", "tok-b2", Platform::Fcm);
    let carol = device("carol", "tok-c", Platform::ApnsSandbox);
    for d in [&bob2, &bob1, &carol] {
        s.put(d).await.unwrap();
    }
    assert_eq!(s.by_token("tok-b1").await.unwrap(), Some(bob1.clone()));
    assert_eq!(s.by_token("tok-none").await.unwrap(), None);
    assert_eq!(
        tokens(s.for_user(&user("bob")).await.unwrap()),
        ["tok-b1", "tok-b2"]
    );
    assert_eq!(s.for_user(&user("bob")).await.unwrap()[1], bob2);
    assert!(s.for_user(&user("dave")).await.unwrap().is_empty());

    // The phone changes hands (or accounts): the token now belongs to carol.
    let moved = Device {
        updated_at: bob1.updated_at + 1,
        ..device("carol", "tok-b1", Platform::Apns)
    };
    s.put(&moved).await.unwrap();
    assert_eq!(s.by_token("tok-b1").await.unwrap(), Some(moved));
    assert_eq!(tokens(s.for_user(&user("bob")).await.unwrap()), ["tok-b2"]);
    assert_eq!(
        tokens(s.for_user(&user("carol")).await.unwrap()),
        ["tok-b1", "tok-c"]
    );

    s.delete("tok-b2").await.unwrap();
    s.delete("tok-b2").await.unwrap(); // deleting twice is fine
    assert_eq!(s.by_token("tok-b2").await.unwrap(), None);
    assert!(s.for_user(&user("bob")).await.unwrap().is_empty());
}

/// Makes a `memory::case` and a `dynamo::case` test of each case.
macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::memory_backend()).await;
                }
            )*
        }
        mod dynamo {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let backend = super::dynamo_backend().await;
                    let tables = backend.raw.as_ref().map(|(_, t)| t.clone());
                    super::$case(backend).await;
                    if let Some(tables) = tables {
                        courier_tests::drop_tables(&tables).await;
                    }
                }
            )*
        }
    };
}

conformance!(
    append_stores_message_counter_idempotency_and_pending,
    append_with_stale_or_skipping_seq_is_a_conflict_and_writes_nothing,
    duplicate_client_msg_id_answers_the_original_message,
    append_to_missing_conversation_or_by_non_member_is_not_a_member,
    concurrent_appends_get_gap_free_unique_seqs,
    range_is_ordered_and_honours_from_and_limit,
    backlog_larger_than_one_dynamodb_page_is_read_in_full,
    record_creates_and_widens_the_pending_row,
    ack_clears_advances_or_is_stale_and_never_lowers_the_cursor,
    ack_below_last_seq_keeps_newer_messages,
    settle_posted_clears_only_what_was_posted,
    each_device_acks_for_itself_and_the_row_goes_with_the_last,
    a_device_not_linked_any_more_does_not_hold_the_row,
    concurrent_sends_and_acks_lose_no_message_for_any_device,
    settle_posted_moves_only_the_posting_device_and_keeps_its_from_guard,
    record_below_first_drops_every_cursor,
    pending_list_returns_every_row_of_the_user_only,
    pending_list_never_returns_links_or_memberships,
    touch_links_a_new_device_sees_a_known_one_and_refuses_past_max,
    stale_devices_do_not_count_and_make_room_when_a_device_links,
    concurrent_new_devices_never_exceed_max,
    list_for_pages_the_conversations_of_a_member_in_id_order,
    conversation_create_twice_keeps_the_first,
    devices_are_found_by_token_and_user_and_a_token_can_move,
);
