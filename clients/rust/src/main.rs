//! `chat`: a terminal client for Courier, and the seed's story as `chat demo`.
//!
//! `chat --as bob` connects as bob (a token minted with the local secret,
//! or `--token`), prints messages as they arrive, and sends what you type
//! to the current conversation. Commands: `/new alice carol`, `/to <id>`,
//! `/history`, `/sync`, `/device fcm <token>`, `/quit`.

use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use courier_client::demo::{self, DemoOptions};
use courier_client::{Client, ClientConfig, Event, LOCAL_JWT_SECRET, minted_token, static_token};
use courier_core::domain::{ConversationId, Platform, UserId};
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
    let client = Client::connect(ClientConfig::new(&args.common.url, user.clone(), token))
        .await
        .context("connecting")?;
    println!(
        "connected as {user}. /new <members…>, /to <conversation>, /history, /sync, /device fcm <token>, /quit"
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
                } => println!("(caught up: {messages} messages in {conversations} conversations)"),
                Event::Receipt {
                    conversation_id,
                    user_id,
                    through,
                } => println!("({user_id} has {conversation_id} through #{through})"),
                Event::Connected => println!("(connected)"),
                Event::Disconnected => println!("(disconnected; reconnecting)"),
                Event::ServerError { code, message } => println!("(error {code:?}: {message})"),
            }
        }
    });

    let mut current: Option<ConversationId> = None;
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
