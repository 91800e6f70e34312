//! Creating a conversation (`createConversation`) and listing the user's
//! conversations (`listConversations`).
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
use crate::domain::{Conversation, ConversationId, DeviceId, Seq, UserId, now_millis};
use crate::ports::StoreError;
use crate::protocol::{ConversationView, DEFAULT_LIST_LIMIT, ErrorCode, FrameError, ServerFrame};
use crate::services::Answer;

/// `listConversations`: one page of the user's conversations, with members,
/// `last_seq` and the asking device's cursor, so an app draws its chat list
/// with unread counts and a new device picks the history it wants to pull
/// with range `sync`. Two reads, one after the other: the memberships page,
/// then the conversations and the user's pending rows at once.
#[instrument(skip_all, fields(user_id = %user, device_id = %device))]
pub async fn list_conversations(
    app: &App,
    user: &UserId,
    device: &DeviceId,
    after: Option<&ConversationId>,
    limit: Option<u32>,
    request_id: Option<String>,
) -> Result<Answer, StoreError> {
    let limit = limit.unwrap_or(DEFAULT_LIST_LIMIT) as usize;
    let ((page, next), rows) = futures::try_join!(
        app.ports.conversations.list_for(user, after, limit),
        app.ports.pending.list(user),
    )?;
    let conversations = page
        .into_iter()
        .map(|c| {
            let held = rows
                .iter()
                .find(|r| r.conversation_id == c.conversation_id)
                .map_or(c.last_seq, |r| r.held_by(device));
            ConversationView {
                delivered_through_seq: held.min(c.last_seq),
                conversation_id: c.conversation_id,
                members: c.members,
                last_seq: c.last_seq,
            }
        })
        .collect();
    Ok(Answer::Done(ServerFrame::Conversations {
        conversations,
        next,
        request_id,
    }))
}

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

    #[tokio::test]
    async fn list_conversations_pages_with_this_devices_cursor() {
        use crate::domain::ClientMsgId;
        use crate::protocol::{AckItem, ConversationView};
        use crate::services::{ack, send};
        let (app, _h) = App::in_memory();
        let phone = DeviceId::parse("phone").unwrap();
        let laptop = DeviceId::parse("laptop").unwrap();
        let mut ids = Vec::new();
        for _ in 0..3 {
            let ServerFrame::Conversation {
                conversation_id, ..
            } = create_conversation(&app, &user("alice"), &users(&["bob"]), None)
                .await
                .unwrap()
                .into_frame()
            else {
                panic!("not a conversation frame");
            };
            ids.push(conversation_id);
        }
        ids.sort();
        // Carol is in none of them.
        create_conversation(&app, &user("carol"), &users(&["dave"]), None)
            .await
            .unwrap();
        for k in 0..4 {
            let key = ClientMsgId::parse(&format!("k{k}")).unwrap();
            send::send_message(&app, &user("alice"), &phone, &ids[0], &key, "hi", None)
                .await
                .unwrap();
        }
        for d in [&phone, &laptop] {
            app.ports
                .links
                .touch(&user("bob"), d, now_millis(), 8, 0)
                .await
                .unwrap();
        }
        let acks = [AckItem {
            conversation_id: ids[0].clone(),
            seq: Seq(3),
        }];
        ack::ack(&app, &user("bob"), &phone, &acks).await.unwrap();

        let page = |device: DeviceId, after: Option<ConversationId>| {
            let app = app.clone();
            async move {
                let f =
                    list_conversations(&app, &user("bob"), &device, after.as_ref(), Some(2), None)
                        .await
                        .unwrap()
                        .into_frame();
                let ServerFrame::Conversations {
                    conversations,
                    next,
                    ..
                } = f
                else {
                    panic!("not a conversations frame: {f:?}");
                };
                (conversations, next)
            }
        };
        let (first, next) = page(phone.clone(), None).await;
        assert_eq!(first.len(), 2);
        assert_eq!(next.as_ref(), Some(&ids[1]));
        let view = |c: &ConversationView| {
            (
                c.conversation_id.clone(),
                c.last_seq,
                c.delivered_through_seq,
            )
        };
        // The phone holds 3 of 4; an untouched conversation counts as read.
        assert_eq!(view(&first[0]), (ids[0].clone(), Seq(4), Seq(3)));
        assert_eq!(view(&first[1]), (ids[1].clone(), Seq(0), Seq(0)));
        assert_eq!(first[0].members, users(&["alice", "bob"]));
        let (rest, next) = page(phone.clone(), next).await;
        assert_eq!((rest.len(), next), (1, None));
        assert_eq!(rest[0].conversation_id, ids[2]);
        // The laptop acked nothing: 0 of 4.
        let (first, _) = page(laptop, None).await;
        assert_eq!(view(&first[0]), (ids[0].clone(), Seq(4), Seq(0)));
        // Carol sees only her own.
        let f = list_conversations(&app, &user("carol"), &phone, None, None, None)
            .await
            .unwrap()
            .into_frame();
        let ServerFrame::Conversations { conversations, .. } = f else {
            panic!("not a conversations frame");
        };
        assert_eq!(conversations.len(), 1);
        assert!(!conversations[0].members.contains(&user("bob")));
    }
}
