//! `purser`: serve the credits engine, print its default configuration,
//! verify a stored ledger, and talk to a running server (`cli`).

mod bench;
mod cli;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;

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
    /// Check a store without changing it: every journal entry against its
    /// checksum, the commits' hash chain, every witness of lost commits, the
    /// replay through the core, snapshots, idempotency records and the
    /// history index. Exits non-zero on any finding.
    Verify {
        /// The data directory of the embedded store.
        #[arg(long, default_value = "./purser-data")]
        data_dir: PathBuf,
        /// A PostgreSQL database URL: verify that store instead.
        #[arg(long, env = "PURSER_DATABASE_URL")]
        database_url: Option<String>,
        /// The configuration file (for the catalog).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Copy the embedded store into a new directory while it serves (one
    /// consistent state), then verify the copy.
    Backup {
        /// Where the copy goes (a new or empty directory).
        target: PathBuf,
        /// The data directory to back up.
        #[arg(long, default_value = "./purser-data")]
        data_dir: PathBuf,
        /// The configuration file (for the catalog).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Replace the embedded store in a data directory with a backup, after
    /// verifying the backup. Refused while a purser serves the directory.
    Restore {
        /// The backup directory (made by `purser backup`).
        backup: PathBuf,
        /// The data directory to restore into.
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
    /// How purchases are paid: `manual` (the operator's backend confirms
    /// each one through the API; the default), `instant` (completes at
    /// once: demos and tests) or `stripe` (Stripe Checkout; needs
    /// PURSER_STRIPE_SECRET_KEY and PURSER_STRIPE_WEBHOOK_SECRET).
    #[arg(long, env = "PURSER_PAYMENT_PROVIDER")]
    payment_provider: Option<String>,
    /// The base of customer portal links, e.g. https://billing.example.com
    /// (default: the Host the API was called on).
    #[arg(long, env = "PURSER_PUBLIC_URL")]
    public_url: Option<String>,
    /// Start even though the store lost the end of its journal (acknowledged
    /// commits: `serve` refuses and names them otherwise). The loss is
    /// recorded in the store and what was ahead of the journal is dropped.
    /// Damage inside the journal is never accepted: restore a backup.
    #[arg(long)]
    accept_loss: bool,
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
        Commands::Verify {
            data_dir,
            database_url,
            config,
        } => load_config(config.as_ref())
            .and_then(|config| verify::verify(&data_dir, database_url.as_deref(), config.catalog)),
        Commands::Backup {
            target,
            data_dir,
            config,
        } => load_config(config.as_ref())
            .and_then(|config| verify::backup(&data_dir, &target, config.catalog)),
        Commands::Restore {
            backup,
            data_dir,
            config,
        } => load_config(config.as_ref())
            .and_then(|config| verify::restore(&backup, &data_dir, config.catalog)),
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
    config.accept_loss = args.accept_loss;
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
        let address = app.local_addr()?;
        // One stable line on stdout: with `--listen 127.0.0.1:0` it is how a
        // supervisor (or a test) learns the port the system chose.
        println!("purser: serving on http://{address}");
        tracing::info!(
            %address,
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
