//! `courier-local backfill-memberships`, the binary as an operator runs it,
//! on tables in moto: conversations created before the memberships index
//! (their membership items deleted behind the store's back) are listed once
//! it has run, for every member, and a second run changes nothing.

#![allow(clippy::unwrap_used)]

use courier_aws::dynamo::DynamoStore;
use courier_core::domain::{Conversation, ConversationId, Seq, UserId};
use courier_core::ports::ConversationStore;

fn run_backfill(endpoint: &str, conversations: &str, pending: &str) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_courier-local"))
        .args(["backfill-memberships", "--dynamodb-endpoint", endpoint])
        .args(["--conversations-table", conversations])
        .args(["--pending-table", pending])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test]
async fn backfill_memberships_lists_old_conversations_for_every_member() {
    let endpoint = courier_tests::dynamodb_endpoint().await;
    let tables = courier_tests::fresh_tables().await;
    let client = courier_tests::dynamo_client().await;
    let store = DynamoStore::new(client.clone(), tables.clone());
    let user = |u: &str| UserId::parse(u).unwrap();
    for (id, members) in [("c-a", ["ann", "ben"]), ("c-b", ["ben", "cy"])] {
        let members: Vec<UserId> = members.iter().map(|m| user(m)).collect();
        let conversation = Conversation {
            conversation_id: ConversationId::parse(id).unwrap(),
            members: members.clone(),
            last_seq: Seq::ZERO,
            created_at: 1,
        };
        assert!(store.create(&conversation).await.unwrap());
        courier_tests::forget_memberships(&client, &tables, id, &members).await;
    }
    let listed = |u: &'static str| {
        let store = &store;
        async move {
            let (page, _) = store.list_for(&user(u), None, 100).await.unwrap();
            page.into_iter()
                .map(|c| c.conversation_id.to_string())
                .collect::<Vec<_>>()
        }
    };
    assert!(listed("ben").await.is_empty());

    let out = run_backfill(&endpoint, &tables.conversations, &tables.pending);
    assert!(
        out.contains("memberships written: 4 for 2 conversations"),
        "{out}"
    );
    assert_eq!(listed("ann").await, ["c-a"]);
    assert_eq!(listed("ben").await, ["c-a", "c-b"]);
    assert_eq!(listed("cy").await, ["c-b"]);
    let again = run_backfill(&endpoint, &tables.conversations, &tables.pending);
    assert!(
        again.contains("memberships written: 4 for 2 conversations"),
        "{again}"
    );
    assert_eq!(listed("ben").await, ["c-a", "c-b"]);
}
