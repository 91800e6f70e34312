//! The seed's story against a running `courier-local`, start to finish.
//!
//! alice and carol have been chatting with bob (41 and 16 messages he has
//! read), then bob goes offline. alice sends "hey", "where are you?",
//! "hello??" (seqs 42–44) and carol three more (17–19); each send records a
//! push for bob's phone. bob opens the app: the connect function registers
//! him and catch-up posts the six messages, each conversation in seq order,
//! then `caught_up`; his client acks and the pending rows are gone.
//!
//! The demo checks what it shows: it fails unless bob holds all six
//! messages at their seqs with nothing missing before them, and no pending
//! row is left for him. The pushes, registry and pending rows are read from
//! the gateway's `/_local/...` endpoints.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use courier_core::domain::{ConversationId, Platform, Seq, UserId};
use serde::Deserialize;

use crate::client::{Client, ClientConfig, ClientError};
use crate::minted_token;
use crate::session::Tuning;

/// Where the gateway is and how to get tokens.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// `ws://127.0.0.1:3001`.
    pub ws_url: String,
    /// `http://127.0.0.1:3001` (the `/_local` endpoints).
    pub http_url: String,
    pub secret: String,
    /// Messages already read before bob goes offline: 41 and 16 put the
    /// story's messages at seqs 42–44 and 17–19 as in the seed.
    pub history: (u64, u64),
    pub timeout: Duration,
    /// The cast: alice, bob and carol unless a test needs names no other
    /// test on the same Redis uses.
    pub alice: String,
    pub bob: String,
    pub carol: String,
}

impl DemoOptions {
    pub fn new(ws_url: &str, secret: &str) -> Self {
        let http_url = ws_url
            .replacen("wss://", "https://", 1)
            .replacen("ws://", "http://", 1)
            .trim_end_matches('/')
            .to_owned();
        Self {
            ws_url: ws_url.trim_end_matches('/').to_owned(),
            http_url,
            secret: secret.to_owned(),
            history: (41, 16),
            timeout: Duration::from_secs(20),
            alice: "alice".into(),
            bob: "bob".into(),
            carol: "carol".into(),
        }
    }
}

/// What the demo found.
#[derive(Debug, Clone)]
pub struct DemoOutcome {
    /// What it printed.
    pub transcript: String,
    /// Every check that failed; empty means the story held.
    pub problems: Vec<String>,
}

impl DemoOutcome {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("{who}: {source}")]
    Client {
        who: String,
        #[source]
        source: ClientError,
    },
    #[error("gateway inspection endpoint {path}: {message}")]
    Http { path: String, message: String },
    #[error("invalid id: {0}")]
    Invalid(String),
}

const ALICE_SAYS: [&str; 3] = ["hey", "where are you?", "hello??"];
const CAROL_SAYS: [&str; 3] = [
    "are we still on for tonight?",
    "I'm at the station",
    "call me when you see this",
];

#[derive(Debug, Deserialize)]
struct PushRecord {
    token: String,
    message: PushBody,
}

#[derive(Debug, Deserialize)]
struct PushBody {
    conversation_id: String,
    sender_id: String,
    seq: u64,
    preview: Option<String>,
}

#[derive(Debug, Deserialize)]
struct PendingRow {
    conversation_id: String,
    first_undelivered_seq: u64,
    last_seq: u64,
}

struct Http {
    client: reqwest::Client,
    base: String,
}

impl Http {
    async fn get<T: for<'de> Deserialize<'de>>(&self, path: &str) -> Result<T, DemoError> {
        let err = |message: String| DemoError::Http {
            path: path.to_owned(),
            message,
        };
        let r = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .map_err(|e| err(e.to_string()))?;
        if !r.status().is_success() {
            return Err(err(format!("HTTP {}", r.status())));
        }
        r.json::<T>().await.map_err(|e| err(e.to_string()))
    }
}

fn uid(s: &str) -> Result<UserId, DemoError> {
    UserId::parse(s).map_err(|e| DemoError::Invalid(e.to_string()))
}

