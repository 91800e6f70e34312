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

use courier_core::domain::{ClientMsgId, ConversationId, DeviceId, Platform, UserId};
use courier_core::protocol::{ConversationView, DeviceView, ErrorCode, ServerFrame, WireMessage};
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
    /// `ws://127.0.0.1:3001` or `wss://…/prod`; `?token=` (and `&device=`,
    /// `&conversation_id=`) are appended.
    pub url: String,
    pub user: UserId,
    pub token: TokenSource,
    /// This device (`device=` on every connection). Generate one once with
    /// [`new_device_id`] and keep it with the app's data: a new id per start
    /// is a new linked device each time, up to the server's `MAX_DEVICES`.
    /// `None`: no `device=`, and the server counts the connection as the
    /// user's `default` device.
    pub device: Option<DeviceId>,
    /// The conversation the app was opened on (a tapped notification): sent
    /// as `conversation_id=` until a socket opens, so its catch-up goes
    /// first; later reconnects do not send it.
    pub open_conversation: Option<ConversationId>,
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
            device: None,
            open_conversation: None,
            tuning: Tuning::default(),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
        }
    }

    /// This config as device `id`, checked as the server checks it (1–64
    /// characters of `A-Z a-z 0-9 . _ -`): a bad one fails here, before any
    /// connection, with [`ClientError::InvalidDeviceId`].
    pub fn with_device(mut self, id: &str) -> Result<Self, ClientError> {
        self.device =
            Some(DeviceId::parse(id).map_err(|e| ClientError::InvalidDeviceId(e.to_string()))?);
        Ok(self)
    }

    /// This config opened on `conversation` (see
    /// [`ClientConfig::open_conversation`]).
    pub fn opened_on(mut self, conversation: ConversationId) -> Self {
        self.open_conversation = Some(conversation);
        self
    }
}

/// A new random device id (32 hex digits), valid for [`DeviceId`]. Make it
/// once per installation and keep it.
pub fn new_device_id() -> DeviceId {
    let raw = uuid::Uuid::new_v4().simple().to_string();
    // 32 hex digits always parse; the fallback is never taken.
    DeviceId::parse(&raw).unwrap_or_default()
}

/// One page of [`Client::list_conversations`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationPage {
    pub conversations: Vec<ConversationView>,
    /// `after` of the next page; `None` on the last page.
    pub next: Option<ConversationId>,
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
    /// A device id the server would refuse (1–64 characters of `A-Z a-z
    /// 0-9 . _ -`).
    #[error("invalid device id: {0}")]
    InvalidDeviceId(String),
    /// The server refused this device: the user already has `limit` linked
    /// devices. The client is offline until [`Client::go_online`] (after a
    /// device was unlinked from another one).
    #[error("too many devices (limit {limit:?}): {message}")]
    TooManyDevices { limit: Option<u32>, message: String },
    /// Another device of the user unlinked this one. The client is offline;
    /// connecting again with the same device id would link it again, so
    /// start over as a new device ([`new_device_id`]).
    #[error("this device was unlinked: {message}")]
    DeviceUnlinked { message: String },
}

