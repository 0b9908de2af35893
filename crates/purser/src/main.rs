//! `purser`: serve the credits engine, print its default configuration,
//! verify a stored ledger, and talk to a running server (`cli`).

mod bench;
mod cli;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use purser_server::config::{Config, default_toml};

/// mimalloc: the server allocates small, short-lived buffers on every request
/// across threads, where it beats glibc's allocator (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "purser", version, about = "The credits engine for AI products")]
struct Cli {
    #[command(flatten)]
    connection: cli::Connection,
    #[command(subcommand)]
    command: Commands,
}

#[derive(Debug, Subcommand)]
enum Commands {
    /// Run the HTTP server on the embedded store.
    Serve(ServeArgs),
    /// Configuration files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Replay a stored journal through the core and report every invariant break.
    Verify {
        /// The data directory of the embedded store.
        #[arg(long, default_value = "./purser-data")]
        data_dir: PathBuf,
        /// The configuration file (for the catalog).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Load-test a running server (see BENCHMARKS.md).
    Bench(bench::BenchArgs),
    #[command(flatten)]
    Client(cli::ClientCommand),
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the built-in configuration as a purser.toml.
    Default,
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Address to listen on (default 127.0.0.1:8787).
    #[arg(long)]
    listen: Option<String>,
    /// Data directory of the embedded store (default ./purser-data).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Configuration file; without one, ./purser.toml if present, else the built-in.
    #[arg(long)]
    config: Option<PathBuf>,
    /// PostgreSQL database URL: the PostgreSQL store instead of the embedded one.
    #[arg(long)]
    database_url: Option<String>,
    /// Start with a test clock that moves only by POST /v1/test_clock/advance.
    #[arg(long)]
    test_clock: bool,
    /// Number of shard writer threads (default: the number of cores).
    #[arg(long)]
    shards: Option<usize>,
    /// How portal purchases are paid: `manual` (the operator's backend
    /// confirms each one through the API; the default) or `instant`
    /// (completes at once: demos and tests).
    #[arg(long, env = "PURSER_PAYMENT_PROVIDER")]
    payment_provider: Option<String>,
    /// The base of customer portal links, e.g. https://billing.example.com
    /// (default: the Host the API was called on).
    #[arg(long, env = "PURSER_PUBLIC_URL")]
    public_url: Option<String>,
}

fn load_config(path: Option<&PathBuf>) -> anyhow::Result<Config> {
    let path = match path {
        Some(path) => Some(path.clone()),
        None => Some(PathBuf::from("purser.toml")).filter(|p| p.exists()),
    };
    match path {
        None => Ok(Config::default()),
        Some(path) => {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            Config::from_toml(&text).with_context(|| format!("in {}", path.display()))
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PURSER_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Commands::Serve(args) => serve(args),
        Commands::Config {
            command: ConfigCommand::Default,
        } => {
            print!("{}", default_toml());
            Ok(ExitCode::SUCCESS)
        }
        Commands::Verify { data_dir, config } => verify(&data_dir, config.as_ref()),
        Commands::Bench(args) => bench::run(&cli.connection.url, cli.connection.api_key, args),
        Commands::Client(command) => cli::run(cli.connection, command),
    };
    result.unwrap_or_else(|error| {
        eprintln!("purser: {error:#}");
        ExitCode::FAILURE
    })
}

fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut config = load_config(args.config.as_ref())?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    if args.database_url.is_some() {
        config.database_url = args.database_url;
    }
    if let Some(shards) = args.shards {
        config.shards = shards.clamp(1, 256);
    }
    config.test_clock |= args.test_clock;
    if let Some(provider) = args.payment_provider {
        config.set_payment_provider(&provider)?;
    }
    if let Some(url) = args.public_url {
        config.set_public_url(&url)?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&config.listen)
            .await
            .with_context(|| format!("listening on {}", config.listen))?;
        let admin_key = std::env::var("PURSER_ADMIN_KEY")
            .ok()
            .filter(|k| !k.is_empty());
        let data_dir = config.data_dir.clone();
        let test_clock = config.test_clock;
        let app = purser_server::App::build(config, listener, admin_key).await?;
        if let Some(secret) = &app.generated_admin_key {
            println!(
                "purser: generated the first admin API key (shown once, store it now):\n{secret}"
            );
        }
        tracing::info!(
            address = %app.local_addr()?,
            data_dir = %data_dir.display(),
            journal_entries = app.journal_entries,
            test_clock,
            "purser is serving"
        );
        app.serve(shutdown_signal()).await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// Ctrl-C or SIGTERM (what service managers send): either drains the same
/// way (no new connections, in-flight requests answered, batches committed,
/// a PostgreSQL lease handed back).
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the server");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
    tracing::info!("shutting down: finishing in-flight requests");
}

fn verify(data_dir: &std::path::Path, config: Option<&PathBuf>) -> anyhow::Result<ExitCode> {
    use purser_store::Store;
    let config = load_config(config)?;
    if !data_dir.join("purser.db").exists() {
        anyhow::bail!("no purser store in {}", data_dir.display());
    }
    let store = purser_store_sqlite::SqliteStore::open(data_dir)?;
    let mut entries = Vec::new();
    store.replay(&mut |entry| {
        entries.push(entry);
        Ok(())
    })?;
    let catalog = Arc::new(config.catalog);
    let mut by_partition: std::collections::BTreeMap<u16, Vec<purser_core::Entry>> =
        Default::default();
    for entry in entries {
        by_partition
            .entry(entry.account.partition())
            .or_default()
            .push(entry);
    }
    let (mut accounts, mut count, mut problems) = (0, 0, Vec::new());
    let mut replayed = std::collections::BTreeMap::new();
    for (partition, entries) in &by_partition {
        let (ledger, report) =
            purser_core::verify::replay(*partition, catalog.clone(), entries.iter());
        accounts += report.accounts;
        count += report.entries;
        problems.extend(report.problems);
        replayed.insert(*partition, ledger);
    }
    // What a restart would load (snapshots, then the journal after them)
    // must be exactly what the whole journal gives.
    let partitions = match store.setting("partitions")? {
        Some(text) => text.parse::<u16>().context("stored partition count")?,
        None => 0,
    };
    let snapshots = store.snapshots()?.len();
    if partitions > 0 {
        let (recovered, _) = purser_store::recover(&store, catalog.clone(), partitions)?;
        for ledger in &recovered {
            let empty = purser_core::Ledger::new(ledger.partition(), catalog.clone());
            let full = replayed.get(&ledger.partition()).unwrap_or(&empty);
            problems.extend(purser_core::verify::compare(full, ledger));
        }
    }
    if problems.is_empty() {
        println!(
            "ok: {accounts} accounts, {count} journal entries, {snapshots} partition snapshots; every entry applies, every invariant holds, and recovery from the snapshots gives the same ledger"
        );
        Ok(ExitCode::SUCCESS)
    } else {
        for problem in &problems {
            println!("problem: {problem}");
        }
        println!(
            "{} problems in {accounts} accounts, {count} journal entries",
            problems.len()
        );
        Ok(ExitCode::FAILURE)
    }
}
