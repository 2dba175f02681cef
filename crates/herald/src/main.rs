//! The `herald` binary: parses the command line, sets up logging and hands
//! over to the server crate.

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use herald_server::{build_authenticator, token_minter, Config};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "herald",
    version,
    about = "Herald: a real-time gateway for WebSocket and SSE clients"
)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "HERALD_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node.
    Serve {
        /// TOML config file; HERALD_<SECTION>__<KEY> variables override it.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Mint a user token with the configured HS256 secret (for development).
    Token {
        /// The user id (`sub`).
        #[arg(long)]
        sub: String,
        /// Roles, comma separated.
        #[arg(long, value_delimiter = ',')]
        roles: Vec<String>,
        /// Tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// Lifetime, e.g. 15m, 1h, 7d.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// Extra claims as a JSON object, e.g. '{"projects":[7]}'.
        #[arg(long)]
        claims: Option<String>,
        /// TOML config file holding auth.hs256_secret.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a config and print the effective config with secrets masked.
    Check {
        /// TOML config file.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

/// Lines that may wait for the log thread; the queue is allocated up front
/// (tracing-appender's default of 128,000 took 4.4 MB of RSS).
const LOG_QUEUE_LINES: usize = 16_384;

/// Logs are written by a thread of their own, buffered and flushed whenever
/// no line is waiting: a connect or a close then never waits on stderr (a
/// slow log pipe would otherwise stall the runtime's threads), and a burst
/// of lines costs a few writes instead of one each. If the pipe stays
/// blocked long enough for [`LOG_QUEUE_LINES`] lines to queue, later lines
/// are dropped rather than slowing the node. The guard flushes what is left
/// on exit.
fn init_logging(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .thread_name("herald-log")
        .finish(std::io::BufWriter::new(std::io::stderr()));
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
    guard
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the chain on one line, without a backtrace:
            // these are operator errors (a bad key, a bad file), not bugs.
            eprintln!("herald: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _log_writer = init_logging(cli.log_format);
    match cli.command {
        Command::Serve { config } => {
            let config = Config::load(config.as_deref()).context("invalid configuration")?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(herald_server::serve(config))?;
            // Background tasks were cancelled by the drain; do not wait on stragglers.
            runtime.shutdown_timeout(Duration::from_secs(1));
            Ok(())
        }
        Command::Token {
            sub,
            roles,
            tenant,
            ttl,
            claims,
            config,
        } => {
            let config = Config::load(config.as_deref()).context("invalid configuration")?;
            let (_, secret) = build_authenticator(&config)?;
            let secret = secret.context(
                "no auth.hs256_secret configured (set it in the config or HERALD_AUTH__HS256_SECRET); \
                 tokens for RS256/ES256 keys are minted by your identity provider",
            )?;
            let ttl = herald_server::config::parse_duration(&ttl).map_err(anyhow::Error::msg)?;
            let claims = match claims {
                None => serde_json::Map::new(),
                Some(text) => {
                    serde_json::from_str(&text).context("--claims must be a JSON object")?
                }
            };
            let minted = token_minter(&config, &secret).mint(&herald_auth::MintRequest {
                sub,
                roles,
                tenant,
                ttl,
                claims,
            })?;
            println!("{}", minted.token);
            Ok(())
        }
        Command::Config {
            command: ConfigCommand::Check { config },
        } => {
            let config = Config::load(config.as_deref()).context("invalid configuration")?;
            build_authenticator(&config)?;
            print!("{}", config.to_masked_toml());
            for warning in config.tls_warnings() {
                eprintln!("warning: {warning}");
            }
            if config.is_dev_mode() {
                eprintln!(
                    "config OK, in DEVELOPMENT MODE: no token key is configured, so `herald serve` \
                     generates a random HS256 secret (and, without auth.api_keys, an admin API \
                     key) for each run, and serves only on loopback with the memory broker"
                );
            } else {
                eprintln!("config OK");
            }
            Ok(())
        }
    }
}
