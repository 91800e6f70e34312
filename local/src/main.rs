//! `courier-local`: serve Courier on one port (the default command), mint a
//! local token, create the DynamoDB tables, or backfill the memberships
//! index of a deployment's tables.

use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use courier_aws::auth::AuthConfig;
use courier_core::config::{TableNames, process_env};
use courier_core::domain::UserId;
use courier_local::GatewayConfig;
use courier_local::wiring::{self, LOCAL_JWT_SECRET, LOCAL_TABLE_PREFIX, LocalOptions};

#[derive(Parser)]
#[command(
    name = "courier-local",
    about = "Courier on one machine: API Gateway WebSocket + @connections + Lambda Invoke, running the real handlers",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Serve (the default).
    Serve(ServeArgs),
    /// Print an HS256 token for a user, signed with the local secret.
    Token(TokenArgs),
    /// Create Courier's tables on a DynamoDB endpoint (existing ones kept).
    CreateTables(TablesArgs),
    /// List conversations created before the memberships index (before
    /// devices) in `listConversations`: write a membership item for every
    /// member of every conversation. Idempotent; safe while the service
    /// runs. Without --dynamodb-endpoint it runs on the AWS account of the
    /// default credential chain (the stack's tables: its outputs name them).
    BackfillMemberships(BackfillArgs),
}

#[derive(Args)]
struct BackfillArgs {
    /// DynamoDB endpoint (moto, DynamoDB Local); AWS itself without.
    #[arg(long, env = "DYNAMODB_ENDPOINT")]
    dynamodb_endpoint: Option<String>,
    /// The conversations table (the stack's `ConversationsTableName`
    /// output); default `{table-prefix}-conversations`.
    #[arg(long, env = "CONVERSATIONS_TABLE")]
    conversations_table: Option<String>,
    /// The pending-deliveries table (`PendingTableName`); default
    /// `{table-prefix}-pending-deliveries`.
    #[arg(long, env = "PENDING_TABLE")]
    pending_table: Option<String>,
    #[command(flatten)]
    tables: TablePrefix,
}

#[derive(Args, Clone)]
struct ServeArgs {
    /// Address to listen on (WebSocket, @connections, Invoke API).
    #[arg(long, env = "COURIER_LOCAL_ADDR", default_value = "127.0.0.1:3001")]
    addr: String,
    /// Stage name: the @connections path prefix.
    #[arg(long, default_value = "local")]
    stage: String,
    /// Redis for the connection registry (in memory without).
    #[arg(long, env = "REDIS_URL")]
    redis_url: Option<String>,
    /// REDIS_URL is a node of a Redis Cluster (ElastiCache Serverless, a
    /// cluster-mode-enabled cache): use the cluster client.
    #[arg(long, env = "REDIS_CLUSTER")]
    redis_cluster: bool,
    /// DynamoDB endpoint (moto, DynamoDB Local) for the stores (in memory without).
    #[arg(long, env = "DYNAMODB_ENDPOINT")]
    dynamodb_endpoint: Option<String>,
    #[command(flatten)]
    tables: TablePrefix,
    #[command(flatten)]
    registry: RegistryArgs,
    /// HS256 secret tokens are checked with (JWT_SECRET; a fixed local one by default).
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// Close connections idle this long (API Gateway: 600).
    #[arg(long, default_value_t = 600)]
    idle_timeout_secs: u64,
    /// Close any connection after this long (API Gateway: 7200).
    #[arg(long, default_value_t = 7200)]
    max_connection_secs: u64,
    /// Post and invoke catch-up through this gateway's own HTTP APIs with the
    /// real AWS SDK adapters, instead of in process.
    #[arg(long)]
    via_aws_apis: bool,
}

#[derive(Args, Clone)]
struct TablePrefix {
    /// Table name prefix: {prefix}-messages, {prefix}-pending-deliveries, ...
    #[arg(long, env = "TABLE_PREFIX", default_value = LOCAL_TABLE_PREFIX)]
    table_prefix: String,
}

/// Where the connection registry lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum RegistryBackend {
    /// Redis with --redis-url, in memory without.
    Redis,
    /// A DynamoDB table on --dynamodb-endpoint (the send limiter is then off).
    Dynamodb,
}

#[derive(Args, Clone)]
struct RegistryArgs {
    /// The connection registry's backend, as REGISTRY_BACKEND on a deploy.
    #[arg(long, env = "REGISTRY_BACKEND", value_enum, default_value = "redis")]
    registry: RegistryBackend,
    /// The registry's table with `--registry dynamodb` (default:
    /// {prefix}-registry).
    #[arg(long, env = "REGISTRY_TABLE")]
    registry_table: Option<String>,
}

impl RegistryArgs {
    /// The DynamoDB registry's table, if that is the registry asked for.
    fn table(&self, prefix: &str) -> Option<String> {
        (self.registry == RegistryBackend::Dynamodb).then(|| {
            self.registry_table
                .clone()
                .unwrap_or_else(|| wiring::registry_table(prefix))
        })
    }
}

#[derive(Args)]
struct TokenArgs {
    /// The user id (the token's `sub`).
    #[arg(long)]
    user: String,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 24 * 3600)]
    ttl_secs: u64,
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
}

