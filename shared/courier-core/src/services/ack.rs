//! Acks: the client says "I hold every message of this conversation through
//! `seq`", and the pending row shrinks or goes (docs/architecture.md, delivery rules, `PENDING_CLEAR=ack`).
//!
//! The conditional writes live in [`PendingStore::ack`]: a row is deleted only
//! if `last_seq <= seq` (a message that arrived meanwhile is never wiped), and
//! `first_undelivered_seq` only ever moves up. This service adds what the
//! store cannot know: the user must be a member (an ack is also the source of
//! receipts, which would otherwise leak a non-member's presence), the seq must
//! exist, and when the cursor moved the other members online get a `receipt`.
//!
//! Several acks for one conversation in a frame collapse to the highest.
//!
//! [`PendingStore::ack`]: crate::ports::PendingStore::ack

use std::collections::BTreeMap;

use futures::future::join_all;
use tracing::{debug, instrument};

use crate::app::App;
use crate::domain::{ConversationId, Seq, UserId};
use crate::ports::{AckOutcome, StoreError};
use crate::protocol::{AckItem, ErrorCode, FrameError, ServerFrame};
use crate::services::{Answer, Reply, delivery};

/// What one ack frame did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AckReport {
    /// Per conversation, the outcome of the pending-row write.
    pub outcomes: Vec<(ConversationId, AckOutcome)>,
    /// Conversations refused (not found, not a member, seq beyond the end).
    pub refused: Vec<FrameError>,
    /// Receipt frames accepted by the gateway.
    pub receipts_posted: usize,
}

impl AckReport {
    /// The reply to the client: nothing, unless something was refused.
    pub fn reply(&self, request_id: Option<String>) -> Option<ServerFrame> {
        let first = self.refused.first()?;
        let mut e = first.clone().with_request_id(request_id);
        if self.refused.len() > 1 {
            e.message = format!(
                "{} (and {} more refused)",
                e.message,
                self.refused.len() - 1
            );
        }
        Some(e.to_frame())
    }
}

/// An ack is served for its valid conversations; the reply names the
/// refused ones, if any.
impl Reply for AckReport {
    fn into_reply(self) -> Option<ServerFrame> {
        self.reply(None)
    }
}

#[instrument(skip_all, fields(user_id = %user, acks = acks.len()))]
pub async fn ack(
    app: &App,
    user: &UserId,
    acks: &[AckItem],
) -> Result<Answer<AckReport>, StoreError> {
    let mut highest: BTreeMap<&ConversationId, Seq> = BTreeMap::new();
    for a in acks {
        let s = highest.entry(&a.conversation_id).or_insert(a.seq);
        *s = (*s).max(a.seq);
    }
    let mut report = AckReport::default();
    let mut receipts = Vec::new();
    for (conversation_id, seq) in highest {
        let Some(conv) = app.ports.conversations.get(conversation_id).await? else {
            report.refused.push(FrameError::new(
                ErrorCode::ConversationNotFound,
                format!("conversation {conversation_id} does not exist"),
            ));
            continue;
        };
        if !conv.is_member(user) {
            report.refused.push(FrameError::new(
                ErrorCode::NotAMember,
                format!("not a member of {conversation_id}"),
            ));
            continue;
        }
        if seq > conv.last_seq {
            report.refused.push(FrameError::new(
                ErrorCode::BadRequest,
                format!("seq {seq} is beyond the last message of {conversation_id}"),
            ));
            continue;
        }
        let outcome = app.ports.pending.ack(user, conversation_id, seq).await?;
        debug!(conversation_id = %conversation_id, seq = seq.get(), ?outcome, "ack");
        report.outcomes.push((conversation_id.clone(), outcome));
        if outcome != AckOutcome::Stale {
            receipts.push((conv, seq));
        }
    }
    report.receipts_posted = send_receipts(app, user, &receipts).await;
    Ok(Answer::Done(report))
}

/// Tells the other members online that `user` now holds everything through
/// `seq`. Best effort: receipts are not stored, a member offline gets none.
async fn send_receipts(
    app: &App,
    user: &UserId,
    receipts: &[(crate::domain::Conversation, Seq)],
) -> usize {
    let sends = receipts.iter().flat_map(|(conv, seq)| {
        let frame = ServerFrame::Receipt {
            conversation_id: conv.conversation_id.clone(),
            user_id: user.clone(),
            delivered_through_seq: *seq,
        }
        .to_json();
        conv.others(user)
            .map(move |member| {
                let frames = [frame.clone()];
                async move {
                    delivery::deliver_live(&app.ports, &app.settings.delivery, member, &frames)
                        .await
                        .delivered()
                }
            })
            .collect::<Vec<_>>()
    });
    join_all(sends).await.into_iter().filter(|d| *d).count()
}
