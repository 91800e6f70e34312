//! One conversation as the client holds it: messages by seq, what is
//! contiguous, what was acknowledged, and where the holes are.
//!
//! This is docs/architecture.md: the reconnect flow, step 4 in code. Messages arrive from three directions
//! that race each other (catch-up frames, live posts, range `sync`
//! replies) and any of them may repeat what another delivered, so the
//! timeline is keyed by seq: a second copy of a seq is dropped, never shown
//! twice. Seqs have no holes on the server, so a hole here means a message
//! still on its way or lost in transit; the client asks for it with a range
//! `sync` once the hole has persisted past a grace period (a live message
//! overtaking a catch-up frame opens a hole that closes by itself).
//!
//! Acks only ever cover the contiguous prefix: acking past a hole would
//! tell the server to forget a message the user never got.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use courier_core::domain::Seq;
use courier_core::protocol::WireMessage;

/// A conversation's messages in seq order.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    messages: BTreeMap<u64, WireMessage>,
    /// Every seq in `1..=contiguous` is held.
    contiguous: u64,
    /// Highest seq acknowledged to the server.
    acked: u64,
    /// When the current hole was first seen (`None`: no hole).
    hole_since: Option<Instant>,
    /// Duplicates dropped so far (for tests and stats).
    duplicates: u64,
}

/// What inserting one message did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    New,
    Duplicate,
}

impl Timeline {
    pub fn new() -> Self {
        Self::default()
    }

    /// Places `m` at its seq; a seq already held is a duplicate and is
    /// dropped (the first copy wins: copies of one seq are the same message).
    pub fn insert(&mut self, m: WireMessage, now: Instant) -> Inserted {
        let seq = m.seq.get();
        if seq == 0 || seq <= self.contiguous || self.messages.contains_key(&seq) {
            self.duplicates += 1;
            return Inserted::Duplicate;
        }
        self.messages.insert(seq, m);
        self.extend_prefix(now);
        Inserted::New
    }

    /// The server said history starts at `first` (retention deleted what
    /// lies below): every seq below it counts as held, so the prefix can be
    /// contiguous and acked again. Returns whether the prefix grew.
    pub fn history_starts(&mut self, first: Seq, now: Instant) -> bool {
        let below = first.get().saturating_sub(1);
        if below <= self.contiguous {
            return false;
        }
        self.contiguous = below;
        self.extend_prefix(now);
        true
    }

    /// Runs the contiguous prefix over what is held just past it, and
    /// starts (or ends) the current hole's grace period.
    fn extend_prefix(&mut self, now: Instant) {
        while self.messages.contains_key(&(self.contiguous + 1)) {
            self.contiguous += 1;
        }
        if self.has_hole() {
            self.hole_since.get_or_insert(now);
        } else {
            self.hole_since = None;
        }
    }

    /// Every seq up to this one is held.
    pub fn contiguous_through(&self) -> Seq {
        Seq(self.contiguous)
    }

    pub fn highest(&self) -> Seq {
        Seq(self.messages.keys().next_back().copied().unwrap_or(0))
    }

    pub fn has_hole(&self) -> bool {
        self.highest().get() > self.contiguous
    }

