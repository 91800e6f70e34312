//! What one storm client received, and the protocol's promise checked on it.
//!
//! Every storm client holds one conversation: `pending` messages (seqs
//! `1..=pending`) waiting for it, and `live` more sent while it reconnects
//! (`pending + 1..=pending + live`), one sender per conversation, each send
//! after the previous one's `sent`. The client does not ack before the end,
//! so every catch-up it gets starts at seq 1. What docs/protocol.md
//! promises on the wire (sections 8 and 9), and what [`check`] holds the
//! client's frames to:
//!
//! - **A catch-up posts one conversation in seq order.** The whole backlog
//!   fits one frame here, so a catch-up frame is exactly `1..=k`, where
//!   `k` is at least `pending` (nothing was acked) and at most everything
//!   sent. Out of order, a gap or a repeat inside it breaks the promise.
//! - **A live frame is one message**, past the backlog. Live frames come in
//!   seq order and never twice: the send service posts before it answers
//!   `sent` (`services/send.rs`), the gateway keeps one connection's frames
//!   in order, and the next send of a conversation waits for that `sent`.
//! - **Across sources there is no order.** A live message may overtake the
//!   catch-up (it is counted in [`Tally::ahead`]; a client holds it behind
//!   the hole until the hole fills) and may come again in the catch-up that
//!   read it after it was stored ([`Tally::raced`]): section 8 allows both.
//! - **A catch-up comes again only when asked.** Each `sync` may bring a
//!   second copy of the backlog ([`Tally::resent`]); more catch-up frames
//!   than `1 + syncs` is a duplicate nobody asked for. (On AWS a Lambda
//!   retry of a failed asynchronous catch-up would be one more; the local
//!   gateway does not retry, so here it is a fault.)
//! - **A retried send may come live again.** A sender that got
//!   `internal`, no answer, or lost its socket sends again with the same
//!   `client_msg_id`; the retry answers the original seq and delivers it
//!   again (`services/send.rs` `replay`), so each retry may post one more
//!   live copy, whenever it lands ([`Tally::relive`]). A copy beyond the
//!   retries is a duplicate.
//! - **Every seq is shown once**: the distinct seqs are exactly
//!   `1..=pending + live`, whatever the arrival order, and at least one
//!   `caught_up` came, at most one per catch-up asked for.

use std::collections::{BTreeMap, BTreeSet};

/// The frames of one client that bear on delivery, in the order it read
/// them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Received {
    /// The seqs of each `messages` frame, in arrival order.
    pub frames: Vec<Vec<u64>>,
    /// `sync` frames the client sent.
    pub syncs: usize,
    /// `caught_up` frames it read.
    pub caught_ups: usize,
    /// Live seqs whose send the sender retried after it may have been
    /// delivered, and how often: each retry re-runs delivery, so may post
    /// one more copy.
    pub retried: BTreeMap<u64, usize>,
}

/// What one client must end up showing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected {
    /// Seqs `1..=pending` were waiting when it reconnected.
    pub pending: u64,
    /// Seqs past those, sent while it reconnected.
    pub live: u64,
}

impl Expected {
    pub fn all(&self) -> u64 {
        self.pending + self.live
    }
}

/// What a client's frames showed, when they kept the promise.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// Distinct seqs: what the client shows, each once.
    pub shown: usize,
    /// Of them, the messages sent during the storm, by whichever path.
    pub live_shown: usize,
    /// Live messages that came in a live frame (the others came in a
    /// catch-up that read them after they were stored).
    pub live_framed: usize,
    /// Copies a second catch-up brought again (only after a `sync`).
    pub resent: usize,
    /// Seqs that came both in a live frame and in a catch-up.
    pub raced: usize,
    /// First sightings that arrived before a lower seq had: shown only once
    /// the hole below them filled.
    pub ahead: usize,
    /// Extra live copies of a seq whose send was retried (at most one per
    /// retry).
    pub relive: usize,
}

impl Tally {
    pub fn duplicates(&self) -> usize {
        self.resent + self.raced + self.relive
    }
}

/// A broken promise.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Broken {
    #[error("catch-up frame {seqs:?} is not 1..=k in order with {pending} <= k <= {all}")]
    CatchUpFrame {
        seqs: Vec<u64>,
        pending: u64,
        all: u64,
    },
    #[error("frame {0:?} is neither a catch-up (from seq 1) nor one live message past the backlog")]
    Stray(Vec<u64>),
    #[error("live seq {seq} after live seq {after}: live frames out of order or repeated")]
    LiveOrder { seq: u64, after: u64 },
    #[error("{frames} catch-up frames after {syncs} syncs: a duplicate backlog nobody asked for")]
    UncalledCatchUp { frames: usize, syncs: usize },
    #[error("seqs {0:?} never shown")]
    Missing(Vec<u64>),
    #[error("{caught_ups} caught_up frames after {syncs} syncs (want 1..={})", syncs + 1)]
    CaughtUps { caught_ups: usize, syncs: usize },
}

