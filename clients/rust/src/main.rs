//! `chat`: a terminal client for Courier, and the seed's story as `chat demo`.
//!
//! `chat --as bob` connects as bob (a token minted with the local secret,
//! or `--token`), prints messages as they arrive, and sends what you type
//! to the current conversation. Commands: `/new alice carol`, `/to <id>`,
//! `/history`, `/sync`, `/device fcm <token>`, `/devices`, `/unlink <device>`,
//! `/conversations [after]`, `/quit`. `--device phone` connects as that
//! device of the user (`chat --new-device-id` prints a fresh one to keep);
//! `--open <conversation>` as if opened from its notification.

use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use courier_client::demo::{self, DemoOptions};
use courier_client::{
    Client, ClientConfig, Event, LOCAL_JWT_SECRET, minted_token, new_device_id, static_token,
};
use courier_core::domain::{ConversationId, DeviceId, Platform, UserId};
use tokio::io::{AsyncBufReadExt, BufReader};

#[derive(Parser)]
#[command(
    name = "chat",
    about = "A Courier client in the terminal",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    chat: ChatArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Play the seed's story against a running courier-local; exits non-zero
    /// unless bob ends with all six messages in order and nothing pending.
    Demo(DemoArgs),
}

#[derive(Args)]
struct Common {
    /// The gateway's WebSocket URL.
    #[arg(long, env = "COURIER_URL", default_value = "ws://127.0.0.1:3001")]
    url: String,
    /// HS256 secret to mint tokens with (courier-local's default otherwise).
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    secret: Option<String>,
}

#[derive(Args)]
struct ChatArgs {
    /// Who you are.
    #[arg(long = "as")]
    user: Option<String>,
    /// Use this token instead of minting one.
    #[arg(long)]
    token: Option<String>,
    /// This device's id (1–64 of A-Z a-z 0-9 . _ -); keep the same one
    /// across runs. Without it the server counts the `default` device.
    #[arg(long, env = "COURIER_DEVICE")]
    device: Option<String>,
    /// Open on this conversation, as a tapped notification does: its
    /// catch-up goes first.
    #[arg(long)]
    open: Option<String>,
    /// Print a new random device id and exit.
    #[arg(long)]
    new_device_id: bool,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct DemoArgs {
    #[command(flatten)]
    common: Common,
    /// How long each step may take before the demo gives up.
    #[arg(long, default_value_t = 20)]
    timeout_secs: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Demo(d)) => {
            let secret = d
                .common
                .secret
                .unwrap_or_else(|| LOCAL_JWT_SECRET.to_owned());
            let mut options = DemoOptions::new(&d.common.url, &secret);
            options.timeout = Duration::from_secs(d.timeout_secs);
            let outcome = demo::run(&options).await?;
            print!("{}", outcome.transcript);
            if outcome.ok() {
                println!("\ndemo: OK — bob holds all six messages in order, nothing pending");
                Ok(())
            } else {
                for p in &outcome.problems {
                    eprintln!("demo: FAILED: {p}");
                }
                std::process::exit(1);
            }
        }
        None => chat(cli.chat).await,
    }
}

