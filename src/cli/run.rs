//! `relay run claude|codex [relay flags] [-- agent args]`: an agent pointed at relay, and
//! `relay env claude|codex`: the settings for doing it by hand.
//!
//! `run` uses the relay already listening at `server.listen` when there is one; else it starts one
//! in this process (on that address, or on a free loopback port when the address is taken),
//! logging to a file so the agent has the terminal, and stops it when the agent exits. The agent's
//! exit status is `run`'s. Every request of the run carries `x-relay-session: <label>` (`--session`,
//! default `<agent>-<local time>`), which groups it in the TUI, `relay cache ls` and
//! `relay usage --by session`. `--offline` replays: a relay started here is offline; a running
//! relay gets `x-relay-cache: only` on each request, which is the same lookup.
//!
//! - Claude Code: `ANTHROPIC_BASE_URL=http://<relay>` and the headers in
//!   `ANTHROPIC_CUSTOM_HEADERS`.
//! - Codex: a `relay` model provider given with `-c` before the agent's arguments
//!   (`wire_api = "responses"`, `supports_websockets = true`, the headers in `http_headers`, and
//!   `env_key = "OPENAI_API_KEY"` only when that variable is set: without it Codex sends no key and
//!   relay injects its own).

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::config::{Config, Env};
use crate::server::{ServeOptions, Server};

/// The agents `relay run` and `relay env` know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Agent {
    /// Claude Code (`claude`, npm `@anthropic-ai/claude-code`).
    Claude,
    /// Codex CLI (`codex`, npm `@openai/codex`).
    Codex,
}

impl Agent {
    pub fn program(self) -> &'static str {
        match self {
            Agent::Claude => "claude",
            Agent::Codex => "codex",
        }
    }
}

/// How an agent is pointed at relay: environment variables and leading arguments.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Setup {
    pub env: Vec<(String, String)>,
    pub args: Vec<String>,
}

/// What the agent's requests carry besides its own headers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Marks {
    /// `x-relay-session`.
    pub session: Option<String>,
    /// `x-relay-cache: only` (offline replay through a relay that is not offline).
    pub only: bool,
}

impl Marks {
    fn headers(&self) -> Vec<(&'static str, String)> {
        let mut h = Vec::new();
        if let Some(s) = &self.session {
            h.push((crate::wire::clients::X_RELAY_SESSION, s.clone()));
        }
        if self.only {
            h.push(("x-relay-cache", "only".to_string()));
        }
        h
    }
}

