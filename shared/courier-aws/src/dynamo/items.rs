//! Item mapping: domain types to attribute maps and back.
//!
//! Writing cannot fail; reading checks every attribute's presence, type and
//! range, since a table may hold items this code did not write (an older
//! version, a hand edit, the bench's seeder). A bad item is
//! [`StoreError::Corrupt`] naming the table and the attribute, never a panic.

use std::collections::HashMap;
use std::str::FromStr;

use aws_sdk_dynamodb::types::AttributeValue;

use courier_core::domain::{
    ClientMsgId, Conversation, ConversationId, Device, InvalidValue, Message, Millis,
    PendingDelivery, Platform, Seq, UserId,
};
use courier_core::ports::{NewMessage, StoreError};

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

pub(super) type Item = HashMap<String, AttributeValue>;

pub(super) fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

pub(super) fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

pub(super) fn idempotency_key(
    conversation: &ConversationId,
    sender: &UserId,
    client_msg_id: &ClientMsgId,
) -> String {
    format!("{conversation}#{sender}#{client_msg_id}")
}

pub(super) fn message_item(m: &Message) -> Item {
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
pub(super) fn stored_message_item(new: &NewMessage) -> Item {
    let mut item = message_item(&new.message);
    if let Some(at) = new.message_expires_at {
        item.insert(attr::EXPIRES_AT.to_owned(), n(at));
    }
    item
}

pub(super) fn idempotency_item(new: &NewMessage) -> Item {
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

pub(super) fn conversation_item(c: &Conversation) -> Item {
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

pub(super) fn device_item(d: &Device) -> Item {
    HashMap::from([
        (attr::TOKEN.to_owned(), s(d.token.as_str())),
        (attr::USER_ID.to_owned(), s(d.user_id.as_str())),
        (attr::PLATFORM.to_owned(), s(d.platform.as_str())),
        (attr::ENDPOINT_ARN.to_owned(), s(d.endpoint_arn.as_str())),
        (attr::UPDATED_AT.to_owned(), n(d.updated_at)),
    ])
}

pub(super) fn corrupt(table: &str, name: &str, what: &str) -> StoreError {
    StoreError::Corrupt(format!("{table} item: attribute {name} {what}"))
}

pub(super) fn get_s<'a>(item: &'a Item, name: &str, table: &str) -> Result<&'a str, StoreError> {
    match item.get(name) {
        Some(AttributeValue::S(v)) => Ok(v),
        Some(_) => Err(corrupt(table, name, "is not a string")),
        None => Err(corrupt(table, name, "is missing")),
    }
}

pub(super) fn get_n<T: FromStr>(item: &Item, name: &str, table: &str) -> Result<T, StoreError> {
    match item.get(name) {
        Some(AttributeValue::N(v)) => v
            .parse()
            .map_err(|_| corrupt(table, name, "is not a number of the expected range")),
        Some(_) => Err(corrupt(table, name, "is not a number")),
        None => Err(corrupt(table, name, "is missing")),
    }
}

pub(super) fn get_id<T>(
    item: &Item,
    name: &str,
    table: &str,
    parse: impl Fn(&str) -> Result<T, InvalidValue>,
) -> Result<T, StoreError> {
    parse(get_s(item, name, table)?).map_err(|e| corrupt(table, name, &format!("is invalid: {e}")))
}

pub(super) fn parse_message(item: &Item) -> Result<Message, StoreError> {
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

pub(super) fn parse_conversation(item: &Item) -> Result<Conversation, StoreError> {
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

pub(super) fn parse_pending(item: &Item) -> Result<PendingDelivery, StoreError> {
    const T: &str = "pending_deliveries";
    Ok(PendingDelivery {
        user_id: get_id(item, attr::USER_ID, T, UserId::parse)?,
        conversation_id: get_id(item, attr::CONVERSATION_ID, T, ConversationId::parse)?,
        first_undelivered_seq: Seq(get_n(item, attr::FIRST_UNDELIVERED_SEQ, T)?),
        last_seq: Seq(get_n(item, attr::LAST_SEQ, T)?),
        updated_at: get_n(item, attr::UPDATED_AT, T)?,
    })
}

pub(super) fn parse_device(item: &Item) -> Result<Device, StoreError> {
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
}