async fn chat(args: ChatArgs) -> anyhow::Result<()> {
    if args.new_device_id {
        println!("{}", new_device_id());
        return Ok(());
    }
    let user = args
        .user
        .context("--as <user> is required (or run `chat demo`)")?;
    let user = UserId::parse(&user).context("--as")?;
    let token = match args.token {
        Some(t) => static_token(t),
        None => minted_token(
            args.common.secret.as_deref().unwrap_or(LOCAL_JWT_SECRET),
            &user,
        ),
    };
    let mut config = ClientConfig::new(&args.common.url, user.clone(), token);
    if let Some(device) = &args.device {
        config = config.with_device(device).context("--device")?;
    }
    let mut current: Option<ConversationId> = None;
    if let Some(open) = &args.open {
        let c = ConversationId::parse(open).context("--open")?;
        config = config.opened_on(c.clone());
        current = Some(c);
    }
    let client = Client::connect(config).await.context("connecting")?;
    let device = client.device().map_or_else(
        || "the default device".to_owned(),
        |d| format!("device {d}"),
    );
    println!(
        "connected as {user} on {device}. /new <members…>, /to <conversation>, /history, /sync, /device fcm <token>, /devices, /unlink <device>, /conversations [after], /quit"
    );

    let mut events = client.events();
    tokio::spawn(async move {
        while let Ok(e) = events.recv().await {
            match e {
                Event::Message {
                    conversation_id,
                    message,
                } => println!(
                    "[{conversation_id}] #{} {}: {}",
                    message.seq, message.sender_id, message.body
                ),
                Event::CaughtUp {
                    conversations,
                    messages,
                    unreached: 0,
                } => println!("(caught up: {messages} messages in {conversations} conversations)"),
                Event::CaughtUp {
                    messages,
                    unreached,
                    ..
                } => println!(
                    "(caught up in part: {messages} messages; {unreached} conversations left, syncing again)"
                ),
                Event::Receipt {
                    conversation_id,
                    user_id,
                    through,
                } => println!("({user_id} has {conversation_id} through #{through})"),
                Event::Connected => println!("(connected)"),
                Event::Disconnected => println!("(disconnected; reconnecting)"),
                Event::ServerError { code, message } => println!("(error {code:?}: {message})"),
                Event::TooManyDevices { limit, message } => println!(
                    "(this device was refused: {} linked devices is the limit; unlink one from another device, then restart. {message})",
                    limit.map_or_else(|| "?".to_owned(), |l| l.to_string())
                ),
                Event::DeviceUnlinked { message } => println!(
                    "(this device was unlinked from another device; start again with --new-device-id. {message})"
                ),
            }
        }
    });

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let mut words = line.split_whitespace();
        match words.next() {
            Some("/quit") => break,
            Some("/new") => {
                let mut members: Vec<&str> = words.collect();
                members.push(user.as_str());
                match client.create_conversation(&members).await {
                    Ok(c) => {
                        println!("(conversation {c}; now talking there)");
                        current = Some(c);
                    }
                    Err(e) => println!("(could not create: {e})"),
                }
            }
            Some("/to") => match words.next().map(ConversationId::parse) {
                Some(Ok(c)) => current = Some(c),
                _ => println!("(usage: /to <conversation id>)"),
            },
            Some("/history") => match &current {
                Some(c) => {
                    for m in client.timeline(c) {
                        println!("[{c}] #{} {}: {}", m.seq, m.sender_id, m.body);
                    }
                }
                None => println!("(no conversation selected)"),
            },
            Some("/sync") => client.sync(),
            Some("/devices") => match client.list_devices().await {
                Ok(devices) => {
                    for d in devices {
                        println!(
                            "  {}{}{}",
                            d.device_id,
                            if d.this_device { " (this device)" } else { "" },
                            if d.connected { ", connected" } else { "" }
                        );
                    }
                }
                Err(e) => println!("(could not list devices: {e})"),
            },
            Some("/unlink") => match words.next().map(DeviceId::parse) {
                Some(Ok(d)) => match client.unlink_device(&d).await {
                    Ok(d) => println!("(unlinked {d})"),
                    Err(e) => println!("(could not unlink: {e})"),
                },
                _ => println!("(usage: /unlink <device id>)"),
            },
            Some("/conversations") => {
                let after = match words.next().map(ConversationId::parse).transpose() {
                    Ok(a) => a,
                    Err(e) => {
                        println!("(bad conversation id: {e})");
                        continue;
                    }
                };
                match client.list_conversations(after.as_ref(), None).await {
                    Ok(page) => {
                        for c in &page.conversations {
                            println!(
                                "  {} with {} — #{} ({} unread here)",
                                c.conversation_id,
                                c.members
                                    .iter()
                                    .map(UserId::as_str)
                                    .collect::<Vec<_>>()
                                    .join(", "),
                                c.last_seq,
                                c.last_seq
                                    .get()
                                    .saturating_sub(c.delivered_through_seq.get())
                            );
                        }
                        if let Some(next) = page.next {
                            println!("  (more: /conversations {next})");
                        }
                    }
                    Err(e) => println!("(could not list conversations: {e})"),
                }
            }
            Some("/device") => {
                let platform = words.next().map(Platform::parse);
                match (platform, words.next()) {
                    (Some(Ok(p)), Some(t)) => match client.register_device(p, t).await {
                        Ok(()) => println!("(device registered)"),
                        Err(e) => println!("(could not register: {e})"),
                    },
                    _ => println!("(usage: /device fcm|apns|apns_sandbox <token>)"),
                }
            }
            _ => match &current {
                Some(c) => {
                    if let Err(e) = client.send(c, line).await {
                        println!("(not sent: {e})");
                    }
                }
                None => println!("(pick a conversation first: /new <members…> or /to <id>)"),
            },
        }
    }
    client.close();
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(())
}
