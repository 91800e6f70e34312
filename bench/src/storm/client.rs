//! One storm client: it opens its socket at the barrier, reads up to its
//! first `caught_up` (sending `sync` when it is late, as `courier-client`
//! does), waits for the storm to settle, drains its socket behind a `ping`,
//! checks what it read ([`super::check`]) and acks everything.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail, ensure};
use courier_core::backoff::Backoff;
use courier_core::domain::{ConversationId, UserId};
use courier_core::protocol::ServerFrame;
use serde_json::json;
use tokio::sync::{Barrier, watch};

use super::check::{self, Broken, Expected, Received, Tally};
use super::why::{self, CatchUps, Reason};
use super::{PATIENCE, SYNC_AFTER};
use crate::seed::Backlog;
use crate::ws::WsClient;

/// One client's reconnect, as it ended.
pub(super) struct Reconnected {
    pub(super) connected: Duration,
    pub(super) caught_up: Duration,
    pub(super) tally: Tally,
    pub(super) syncs: usize,
    /// Handshakes refused before the socket opened.
    pub(super) refused: u32,
    /// Why it sent its first sync (`None`: it did not).
    pub(super) reason: Option<Reason>,
    /// Live messages that came only with a catch-up asked for after the
    /// storm settled.
    pub(super) late: usize,
    pub(super) ws: WsClient,
}

/// The shared state a client reads: the start, the end of the live sends
/// and of the catch-ups, and the record of its connect's catch-up.
#[derive(Clone)]
pub(super) struct Storm {
    pub(super) ws_url: String,
    pub(super) barrier: Arc<Barrier>,
    pub(super) sync_backoff: bool,
    pub(super) expected: Expected,
    pub(super) catch_ups: Arc<CatchUps>,
    /// The senders' retries, read once they are done.
    pub(super) retried: super::Retried,
    /// Clients past their first `caught_up` (or failed before it).
    pub(super) waited: Arc<AtomicUsize>,
    /// Clients that read a `caught_up`.
    pub(super) caught: Arc<AtomicUsize>,
    /// Set once nothing more will be posted to the clients.
    pub(super) settled: watch::Receiver<bool>,
}

/// What a client has read and sent so far.
#[derive(Default)]
struct Reading {
    got: Received,
    /// `request_id`s of the syncs sent and of the answers read.
    asked: Vec<String>,
    answered: HashSet<String>,
    first_sync: Option<Instant>,
    first_error: Option<String>,
    pong: bool,
}

impl Reading {
    fn read(&mut self, frame: ServerFrame, conversation: &ConversationId) -> anyhow::Result<()> {
        match frame {
            ServerFrame::Messages {
                conversation_id,
                messages,
            } => {
                ensure!(
                    &conversation_id == conversation,
                    "frame of another conversation"
                );
                self.got
                    .frames
                    .push(messages.iter().map(|m| m.seq.get()).collect());
            }
            ServerFrame::CaughtUp { request_id, .. } => {
                self.got.caught_ups += 1;
                self.answered.extend(request_id);
            }
            ServerFrame::Error {
                code, request_id, ..
            } => {
                // Only an error before the first sync can be why it synced.
                if self.first_sync.is_none() {
                    self.first_error.get_or_insert(code.as_str().to_owned());
                }
                self.answered.extend(request_id);
            }
            ServerFrame::Pong { .. } => self.pong = true,
            _ => {}
        }
        Ok(())
    }

    fn sync(&mut self, ws: &WsClient) -> anyhow::Result<()> {
        let id = format!("sync-{}", self.asked.len() + 1);
        ws.send(json!({"action": "sync", "request_id": id}).to_string())?;
        self.first_sync.get_or_insert_with(Instant::now);
        self.asked.push(id);
        self.got.syncs += 1;
        Ok(())
    }
}

