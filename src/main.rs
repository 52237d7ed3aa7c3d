//! The `relay` command line. Parsing only; the work is in the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use relay::cli::cache::CacheCommand;
use relay::cli::prices::PricesArgs;
use relay::cli::usage::UsageArgs;
use relay::config::{Config, Env};
use relay::logging::{self, LogFormat};
use relay::server::{ServeOptions, Server};

/// mimalloc instead of glibc's malloc: relay allocates on its workers and frees on its writer
/// threads (log lines, cache entries), which contends on glibc's arena locks. The load harness
/// (`examples/loadtest.rs`) uses the same allocator (docs/performance.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A fast, terminal-first proxy and gateway for AI APIs.
///
/// Point your app at relay (`export OPENAI_BASE_URL=http://127.0.0.1:8080/v1`, or
/// `ANTHROPIC_BASE_URL=http://127.0.0.1:8080`) and it forwards every request to the right upstream,
/// streaming included.
#[derive(Parser)]
#[command(name = "relay", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (headless).
    Serve {
        /// Config file (YAML). Default: configs/relay.yaml when it exists, else
        /// ~/.config/relay/relay.yaml when it exists, else built-in defaults (OpenAI and Anthropic,
        /// listening on 127.0.0.1:8080). The file is watched and reloaded on change.
        #[arg(long, short, value_name = "PATH")]
        config: Option<PathBuf>,
        /// Address to listen on, overriding server.listen (e.g. 0.0.0.0:8080).
        #[arg(long, short, value_name = "ADDR")]
        listen: Option<SocketAddr>,
        /// Log line format: pretty (human) or json (one object per line). Filter with RELAY_LOG
        /// (e.g. RELAY_LOG=debug, or RELAY_LOG=info,relay::access=off to drop the request log).
        #[arg(long, value_enum, default_value = "pretty", value_name = "FORMAT")]
        log_format: LogFormat,
        /// Do not watch the config file for changes.
        #[arg(long)]
        no_watch: bool,
        /// Replay only: answer from the cache and never contact an upstream; a request with no
        /// recording gets a 400 saying so (cache.mode: offline, kept across reloads).
        #[arg(long)]
        offline: bool,
    },
    /// Run the proxy with a live terminal dashboard (same flags as `serve`), or watch a running
    /// relay with --attach.
    ///
    /// Logs go to a file (--log-file) while the dashboard is up. Press ? in the dashboard for keys.
    Tui {
        /// Config file (YAML), as for `serve`.
        #[arg(long, short, value_name = "PATH")]
        config: Option<PathBuf>,
        /// Address to listen on, overriding server.listen.
        #[arg(long, short, value_name = "ADDR")]
        listen: Option<SocketAddr>,
        /// Log line format in the log file.
        #[arg(long, value_enum, default_value = "pretty", value_name = "FORMAT")]
        log_format: LogFormat,
        /// Log file. Default: <data dir>/relay/tui.log (~/.local/share/relay/tui.log on Linux).
        #[arg(long, value_name = "PATH")]
        log_file: Option<PathBuf>,
        /// Do not watch the config file for changes.
        #[arg(long)]
        no_watch: bool,
        /// Replay only: answer from the cache and never contact an upstream.
        #[arg(long)]
        offline: bool,
        /// Do not run a proxy: watch the relay at this URL (e.g. http://127.0.0.1:8080) through its
        /// loopback event stream, /relay/events.
        #[arg(long, value_name = "URL", conflicts_with_all = ["config", "listen", "no_watch", "offline"])]
        attach: Option<String>,
    },
    /// Inspect configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// List, show, export, import and clear cached responses.
    ///
    /// Works whether or not relay is running: with no relay holding the cache file, the command
    /// opens it directly; while `relay serve` holds it, the command goes through that server's
    /// loopback admin API (http://<server.listen>/relay/cache/...). The Redis backend is always
    /// opened directly.
    Cache {
        #[command(subcommand)]
        command: CacheCommand,
        /// Config file naming the store (cache.path, cache.backend) and the server
        /// (server.listen). Default: configs/relay.yaml when it exists, else
        /// ~/.config/relay/relay.yaml when it exists, else built-in defaults.
        #[arg(long, short, global = true, value_name = "PATH")]
        config: Option<PathBuf>,
        /// Always use the admin API of the relay at this URL (e.g. http://127.0.0.1:8080)
        /// instead of opening the store.
        #[arg(long, global = true, value_name = "URL")]
        server: Option<String>,
    },
    /// Make, list, revoke and rotate relay keys (auth.enabled: callers present one instead of a
    /// provider key).
    ///
    /// Opens the key store (auth.keys_path; default keys.redb beside the usage ledger) directly,
    /// or goes through the running relay that holds it, so changes apply there at once. A new
    /// key is printed once, alone on the last line of stdout.
    Keys {
        #[command(subcommand)]
        command: relay::cli::keys::KeysCommand,
        /// Config file naming the store (auth.keys_path) and the server (server.listen).
        #[arg(long, short, global = true, value_name = "PATH")]
        config: Option<PathBuf>,
        /// Always use the key API of the relay at this URL (e.g. http://127.0.0.1:8080); a
        /// remote relay needs its admin key in RELAY_ADMIN_KEY.
        #[arg(long, global = true, value_name = "URL")]
        server: Option<String>,
    },
    /// Show spending from the usage ledger: requests, tokens, cost and what the cache saved.
    ///
    /// A table by day, model, key, provider or session with a total line; --json prints what
    /// GET /relay/usage returns, --csv one line per row. Reads the ledger file directly, or goes
    /// through the running relay that holds it.
    Usage(UsageArgs),
    /// Show the price in force for each token class and where it comes from.
    ///
    /// With a MODEL: its rates at each configured provider (or --provider), long-prompt tiers
    /// included, from the config's models: or the bundled genai-prices data; exits 1 when it has
    /// no price anywhere asked. Without: every model the config prices, then the price data's
    /// models of the configured providers.
    Prices(PricesArgs),
    /// relay's local certificate authority (HTTPS with server.tls: auto, HTTPS_PROXY interception).
    Ca {
        #[command(subcommand)]
        command: CaCommand,
        /// Config file naming the CA directory (server.ca_dir; default <data dir>/relay/ca).
        /// Default: as for `serve`.
        #[arg(long, short, global = true, value_name = "PATH")]
        config: Option<PathBuf>,
    },
    /// Run Claude Code or Codex through relay: `relay run claude -- -p "say hi"`.
    ///
    /// Uses the relay listening at server.listen, or starts one for the run (logging to a file)
    /// and stops it after. Every request is labelled with the session (x-relay-session). The
    /// agent's exit status is relay's.
    Run {
        /// The agent: claude (Claude Code) or codex (Codex CLI).
        #[arg(value_enum)]
        agent: relay::cli::run::Agent,
        /// Config file (YAML), as for `serve`.
        #[arg(long, short, value_name = "PATH")]
        config: Option<PathBuf>,
        /// Address of the relay to use or start, overriding server.listen.
        #[arg(long, short, value_name = "ADDR")]
        listen: Option<SocketAddr>,
        /// Replay only: answer from the cache, never contact an upstream.
        #[arg(long)]
        offline: bool,
        /// Session label for this run's requests. Default: <agent>-<date>-<time>.
        #[arg(long, value_name = "LABEL")]
        session: Option<String>,
        /// Log file of a relay started for the run. Default: <data dir>/relay/run.log.
        #[arg(long, value_name = "PATH")]
        log_file: Option<PathBuf>,
        /// Arguments for the agent, after `--`.
        #[arg(last = true, value_name = "AGENT_ARGS")]
        args: Vec<String>,
    },
    /// Print the settings that point Claude Code or Codex at relay, to do it by hand.
    ///
    /// claude: shell exports (eval "$(relay env claude)"); codex: a ~/.codex/config.toml section.
    Env {
        /// The agent: claude or codex.
        #[arg(value_enum)]
        agent: relay::cli::run::Agent,
        /// Config file (for server.listen). Default: as for `serve`.
        #[arg(long, short, value_name = "PATH")]
        config: Option<PathBuf>,
        /// Label the requests with this session (x-relay-session).
        #[arg(long, value_name = "LABEL")]
        session: Option<String>,
    },
    /// Check that a running relay answers /healthz (exit 0) — the container HEALTHCHECK.
    Health {
        /// URL to ask. Default: http://127.0.0.1:<port of server.listen>/healthz (https://localhost
        /// when server.tls is on, trusting relay's CA or the configured certificate).
        #[arg(long, value_name = "URL")]
        url: Option<String>,
        /// Config file (for server.listen and server.tls). Default: as for `serve`.
        #[arg(long, short, value_name = "PATH")]
        config: Option<PathBuf>,
        /// Also print each provider's endpoints (circuit, health, latency, tries) and keys
        /// (alias or hash prefix, never the key), from the relay's /relay/upstreams.
        #[arg(long, short)]
        verbose: bool,
    },
}

