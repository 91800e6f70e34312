//! A bare WebSocket client that timestamps every frame it receives.
//!
//! Not `courier-client`: that one acks, fills gaps, resyncs and sends
//! heartbeats on its own, which is right for an app and wrong for a
//! measurement that must know exactly which frames it caused and when each
//! arrived. This one sends what it is told and hands back every text frame
//! with the `Instant` it was read.

use std::sync::{Arc, Mutex};
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
    wire: Arc<Wire>,
}

/// Text frames that crossed a client's socket, each way, counted before
/// any parsing (API Gateway bills every message sent and received, Courier
/// frame or not).
#[derive(Debug, Default)]
pub struct Wire {
    /// Each received frame's length in bytes (billed per 32 KB).
    pub sizes_in: Mutex<Vec<u64>>,
    /// Each sent frame's length in bytes.
    pub sizes_out: Mutex<Vec<u64>>,
}

impl Wire {
    /// Every frame's size so far, both directions.
    pub fn sizes(&self) -> Vec<u64> {
        let lock = |m: &Mutex<Vec<u64>>| m.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut all = lock(&self.sizes_in);
        all.extend(lock(&self.sizes_out));
        all
    }
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
        let wire = Arc::new(Wire::default());
        let counted = wire.clone();
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
                counted
                    .sizes_in
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(text.len() as u64);
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
        Ok(WsClient { out, frames, wire })
    }

    /// What crossed this client's socket so far.
    pub fn wire(&self) -> &Arc<Wire> {
        &self.wire
    }

    pub fn send(&self, text: String) -> anyhow::Result<()> {
        self.wire
            .sizes_out
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(text.len() as u64);
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

    /// The socket is closed: no frame will come, nothing can be sent.
    pub fn is_closed(&self) -> bool {
        self.out.is_closed() || self.frames.is_closed()
    }

    pub fn close(&self) {
        let _ = self.out.send(Message::Close(None));
    }
}
