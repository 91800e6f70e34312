//! The socket side: one background task per client that keeps a WebSocket
//! open (reconnecting with backoff and jitter), feeds what arrives to the
//! [`Session`] and sends what it answers, ticks its timers, and sends a
//! heartbeat inside API Gateway's idle timeout.
//!
//! [`Client`] is the handle: cheap to clone, safe to use from many tasks.
//! Its async methods wait for the server's answer; [`Client::wait_until`]
//! waits for any condition on the session, which is what tests and the demo
//! use to say "bob now holds these six messages".

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use courier_core::domain::{ClientMsgId, ConversationId, Platform, UserId};
use courier_core::protocol::{ServerFrame, WireMessage};
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use crate::session::{Event, RequestError, Sent, Session, Tuning};

/// Makes the token for each (re)connect: a fixed one, or a fresh one each
/// time (a minted local token, a refreshed Cognito token).
pub type TokenSource = Arc<dyn Fn() -> String + Send + Sync>;

/// Where and as whom to connect.
#[derive(Clone)]
pub struct ClientConfig {
    /// `ws://127.0.0.1:3001` or `wss://…/prod`; `?token=` is appended.
    pub url: String,
    pub user: UserId,
    pub token: TokenSource,
    pub tuning: Tuning,
    /// How long [`Client::connect`] waits for the first open socket.
    pub connect_timeout: Duration,
    /// How long a request (send, create, register) waits for its answer.
    pub request_timeout: Duration,
}

