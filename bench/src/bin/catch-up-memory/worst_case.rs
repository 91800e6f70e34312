//! The worst case for catch-up's memory, as ports: every range read
//! answered at once and in full, with the largest body the server accepts;
//! every post slowed. Reads then outrun posts, so what has been read piles
//! up until the byte budget (`CATCH_UP_MAX_BYTES_IN_FLIGHT`) stops it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context as _, ensure};
use async_trait::async_trait;
use courier_core::app::Settings;
use courier_core::domain::{
    Body, ClientMsgId, ConnectionId, ConversationId, Message, Seq, UserId, now_millis,
};
use courier_core::ports::{
    AppendOutcome, ConnectionInfo, Gateway, MessageStore, NewMessage, PostError, StoreError,
};
use courier_core::services::send::worst_frame_len;

use crate::record::Kind;

/// The first `chars` characters of `kind`'s pattern, repeated.
pub fn body_of(kind: Kind, chars: usize) -> String {
    kind.pattern().chars().cycle().take(chars).collect()
}

/// The largest body of `kind` that `send_message` accepts from `sender` in
/// `conversation` under `settings`, and its frame length: the longest
/// repetition of the pattern that passes both of the send path's checks,
/// `Body::parse` (raw bytes ≤ `MAX_BODY_BYTES`) and `worst_frame_len` (the
/// one-message frame as encoded ≤ `FRAME_BYTES`). Both grow with the
/// length, so bisection finds it. The tiny kind is one byte, not searched.
pub fn largest_body(
    kind: Kind,
    settings: &Settings,
    conversation: &ConversationId,
    sender: &UserId,
) -> anyhow::Result<(Body, usize)> {
    let accepted = |chars: usize| -> Option<(Body, usize)> {
        let body = Body::parse(&body_of(kind, chars), settings.send.max_body_bytes).ok()?;
        let frame = worst_frame_len(conversation, sender, &body);
        (frame <= settings.delivery.max_frame_bytes).then_some((body, frame))
    };
    if kind == Kind::Tiny {
        return accepted(1).context("a 1-byte body is refused");
    }
    // A character is at least a byte, so one past `MAX_BODY_BYTES`
    // characters is refused.
    let (mut lo, mut hi) = (1, settings.send.max_body_bytes + 1);
    ensure!(
        accepted(lo).is_some() && accepted(hi).is_none(),
        "{}: the send path's checks are not monotone in length here",
        kind.name()
    );
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if accepted(mid).is_some() {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    accepted(lo).context("the bisection's lower end is refused")
}

/// A message store with every conversation's history in it and nothing
/// stored: `range` makes the messages it is asked for on the spot and
/// answers at once, `limit` of them from `from` (a conversation longer
/// than any read). The process's memory is then the catch-up's own.
pub struct Fabricated {
    body: Arc<str>,
    sender: UserId,
}

impl Fabricated {
    pub fn new(body: &Body, sender: UserId) -> Self {
        Self {
            body: Arc::from(body.as_str()),
            sender,
        }
    }
}

#[async_trait]
impl MessageStore for Fabricated {
    async fn append(&self, _: &NewMessage) -> Result<AppendOutcome, StoreError> {
        Err(StoreError::Unavailable(
            "the fabricated store only answers range reads".into(),
        ))
    }

    async fn find_sent(
        &self,
        _: &ConversationId,
        _: &UserId,
        _: &ClientMsgId,
    ) -> Result<Option<Message>, StoreError> {
        Ok(None)
    }

    async fn range(
        &self,
        conversation: &ConversationId,
        from: Seq,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        let sent_at = now_millis();
        (0..limit as u64)
            .map(|i| {
                // Ids as the send path makes them (hyphenated UUIDs), so a
                // message weighs what a stored one does.
                let key = uuid::Uuid::new_v4().to_string();
                Ok(Message {
                    conversation_id: conversation.clone(),
                    seq: Seq(from.get() + i),
                    message_id: uuid::Uuid::new_v4().to_string(),
                    client_msg_id: ClientMsgId::parse(&key)
                        .map_err(|e| StoreError::Corrupt(format!("client_msg_id {key}: {e}")))?,
                    sender_id: self.sender.clone(),
                    body: self.body.to_string(),
                    sent_at,
                })
            })
            .collect()
    }
}

/// A gateway that holds every post `delay`, then counts the frame and
/// drops it; every connection is open.
pub struct SlowGateway {
    delay: Duration,
    frames: AtomicUsize,
    bytes: AtomicU64,
    largest: AtomicUsize,
}

impl SlowGateway {
    pub fn new(delay: Duration) -> Self {
        Self {
            delay,
            frames: AtomicUsize::new(0),
            bytes: AtomicU64::new(0),
            largest: AtomicUsize::new(0),
        }
    }

    /// Frames posted, their bytes, the largest.
    pub fn posted(&self) -> (usize, u64, usize) {
        (
            self.frames.load(Ordering::SeqCst),
            self.bytes.load(Ordering::SeqCst),
            self.largest.load(Ordering::SeqCst),
        )
    }
}

#[async_trait]
impl Gateway for SlowGateway {
    async fn post(&self, _: &ConnectionId, data: &[u8]) -> Result<(), PostError> {
        tokio::time::sleep(self.delay).await;
        self.frames.fetch_add(1, Ordering::SeqCst);
        self.bytes.fetch_add(data.len() as u64, Ordering::SeqCst);
        self.largest.fetch_max(data.len(), Ordering::SeqCst);
        Ok(())
    }

    async fn get(&self, _: &ConnectionId) -> Result<Option<ConnectionInfo>, PostError> {
        Ok(Some(ConnectionInfo {
            connected_at: None,
            last_active_at: None,
            source_ip: None,
        }))
    }

    async fn delete(&self, _: &ConnectionId) -> Result<(), PostError> {
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ids() -> (ConversationId, UserId) {
        (
            ConversationId::parse("conversation-0001").unwrap(),
            UserId::parse("sender").unwrap(),
        )
    }

    #[test]
    fn the_largest_body_passes_and_one_character_more_is_refused() {
        let settings = Settings::default();
        let (c, sender) = ids();
        for kind in Kind::ADVERSARIAL {
            let (body, frame) = largest_body(kind, &settings, &c, &sender).unwrap();
            assert!(frame <= settings.delivery.max_frame_bytes, "{kind:?}");
            assert!(
                body.as_str().len() <= settings.send.max_body_bytes,
                "{kind:?}"
            );
            let longer = body_of(kind, body.as_str().chars().count() + 1);
            let refused = match Body::parse(&longer, settings.send.max_body_bytes) {
                Err(_) => true,
                Ok(b) => worst_frame_len(&c, &sender, &b) > settings.delivery.max_frame_bytes,
            };
            assert!(refused, "{kind:?}: one character more is accepted too");
        }
    }

    /// Which limit stops each kind: the frame for what JSON escapes, the
    /// body for the emoji (4 bytes raw and encoded alike).
    #[test]
    fn escaped_kinds_stop_at_the_frame_and_the_emoji_at_the_body() {
        let settings = Settings::default();
        let (c, sender) = ids();
        let max_frame = settings.delivery.max_frame_bytes;
        for kind in [Kind::Quote, Kind::Backslash, Kind::Control, Kind::Mix] {
            let (_, frame) = largest_body(kind, &settings, &c, &sender).unwrap();
            // Within one character's encoding (at most 6 bytes) of it.
            assert!(frame + 6 > max_frame, "{kind:?}: frame {frame}");
        }
        let (body, frame) = largest_body(Kind::Emoji, &settings, &c, &sender).unwrap();
        assert_eq!(body.as_str().len(), settings.send.max_body_bytes);
        assert!(frame < max_frame / 2 + 1024, "{frame}");
    }

    #[tokio::test]
    async fn fabricated_reads_answer_in_full_from_the_seq_asked() {
        let (c, sender) = ids();
        let store = Fabricated::new(&Body::parse("hi", 10).unwrap(), sender);
        let got = store.range(&c, Seq(7), 3).await.unwrap();
        let seqs: Vec<u64> = got.iter().map(|m| m.seq.get()).collect();
        assert_eq!(seqs, [7, 8, 9]);
        assert!(got.iter().all(|m| m.body == "hi" && m.conversation_id == c));
    }
}