async fn connect(opts: &DemoOptions, who: &str) -> Result<Client, DemoError> {
    let user = uid(who)?;
    let mut config = ClientConfig::new(
        &opts.ws_url,
        user.clone(),
        minted_token(&opts.secret, &user),
    );
    config.tuning = Tuning {
        caught_up_timeout: Duration::from_secs(3),
        ..Tuning::default()
    };
    Client::connect(config)
        .await
        .map_err(|source| DemoError::Client {
            who: who.to_owned(),
            source,
        })
}

fn client_err(who: &str) -> impl Fn(ClientError) -> DemoError {
    let who = who.to_owned();
    move |source| DemoError::Client {
        who: who.clone(),
        source,
    }
}

/// Plays the story; `Err` only when it could not be played at all.
pub async fn run(opts: &DemoOptions) -> Result<DemoOutcome, DemoError> {
    let mut out = String::new();
    let mut problems = Vec::new();
    let http = Http {
        client: reqwest::Client::new(),
        base: opts.http_url.clone(),
    };
    let bob_id = uid(&opts.bob)?;

    let alice = connect(opts, &opts.alice).await?;
    let bob = connect(opts, &opts.bob).await?;
    let carol = connect(opts, &opts.carol).await?;
    let phone = format!(
        "bob-phone-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    bob.register_device(Platform::Fcm, &phone)
        .await
        .map_err(client_err(&opts.bob))?;
    let with_alice = alice
        .create_conversation(&[opts.alice.as_str(), opts.bob.as_str()])
        .await
        .map_err(client_err(&opts.alice))?;
    let with_carol = carol
        .create_conversation(&[opts.carol.as_str(), opts.bob.as_str()])
        .await
        .map_err(client_err(&opts.carol))?;
    let _ = writeln!(
        out,
        "alice, bob and carol are online; bob's phone is registered for pushes"
    );
    let _ = writeln!(
        out,
        "conversations: {with_alice} (alice, bob), {with_carol} (carol, bob)"
    );

    // Earlier history, read by bob while online.
    let (ha, hc) = opts.history;
    for i in 1..=ha {
        alice
            .send(&with_alice, &format!("earlier message {i}"))
            .await
            .map_err(client_err(&opts.alice))?;
    }
    for i in 1..=hc {
        carol
            .send(&with_carol, &format!("earlier message {i}"))
            .await
            .map_err(client_err(&opts.carol))?;
    }
    let read = bob
        .wait_until(opts.timeout, |s| {
            contiguous(s, &with_alice) >= ha && contiguous(s, &with_carol) >= hc
        })
        .await;
    if read.is_err() {
        problems.push("bob did not receive the earlier history live".to_owned());
    }
    if !wait_pending_empty(&http, &bob_id, opts.timeout).await? {
        problems.push("bob's acks of the history did not clear his pending rows".to_owned());
    }
    let _ = writeln!(
        out,
        "bob has read {ha} earlier messages from alice and {hc} from carol"
    );

    // bob goes offline.
    bob.go_offline().await;
    let gone = poll(opts.timeout, || async {
        // One entry per connected device: none left.
        http.get::<Vec<serde_json::Value>>(&format!("/_local/registry/{}", opts.bob))
            .await
            .map(|e| e.is_empty())
    })
    .await?;
    if !gone {
        problems.push("bob's registry entry was not removed on disconnect".to_owned());
    }
    let _ = writeln!(out, "\nbob closes the app (registry entry removed: {gone})");
    let pushes_before = http.get::<Vec<PushRecord>>("/_local/pushes").await?.len();

    for body in ALICE_SAYS {
        let sent = alice
            .send(&with_alice, body)
            .await
            .map_err(client_err(&opts.alice))?;
        let _ = writeln!(out, "  alice → {with_alice} #{}: {body}", sent.seq);
    }
    for body in CAROL_SAYS {
        let sent = carol
            .send(&with_carol, body)
            .await
            .map_err(client_err(&opts.carol))?;
        let _ = writeln!(out, "  carol → {with_carol} #{}: {body}", sent.seq);
    }

    let pushes: Vec<PushRecord> = http.get("/_local/pushes").await?;
    let ours: Vec<&PushRecord> = pushes
        .iter()
        .skip(pushes_before)
        .filter(|p| p.token == phone)
        .collect();
    let _ = writeln!(
        out,
        "\npushes to bob's phone (the OS collapses them per conversation):"
    );
    for p in &ours {
        let _ = writeln!(
            out,
            "  [{}] {} (seq {}, from {})",
            p.message.conversation_id,
            p.message.preview.as_deref().unwrap_or("(new message)"),
            p.message.seq,
            p.message.sender_id
        );
    }
    for conv in [&with_alice, &with_carol] {
        if !ours
            .iter()
            .any(|p| p.message.conversation_id == conv.as_str())
        {
            problems.push(format!("no push for {conv} while bob was offline"));
        }
    }

    // bob opens the app.
    let caught_up_before = bob.inspect(|s| s.caught_up_count());
    let opened = Instant::now();
    bob.go_online().await.map_err(client_err(&opts.bob))?;
    let (end_a, end_c) = (ha + 3, hc + 3);
    let delivered = bob
        .wait_until(opts.timeout, |s| {
            contiguous(s, &with_alice) >= end_a
                && contiguous(s, &with_carol) >= end_c
                && s.caught_up_count() > caught_up_before
        })
        .await;
    let took = opened.elapsed();
    if delivered.is_err() {
        problems.push("bob did not catch up in time".to_owned());
    }
    let cleared = wait_pending_empty(&http, &bob_id, opts.timeout).await?;
    let _ = writeln!(
        out,
        "\nbob opens the app: caught up in {} ms",
        took.as_millis()
    );

    let _ = writeln!(out, "\nbob's timeline:");
    for (conv, from, says, sender) in [
        (&with_alice, ha, &ALICE_SAYS, opts.alice.as_str()),
        (&with_carol, hc, &CAROL_SAYS, opts.carol.as_str()),
    ] {
        let timeline = bob.timeline(conv);
        let _ = writeln!(out, "  {conv} ({from} earlier messages)");
        for m in timeline.iter().filter(|m| m.seq.get() > from) {
            let _ = writeln!(out, "    #{:<3} {}: {}", m.seq, m.sender_id, m.body);
        }
        for (i, body) in says.iter().enumerate() {
            let seq = Seq(from + 1 + i as u64);
            match timeline.iter().find(|m| m.seq == seq) {
                Some(m) if m.body == *body && m.sender_id.as_str() == sender => {}
                Some(m) => problems.push(format!(
                    "{conv} #{seq} is {:?} from {}",
                    m.body, m.sender_id
                )),
                None => problems.push(format!("{conv} #{seq} ({body:?}) is missing")),
            }
        }
        let in_order = timeline.windows(2).all(|w| w[0].seq < w[1].seq);
        let gap_free = timeline
            .iter()
            .enumerate()
            .all(|(i, m)| m.seq.get() == i as u64 + 1);
        if !in_order || !gap_free {
            problems.push(format!("{conv} is not gap-free in seq order"));
        }
    }
    match cleared {
        true => {
            let _ = writeln!(out, "\nnothing pending for bob");
        }
        false => problems.push("bob still has pending rows after acking".to_owned()),
    }
    for (who, c) in [
        (&opts.alice, &alice),
        (&opts.carol, &carol),
        (&opts.bob, &bob),
    ] {
        if c.inspect(|s| s.outbox_len()) > 0 {
            problems.push(format!("{who} has unanswered sends"));
        }
    }
    for c in [&alice, &bob, &carol] {
        c.close();
    }
    Ok(DemoOutcome {
        transcript: out,
        problems,
    })
}

fn contiguous(s: &crate::Session, conv: &ConversationId) -> u64 {
    s.timeline(conv).map_or(0, |t| t.contiguous_through().get())
}

async fn poll<F, Fut>(timeout: Duration, mut check: F) -> Result<bool, DemoError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, DemoError>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await? {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `user` has no pending rows; false on timeout.
async fn wait_pending_empty(
    http: &Http,
    user: &UserId,
    timeout: Duration,
) -> Result<bool, DemoError> {
    let path = format!("/_local/pending/{user}");
    let empty = poll(timeout, || async {
        http.get::<Vec<PendingRow>>(&path)
            .await
            .map(|rows| rows.is_empty())
    })
    .await?;
    if !empty {
        let rows: Vec<PendingRow> = http.get(&path).await?;
        for r in rows {
            tracing::warn!(
                conversation_id = %r.conversation_id,
                first = r.first_undelivered_seq,
                last = r.last_seq,
                "pending row left"
            );
        }
    }
    Ok(empty)
}