#[derive(Args)]
struct TablesArgs {
    #[arg(long, env = "DYNAMODB_ENDPOINT")]
    dynamodb_endpoint: String,
    #[command(flatten)]
    tables: TablePrefix,
    /// `--registry dynamodb` creates the registry's table too (TTL on).
    #[command(flatten)]
    registry: RegistryArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Token(t)) => {
            let user = UserId::parse(&t.user).context("--user")?;
            let secret = t.jwt_secret.unwrap_or_else(|| LOCAL_JWT_SECRET.to_owned());
            let env = process_env();
            let token = courier_aws::auth::mint_hs256(
                secret.as_bytes(),
                &user,
                Duration::from_secs(t.ttl_secs),
                env.optional("JWT_ISSUER").as_deref(),
                env.optional("JWT_AUDIENCE").as_deref(),
            );
            println!("{token}");
            Ok(())
        }
        Some(Command::CreateTables(t)) => {
            init_logs();
            let tables = TableNames::with_prefix(&t.tables.table_prefix);
            wiring::create_tables(&t.dynamodb_endpoint, &tables).await?;
            println!("tables ready: {tables:?}");
            if let Some(table) = t.registry.table(&t.tables.table_prefix) {
                wiring::create_registry_table(&t.dynamodb_endpoint, &table).await?;
                println!("registry table ready: {table}");
            }
            Ok(())
        }
        Some(Command::BackfillMemberships(b)) => {
            init_logs();
            let mut tables = TableNames::with_prefix(&b.tables.table_prefix);
            tables.conversations = b.conversations_table.unwrap_or(tables.conversations);
            tables.pending = b.pending_table.unwrap_or(tables.pending);
            let done =
                wiring::backfill_memberships(b.dynamodb_endpoint.as_deref(), &tables).await?;
            println!(
                "memberships written: {} for {} conversations ({} -> {})",
                done.memberships, done.conversations, tables.conversations, tables.pending
            );
            Ok(())
        }
        Some(Command::Serve(s)) => serve(s).await,
        None => serve(cli.serve).await,
    }
}

fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).init();
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    init_logs();
    let env = process_env();
    // Unset service settings take the template's values, not the code's.
    let service_env = wiring::template_env(|k| (env.0)(k));
    let settings = courier_core::app::Settings::from_env(&service_env)?;
    let mut auth = match &args.jwt_secret {
        Some(secret) => AuthConfig::hs256(secret.as_bytes().to_vec()),
        None if env.optional("JWKS_URL").is_some() => AuthConfig::from_env(&env)?,
        None => AuthConfig::hs256(LOCAL_JWT_SECRET),
    };
    auth.issuer = env.optional("JWT_ISSUER");
    auth.audience = env.optional("JWT_AUDIENCE");
    auth.user_id_claim = AuthConfig::user_id_claim_from_env(&env)?;
    let mut gateway = GatewayConfig {
        idle_timeout: Duration::from_secs(args.idle_timeout_secs),
        max_connection_duration: Duration::from_secs(args.max_connection_secs),
        ..GatewayConfig::default()
    };
    gateway.api.stage = args.stage.clone();
    let options = LocalOptions {
        gateway,
        redis_url: args.redis_url.clone(),
        redis_cluster: args.redis_cluster,
        dynamodb_endpoint: args.dynamodb_endpoint.clone(),
        tables: TableNames::with_prefix(&args.tables.table_prefix),
        registry_table: args.registry.table(&args.tables.table_prefix),
        auth,
        settings,
        rate_limit: courier_core::config::RateLimitConfig::from_env(&service_env)?,
        via_aws_apis: args.via_aws_apis,
    };
    let listener = tokio::net::TcpListener::bind(&args.addr)
        .await
        .with_context(|| format!("binding {}", args.addr))?;
    let started = wiring::start(options, listener).await?;
    let gw = &started.gateway;
    println!("Courier is up.");
    println!(
        "  WebSocket:   {}/?token=<jwt>   (token: courier-local token --user bob)",
        gw.ws_url()
    );
    println!(
        "  @connections {}/@connections/{{id}}",
        gw.management_endpoint()
    );
    println!(
        "  Invoke API   {}/2015-03-31/functions/{{name}}/invocations",
        gw.http_url()
    );
    println!("  pushes       {}/_local/pushes", gw.http_url());
    println!(
        "  story page   {}/   (alice, bob and carol in a browser)",
        gw.http_url()
    );
    println!(
        "  backends:    stores {}, registry {}",
        args.dynamodb_endpoint.as_deref().unwrap_or("in memory"),
        if args.registry.registry == RegistryBackend::Dynamodb {
            "dynamodb"
        } else if args.redis_url.is_some() && args.redis_cluster {
            "redis cluster"
        } else if args.redis_url.is_some() {
            "redis"
        } else {
            "in memory"
        }
    );
    tokio::select! {
        r = started.gateway.wait() => r?,
        _ = tokio::signal::ctrl_c() => tracing::info!("ctrl-c: stopping"),
    }
    Ok(())
}
