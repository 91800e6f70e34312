//! Domain types: values that can only hold what the contract allows.
//!
//! Every identifier that crosses a trust boundary (a client frame, an
//! authorizer context, a DynamoDB item) is parsed into one of these types once,
//! at the edge; past that point the services never re-validate. The parse
//! rules are deliberately narrow: ids are printable ASCII without separators,
//! so they can be embedded in Redis keys (`ws:{user}`) and composite DynamoDB
//! keys (`{conversation}#{sender}#{client_msg_id}`) without escaping.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a value was refused. The message is safe to show to a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidValue {
    pub field: &'static str,
    pub reason: &'static str,
}

impl InvalidValue {
    pub fn new(field: &'static str, reason: &'static str) -> Self {
        Self { field, reason }
    }
}

/// Characters allowed in ids: `[A-Za-z0-9_.:@-]`. `#` is excluded because it
/// separates parts of composite keys; `|` because it separates fields in the
/// registry value; whitespace and controls because they end up in logs.
fn valid_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '@' | '=')
}

fn parse_id(field: &'static str, raw: &str, max: usize) -> Result<String, InvalidValue> {
    if raw.is_empty() {
        return Err(InvalidValue::new(field, "must not be empty"));
    }
    if raw.len() > max {
        return Err(InvalidValue::new(field, "too long"));
    }
    if !raw.chars().all(valid_id_char) {
        return Err(InvalidValue::new(
            field,
            "may contain only letters, digits and _ - . : @ =",
        ));
    }
    Ok(raw.to_owned())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $field:literal, $max:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Longest accepted value, in bytes.
            pub const MAX_LEN: usize = $max;

            pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
                parse_id($field, raw, Self::MAX_LEN).map(Self)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                Self::parse(&raw).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// A user, as named by the token's `sub` claim (Cognito subs are UUIDs).
    UserId,
    "user_id",
    128
);
id_type!(
    /// A conversation (the messages table's partition key).
    ConversationId,
    "conversation_id",
    128
);
id_type!(
    /// API Gateway's connection id (`L0SM9cOFvHcCIhw=` style).
    ConnectionId,
    "connection_id",
    128
);
id_type!(
    /// The sender's own id for a message, the idempotency key of a send.
    ClientMsgId,
    "client_msg_id",
    64
);

/// A position in a conversation. Seqs start at 1 and have no holes; 0 means
/// "before the first message" (a fresh conversation's `last_seq`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
#[serde(transparent)]
pub struct Seq(pub u64);

impl Seq {
    pub const ZERO: Seq = Seq(0);

    /// The seq after this one. Saturates: a client's `after_seq` of
    /// `u64::MAX` asks for nothing (an empty range), never a panic or a wrap
    /// back to the start of the conversation.
    pub fn next(self) -> Seq {
        Seq(self.0.saturating_add(1))
    }

    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A message body: non-empty UTF-8 within a configured byte limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Body(String);

impl Body {
    pub fn parse(raw: &str, max_bytes: usize) -> Result<Self, BodyError> {
        if raw.trim().is_empty() {
            return Err(BodyError::Empty);
        }
        if raw.len() > max_bytes {
            return Err(BodyError::TooLarge { max_bytes });
        }
        Ok(Self(raw.to_owned()))
    }

    /// For values read back from storage, which were validated on the way in.
    pub fn from_stored(raw: String) -> Self {
        Self(raw)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("body must not be empty")]
    Empty,
    #[error("body is larger than {max_bytes} bytes")]
    TooLarge { max_bytes: usize },
}

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

pub fn now_millis() -> Millis {
    chrono::Utc::now().timestamp_millis()
}

/// A stored message. `seq` is its position in the conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub conversation_id: ConversationId,
    pub seq: Seq,
    pub message_id: String,
    pub client_msg_id: ClientMsgId,
    pub sender_id: UserId,
    pub body: String,
    pub sent_at: Millis,
}

/// A row of `pending_deliveries`: `user` may not yet have messages
/// `first_undelivered_seq..=last_seq` of `conversation_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingDelivery {
    pub user_id: UserId,
    pub conversation_id: ConversationId,
    pub first_undelivered_seq: Seq,
    pub last_seq: Seq,
    pub updated_at: Millis,
}

/// A conversation: its members and the seq of its latest message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conversation {
    pub conversation_id: ConversationId,
    pub members: Vec<UserId>,
    pub last_seq: Seq,
    pub created_at: Millis,
}

impl Conversation {
    pub fn is_member(&self, user: &UserId) -> bool {
        self.members.iter().any(|m| m == user)
    }

    /// Every member but `user`.
    pub fn others<'a>(&'a self, user: &'a UserId) -> impl Iterator<Item = &'a UserId> + 'a {
        self.members.iter().filter(move |m| *m != user)
    }
}

/// A live WebSocket connection as the registry knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connection {
    pub connection_id: ConnectionId,
    /// When API Gateway accepted the connection (its `connectedAt`); `None`
    /// when the event did not say. Used to tell "not open yet" 410s from
    /// "gone" 410s; unknown, the open window runs from the first post.
    pub connected_at: Option<Millis>,
}

/// Push platform of a device token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    Apns,
    ApnsSandbox,
    Fcm,
}

impl Platform {
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Apns => "apns",
            Platform::ApnsSandbox => "apns_sandbox",
            Platform::Fcm => "fcm",
        }
    }

    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        match raw {
            "apns" => Ok(Platform::Apns),
            "apns_sandbox" => Ok(Platform::ApnsSandbox),
            "fcm" => Ok(Platform::Fcm),
            _ => Err(InvalidValue::new(
                "platform",
                "must be one of apns, apns_sandbox, fcm",
            )),
        }
    }
}

/// A registered push device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    pub user_id: UserId,
    pub platform: Platform,
    pub token: String,
    /// The SNS platform endpoint ARN (or the in-memory notifier's stand-in).
    pub endpoint_arn: String,
    pub updated_at: Millis,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seq_after_the_largest_saturates() {
        assert_eq!(Seq(41).next(), Seq(42));
        assert_eq!(Seq(u64::MAX).next(), Seq(u64::MAX));
    }

    #[test]
    fn ids_refuse_separators_and_empty() {
        assert!(UserId::parse("bob").is_ok());
        assert!(UserId::parse("").is_err());
        assert!(UserId::parse("a#b").is_err());
        assert!(UserId::parse("a|b").is_err());
        assert!(UserId::parse("a b").is_err());
        assert!(ConversationId::parse(&"c".repeat(129)).is_err());
        assert!(ConnectionId::parse("L0SM9cOFvHcCIhw=").is_ok());
    }

    #[test]
    fn body_refuses_empty_and_oversized() {
        assert_eq!(Body::parse("   ", 10), Err(BodyError::Empty));
        assert_eq!(
            Body::parse("hello world", 5),
            Err(BodyError::TooLarge { max_bytes: 5 })
        );
        assert_eq!(
            Body::parse("hé", 3).map(|b| b.as_str().to_owned()),
            Ok("hé".into())
        );
    }

    #[test]
    fn ids_deserialize_through_parse() {
        let ok: Result<UserId, _> = serde_json::from_str("\"alice\"");
        assert!(ok.is_ok());
        let bad: Result<UserId, _> = serde_json::from_str("\"al ice\"");
        assert!(bad.is_err());
    }
}