#[derive(Subcommand)]
enum CaCommand {
    /// Print the CA certificate's path (making the CA on first use), then the environment
    /// variables that make clients trust it, ready for `eval "$(relay ca path | tail -n +2)"`.
    Path,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a config file (environment overrides applied) and print the effective config with
    /// secrets masked. Exits 1 with the file and key path on an invalid config.
    Check {
        /// Config file. Default: configs/relay.yaml when it exists, else
        /// ~/.config/relay/relay.yaml when it exists, else built-in defaults.
        path: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    rustls::crypto::ring::default_provider()
        .install_default()
        .expect("no other rustls crypto provider is installed");
    match cli.command {
        Command::Serve {
            config,
            listen,
            log_format,
            no_watch,
            offline,
        } => {
            let _guard = logging::init(log_format);
            let opts = ServeOptions {
                config_path: config,
                listen,
                env: Env::from_process(),
                watch_config: !no_watch,
                offline,
                clock: Default::default(),
            };
            let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
            match rt.block_on(serve(opts)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    eprintln!("relay: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Tui {
            config,
            listen,
            log_format,
            log_file,
            no_watch,
            offline,
            attach,
        } => {
            let log_path = log_file.unwrap_or_else(logging::default_tui_log);
            let Some(_guard) = log_to_file(log_format, &log_path) else {
                return ExitCode::FAILURE;
            };
            let shown = Some(log_path.display().to_string());
            let result = match attach {
                Some(url) => relay::tui::run_attach(url, shown),
                None => relay::tui::run_local(
                    ServeOptions {
                        config_path: config,
                        listen,
                        env: Env::from_process(),
                        watch_config: !no_watch,
                        offline,
                        ..Default::default()
                    },
                    shown,
                ),
            };
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    eprintln!("relay: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Cache {
            command,
            config,
            server,
        } => cache(command, config, server),
        Command::Run {
            agent,
            config,
            listen,
            offline,
            session,
            log_file,
            args,
        } => {
            let log_path =
                log_file.unwrap_or_else(|| logging::default_tui_log().with_file_name("run.log"));
            let Some(_guard) = log_to_file(LogFormat::Pretty, &log_path) else {
                return ExitCode::FAILURE;
            };
            let opts = relay::cli::run::RunOptions {
                config,
                listen,
                offline,
                session,
                log_file: Some(log_path),
            };
            let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
            match rt.block_on(relay::cli::run::run(agent, opts, args)) {
                Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
                Err(e) => {
                    eprintln!("relay: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Env {
            agent,
            config,
            session,
        } => match Config::load_or_default(config.as_deref(), &Env::from_process()) {
            Ok(cfg) => {
                let marks = relay::cli::run::Marks {
                    session,
                    only: false,
                };
                let base = relay::cli::run::base_url(cfg.server.listen);
                print!("{}", relay::cli::run::env_text(agent, &base, &marks));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Usage(args) => usage(args),
        Command::Keys {
            command,
            config,
            server,
        } => keys(command, config, server),
        Command::Prices(args) => prices(args),
        Command::Ca {
            command: CaCommand::Path,
            config,
        } => ca_path(config),
        Command::Health {
            url,
            config,
            verbose,
        } => {
            let result = Config::load_or_default(config.as_deref(), &Env::from_process())
                .map_err(|e| e.to_string())
                .and_then(|cfg| {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("tokio runtime");
                    rt.block_on(async {
                        if verbose {
                            let text = relay::cli::health::verbose(&cfg, url.as_deref()).await?;
                            print!("{text}");
                            Ok(())
                        } else {
                            relay::cli::health::check(&cfg, url.as_deref()).await
                        }
                    })
                });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("unhealthy: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Config {
            command: ConfigCommand::Check { path },
        } => match Config::load_or_default(path.as_deref(), &Env::from_process()) {
            Ok(cfg) => {
                let origin = cfg
                    .source
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "built-in defaults".to_string());
                for w in &cfg.warnings {
                    eprintln!("warning: {w}");
                }
                eprintln!("{origin}: ok");
                print!("{}", cfg.to_masked_yaml());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Logs to `path` while a terminal program (the dashboard, an agent) has the screen; `None`,
/// having said why, when the file cannot be written.
fn log_to_file(format: LogFormat, path: &std::path::Path) -> Option<logging::LogGuard> {
    match logging::init_file(format, path) {
        Ok(g) => Some(g),
        Err(e) => {
            eprintln!("relay: cannot write the log file {}: {e}", path.display());
            None
        }
    }
}

/// `relay cache ...`: loads the config, runs the command, prints its error. Exit 1 on failure.
fn cache(command: CacheCommand, config: Option<PathBuf>, server: Option<String>) -> ExitCode {
    let cfg = match command_config(config.as_deref()) {
        Ok(cfg) => cfg,
        Err(code) => return code,
    };
    // Store warnings (a damaged file moved aside) go to stderr; RELAY_LOG overrides the filter.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RELAY_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    match rt.block_on(relay::cli::cache::run(command, &cfg, server)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The config of a CLI command, or the exit after saying why it cannot be loaded.
fn command_config(path: Option<&std::path::Path>) -> Result<Config, ExitCode> {
    Config::load_or_default(path, &Env::from_process()).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::FAILURE
    })
}

/// Writes a command's answer to stdout in one go.
fn print_out(text: &str) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush());
}

/// `relay usage`: loads the config, prints the report. Exit 1 on failure.
fn usage(args: UsageArgs) -> ExitCode {
    let config = args.config.clone();
    printed(config.as_deref(), |cfg| async move {
        relay::cli::usage::run(&args, &cfg).await
    })
}

/// Loads the config, runs `run` on a runtime, prints what it returns (exit 0) or its error on
/// stderr (exit 1).
fn printed<F, Fut, E>(config: Option<&std::path::Path>, run: F) -> ExitCode
where
    F: FnOnce(Config) -> Fut,
    Fut: std::future::Future<Output = Result<String, E>>,
    E: std::fmt::Display,
{
    let cfg = match command_config(config) {
        Ok(cfg) => cfg,
        Err(code) => return code,
    };
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    match rt.block_on(run(cfg)) {
        Ok(out) => {
            print_out(&out);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn keys(
    command: relay::cli::keys::KeysCommand,
    config: Option<PathBuf>,
    server: Option<String>,
) -> ExitCode {
    printed(config.as_deref(), |cfg| async move {
        relay::cli::keys::run(command, &cfg, server).await
    })
}

/// `relay prices`: exit 1 when the model asked about has no price at any provider asked.
fn prices(args: PricesArgs) -> ExitCode {
    let cfg = match command_config(args.config.as_deref()) {
        Ok(cfg) => cfg,
        Err(code) => return code,
    };
    let now_ms = relay::clock::Clock::system().now_ms();
    match relay::cli::prices::run(&args, &cfg, now_ms) {
        Ok(answer) => {
            print_out(&answer.text);
            if answer.priced {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `relay ca path`: the CA file, then `export` lines for the clients' trust variables.
fn ca_path(config: Option<PathBuf>) -> ExitCode {
    let run = || -> anyhow::Result<()> {
        let cfg = Config::load_or_default(config.as_deref(), &Env::from_process())?;
        let ca = relay::tls::LocalCa::load_or_create(&relay::tls::ca_dir(&cfg)?)?;
        let ca_file = ca.cert_path();
        // SSL_CERT_FILE and REQUESTS_CA_BUNDLE replace the default roots: give them the system
        // bundle plus relay's CA, so other hosts keep working.
        let bundle = relay::tls::trust_bundle(&ca)?.unwrap_or_else(|| ca_file.clone());
        println!("{}", ca_file.display());
        println!("export SSL_CERT_FILE={}", shell_quote(&bundle));
        println!("export REQUESTS_CA_BUNDLE={}", shell_quote(&bundle));
        println!("export NODE_EXTRA_CA_CERTS={}", shell_quote(&ca_file));
        Ok(())
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A path as one shell word.
fn shell_quote(p: &std::path::Path) -> String {
    let s = p.display().to_string();
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+:@%".contains(c))
    {
        s
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

async fn serve(opts: ServeOptions) -> Result<(), relay::server::StartError> {
    let server = Server::start(opts).await?;
    shutdown_signal().await;
    server.shutdown();
    server.wait().await;
    Ok(())
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