impl ClientError {
    /// A `too_many_devices` refusal, as its typed error.
    fn from_fatal(e: &RequestError) -> ClientError {
        match e {
            RequestError::Refused {
                code: ErrorCode::DeviceUnlinked,
                message,
            } => ClientError::DeviceUnlinked {
                message: message.clone(),
            },
            RequestError::Refused { message, .. } => ClientError::TooManyDevices {
                limit: crate::session::device_limit_of(message),
                message: message.clone(),
            },
            other => ClientError::Request(other.clone()),
        }
    }
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
    /// Starts the client and waits for its first open socket. A device the
    /// server refuses at once (`too_many_devices` before this returns) is
    /// [`ClientError::TooManyDevices`]; one refused later is reported as
    /// [`Event::TooManyDevices`] and [`Client::refused_device`].
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
        // Opened at least once: a socket the server closes right away (as it
        // does after `too_many_devices`) may be gone before this looks.
        let opened = client
            .wait_until_or_refused(timeout, |s| s.opens() > 0)
            .await;
        match opened {
            Ok(()) => match client.refused_device() {
                Some(e) => {
                    client.close();
                    Err(e)
                }
                None => Ok(client),
            },
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

    /// This client's device (`None`: the server's `default`).
    pub fn device(&self) -> Option<&DeviceId> {
        self.inner.config.device.as_ref()
    }

    /// The `too_many_devices` refusal that stopped this client, until it
    /// opens again.
    pub fn refused_device(&self) -> Option<ClientError> {
        self.inspect(|s| s.fatal().map(ClientError::from_fatal))
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
        if let Some(e) = self.inspect(|s| (!s.is_open()).then(|| s.fatal().cloned()).flatten()) {
            // Offline for good until go_online: it would never be sent.
            return Err(ClientError::from_fatal(&e));
        }
        let (tx, rx) = oneshot::channel();
        self.inner.with_session(|s| s.expect_reply(request_id, tx));
        let _ = self.inner.commands.send(Command::Frame(frame));
        match tokio::time::timeout(self.inner.config.request_timeout, rx).await {
            Ok(Ok(Err(
                e @ RequestError::Refused {
                    code: ErrorCode::TooManyDevices,
                    ..
                },
            ))) => Err(ClientError::from_fatal(&e)),
            Ok(Ok(r)) => r.map_err(ClientError::from),
            Ok(Err(_)) => Err(RequestError::Closed.into()),
            Err(_) => Err(RequestError::Timeout.into()),
        }
    }

    /// This user's linked devices (`listDevices`).
    pub async fn list_devices(&self) -> Result<Vec<DeviceView>, ClientError> {
        match self.request(json!({"action": "listDevices"})).await? {
            ServerFrame::Devices { devices, .. } => Ok(devices),
            other => Err(ClientError::Invalid(format!("unexpected reply {other:?}"))),
        }
    }

    /// Unlinks another device of this user (the server closes its
    /// connection); its id once `device_unlinked` comes. The server refuses
    /// with `device_not_found` (not linked) or `bad_request`, as
    /// [`RequestError::Refused`].
    pub async fn unlink_device(&self, device: &DeviceId) -> Result<DeviceId, ClientError> {
        match self
            .request(json!({"action": "unlinkDevice", "device_id": device}))
            .await?
        {
            ServerFrame::DeviceUnlinked { device_id, .. } => Ok(device_id),
            other => Err(ClientError::Invalid(format!("unexpected reply {other:?}"))),
        }
    }

    /// One page of this user's conversations after `after` (the previous
    /// page's `next`), at most `limit` (1–100; the server's default is 50).
    /// Each one's `delivered_through_seq` is this device's.
    pub async fn list_conversations(
        &self,
        after: Option<&ConversationId>,
        limit: Option<u32>,
    ) -> Result<ConversationPage, ClientError> {
        let mut frame = json!({"action": "listConversations"});
        if let Some(after) = after {
            frame["after"] = json!(after);
        }
        if let Some(limit) = limit {
            frame["limit"] = json!(limit);
        }
        match self.request(frame).await? {
            ServerFrame::Conversations {
                conversations,
                next,
                ..
            } => Ok(ConversationPage {
                conversations,
                next,
            }),
            other => Err(ClientError::Invalid(format!("unexpected reply {other:?}"))),
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
        self.wait_until_or_refused(timeout, |s| s.opens() > opens)
            .await?;
        match self.refused_device() {
            Some(e) => Err(e),
            None => Ok(()),
        }
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

/// The connect URL: [`with_token`], then `&device=` and `&conversation_id=`
/// when given. Both are URL-safe as their types allow them, except the
/// `@ : =` a conversation id may hold, which are escaped.
pub fn connect_url(
    url: &str,
    token: &str,
    device: Option<&DeviceId>,
    conversation: Option<&ConversationId>,
) -> String {
    let mut out = with_token(url, token);
    if let Some(d) = device {
        out.push_str("&device=");
        out.push_str(d.as_str());
    }
    if let Some(c) = conversation {
        out.push_str("&conversation_id=");
        for ch in c.as_str().chars() {
            match ch {
                'A'..='Z' | 'a'..='z' | '0'..='9' | '-' | '_' | '.' | '~' => out.push(ch),
                other => {
                    let mut buf = [0u8; 4];
                    for b in other.encode_utf8(&mut buf).bytes() {
                        out.push_str(&format!("%{b:02X}"));
                    }
                }
            }
        }
    }
    out
}

enum Ended {
    Dropped,
    Offline(Option<oneshot::Sender<()>>),
    /// The server refused this device (`too_many_devices`): offline until
    /// told to go online.
    Refused,
    Shutdown,
}

async fn run(inner: Arc<Inner>, mut commands: mpsc::UnboundedReceiver<Command>) {
    let mut attempt: u32 = 0;
    let mut online = true;
    // Only until a socket opens: a reconnect is not a tap on a notification.
    let mut open_conversation = inner.config.open_conversation.clone();
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
        let url = connect_url(
            &inner.config.url,
            &(inner.config.token)(),
            inner.config.device.as_ref(),
            open_conversation.as_ref(),
        );
        match tokio_tungstenite::connect_async(url).await {
            Ok((ws, _)) => {
                open_conversation = None;
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
                    Ended::Refused => {
                        // Every reconnect would be refused the same way.
                        online = false;
                        continue;
                    }
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
                    let out = inner.with_session(|s| s.on_text(&t, Instant::now()));
                    if inner.session().fatal().is_some() {
                        let _ = ws.close(Some(CloseFrame { code: 1000.into(), reason: "too_many_devices".into() })).await;
                        break Ended::Refused;
                    }
                    out
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

    #[test]
    fn connect_urls_carry_device_and_the_opened_conversation() {
        let phone = DeviceId::parse("phone").unwrap();
        assert_eq!(
            connect_url("ws://h:1", "t", None, None),
            "ws://h:1/?token=t"
        );
        assert_eq!(
            connect_url("ws://h:1", "t", Some(&phone), None),
            "ws://h:1/?token=t&device=phone"
        );
        let c = ConversationId::parse("c:1@x=").unwrap();
        assert_eq!(
            connect_url("wss://h/prod", "t.k", Some(&phone), Some(&c)),
            "wss://h/prod?token=t.k&device=phone&conversation_id=c%3A1%40x%3D"
        );
    }

    #[test]
    fn a_bad_device_id_fails_before_any_connection() {
        let bob = UserId::parse("bob").unwrap();
        let config = || ClientConfig::new("ws://h", bob.clone(), crate::static_token("t"));
        assert_eq!(
            config().with_device("laptop").unwrap().device,
            Some(DeviceId::parse("laptop").unwrap())
        );
        for bad in ["", "my phone", "é", "a/b", &"x".repeat(65)] {
            assert!(
                matches!(
                    config().with_device(bad),
                    Err(ClientError::InvalidDeviceId(_))
                ),
                "{bad:?}"
            );
        }
        assert!(config().with_device(&"x".repeat(64)).is_ok());
        let a = new_device_id();
        assert_eq!(
            DeviceId::parse(a.as_str()).unwrap(),
            a,
            "a generated id is valid"
        );
        assert_ne!(a, new_device_id());
    }

    /// A server that records each handshake's URI and answers each socket
    /// with `script(n)` (n: 0-based connection count), then closes.
    /// With `answer`, it waits for the client's first frame instead, answers
    /// it with `answer`, then closes.
    #[allow(clippy::result_large_err)] // tungstenite's callback signature
    async fn scripted_server(
        script: impl Fn(usize) -> Vec<String> + Send + Sync + 'static,
        answer: Option<&'static str>,
    ) -> (String, Arc<Mutex<Vec<String>>>) {
        use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let uris = Arc::new(Mutex::new(Vec::new()));
        let seen = uris.clone();
        let script = Arc::new(script);
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let seen = seen.clone();
                let script = script.clone();
                tokio::spawn(async move {
                    let n = std::sync::atomic::AtomicUsize::new(0);
                    let record = |req: &Request, resp: Response| {
                        let mut v = seen.lock().unwrap();
                        v.push(req.uri().to_string());
                        n.store(v.len() - 1, std::sync::atomic::Ordering::SeqCst);
                        Ok(resp)
                    };
                    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, record).await else {
                        return;
                    };
                    for f in script(n.load(std::sync::atomic::Ordering::SeqCst)) {
                        let _ = ws.send(Message::text(f)).await;
                    }
                    if let Some(answer) = answer {
                        while let Some(Ok(m)) = ws.next().await {
                            if m.is_text() {
                                let _ = ws.send(Message::text(answer)).await;
                                break;
                            }
                        }
                    }
                    let _ = ws.close(None).await;
                    while let Some(Ok(_)) = ws.next().await {}
                });
            }
        });
        (format!("ws://{addr}"), uris)
    }

    fn test_config(url: String) -> ClientConfig {
        let bob = UserId::parse("bob").unwrap();
        let mut config = ClientConfig::new(url, bob, crate::static_token("tok"));
        config.tuning.backoff_base = Duration::from_millis(10);
        config.tuning.backoff_max = Duration::from_millis(40);
        config.connect_timeout = Duration::from_secs(5);
        config.request_timeout = Duration::from_secs(2);
        config
    }

    const REFUSAL: &str = r#"{"type":"error","code":"too_many_devices","message":"bob already has 8 linked devices (MAX_DEVICES = 8); unlink one from another device (unlinkDevice) to use this one"}"#;

    #[tokio::test]
    async fn too_many_devices_stops_the_client_without_a_reconnect_loop() {
        let (url, uris) = scripted_server(|_| vec![REFUSAL.to_owned()], None).await;
        // Refused at once: connect says so, typed, with the limit.
        let config = test_config(url.clone()).with_device("ninth").unwrap();
        let refused = Client::connect(config).await.err();
        assert!(
            matches!(refused, Some(ClientError::TooManyDevices { limit: Some(8), ref message }) if message.contains("MAX_DEVICES")),
            "{refused:?}"
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(
            uris.lock().unwrap().len(),
            1,
            "no reconnect after too_many_devices"
        );

        // Refused later (after connect returned; here, answering the first
        // frame): a pending request fails with it, an event, then offline.
        let (url, uris) = scripted_server(|_| Vec::new(), Some(REFUSAL)).await;
        let client = Client::connect(test_config(url).with_device("ninth").unwrap())
            .await
            .unwrap();
        let mut events = client.events();
        assert!(matches!(
            client.ping().await,
            Err(ClientError::TooManyDevices { limit: Some(8), .. })
        ));
        let mut reported = false;
        while let Ok(e) = events.try_recv() {
            reported |= matches!(e, Event::TooManyDevices { limit: Some(8), .. });
        }
        assert!(reported, "the app hears of it as an event");
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(
            uris.lock().unwrap().len(),
            1,
            "no reconnect after too_many_devices"
        );
        assert!(!client.inspect(Session::is_open));
        assert!(matches!(
            client.refused_device(),
            Some(ClientError::TooManyDevices { limit: Some(8), .. })
        ));
        assert!(matches!(
            client.list_devices().await,
            Err(ClientError::TooManyDevices { limit: Some(8), .. })
        ));
        // go_online tries again, once (and is refused again at its first frame).
        client.go_online().await.unwrap();
        assert!(client.ping().await.is_err());
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(uris.lock().unwrap().len(), 2);
        client.close();
    }

    #[tokio::test]
    async fn device_on_every_connection_the_opened_conversation_on_the_first() {
        // Every socket is closed at once with a greeting: the client reconnects.
        let (url, uris) = scripted_server(
            |_| vec![r#"{"type":"caught_up","conversations":0,"messages":0}"#.to_owned()],
            None,
        )
        .await;
        let config = test_config(url)
            .with_device("phone")
            .unwrap()
            .opened_on(ConversationId::parse("c7").unwrap());
        let client = Client::connect(config).await.unwrap();
        client
            .wait_until(Duration::from_secs(5), |s| s.opens() >= 3)
            .await
            .unwrap();
        client.close();
        let uris = uris.lock().unwrap().clone();
        assert_eq!(uris[0], "/?token=tok&device=phone&conversation_id=c7");
        for u in &uris[1..] {
            assert_eq!(
                u, "/?token=tok&device=phone",
                "a reconnect names no conversation"
            );
        }
    }
}
