//! One suite, two stores: every case here runs against the in-memory store
//! (the reference) and against the DynamoDB store on moto's server, and both
//! must give the same answers. A case is written once, generic over the port
//! traits; the `conformance!` macro at the bottom makes a `memory::` and a
//! `dynamo::` test of each.
//!
//! Over 700 lines: one suite, every case of every store port run on both
//! stores; splitting it would split the one contract.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use aws_sdk_dynamodb::types::AttributeValue;
use courier_aws::dynamo::DynamoStore;
use courier_core::adapters::memory::MemoryStore;
use courier_core::config::TableNames;
use courier_core::domain::{
    ClientMsgId, Conversation, ConversationId, Device, Message, Platform, Seq, UserId,
};
use courier_core::ports::{
    AckOutcome, AppendOutcome, ConversationStore, DeviceStore, MessageStore, NewMessage,
    PendingStore,
};
use courier_tests::{dynamo_client, fresh_tables, init_test_logging};

trait Store:
    MessageStore + ConversationStore + PendingStore + DeviceStore + Clone + Send + Sync + 'static
{
}
impl<T> Store for T where
    T: MessageStore
        + ConversationStore
        + PendingStore
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
    assert_eq!(
        s.ack(&bob, &c, Seq(3)).await.unwrap(),
        AckOutcome::Stale,
        "no row"
    );

    s.record(&bob, &c, Seq(2)).await.unwrap();
    s.record(&bob, &c, Seq(10)).await.unwrap();
    assert_eq!(pending_range(s, "bob", &c).await, Some((2, 10)));

    assert_eq!(s.ack(&bob, &c, Seq(5)).await.unwrap(), AckOutcome::Advanced);
    assert_eq!(pending_range(s, "bob", &c).await, Some((6, 10)));
    // An ack from before (a reordered or repeated frame) moves nothing back.
    assert_eq!(s.ack(&bob, &c, Seq(3)).await.unwrap(), AckOutcome::Stale);
    assert_eq!(s.ack(&bob, &c, Seq(4)).await.unwrap(), AckOutcome::Stale);
    assert_eq!(pending_range(s, "bob", &c).await, Some((6, 10)));
    // seq = first - 1 is already covered; seq = first advances by one.
    assert_eq!(s.ack(&bob, &c, Seq(5)).await.unwrap(), AckOutcome::Stale);
    assert_eq!(s.ack(&bob, &c, Seq(6)).await.unwrap(), AckOutcome::Advanced);
    assert_eq!(pending_range(s, "bob", &c).await, Some((7, 10)));

    assert_eq!(s.ack(&bob, &c, Seq(10)).await.unwrap(), AckOutcome::Cleared);
    assert_eq!(pending_range(s, "bob", &c).await, None);
    assert_eq!(
        s.ack(&bob, &c, Seq(10)).await.unwrap(),
        AckOutcome::Stale,
        "repeat is harmless"
    );

    // Past last_seq clears too.
    s.record(&bob, &c, Seq(12)).await.unwrap();
    assert_eq!(s.ack(&bob, &c, Seq(99)).await.unwrap(), AckOutcome::Cleared);
    assert!(PendingStore::list(s, &bob).await.unwrap().is_empty());
}

async fn ack_below_last_seq_keeps_newer_messages<S: Store>(b: Backend<S>) {
    let s = &b.store;
    let c = create_conversation(s, "c1", &["alice", "bob"]).await;
    assert_eq!(
        send(s, &c, "alice", "k1", "one", &["bob"]).await,
        AppendOutcome::Stored
    );
    // Catch-up reads the row (1..=1) and posts seq 1; meanwhile seq 2 lands.
    let seen = PendingStore::get(s, &user("bob"), &c)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (seen.first_undelivered_seq, seen.last_seq),
        (Seq(1), Seq(1))
    );
    assert_eq!(
        send(s, &c, "alice", "k2", "two", &["bob"]).await,
        AppendOutcome::Stored
    );

    assert_eq!(
        s.ack(&user("bob"), &c, Seq(1)).await.unwrap(),
        AckOutcome::Advanced
    );
    assert_eq!(
        pending_range(s, "bob", &c).await,
        Some((2, 2)),
        "seq 2 still pending"
    );
    // PENDING_CLEAR=post: catch-up settling what it posted from the row it
    // read must not wipe the newer message either.
    assert_eq!(
        s.settle_posted(&user("bob"), &c, seen.first_undelivered_seq, seen.last_seq)
            .await
            .unwrap(),
        AckOutcome::Stale
    );
    assert_eq!(pending_range(s, "bob", &c).await, Some((2, 2)));

    assert_eq!(
        s.ack(&user("bob"), &c, Seq(2)).await.unwrap(),
        AckOutcome::Cleared
    );
    assert_eq!(pending_range(s, "bob", &c).await, None);
    // A message after the clear starts a fresh row.
    assert_eq!(
        send(s, &c, "alice", "k3", "three", &["bob"]).await,
        AppendOutcome::Stored
    );
    assert_eq!(pending_range(s, "bob", &c).await, Some((3, 3)));
}

async fn settle_posted_clears_only_what_was_posted<S: Store>(b: Backend<S>) {
    let s = &b.store;
    let c = conv_id("c1");
    let bob = user("bob");
    assert_eq!(
        s.settle_posted(&bob, &c, Seq(1), Seq(1)).await.unwrap(),
        AckOutcome::Stale,
        "no row"
    );
    s.record(&bob, &c, Seq(2)).await.unwrap();
    s.record(&bob, &c, Seq(4)).await.unwrap();
    // Posted 2..=3 of a row that now reaches 4: the cursor moves to 4.
    assert_eq!(
        s.settle_posted(&bob, &c, Seq(2), Seq(3)).await.unwrap(),
        AckOutcome::Advanced
    );
    assert_eq!(pending_range(s, "bob", &c).await, Some((4, 4)));
    // Posted 2..=3 again (a second catch-up with the old read): no change.
    assert_eq!(
        s.settle_posted(&bob, &c, Seq(2), Seq(3)).await.unwrap(),
        AckOutcome::Stale
    );
    assert_eq!(pending_range(s, "bob", &c).await, Some((4, 4)));
    // A retried send records seq 1 again after catch-up read 4..=4: posting
    // 4..=4 must not clear the row, seq 1 was never posted.
    s.record(&bob, &c, Seq(1)).await.unwrap();
    assert_eq!(
        s.settle_posted(&bob, &c, Seq(4), Seq(4)).await.unwrap(),
        AckOutcome::Stale
    );
    assert_eq!(pending_range(s, "bob", &c).await, Some((1, 4)));
    assert_eq!(
        s.settle_posted(&bob, &c, Seq(4), Seq(9)).await.unwrap(),
        AckOutcome::Stale
    );
    assert_eq!(pending_range(s, "bob", &c).await, Some((1, 4)));
    // Posted from 1 through 4: everything it holds.
    assert_eq!(
        s.settle_posted(&bob, &c, Seq(1), Seq(4)).await.unwrap(),
        AckOutcome::Cleared
    );
    assert_eq!(pending_range(s, "bob", &c).await, None);
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

fn device(owner: &str, token: &str, platform: Platform) -> Device {
    Device {
        user_id: user(owner),
        platform,
        token: token.to_owned(),
        endpoint_arn: format!("arn:aws:sns:us-east-1:123456789012:endpoint/{token}"),
        updated_at: 1_795_000_000_000,
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
    pending_list_returns_every_row_of_the_user_only,
    conversation_create_twice_keeps_the_first,
    devices_are_found_by_token_and_user_and_a_token_can_move,
);
