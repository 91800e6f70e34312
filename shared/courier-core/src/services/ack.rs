//! Acks: a device says "I hold every message of this conversation through
//! `seq`"; its cursor moves, and the user's pending row goes once every
//! linked device is past it (docs/architecture.md, delivery rules,
//! `PENDING_CLEAR=ack`; devices).
//!
//! The conditional writes live in [`PendingStore::ack`]: a row is deleted only
//! if every linked device holds `last_seq` (a message that arrived meanwhile
//! is never wiped), and a cursor only ever moves up. The linked devices are
//! read once per frame, in the same round as the conversations; devices
//! unseen for `DEVICE_TTL_DAYS` do not hold rows back. This service adds what the
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
use crate::domain::{ConversationId, DeviceId, Seq, UserId, now_millis};
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

/// The user's devices that hold pending rows back: linked and seen within
/// `DEVICE_TTL_DAYS`.
pub async fn holding_devices(app: &App, user: &UserId) -> Result<Vec<DeviceId>, StoreError> {
    let stale_before = app.settings.devices.stale_before(now_millis());
    Ok(app
        .ports
        .links
        .list(user)
        .await?
        .into_iter()
        .filter(|d| d.last_seen_at >= stale_before)
        .map(|d| d.device_id)
        .collect())
}

#[instrument(skip_all, fields(user_id = %user, device_id = %device, acks = acks.len()))]
pub async fn ack(
    app: &App,
    user: &UserId,
    device: &DeviceId,
    acks: &[AckItem],
) -> Result<Answer<AckReport>, StoreError> {
    let mut highest: BTreeMap<&ConversationId, Seq> = BTreeMap::new();
    for a in acks {
        let s = highest.entry(&a.conversation_id).or_insert(a.seq);
        *s = (*s).max(a.seq);
    }
    // One round: every conversation and the linked devices at once.
    let (conversations, linked) = futures::try_join!(
        futures::future::try_join_all(highest.keys().map(|c| app.ports.conversations.get(c))),
        holding_devices(app, user),
    )?;
    let mut report = AckReport::default();
    let mut receipts = Vec::new();
    for ((conversation_id, seq), conv) in highest.into_iter().zip(conversations) {
        let Some(conv) = conv else {
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
        let outcome = app
            .ports
            .pending
            .ack(user, device, conversation_id, seq, &linked)
            .await?;
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
                    delivery::deliver_live(
                        &app.ports,
                        &app.settings.delivery,
                        member,
                        &frames,
                        None,
                    )
                    .await
                    .delivered()
                }
            })
            .collect::<Vec<_>>()
    });
    join_all(sends).await.into_iter().filter(|d| *d).count()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::domain::{ClientMsgId, Conversation};
    use crate::ports::LinkStore;
    use crate::services::send;

    fn id(s: &str) -> UserId {
        UserId::parse(s).unwrap()
    }
    fn dev(s: &str) -> DeviceId {
        DeviceId::parse(s).unwrap()
    }

    /// alice sent 3 messages to bob; bob's phone and laptop are linked, the
    /// laptop last seen `laptop_age_days` ago.
    async fn world(laptop_age_days: i64) -> (App, ConversationId) {
        let (app, h) = App::in_memory();
        let c = ConversationId::parse("c1").unwrap();
        app.ports
            .conversations
            .create(&Conversation {
                conversation_id: c.clone(),
                members: vec![id("alice"), id("bob")],
                last_seq: Seq::ZERO,
                created_at: 1,
            })
            .await
            .unwrap();
        for k in 0..3 {
            let key = ClientMsgId::parse(&format!("k{k}")).unwrap();
            send::send_message(&app, &id("alice"), &dev("web"), &c, &key, "hi", None)
                .await
                .unwrap();
        }
        let now = now_millis();
        let day = 86_400_000;
        h.store
            .touch(
                &id("bob"),
                &dev("laptop"),
                now - laptop_age_days * day,
                8,
                0,
            )
            .await
            .unwrap();
        h.store
            .touch(&id("bob"), &dev("phone"), now, 8, 0)
            .await
            .unwrap();
        (app, c)
    }

    fn through(c: &ConversationId, seq: u64) -> Vec<AckItem> {
        vec![AckItem {
            conversation_id: c.clone(),
            seq: Seq(seq),
        }]
    }

    #[tokio::test]
    async fn an_ack_moves_only_its_devices_cursor_until_every_device_is_past() {
        let (app, c) = world(0).await;
        let report = ack(&app, &id("bob"), &dev("phone"), &through(&c, 3))
            .await
            .unwrap()
            .done()
            .unwrap();
        assert_eq!(report.outcomes, vec![(c.clone(), AckOutcome::Advanced)]);
        let row = app
            .ports
            .pending
            .get(&id("bob"), &c)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.held_by(&dev("phone")), Seq(3));
        assert_eq!(row.start_for(&dev("laptop")), Seq(1));
        let report = ack(&app, &id("bob"), &dev("laptop"), &through(&c, 3))
            .await
            .unwrap()
            .done()
            .unwrap();
        assert_eq!(report.outcomes, vec![(c.clone(), AckOutcome::Cleared)]);
    }

    #[tokio::test]
    async fn a_device_unseen_past_the_ttl_no_longer_holds_the_row() {
        let (app, c) = world(31).await;
        let report = ack(&app, &id("bob"), &dev("phone"), &through(&c, 3))
            .await
            .unwrap()
            .done()
            .unwrap();
        assert_eq!(report.outcomes, vec![(c, AckOutcome::Cleared)]);
    }
}