/// Checks `got` against the promise above; the tally when it holds.
pub fn check(got: &Received, want: Expected) -> Result<Tally, Broken> {
    let all = want.all();
    let mut catch_up_copies: BTreeMap<u64, usize> = BTreeMap::new();
    let mut catch_ups = 0;
    let mut live = BTreeSet::new();
    let mut relive: BTreeMap<u64, usize> = BTreeMap::new();
    let mut last_live = want.pending;
    for seqs in &got.frames {
        match seqs.as_slice() {
            [1, ..] => {
                let k = seqs.len() as u64;
                let in_order = seqs.iter().copied().eq(1..=k);
                if !in_order || k < want.pending || k > all {
                    return Err(Broken::CatchUpFrame {
                        seqs: seqs.clone(),
                        pending: want.pending,
                        all,
                    });
                }
                catch_ups += 1;
                for &s in seqs {
                    *catch_up_copies.entry(s).or_default() += 1;
                }
            }
            &[seq] if seq > want.pending && seq <= all => {
                // A retried send posts again: up to one copy per retry,
                // whenever the attempt that posted it got there.
                let copies = |m: &BTreeMap<u64, usize>| m.get(&seq).copied().unwrap_or(0);
                if live.contains(&seq) && copies(&relive) < copies(&got.retried) {
                    *relive.entry(seq).or_default() += 1;
                    continue;
                }
                if seq <= last_live {
                    return Err(Broken::LiveOrder {
                        seq,
                        after: last_live,
                    });
                }
                last_live = seq;
                live.insert(seq);
            }
            _ => return Err(Broken::Stray(seqs.clone())),
        }
    }
    if catch_ups > 1 + got.syncs {
        return Err(Broken::UncalledCatchUp {
            frames: catch_ups,
            syncs: got.syncs,
        });
    }
    if got.caught_ups == 0 || got.caught_ups > 1 + got.syncs {
        return Err(Broken::CaughtUps {
            caught_ups: got.caught_ups,
            syncs: got.syncs,
        });
    }
    let shown: BTreeSet<u64> = catch_up_copies.keys().chain(&live).copied().collect();
    let missing: Vec<u64> = (1..=all).filter(|s| !shown.contains(s)).collect();
    if !missing.is_empty() {
        return Err(Broken::Missing(missing));
    }
    Ok(Tally {
        shown: shown.len(),
        live_shown: shown.iter().filter(|&&s| s > want.pending).count(),
        live_framed: live.len(),
        resent: catch_up_copies.values().map(|n| n - 1).sum(),
        raced: live
            .iter()
            .filter(|s| catch_up_copies.contains_key(s))
            .count(),
        ahead: ahead(got),
        relive: relive.values().sum(),
    })
}

/// The seqs in the order a client shows them: each at its first sighting,
/// copies dropped by seq.
pub fn shown_order(got: &Received) -> Vec<u64> {
    let mut seen = BTreeSet::new();
    got.frames
        .iter()
        .flatten()
        .copied()
        .filter(|&s| seen.insert(s))
        .collect()
}

