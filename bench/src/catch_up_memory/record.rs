//! What `catch-up-memory` measures and `courier-bench catch-up-memory`
//! reads: the body kinds, and the one JSON line a run prints.
//!
//! Compiled into both (the binary includes this file by path, as it links
//! courier-core alone, not this library), so the two sides cannot disagree
//! on a kind or a field.

use serde::{Deserialize, Serialize};

/// The bodies measured: what JSON escapes the most (`"` and `\` to 2 bytes,
/// a control character to 6), what it does not escape but weighs 4 bytes
/// raw (an astral emoji), all of them mixed; and a 1-byte body, the
/// baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Quote,
    Backslash,
    Control,
    Emoji,
    Mix,
    /// One byte: what the catch-up costs besides the messages.
    Tiny,
}

impl Kind {
    /// The kinds whose largest accepted body is measured.
    pub const ADVERSARIAL: [Kind; 5] = [
        Kind::Quote,
        Kind::Backslash,
        Kind::Control,
        Kind::Emoji,
        Kind::Mix,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Quote => "quote",
            Kind::Backslash => "backslash",
            Kind::Control => "control",
            Kind::Emoji => "emoji",
            Kind::Mix => "mix",
            Kind::Tiny => "tiny",
        }
    }

    /// What a body of this kind repeats, character by character.
    pub fn pattern(self) -> &'static str {
        match self {
            Kind::Quote => "\"",
            Kind::Backslash => "\\",
            Kind::Control => "\u{1}",
            Kind::Emoji => "😀",
            Kind::Mix => "\"\\\u{1}😀",
            Kind::Tiny => "x",
        }
    }

    /// As a table shows it.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Quote => "`\"`",
            Kind::Backslash => "`\\`",
            Kind::Control => "U+0001",
            Kind::Emoji => "😀",
            Kind::Mix => "`\"` `\\` U+0001 😀 mixed",
            Kind::Tiny => "1-byte",
        }
    }
}

impl std::str::FromStr for Kind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Kind::ADVERSARIAL
            .into_iter()
            .chain([Kind::Tiny])
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                format!("expected quote, backslash, control, emoji, mix or tiny, got {s:?}")
            })
    }
}

/// One catch-up, measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub kind: Kind,
    /// The body every message carries: its length raw (UTF-8 bytes, what
    /// `MAX_BODY_BYTES` limits) and in characters.
    pub body_bytes: usize,
    pub body_chars: usize,
    /// The body's one-message frame as the send path measures it
    /// (`worst_frame_len`, what `FRAME_BYTES` limits).
    pub frame_bytes: usize,
    pub conversations: usize,
    pub messages_per_conversation: usize,
    /// `CATCH_UP_MAX_BYTES_IN_FLIGHT`, `CATCH_UP_CONCURRENCY` and
    /// `CATCH_UP_CAP` of the run.
    pub max_bytes_in_flight: usize,
    pub concurrency: usize,
    pub per_conversation_cap: usize,
    /// How long the gateway held each post.
    pub post_delay_us: u64,
    /// Live heap bytes (the counting allocator's) right before the
    /// catch-up; the peak was reset to this.
    pub heap_before: usize,
    /// The most live heap bytes at any moment of the catch-up.
    pub heap_peak: usize,
    pub heap_after: usize,
    /// `/proc/self/status` before and after, KiB.
    pub vm_hwm_before_kb: u64,
    pub vm_hwm_after_kb: u64,
    pub vm_rss_before_kb: u64,
    pub vm_rss_after_kb: u64,
    /// Messages delivered and `more` frames, as the catch-up reported them.
    pub messages: usize,
    pub more: usize,
    /// What the gateway was handed: every frame (messages, `more`,
    /// `caught_up`), their bytes, the largest.
    pub frames: usize,
    pub bytes_posted: u64,
    pub largest_frame: usize,
    /// One conversation's delivered messages and their frames as the
    /// catch-up's budget weighs them (`held_bytes`), times the
    /// conversations: the data in the budget's own measure.
    pub bytes_weighed: u64,
    pub elapsed_ms: f64,
}
