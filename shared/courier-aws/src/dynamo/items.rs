//! Item mapping: domain types to attribute maps and back.
//!
//! Writing cannot fail; reading checks every attribute's presence, type and
//! range, since a table may hold items this code did not write (an older
//! version, a hand edit, the bench's seeder). A bad item is
//! [`StoreError::Corrupt`] naming the table and the attribute, never a panic.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;

use aws_sdk_dynamodb::types::AttributeValue;

use courier_core::domain::{
    ClientMsgId, Conversation, ConversationId, Device, DeviceId, InvalidValue, LinkedDevice,
    Message, Millis, PendingDelivery, Platform, Seq, UserId,
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
    pub const DEVICE_ID: &str = "device_id";
    pub const CURSORS: &str = "cursors";
    pub const LINKED_AT: &str = "linked_at";
    pub const LAST_SEEN_AT: &str = "last_seen_at";
    pub const COUNT: &str = "count";
    pub const CONNECTION_ID: &str = "connection_id";
    pub const CONNECTED_AT: &str = "connected_at";
}

/// Sort keys of the items that share a user's partition of
/// `pending_deliveries` with the pending rows (see the module docs of
/// `dynamo`). They start with `#`, which no conversation id can hold.
pub(super) mod sk {
    use courier_core::domain::{ConversationId, DeviceId};

    /// The lowest sort key a pending row can have: `-` (0x2D) is the smallest
    /// character a conversation id may hold, and `#` (0x23) sorts below it,
    /// so `conversation_id >= "-"` reads pending rows and nothing else.
    pub const PENDING_FROM: &str = "-";
    /// The user's count of linked devices.
    pub const LINK_COUNTER: &str = "#d";
    pub const LINK_PREFIX: &str = "#d#";
    pub const MEMBERSHIP_PREFIX: &str = "#m#";

    pub fn link(device: &DeviceId) -> String {
        format!("{LINK_PREFIX}{device}")
    }

    pub fn membership(conversation: &ConversationId) -> String {
        format!("{MEMBERSHIP_PREFIX}{conversation}")
    }
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
        (attr::DEVICE_ID.to_owned(), s(d.device_id.as_str())),
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
        cursors: parse_cursors(item, T)?,
    })
}

/// `cursors`: a map of device id to the highest seq it holds; absent when
/// no device acknowledged anything since the row was created or lowered.
fn parse_cursors(item: &Item, table: &str) -> Result<BTreeMap<DeviceId, Seq>, StoreError> {
    let name = attr::CURSORS;
    match item.get(name) {
        None => Ok(BTreeMap::new()),
        Some(AttributeValue::M(m)) => m
            .iter()
            .map(|(device, held)| {
                let device = DeviceId::parse(device)
                    .map_err(|e| corrupt(table, name, &format!("has an invalid device: {e}")))?;
                let held = match held {
                    AttributeValue::N(v) => v
                        .parse()
                        .map_err(|_| corrupt(table, name, "holds a seq out of range"))?,
                    _ => return Err(corrupt(table, name, "holds a value that is not a number")),
                };
                Ok((device, Seq(held)))
            })
            .collect(),
        Some(_) => Err(corrupt(table, name, "is not a map")),
    }
}

pub(super) fn link_item(user: &UserId, link: &LinkedDevice) -> Item {
    HashMap::from([
        (attr::USER_ID.to_owned(), s(user.as_str())),
        (
            attr::CONVERSATION_ID.to_owned(),
            s(sk::link(&link.device_id)),
        ),
        (attr::DEVICE_ID.to_owned(), s(link.device_id.as_str())),
        (attr::LINKED_AT.to_owned(), n(link.linked_at)),
        (attr::LAST_SEEN_AT.to_owned(), n(link.last_seen_at)),
    ])
}

pub(super) fn parse_link(item: &Item) -> Result<LinkedDevice, StoreError> {
    const T: &str = "pending_deliveries (link)";
    Ok(LinkedDevice {
        device_id: get_id(item, attr::DEVICE_ID, T, DeviceId::parse)?,
        linked_at: get_n(item, attr::LINKED_AT, T)?,
        last_seen_at: get_n(item, attr::LAST_SEEN_AT, T)?,
    })
}