/// First sightings that arrived while a lower seq was still missing.
fn ahead(got: &Received) -> usize {
    let mut held = BTreeSet::new();
    let mut contiguous = 0;
    let mut ahead = 0;
    for s in shown_order(got) {
        ahead += usize::from(s != contiguous + 1);
        held.insert(s);
        while held.contains(&(contiguous + 1)) {
            contiguous += 1;
        }
    }
    ahead
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const WANT: Expected = Expected {
        pending: 3,
        live: 2,
    };

    fn got(frames: &[&[u64]], syncs: usize, caught_ups: usize) -> Received {
        Received {
            frames: frames.iter().map(|f| f.to_vec()).collect(),
            syncs,
            caught_ups,
            retried: BTreeMap::new(),
        }
    }

    #[test]
    fn a_retried_send_may_come_again_once_per_retry_even_late() {
        let mut g = got(&[&[1, 2, 3], &[4], &[5], &[4]], 0, 1);
        g.retried.insert(4, 1);
        let t = check(&g, WANT).unwrap();
        assert_eq!((t.relive, t.duplicates(), t.shown), (1, 1, 5));
        g.frames.push(vec![4]);
        let e = check(&g, WANT).unwrap_err();
        assert_eq!(e, Broken::LiveOrder { seq: 4, after: 5 });
        // Retrying seq 4 excuses no copy of seq 5.
        let mut g = got(&[&[1, 2, 3], &[4], &[5], &[5]], 0, 1);
        g.retried.insert(4, 3);
        assert!(check(&g, WANT).is_err());
    }

    #[test]
    fn backlog_then_live_passes_with_nothing_duplicated() {
        let t = check(&got(&[&[1, 2, 3], &[4], &[5]], 0, 1), WANT).unwrap();
        assert_eq!(
            t,
            Tally {
                shown: 5,
                live_shown: 2,
                live_framed: 2,
                ..Tally::default()
            }
        );
    }

    #[test]
    fn a_live_message_overtaking_the_catch_up_and_read_by_it_is_allowed() {
        let g = got(&[&[4], &[1, 2, 3, 4], &[5]], 0, 1);
        let t = check(&g, WANT).unwrap();
        assert_eq!((t.raced, t.resent, t.ahead, t.shown), (1, 0, 1, 5));
        assert_eq!(shown_order(&g), vec![4, 1, 2, 3, 5]);
    }

    #[test]
    fn live_messages_read_only_by_the_catch_up_are_shown() {
        let t = check(&got(&[&[1, 2, 3, 4, 5]], 0, 1), WANT).unwrap();
        assert_eq!((t.live_shown, t.live_framed), (2, 0));
    }

    #[test]
    fn a_second_catch_up_after_a_sync_may_resend() {
        let t = check(&got(&[&[1, 2, 3], &[4], &[1, 2, 3, 4], &[5]], 1, 2), WANT).unwrap();
        assert_eq!((t.resent, t.raced, t.duplicates()), (3, 1, 4));
    }

    #[test]
    fn out_of_order_inside_a_catch_up_fails() {
        let e = check(&got(&[&[1, 3, 2], &[4], &[5]], 0, 1), WANT).unwrap_err();
        assert!(matches!(e, Broken::CatchUpFrame { .. }), "{e}");
    }

    #[test]
    fn a_gap_inside_a_catch_up_fails() {
        let e = check(&got(&[&[1, 2, 4], &[5]], 0, 1), WANT).unwrap_err();
        assert!(matches!(e, Broken::CatchUpFrame { .. }), "{e}");
    }

    #[test]
    fn a_catch_up_short_of_the_backlog_fails() {
        let e = check(&got(&[&[1, 2], &[4], &[5]], 0, 1), WANT).unwrap_err();
        assert!(matches!(e, Broken::CatchUpFrame { .. }), "{e}");
    }

    #[test]
    fn a_duplicate_backlog_without_a_sync_fails() {
        let e = check(&got(&[&[1, 2, 3], &[1, 2, 3], &[4], &[5]], 0, 1), WANT).unwrap_err();
        assert_eq!(
            e,
            Broken::UncalledCatchUp {
                frames: 2,
                syncs: 0
            }
        );
    }

    #[test]
    fn a_live_message_twice_fails() {
        let e = check(&got(&[&[1, 2, 3], &[4], &[4], &[5]], 1, 1), WANT).unwrap_err();
        assert_eq!(e, Broken::LiveOrder { seq: 4, after: 4 });
    }

    #[test]
    fn live_frames_out_of_order_fail() {
        let e = check(&got(&[&[1, 2, 3], &[5], &[4]], 0, 1), WANT).unwrap_err();
        assert_eq!(e, Broken::LiveOrder { seq: 4, after: 5 });
    }

    #[test]
    fn a_missing_live_message_fails() {
        let e = check(&got(&[&[1, 2, 3], &[4]], 0, 1), WANT).unwrap_err();
        assert_eq!(e, Broken::Missing(vec![5]));
    }

    #[test]
    fn a_frame_of_neither_shape_fails() {
        let e = check(&got(&[&[1, 2, 3], &[4, 5]], 0, 1), WANT).unwrap_err();
        assert_eq!(e, Broken::Stray(vec![4, 5]));
        let e = check(&got(&[&[1, 2, 3], &[2], &[4], &[5]], 0, 1), WANT).unwrap_err();
        assert_eq!(e, Broken::Stray(vec![2]));
    }

    #[test]
    fn no_caught_up_or_one_too_many_fails() {
        let frames: &[&[u64]] = &[&[1, 2, 3], &[4], &[5]];
        assert!(matches!(
            check(&got(frames, 0, 0), WANT),
            Err(Broken::CaughtUps { .. })
        ));
        assert!(matches!(
            check(&got(frames, 0, 2), WANT),
            Err(Broken::CaughtUps { .. })
        ));
    }
}
