//! Creating a conversation (`createConversation`).
//!
//! The member list is the creator plus the requested users, de-duplicated in
//! the order given (the creator first). Its size is bounded by
//! `MAX_MEMBERS`, because a send writes one pending row per recipient inside
//! its single append transaction, and DynamoDB caps a transaction at 100
//! actions (see `config::MAX_MEMBERS_LIMIT`). A conversation needs someone to
//! talk to: the creator alone is refused.
//!
//! Ids are generated here (`c_` + a UUID without dashes), never taken from
//! the client, so two clients cannot collide on (or hijack) an id; the store
//! refuses to overwrite an existing one anyway.

use tracing::{info, instrument};

use crate::app::App;
use crate::domain::{Conversation, ConversationId, Seq, UserId, now_millis};
use crate::ports::StoreError;
use crate::protocol::{ErrorCode, FrameError, ServerFrame};
use crate::services::Answer;

/// Creates a conversation; answers `conversation` or a `bad_request` error.
#[instrument(skip_all, fields(user_id = %creator, requested = members.len()))]
pub async fn create_conversation(
    app: &App,
    creator: &UserId,
    members: &[UserId],
    request_id: Option<String>,
) -> Result<Answer, StoreError> {
    let reject = |message: String| {
        Ok(Answer::Refused(
            FrameError::new(ErrorCode::BadRequest, message).with_request_id(request_id.clone()),
        ))
    };
    let max = app.settings.send.max_members;
    let mut all: Vec<UserId> = Vec::with_capacity(members.len() + 1);
    all.push(creator.clone());
    for m in members {
        if !all.contains(m) {
            // Early exit keeps the quadratic dedupe bounded by `max`.
            if all.len() == max {
                return reject(format!(
                    "a conversation has at most {max} members, creator included"
                ));
            }
            all.push(m.clone());
        }
    }
    if all.len() < 2 {
        return reject("members must name at least one user besides yourself".into());
    }

    let conversation = Conversation {
        conversation_id: new_id()?,
        members: all,
        last_seq: Seq::ZERO,
        created_at: now_millis(),
    };
    if !app.ports.conversations.create(&conversation).await? {
        // A v4 UUID collision: practically impossible, and never silently
        // merged into someone else's conversation.
        return Err(StoreError::Corrupt(format!(
            "generated conversation id {} already exists",
            conversation.conversation_id
        )));
    }
    info!(conversation_id = %conversation.conversation_id, members = conversation.members.len(), "conversation created");
    Ok(Answer::Done(ServerFrame::Conversation {
        conversation_id: conversation.conversation_id,
        members: conversation.members,
        request_id,
    }))
}

fn new_id() -> Result<ConversationId, StoreError> {
    let raw = format!("c_{}", uuid::Uuid::new_v4().simple());
    ConversationId::parse(&raw).map_err(|e| StoreError::Corrupt(e.to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::SendConfig;

    fn user(s: &str) -> UserId {
        UserId::parse(s).unwrap()
    }

    fn users(list: &[&str]) -> Vec<UserId> {
        list.iter().map(|s| user(s)).collect()
    }

    #[tokio::test]
    async fn members_are_creator_plus_deduplicated_list() {
        let (app, _h) = App::in_memory();
        let f = create_conversation(
            &app,
            &user("alice"),
            &users(&["bob", "alice", "carol", "bob"]),
            Some("r1".into()),
        )
        .await
        .unwrap()
        .into_frame();
        let ServerFrame::Conversation {
            conversation_id,
            members,
            request_id,
        } = f
        else {
            panic!("not a conversation frame: {f:?}")
        };
        assert_eq!(members, users(&["alice", "bob", "carol"]));
        assert_eq!(request_id.as_deref(), Some("r1"));
        assert!(conversation_id.as_str().starts_with("c_"));
        let stored = app
            .ports
            .conversations
            .get(&conversation_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.members, members);
        assert_eq!(stored.last_seq, Seq::ZERO);
    }

    #[tokio::test]
    async fn each_creation_gets_a_new_id() {
        let (app, _h) = App::in_memory();
        let mut ids = std::collections::HashSet::new();
        for _ in 0..20 {
            let f = create_conversation(&app, &user("alice"), &users(&["bob"]), None)
                .await
                .unwrap()
                .into_frame();
            let ServerFrame::Conversation {
                conversation_id, ..
            } = f
            else {
                panic!("not a conversation frame")
            };
            assert!(ids.insert(conversation_id));
        }
    }

    #[tokio::test]
    async fn alone_or_too_many_is_bad_request_and_stores_nothing() {
        let (mut app, h) = App::in_memory();
        app.settings.send = SendConfig {
            max_members: 3,
            ..SendConfig::default()
        };
        for list in [
            vec![],
            vec!["alice"],
            vec!["alice", "alice"],
            vec!["bob", "carol", "dave"],
        ] {
            let f = create_conversation(&app, &user("alice"), &users(&list), Some("r".into()))
                .await
                .unwrap()
                .into_frame();
            let ServerFrame::Error {
                code, request_id, ..
            } = f
            else {
                panic!("{list:?} accepted")
            };
            assert_eq!(code, ErrorCode::BadRequest, "{list:?}");
            assert_eq!(request_id.as_deref(), Some("r"));
        }
        // Exactly at the bound, duplicates not counted: accepted.
        let f = create_conversation(
            &app,
            &user("alice"),
            &users(&["bob", "carol", "bob", "alice"]),
            None,
        )
        .await
        .unwrap()
        .into_frame();
        assert!(matches!(f, ServerFrame::Conversation { ref members, .. } if members.len() == 3));
        drop(h);
    }

    #[tokio::test]
    async fn store_down_is_a_fault() {
        let (app, h) = App::in_memory();
        h.store.set_down(true);
        let r = create_conversation(&app, &user("alice"), &users(&["bob"]), None).await;
        assert!(matches!(r, Err(StoreError::Unavailable(_))));
    }
}