    /// The missing seqs between the contiguous prefix and the highest held,
    /// as inclusive ranges.
    pub fn holes(&self) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut expected = self.contiguous + 1;
        for &seq in self.messages.range(self.contiguous + 1..).map(|(s, _)| s) {
            if seq > expected {
                out.push((expected, seq - 1));
            }
            expected = seq + 1;
        }
        out
    }

    /// A hole that has been open at least `grace`: time to ask for it.
    pub fn hole_older_than(&self, grace: Duration, now: Instant) -> bool {
        self.hole_since
            .is_some_and(|since| now.duration_since(since) >= grace)
    }

    /// Restarts the grace period (a `sync` for the hole was just sent).
    pub fn hole_requested(&mut self, now: Instant) {
        if self.has_hole() {
            self.hole_since = Some(now);
        }
    }

    /// The seq to acknowledge, if the contiguous prefix grew past the last
    /// ack.
    pub fn ack_due(&self) -> Option<Seq> {
        (self.contiguous > self.acked).then_some(Seq(self.contiguous))
    }

    pub fn mark_acked(&mut self, seq: Seq) {
        self.acked = self.acked.max(seq.get());
    }

    pub fn acked(&self) -> Seq {
        Seq(self.acked)
    }

    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// The messages in seq order.
    pub fn messages(&self) -> impl Iterator<Item = &WireMessage> {
        self.messages.values()
    }

    pub fn get(&self, seq: Seq) -> Option<&WireMessage> {
        self.messages.get(&seq.get())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use courier_core::domain::UserId;

    fn m(seq: u64) -> WireMessage {
        WireMessage {
            seq: Seq(seq),
            message_id: format!("m{seq}"),
            sender_id: UserId::parse("alice").unwrap(),
            body: format!("body {seq}"),
            sent_at: 1_795_000_000_000 + i64::try_from(seq).unwrap(),
        }
    }

    fn seqs(t: &Timeline) -> Vec<u64> {
        t.messages().map(|m| m.seq.get()).collect()
    }

    #[test]
    fn out_of_order_arrivals_end_in_seq_order() {
        let now = Instant::now();
        let mut t = Timeline::new();
        for s in [3, 1, 5, 2, 4] {
            assert_eq!(t.insert(m(s), now), Inserted::New);
        }
        assert_eq!(seqs(&t), vec![1, 2, 3, 4, 5]);
        assert_eq!(t.contiguous_through(), Seq(5));
        assert!(!t.has_hole());
    }

    #[test]
    fn duplicates_are_dropped_and_counted() {
        let now = Instant::now();
        let mut t = Timeline::new();
        t.insert(m(1), now);
        t.insert(m(2), now);
        let mut again = m(2);
        again.body = "a second copy".into();
        assert_eq!(t.insert(again, now), Inserted::Duplicate);
        assert_eq!(t.insert(m(1), now), Inserted::Duplicate);
        t.insert(m(4), now);
        assert_eq!(t.insert(m(4), now), Inserted::Duplicate);
        assert_eq!(t.duplicates(), 3);
        assert_eq!(t.get(Seq(2)).unwrap().body, "body 2");
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn gaps_are_found_and_acks_stop_at_them() {
        let now = Instant::now();
        let mut t = Timeline::new();
        for s in [1, 2, 5, 6, 9] {
            t.insert(m(s), now);
        }
        assert_eq!(t.contiguous_through(), Seq(2));
        assert_eq!(t.holes(), vec![(3, 4), (7, 8)]);
        assert_eq!(t.ack_due(), Some(Seq(2)));
        t.mark_acked(Seq(2));
        assert_eq!(t.ack_due(), None);
        // The fill arrives: the ack moves to the new end of the prefix.
        for s in [3, 4, 7, 8] {
            t.insert(m(s), now);
        }
        assert!(t.holes().is_empty());
        assert_eq!(t.ack_due(), Some(Seq(9)));
    }

    #[test]
    fn a_hole_waits_out_its_grace_before_it_is_requested() {
        let start = Instant::now();
        let grace = Duration::from_millis(300);
        let mut t = Timeline::new();
        t.insert(m(2), start);
        assert!(t.has_hole());
        assert!(!t.hole_older_than(grace, start + Duration::from_millis(100)));
        assert!(t.hole_older_than(grace, start + grace));
        t.hole_requested(start + grace);
        assert!(!t.hole_older_than(grace, start + grace + Duration::from_millis(100)));
        t.insert(m(1), start + grace);
        assert!(!t.hole_older_than(grace, start + grace * 10));
    }

    #[test]
    fn the_ack_cursor_never_moves_down() {
        let mut t = Timeline::new();
        t.mark_acked(Seq(7));
        t.mark_acked(Seq(3));
        assert_eq!(t.acked(), Seq(7));
    }

    #[test]
    fn history_start_closes_the_hole_below_it() {
        let now = Instant::now();
        let mut t = Timeline::new();
        for s in [1, 2, 6, 7] {
            t.insert(m(s), now);
        }
        assert_eq!(t.holes(), [(3, 5)]);
        // Retention deleted 3..=5: the prefix runs through 7.
        assert!(t.history_starts(Seq(6), now));
        assert_eq!(t.contiguous_through(), Seq(7));
        assert!(!t.has_hole());
        assert_eq!(t.ack_due(), Some(Seq(7)));
        // Below what is held already: nothing changes.
        assert!(!t.history_starts(Seq(4), now));
        assert_eq!(t.contiguous_through(), Seq(7));
        // Nothing held yet: the prefix starts just below the first kept seq,
        // and a later seq above it opens a hole as usual.
        let mut fresh = Timeline::new();
        assert!(fresh.history_starts(Seq(40), now));
        assert_eq!(fresh.contiguous_through(), Seq(39));
        fresh.insert(m(41), now);
        assert_eq!(fresh.holes(), [(40, 40)]);
    }

    #[test]
    fn seq_zero_is_never_a_message() {
        let mut t = Timeline::new();
        assert_eq!(t.insert(m(0), Instant::now()), Inserted::Duplicate);
        assert!(t.is_empty());
    }
}