/// The settings that point `agent` at the relay at `base` (`http://127.0.0.1:8080`);
/// `openai_key`: whether `OPENAI_API_KEY` is set (Codex then sends it).
pub fn setup(agent: Agent, base: &str, marks: &Marks, openai_key: bool) -> Setup {
    let headers = marks.headers();
    match agent {
        Agent::Claude => {
            let mut env = vec![("ANTHROPIC_BASE_URL".to_string(), base.to_string())];
            if !headers.is_empty() {
                let lines: Vec<String> = headers.iter().map(|(k, v)| format!("{k}: {v}")).collect();
                env.push(("ANTHROPIC_CUSTOM_HEADERS".to_string(), lines.join("\n")));
            }
            Setup {
                env,
                args: Vec::new(),
            }
        }
        Agent::Codex => {
            let mut provider = format!(
                "{{name=\"relay\", base_url=\"{base}/v1\", wire_api=\"responses\", supports_websockets=true"
            );
            if openai_key {
                provider.push_str(", env_key=\"OPENAI_API_KEY\"");
            }
            if !headers.is_empty() {
                let h: Vec<String> = headers
                    .iter()
                    .map(|(k, v)| format!("\"{k}\"={}", toml_string(v)))
                    .collect();
                provider.push_str(&format!(", http_headers={{{}}}", h.join(", ")));
            }
            provider.push('}');
            Setup {
                env: Vec::new(),
                args: vec![
                    "-c".into(),
                    "model_provider=\"relay\"".into(),
                    "-c".into(),
                    format!("model_providers.relay={provider}"),
                ],
            }
        }
    }
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `relay env AGENT`: shell lines for Claude Code, a `config.toml` section for Codex.
pub fn env_text(agent: Agent, base: &str, marks: &Marks) -> String {
    match agent {
        Agent::Claude => {
            let s = setup(agent, base, marks, false);
            let mut out =
                String::from("# Claude Code through relay: eval \"$(relay env claude)\"\n");
            for (k, v) in s.env {
                out.push_str(&format!("export {k}={}\n", shell_quote(&v)));
            }
            out
        }
        Agent::Codex => {
            let mut out = format!(
                "# Codex through relay: add to ~/.codex/config.toml (HTTP and the Responses WebSocket)\n\
                 model_provider = \"relay\"\n\n\
                 [model_providers.relay]\n\
                 name = \"relay\"\n\
                 base_url = \"{base}/v1\"\n\
                 wire_api = \"responses\"\n\
                 supports_websockets = true\n\
                 # with an OpenAI key of your own; without it relay injects its provider's key\n\
                 env_key = \"OPENAI_API_KEY\"\n"
            );
            let headers = marks.headers();
            if !headers.is_empty() {
                let h: Vec<String> = headers
                    .iter()
                    .map(|(k, v)| format!("\"{k}\" = {}", toml_string(v)))
                    .collect();
                out.push_str(&format!("http_headers = {{ {} }}\n", h.join(", ")));
            }
            out
        }
    }
}

fn shell_quote(s: &str) -> String {
    if s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_./:@".contains(&b))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The base URL of a relay listening on `listen` (loopback when it listens on every address).
pub fn base_url(listen: SocketAddr) -> String {
    let ip = if listen.ip().is_unspecified() {
        match listen {
            SocketAddr::V4(_) => "127.0.0.1".to_string(),
            SocketAddr::V6(_) => "[::1]".to_string(),
        }
    } else {
        match listen {
            SocketAddr::V4(a) => a.ip().to_string(),
            SocketAddr::V6(a) => format!("[{}]", a.ip()),
        }
    };
    format!("http://{ip}:{}", listen.port())
}

/// `relay run`'s options.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub config: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub offline: bool,
    pub session: Option<String>,
    /// Where a relay started here logs.
    pub log_file: Option<PathBuf>,
}

/// The default session label: `claude-20261202-142301`.
pub fn default_session(agent: Agent) -> String {
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let stamp: String = now
        .chars()
        .filter(|c| c.is_ascii_digit() || *c == 'T')
        .collect::<String>()
        .replace('T', "-");
    format!("{}-{}", agent.program(), stamp.get(..15).unwrap_or(&stamp))
}

/// Runs the agent against a relay (see the module docs); the agent's exit code.
pub async fn run(agent: Agent, opts: RunOptions, agent_args: Vec<String>) -> Result<i32, String> {
    let env = Env::from_process();
    let cfg = Config::load_or_default(opts.config.as_deref(), &env).map_err(|e| e.to_string())?;
    let listen = opts.listen.unwrap_or(cfg.server.listen);
    if cfg.server.tls != crate::config::ServerTls::Off {
        return Err(
            "relay run speaks plain HTTP to relay; use a config with server.tls: off".into(),
        );
    }
    let running = super::health::check(&cfg, Some(&format!("{}/healthz", base_url(listen))))
        .await
        .is_ok();
    let mut started = None;
    let base = if running {
        base_url(listen)
    } else {
        let mut serve = ServeOptions {
            config_path: opts.config.clone(),
            listen: Some(listen),
            env: env.clone(),
            watch_config: true,
            offline: opts.offline,
            clock: Default::default(),
        };
        let server = match Server::start(serve.clone()).await {
            Ok(s) => s,
            Err(crate::server::StartError::Bind { .. }) => {
                // Something else holds the port: a free one on loopback.
                serve.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
                Server::start(serve).await.map_err(|e| e.to_string())?
            }
            Err(e) => return Err(e.to_string()),
        };
        let base = base_url(server.local_addr());
        started = Some(server);
        base
    };
    let marks = Marks {
        session: Some(
            opts.session
                .clone()
                .unwrap_or_else(|| default_session(agent)),
        ),
        only: opts.offline && running,
    };
    let openai_key = std::env::var_os("OPENAI_API_KEY").is_some_and(|v| !v.is_empty());
    let s = setup(agent, &base, &marks, openai_key);
    let how = if running {
        "using the relay at"
    } else {
        "started relay at"
    };
    let logs = match (&started, &opts.log_file) {
        (Some(_), Some(f)) => format!("; its log: {}", f.display()),
        _ => String::new(),
    };
    eprintln!(
        "relay: {how} {base}{}; session {}{logs}",
        if opts.offline { " (offline)" } else { "" },
        marks.session.as_deref().unwrap_or("-")
    );
    // Ctrl-C belongs to the agent (Claude Code interrupts a turn with it): relay ignores it while
    // the agent runs, and stops when the agent exits.
    let ignore_interrupts = tokio::spawn(async { while tokio::signal::ctrl_c().await.is_ok() {} });
    let status = tokio::process::Command::new(agent.program())
        .args(&s.args)
        .args(&agent_args)
        .envs(s.env.iter().map(|(k, v)| (k, v)))
        .status()
        .await;
    ignore_interrupts.abort();
    if let Some(server) = started {
        server.shutdown();
        server.wait().await;
    }
    match status {
        Ok(st) => Ok(st.code().unwrap_or(1)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!(
            "{} is not installed (npm install -g {})",
            agent.program(),
            match agent {
                Agent::Claude => "@anthropic-ai/claude-code",
                Agent::Codex => "@openai/codex",
            }
        )),
        Err(e) => Err(format!("cannot start {}: {e}", agent.program())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_for_each_agent() {
        let marks = Marks {
            session: Some("demo \"1\"".into()),
            only: true,
        };
        let c = setup(Agent::Claude, "http://127.0.0.1:8080", &marks, false);
        assert_eq!(
            c.env[0],
            ("ANTHROPIC_BASE_URL".into(), "http://127.0.0.1:8080".into())
        );
        assert_eq!(
            c.env[1].1,
            "x-relay-session: demo \"1\"\nx-relay-cache: only"
        );
        let x = setup(Agent::Codex, "http://127.0.0.1:9", &Marks::default(), true);
        assert_eq!(x.args[1], "model_provider=\"relay\"");
        assert_eq!(
            x.args[3],
            "model_providers.relay={name=\"relay\", base_url=\"http://127.0.0.1:9/v1\", wire_api=\"responses\", supports_websockets=true, env_key=\"OPENAI_API_KEY\"}"
        );
        let x = setup(Agent::Codex, "http://h:1", &marks, false);
        assert!(x.args[3].ends_with(
            "supports_websockets=true, http_headers={\"x-relay-session\"=\"demo \\\"1\\\"\", \"x-relay-cache\"=\"only\"}}"
        ), "{}", x.args[3]);
        assert!(
            !x.args[3].contains("env_key"),
            "no key of its own: relay injects"
        );
        let e = env_text(Agent::Claude, "http://127.0.0.1:8080", &Marks::default());
        assert!(
            e.contains("export ANTHROPIC_BASE_URL=http://127.0.0.1:8080\n"),
            "{e}"
        );
        let e = env_text(Agent::Codex, "http://127.0.0.1:8080", &Marks::default());
        assert!(e.contains("base_url = \"http://127.0.0.1:8080/v1\""), "{e}");
        assert_eq!(
            base_url("0.0.0.0:8080".parse().unwrap()),
            "http://127.0.0.1:8080"
        );
        assert_eq!(base_url("[::]:8080".parse().unwrap()), "http://[::1]:8080");
        assert!(default_session(Agent::Codex).starts_with("codex-20"));
    }
}