impl ClientConfig {
    pub fn new(url: impl Into<String>, user: UserId, token: TokenSource) -> Self {
        Self {
            url: url.into(),
            user,
            token,
            tuning: Tuning::default(),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// Why the client could not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The handshake was answered with this HTTP status (401: bad or
    /// expired token; 403: not allowed).
    #[error("handshake refused with HTTP {0}")]
    Refused(u16),
    #[error("could not connect: {0}")]
    Unreachable(String),
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error("invalid value: {0}")]
    Invalid(String),
}

enum Command {
    Frame(String),
    Offline(oneshot::Sender<()>),
    Online,
    Shutdown,
}

struct Inner {
    session: Mutex<Session>,
    commands: mpsc::UnboundedSender<Command>,
    version: watch::Sender<u64>,
    events: broadcast::Sender<Event>,
    /// The last handshake refusal, for [`Client::connect`].
    refused: Mutex<Option<u16>>,
    config: ClientConfig,
}

impl Inner {
    fn session(&self) -> MutexGuard<'_, Session> {
        self.session.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the session, publishes its events and wakes waiters.
    fn with_session<T>(&self, f: impl FnOnce(&mut Session) -> T) -> T {
        let (out, events) = {
            let mut s = self.session();
            let out = f(&mut s);
            (out, s.drain_events())
        };
        for e in events {
            let _ = self.events.send(e);
        }
        self.version.send_modify(|v| *v += 1);
        out
    }
}

/// A connected Courier client.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    /// Starts the client and waits for its first open socket.
    pub async fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (version, _) = watch::channel(0);
        let (events, _) = broadcast::channel(1024);
        let inner = Arc::new(Inner {
            session: Mutex::new(Session::new(config.user.clone(), config.tuning.clone())),
            commands: tx,
            version,
            events,
            refused: Mutex::new(None),
            config,
        });
        tokio::spawn(run(inner.clone(), rx));
        let client = Client { inner };
        let timeout = client.inner.config.connect_timeout;
        let opened = client.wait_until_or_refused(timeout, |s| s.is_open()).await;
        match opened {
            Ok(()) => Ok(client),
            Err(e) => {
                client.close();
                Err(e)
            }
        }
    }

    async fn wait_until_or_refused(
        &self,
        timeout: Duration,
        pred: impl Fn(&Session) -> bool,
    ) -> Result<(), ClientError> {
        let refused = |inner: &Inner| *inner.refused.lock().unwrap_or_else(|e| e.into_inner());
        let mut rx = self.inner.version.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if pred(&self.inner.session()) {
                return Ok(());
            }
            if let Some(status) = refused(&self.inner) {
                return Err(ClientError::Refused(status));
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => {
                    return Err(ClientError::Unreachable(format!(
                        "no open socket within {timeout:?}"
                    )));
                }
            }
        }
    }

    pub fn user(&self) -> &UserId {
        &self.inner.config.user
    }

    /// Sends a message and waits for its `sent`, retrying as needed.
    pub async fn send(
        &self,
        conversation: &ConversationId,
        body: &str,
    ) -> Result<Sent, ClientError> {
        let cmid = ClientMsgId::parse(&uuid::Uuid::new_v4().simple().to_string())
            .map_err(|e| ClientError::Invalid(e.to_string()))?;
        self.send_with_id(conversation, &cmid, body).await
    }

    /// [`Client::send`] with the caller's `client_msg_id` (a resend after a
    /// crash uses the same one).
    pub async fn send_with_id(
        &self,
        conversation: &ConversationId,
        client_msg_id: &ClientMsgId,
        body: &str,
    ) -> Result<Sent, ClientError> {
        let (tx, rx) = oneshot::channel();
        let now = Instant::now();
        let frame = self.inner.with_session(|s| {
            s.queue_send(
                conversation.clone(),
                client_msg_id.clone(),
                body.to_owned(),
                Some(tx),
                now,
            )
        });
        if let Some(f) = frame {
            let _ = self.inner.commands.send(Command::Frame(f));
        }
        match tokio::time::timeout(self.inner.config.request_timeout, rx).await {
            Ok(Ok(r)) => r.map_err(ClientError::from),
            Ok(Err(_)) => Err(RequestError::Closed.into()),
            Err(_) => Err(RequestError::Timeout.into()),
        }
    }

    /// A request answered by one frame that echoes its `request_id`.
    async fn request(&self, mut frame: serde_json::Value) -> Result<ServerFrame, ClientError> {
        let request_id = uuid::Uuid::new_v4().simple().to_string();
        frame["request_id"] = json!(request_id);
        let frame = frame.to_string();
        self.fits(&frame)?;
        let (tx, rx) = oneshot::channel();
        self.inner.with_session(|s| s.expect_reply(request_id, tx));
        let _ = self.inner.commands.send(Command::Frame(frame));
        match tokio::time::timeout(self.inner.config.request_timeout, rx).await {
            Ok(Ok(r)) => r.map_err(ClientError::from),
            Ok(Err(_)) => Err(RequestError::Closed.into()),
            Err(_) => Err(RequestError::Timeout.into()),
        }
    }

    /// Creates a conversation of `members` (this user included by the
    /// server) and returns its id.
    pub async fn create_conversation(
        &self,
        members: &[&str],
    ) -> Result<ConversationId, ClientError> {
        let frame = self
            .request(json!({"action": "createConversation", "members": members}))
            .await?;
        match frame {
            ServerFrame::Conversation {
                conversation_id, ..
            } => Ok(conversation_id),
            other => Err(ClientError::Invalid(format!("unexpected reply {other:?}"))),
        }
    }

    /// Registers a push token for this user.
    pub async fn register_device(
        &self,
        platform: Platform,
        token: &str,
    ) -> Result<(), ClientError> {
        self.request(
            json!({"action": "registerDevice", "platform": platform.as_str(), "token": token}),
        )
        .await
        .map(|_| ())
    }

    /// A heartbeat round trip.
    pub async fn ping(&self) -> Result<Duration, ClientError> {
        let started = Instant::now();
        self.request(json!({"action": "ping"})).await?;
        Ok(started.elapsed())
    }

    /// Asks for a full catch-up now.
    pub fn sync(&self) {
        let frame = self.inner.with_session(|s| s.full_sync(Instant::now()));
        let _ = self.inner.commands.send(Command::Frame(frame));
    }

    /// Sends a raw text frame (tests of malformed input); one over the
    /// frame limit is refused.
    pub fn send_raw(&self, text: impl Into<String>) -> Result<(), ClientError> {
        let text = text.into();
        self.fits(&text)?;
        let _ = self.inner.commands.send(Command::Frame(text));
        Ok(())
    }

    /// A frame over [`Tuning::max_frame_bytes`] would close the socket
    /// (1009) instead of getting an answer: refuse it before it is sent.
    fn fits(&self, frame: &str) -> Result<(), ClientError> {
        let limit = self.inner.config.tuning.max_frame_bytes;
        if frame.len() > limit {
            return Err(RequestError::FrameTooLarge {
                bytes: frame.len(),
                limit,
            }
            .into());
        }
        Ok(())
    }

    /// The conversation's messages in seq order.
    pub fn timeline(&self, conversation: &ConversationId) -> Vec<WireMessage> {
        self.inner
            .session()
            .timeline(conversation)
            .map(|t| t.messages().cloned().collect())
            .unwrap_or_default()
    }

    /// Reads the session under its lock.
    pub fn inspect<T>(&self, f: impl FnOnce(&Session) -> T) -> T {
        f(&self.inner.session())
    }

    /// Waits until `pred` holds for the session, or `timeout`.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        pred: impl Fn(&Session) -> bool,
    ) -> Result<(), ClientError> {
        let mut rx = self.inner.version.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if pred(&self.inner.session()) {
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(RequestError::Closed.into()),
                Err(_) => return Err(RequestError::Timeout.into()),
            }
        }
    }

    /// Application events: new messages, receipts, (dis)connects.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    /// Closes the socket and stays offline until [`Client::go_online`].
    pub async fn go_offline(&self) {
        let (tx, rx) = oneshot::channel();
        if self.inner.commands.send(Command::Offline(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Reconnects after [`Client::go_offline`] and waits for the socket.
    pub async fn go_online(&self) -> Result<(), ClientError> {
        *self.inner.refused.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let opens = self.inspect(Session::opens);
        let _ = self.inner.commands.send(Command::Online);
        let timeout = self.inner.config.connect_timeout;
        self.wait_until_or_refused(timeout, |s| s.is_open() && s.opens() > opens)
            .await
    }

    /// Stops the client for good.
    pub fn close(&self) {
        let _ = self.inner.commands.send(Command::Shutdown);
    }
}

/// Equal jitter: half the exponential delay, plus a random part of the
/// other half, so a fleet of clients dropped at once does not return at once.
pub fn backoff(tuning: &Tuning, attempt: u32) -> Duration {
    crate::session::equal_jitter(
        tuning
            .backoff_base
            .saturating_mul(1u32 << attempt.min(16))
            .min(tuning.backoff_max),
    )
}

/// `ws://host:port` + token → `ws://host:port/?token=…` (a handshake needs
/// a path; the token is URL-safe base64 with dots).
fn with_token(url: &str, token: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let slash = if rest.contains('/') { "" } else { "/" };
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{slash}{sep}token={token}")
}

enum Ended {
    Dropped,
    Offline(Option<oneshot::Sender<()>>),
    Shutdown,
}

async fn run(inner: Arc<Inner>, mut commands: mpsc::UnboundedReceiver<Command>) {
    let mut attempt: u32 = 0;
    let mut online = true;
    loop {
        if !online {
            match commands.recv().await {
                Some(Command::Online) => online = true,
                Some(Command::Offline(done)) => {
                    let _ = done.send(());
                    continue;
                }
                Some(Command::Frame(_)) => continue,
                Some(Command::Shutdown) | None => break,
            }
        }
        let url = with_token(&inner.config.url, &(inner.config.token)());
        match tokio_tungstenite::connect_async(url).await {
            Ok((ws, _)) => {
                *inner.refused.lock().unwrap_or_else(|e| e.into_inner()) = None;
                let (ended, healthy) = connected(&inner, ws, &mut commands).await;
                // Only a connection that worked starts the backoff over: one
                // that dies at once (a frame the gateway refuses, a server
                // that accepts and drops) keeps backing off.
                if healthy {
                    attempt = 0;
                }
                match ended {
                    Ended::Dropped => {}
                    Ended::Offline(done) => {
                        online = false;
                        if let Some(done) = done {
                            let _ = done.send(());
                        }
                        continue;
                    }
                    Ended::Shutdown => break,
                }
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                let status = r.status().as_u16();
                tracing::info!(status, "handshake refused");
                *inner.refused.lock().unwrap_or_else(|e| e.into_inner()) = Some(status);
                inner.version.send_modify(|v| *v += 1);
            }
            Err(e) => tracing::debug!(error = %e, "connect failed"),
        }
        let delay = backoff(&inner.config.tuning, attempt);
        attempt = attempt.saturating_add(1);
        // Commands still count while waiting to reconnect.
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => break,
                cmd = commands.recv() => match cmd {
                    Some(Command::Offline(done)) => { online = false; let _ = done.send(()); break; }
                    Some(Command::Shutdown) | None => {
                        inner.with_session(Session::close_all);
                        return;
                    }
                    Some(Command::Online | Command::Frame(_)) => {}
                },
            }
        }
    }
    inner.with_session(Session::close_all);
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A connection that lasted this long, or got any frame, was a working one.
const HEALTHY_AFTER: Duration = Duration::from_secs(1);

/// Runs one open socket until it ends; also whether it worked (received a
/// frame, or stayed up for [`HEALTHY_AFTER`]).
async fn connected(
    inner: &Arc<Inner>,
    mut ws: Socket,
    commands: &mut mpsc::UnboundedReceiver<Command>,
) -> (Ended, bool) {
    let tuning = inner.config.tuning.clone();
    let opened = Instant::now();
    let mut received = false;
    let mut close_code = None;
    let mut last_sent = Instant::now();
    let opening = inner.with_session(|s| s.on_open(Instant::now()));
    for f in opening {
        if ws.send(Message::text(f)).await.is_err() {
            inner.with_session(|s| s.on_dropped(None, Instant::now()));
            return (Ended::Dropped, false);
        }
    }
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ended = loop {
        let out: Vec<String> = tokio::select! {
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    received = true;
                    inner.with_session(|s| s.on_text(&t, Instant::now()))
                }
                Some(Ok(Message::Close(frame))) => {
                    close_code = frame.map(|f| u16::from(f.code));
                    tracing::info!(code = ?close_code, "server closed the socket");
                    break Ended::Dropped;
                }
                Some(Ok(_)) => {
                    received = true;
                    Vec::new()
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "socket error");
                    break Ended::Dropped;
                }
                None => break Ended::Dropped,
            },
            cmd = commands.recv() => match cmd {
                Some(Command::Frame(f)) => vec![f],
                Some(Command::Offline(done)) => {
                    let _ = ws.close(Some(CloseFrame { code: 1000.into(), reason: "offline".into() })).await;
                    break Ended::Offline(Some(done));
                }
                Some(Command::Online) => Vec::new(),
                Some(Command::Shutdown) | None => {
                    let _ = ws.close(Some(CloseFrame { code: 1000.into(), reason: "bye".into() })).await;
                    break Ended::Shutdown;
                }
            },
            _ = tick.tick() => {
                let now = Instant::now();
                let mut out = inner.with_session(|s| s.on_tick(now));
                if out.is_empty() && now.duration_since(last_sent) >= tuning.heartbeat {
                    out.push(json!({"action": "ping"}).to_string());
                }
                out
            }
        };
        let mut failed = false;
        for f in out {
            if f.len() > tuning.max_frame_bytes {
                // Cannot happen for sends and requests (refused before they
                // get here); never let one frame close the socket.
                tracing::warn!(bytes = f.len(), "not sending a frame over the frame limit");
                continue;
            }
            if ws.send(Message::text(f)).await.is_err() {
                failed = true;
                break;
            }
            last_sent = Instant::now();
        }
        if failed {
            break Ended::Dropped;
        }
    };
    let now = Instant::now();
    inner.with_session(|s| s.on_dropped(close_code, now));
    let healthy = received || now.duration_since(opened) >= HEALTHY_AFTER;
    (ended, healthy)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// One connection to a server that says `greeting` (if any) and closes
    /// at once: whether the client counted it as working.
    async fn one_connection(greeting: Option<&'static str>) -> bool {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            if let Some(g) = greeting {
                ws.send(Message::text(g)).await.unwrap();
            }
            let _ = ws.close(None).await;
        });
        let url = format!("ws://{addr}/");
        let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let bob = UserId::parse("bob").unwrap();
        let inner = Arc::new(Inner {
            session: Mutex::new(Session::new(bob.clone(), Tuning::default())),
            commands: tx,
            version: watch::channel(0).0,
            events: broadcast::channel(16).0,
            refused: Mutex::new(None),
            config: ClientConfig::new(url, bob, crate::static_token("t")),
        });
        let (ended, healthy) =
            tokio::time::timeout(Duration::from_secs(5), connected(&inner, ws, &mut rx))
                .await
                .unwrap();
        assert!(matches!(ended, Ended::Dropped));
        healthy
    }

    #[tokio::test]
    async fn only_a_connection_that_worked_starts_the_backoff_over() {
        assert!(
            !one_connection(None).await,
            "opened and closed with nothing received: keep backing off"
        );
        assert!(
            one_connection(Some(
                r#"{"type":"caught_up","conversations":0,"messages":0}"#
            ))
            .await,
            "a frame arrived: the connection worked"
        );
    }

    #[test]
    fn token_urls_always_have_a_path() {
        assert_eq!(with_token("ws://h:1", "t"), "ws://h:1/?token=t");
        assert_eq!(with_token("wss://h/prod", "t"), "wss://h/prod?token=t");
        assert_eq!(with_token("ws://h/?x=1", "t"), "ws://h/?x=1&token=t");
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let t = Tuning::default();
        for attempt in 0..30 {
            let d = backoff(&t, attempt);
            let exp = t
                .backoff_base
                .saturating_mul(1 << attempt.min(16))
                .min(t.backoff_max);
            assert!(d >= exp / 2 && d <= exp, "attempt {attempt}: {d:?}");
        }
        let samples: std::collections::HashSet<Duration> =
            (0..20).map(|_| backoff(&t, 5)).collect();
        assert!(samples.len() > 1, "jitter varies the delay");
    }
}