/// A membership item: `user` is a member of `conversation`, found by a
/// query of the user's partition (`listConversations`).
pub(super) fn membership_item(user: &UserId, conversation: &ConversationId) -> Item {
    HashMap::from([
        (attr::USER_ID.to_owned(), s(user.as_str())),
        (
            attr::CONVERSATION_ID.to_owned(),
            s(sk::membership(conversation)),
        ),
    ])
}

/// The conversation a membership item names.
pub(super) fn parse_membership(item: &Item) -> Result<ConversationId, StoreError> {
    const T: &str = "pending_deliveries (membership)";
    let key = get_s(item, attr::CONVERSATION_ID, T)?;
    let id = key
        .strip_prefix(sk::MEMBERSHIP_PREFIX)
        .ok_or_else(|| corrupt(T, attr::CONVERSATION_ID, "is not a membership key"))?;
    ConversationId::parse(id)
        .map_err(|e| corrupt(T, attr::CONVERSATION_ID, &format!("is invalid: {e}")))
}

pub(super) fn parse_device(item: &Item) -> Result<Device, StoreError> {
    const T: &str = "devices";
    Ok(Device {
        user_id: get_id(item, attr::USER_ID, T, UserId::parse)?,
        // Registered before devices: the device `default`.
        device_id: match item.get(attr::DEVICE_ID) {
            None => DeviceId::default(),
            Some(_) => get_id(item, attr::DEVICE_ID, T, DeviceId::parse)?,
        },
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
            device_id: DeviceId::default(),
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
    fn pending_cursors_are_a_map_of_device_to_seq() {
        let mut item = HashMap::from([
            (attr::USER_ID.to_owned(), s("bob")),
            (attr::CONVERSATION_ID.to_owned(), s("c1")),
            (attr::FIRST_UNDELIVERED_SEQ.to_owned(), n(1)),
            (attr::LAST_SEQ.to_owned(), n(5)),
            (attr::UPDATED_AT.to_owned(), n(0)),
        ]);
        assert!(parse_pending(&item).unwrap().cursors.is_empty(), "absent");
        item.insert(
            attr::CURSORS.into(),
            AttributeValue::M(HashMap::from([
                ("phone".to_owned(), n(3)),
                ("laptop".to_owned(), n(5)),
            ])),
        );
        let row = parse_pending(&item).unwrap();
        let cursors: Vec<(&str, u64)> = row
            .cursors
            .iter()
            .map(|(d, s)| (d.as_str(), s.get()))
            .collect();
        assert_eq!(cursors, [("laptop", 5), ("phone", 3)]);

        item.insert(
            attr::CURSORS.into(),
            AttributeValue::M(HashMap::from([("a b".to_owned(), n(3))])),
        );
        assert!(
            matches!(parse_pending(&item), Err(StoreError::Corrupt(t)) if t.contains("cursors"))
        );
        item.insert(
            attr::CURSORS.into(),
            AttributeValue::M(HashMap::from([("phone".to_owned(), s("3"))])),
        );
        assert!(matches!(parse_pending(&item), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn links_and_memberships_round_trip_through_their_items() {
        let bob = UserId::parse("bob").unwrap();
        let link = LinkedDevice {
            device_id: DeviceId::parse("phone-1").unwrap(),
            linked_at: 10,
            last_seen_at: 20,
        };
        let item = link_item(&bob, &link);
        assert_eq!(
            item.get(attr::CONVERSATION_ID),
            Some(&s("#d#phone-1")),
            "a link sorts below every pending row"
        );
        assert_eq!(parse_link(&item).unwrap(), link);

        let c = ConversationId::parse("c-1").unwrap();
        let item = membership_item(&bob, &c);
        assert_eq!(item.get(attr::CONVERSATION_ID), Some(&s("#m#c-1")));
        assert_eq!(parse_membership(&item).unwrap(), c);
        assert!(sk::LINK_PREFIX < sk::PENDING_FROM && sk::MEMBERSHIP_PREFIX < sk::PENDING_FROM);
    }
}