pub(super) async fn reconnect(storm: Storm, backlog: Backlog) -> anyhow::Result<Reconnected> {
    storm.barrier.wait().await;
    let start = Instant::now();
    let first = wait_for_caught_up(&storm, &backlog, start).await;
    storm.waited.fetch_add(1, Ordering::SeqCst);
    storm
        .caught
        .fetch_add(usize::from(first.is_ok()), Ordering::SeqCst);
    let (mut ws, mut reading, connected, refused) = first?;
    let caught_up = start.elapsed();
    let conversation = &backlog.conversations[0];

    let mut settled = storm.settled.clone();
    tokio::time::timeout(PATIENCE, settled.wait_for(|s| *s))
        .await
        .context("the storm never settled")??;
    // Every sync is answered (caught_up or error), then the pong comes
    // after every frame posted before it.
    ws.send(json!({"action": "ping", "request_id": "drain"}).to_string())?;
    while !reading.pong || reading.asked.iter().any(|a| !reading.answered.contains(a)) {
        let r = ws.next(PATIENCE).await.with_context(|| {
            format!(
                "{}: draining after {} syncs",
                backlog.reader, reading.got.syncs
            )
        })?;
        reading.read(r.frame, conversation)?;
    }
    let reason = reading.first_sync.map(|at| {
        why::reason(
            storm.catch_ups.call(backlog.reader.as_str()).as_ref(),
            at,
            reading.first_error.as_deref(),
        )
    });
    reading.got.retried = storm
        .retried
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(conversation)
        .cloned()
        .unwrap_or_default();
    let syncs = reading.got.syncs;
    let mut late = 0;
    let tally = match check::check(&reading.got, storm.expected) {
        // Live messages neither posted live nor read by a catch-up stay
        // pending: one more catch-up must bring them, or they are lost.
        Err(Broken::Missing(seqs)) if seqs.iter().all(|&s| s > storm.expected.pending) => {
            late = seqs.len();
            reading.sync(&ws)?;
            while reading.asked.iter().any(|a| !reading.answered.contains(a)) {
                let r = ws
                    .next(PATIENCE)
                    .await
                    .context("the catch-up for late messages")?;
                reading.read(r.frame, conversation)?;
            }
            check::check(&reading.got, storm.expected)
        }
        kept => kept,
    }
    .map_err(|e| anyhow!("{}: {e} (frames {:?})", backlog.reader, reading.got.frames))?;
    ws.send(
        json!({"action": "ack", "acks": [{"conversation_id": conversation.as_str(), "seq": storm.expected.all()}]})
            .to_string(),
    )?;
    Ok(Reconnected {
        connected,
        caught_up,
        tally,
        syncs,
        refused,
        late,
        reason,
        ws,
    })
}

/// Handshakes a client tries before it gives up: `courier-client` keeps
/// trying; the storm counts a client refused this often as failed.
const HANDSHAKES: u32 = 8;

/// Opens a socket as `courier-client` does: a refused handshake (the
/// gateway answers 500 when `$connect` fails or times out under the storm)
/// is tried again after an equal-jitter wait, 1 s doubling up to 16 s.
/// Returns the socket and how many handshakes were refused first.
pub(super) async fn connect_counting(
    ws_url: &str,
    user: &UserId,
) -> anyhow::Result<(WsClient, u32)> {
    let waits = Backoff::equal(Duration::from_secs(1), Duration::from_secs(16));
    let mut refused = 0;
    loop {
        match WsClient::connect(ws_url, user).await {
            Ok(ws) => return Ok((ws, refused)),
            Err(e) if refused + 1 < HANDSHAKES => {
                tracing::debug!("{user}: handshake refused: {e:#}");
                tokio::time::sleep(waits.delay(refused)).await;
                refused += 1;
            }
            Err(e) => return Err(e.context(format!("{HANDSHAKES} handshakes refused"))),
        }
    }
}

/// Opens the socket and reads up to the first `caught_up`, sending `sync`
/// when it is late, as `courier-client` does.
async fn wait_for_caught_up(
    storm: &Storm,
    backlog: &Backlog,
    start: Instant,
) -> anyhow::Result<(WsClient, Reading, Duration, u32)> {
    let (mut ws, refused) = connect_counting(&storm.ws_url, &backlog.reader).await?;
    let connected = start.elapsed();
    let conversation = &backlog.conversations[0];
    let deadline = start + PATIENCE;
    let sync_waits = Backoff::equal(SYNC_AFTER, Duration::from_secs(60));
    let mut next_sync = start + SYNC_AFTER;
    let mut reading = Reading::default();
    while reading.got.caught_ups == 0 {
        let now = Instant::now();
        if now >= deadline {
            bail!(
                "{}: no caught_up within {PATIENCE:?} ({} frames, {} syncs)",
                backlog.reader,
                reading.got.frames.len(),
                reading.got.syncs
            );
        }
        if now >= next_sync {
            reading.sync(&ws)?;
            // After sync k the window is 4 s · 2^k, up to a minute, drawn
            // with equal jitter, as courier-client waits.
            let attempt = u32::try_from(reading.got.syncs).unwrap_or(u32::MAX);
            next_sync = now
                + if storm.sync_backoff {
                    sync_waits.delay(attempt)
                } else {
                    SYNC_AFTER
                };
        }
        let wait = next_sync.min(deadline).saturating_duration_since(now);
        if let Ok(r) = ws.next(wait).await {
            reading.read(r.frame, conversation)?;
        }
    }
    Ok((ws, reading, connected, refused))
}
