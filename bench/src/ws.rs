//! A bare WebSocket client that timestamps every frame it receives.
//!
//! Not `courier-client`: that one acks, fills gaps, resyncs and sends
//! heartbeats on its own, which is right for an app and wrong for a
//! measurement that must know exactly which frames it caused and when each
//! arrived. This one sends what it is told and hands back every text frame
//! with the `Instant` it was read.

use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use courier_core::domain::UserId;
use courier_core::protocol::ServerFrame;
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// A frame as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    /// Length of the text frame in bytes (what API Gateway bills).
    pub bytes: usize,
    pub frame: ServerFrame,
}

/// A connected client.
pub struct WsClient {
    out: mpsc::UnboundedSender<Message>,
    frames: mpsc::UnboundedReceiver<Received>,
}

/// An HS256 token for `user`, signed with the local gateway's secret.
pub fn token(user: &UserId) -> String {
    courier_aws::auth::mint_hs256(
        courier_local::wiring::LOCAL_JWT_SECRET.as_bytes(),
        user,
        Duration::from_secs(3600),
        None,
        None,
    )
}

impl WsClient {
    /// Opens `ws_url/?token=…` as `user`; returns once the handshake (the
    /// authorizer and `$connect`) answered 101.
    pub async fn connect(ws_url: &str, user: &UserId) -> anyhow::Result<WsClient> {
        let url = format!("{ws_url}/?token={}", token(user));
        let (socket, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .with_context(|| format!("WebSocket handshake for {user}"))?;
        let (mut sink, mut stream) = socket.split();
        let (out, mut out_rx) = mpsc::unbounded_channel::<Message>();
        let (frames_tx, frames) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(m) = out_rx.recv().await {
                let close = matches!(m, Message::Close(_));
                if sink.send(m).await.is_err() || close {
                    break;
                }
            }
        });
        tokio::spawn(async move {
            while let Some(Ok(m)) = stream.next().await {
                let at = Instant::now();
                let Message::Text(text) = m else { continue };
                let Ok(frame) = serde_json::from_str::<ServerFrame>(&text) else {
                    // API Gateway's own error frames are not Courier frames.
                    continue;
                };
                if frames_tx
                    .send(Received {
                        at,
                        bytes: text.len(),
                        frame,
                    })
                    .is_err()
                {
                    break;
                }
            }
        });
        Ok(WsClient { out, frames })
    }

    pub fn send(&self, text: String) -> anyhow::Result<()> {
        self.out
            .send(Message::Text(text.into()))
            .map_err(|_| anyhow!("socket closed"))
    }

    /// The next frame, or an error after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> anyhow::Result<Received> {
        match tokio::time::timeout(timeout, self.frames.recv()).await {
            Ok(Some(r)) => Ok(r),
            Ok(None) => bail!("socket closed"),
            Err(_) => bail!("no frame within {timeout:?}"),
        }
    }

    /// Frames up to and including the first `caught_up`.
    pub async fn until_caught_up(&mut self, timeout: Duration) -> anyhow::Result<Vec<Received>> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let r = self
                .next(left)
                .await
                .with_context(|| format!("waiting for caught_up after {} frames", got.len()))?;
            let done = matches!(r.frame, ServerFrame::CaughtUp { .. });
            got.push(r);
            if done {
                return Ok(got);
            }
        }
    }

    /// Frames up to and including the first `caught_up`, sending a full
    /// `sync` when `sync_after` passes without one, as a client does when
    /// the asynchronous catch-up was lost; the wait between syncs stays the
    /// same, or doubles (with jitter, up to a minute) under `backoff`.
    /// Returns the frames and the number of syncs sent.
    pub async fn until_caught_up_syncing(
        &mut self,
        sync_after: Duration,
        backoff: bool,
        timeout: Duration,
    ) -> anyhow::Result<(Vec<Received>, usize)> {
        let deadline = Instant::now() + timeout;
        let mut interval = sync_after;
        let mut next_sync = Instant::now() + sync_after;
        let mut syncs = 0;
        let mut got = Vec::new();
        loop {
            let now = Instant::now();
            if now >= deadline {
                bail!(
                    "no caught_up within {timeout:?} ({} frames, {syncs} syncs)",
                    got.len()
                );
            }
            if now >= next_sync {
                self.send(r#"{"action":"sync"}"#.to_owned())?;
                syncs += 1;
                if backoff {
                    let doubled = (interval * 2).min(Duration::from_secs(60));
                    // Equal jitter: half fixed, half random.
                    let half = doubled / 2;
                    interval = half + half.mul_f64(rand::random::<f64>());
                }
                next_sync = now + interval;
            }
            let wait = next_sync.min(deadline).saturating_duration_since(now);
            match tokio::time::timeout(wait, self.frames.recv()).await {
                Ok(Some(r)) => {
                    let done = matches!(r.frame, ServerFrame::CaughtUp { .. });
                    got.push(r);
                    if done {
                        return Ok((got, syncs));
                    }
                }
                Ok(None) => bail!("socket closed"),
                Err(_) => {}
            }
        }
    }

    pub fn close(&self) {
        let _ = self.out.send(Message::Close(None));
    }
}
