//! `auth:` (relay-issued keys, the admin key) and the rule that a relay open to the network does
//! not hand out its provider keys to anyone who reaches it ([`Config::exposure`]).
//!
//! The original relay's `auth: {enabled, admin_key}` keep their meaning: `enabled` asks every
//! caller for a relay key, `admin_key` (a literal there; here better `admin_key_env`, the name of
//! the variable that holds it) lets remote callers use relay's own API.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Config, ConfigError, Env};

/// `auth:` as written.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAuth {
    pub enabled: Option<bool>,
    /// The original relay's literal admin key.
    pub admin_key: Option<String>,
    /// The environment variable holding the admin key.
    pub admin_key_env: Option<String>,
    /// The relay-key store (redb), when keys are not on Redis.
    pub keys_path: Option<String>,
}

/// `auth:` resolved.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuthConfig {
    /// Every proxied request must present a relay key (`relay keys create`).
    pub enabled: bool,
    /// The admin key: with it, remote callers may use relay's own API (`/relay/...`). blake3 of
    /// the key; the key itself is not kept.
    pub admin_key: Option<AdminKey>,
    /// The relay-key store's file; `None`: `keys.redb` beside the usage ledger.
    pub keys_path: Option<PathBuf>,
}

/// The admin key, as its hash (compared by hash, so in constant time with respect to the key).
#[derive(Clone, PartialEq, Eq)]
pub struct AdminKey {
    hash: blake3::Hash,
    /// Where it came from (`env RELAY_ADMIN_KEY`, `auth.admin_key`), for messages.
    pub source: String,
    /// The variable that holds it (`auth.admin_key_env`), for the CLI to send it.
    pub env: Option<String>,
}

impl std::fmt::Debug for AdminKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AdminKey({})", self.source)
    }
}

impl AdminKey {
    /// Whether `presented` is the admin key (`blake3::Hash` compares in constant time).
    pub fn matches(&self, presented: &str) -> bool {
        blake3::hash(presented.as_bytes()) == self.hash
    }
}

pub(super) fn resolve_auth(
    raw: RawAuth,
    env: &Env,
    file: &str,
    warnings: &mut Vec<String>,
) -> Result<AuthConfig, ConfigError> {
    let err = |path: &str, message: String| ConfigError::Invalid {
        file: file.to_string(),
        path: path.to_string(),
        message,
    };
    let admin_key = match (raw.admin_key_env.as_deref(), raw.admin_key.as_deref()) {
        (Some(_), Some(_)) => {
            return Err(err(
                "auth.admin_key",
                "set either auth.admin_key_env (the variable that holds the key) or the original relay's auth.admin_key, not both".to_string(),
            ))
        }
        (Some(var), None) => match env.get(var).map(str::trim).filter(|v| !v.is_empty()) {
            Some(key) => Some(AdminKey {
                env: Some(var.to_string()),
                ..admin_key(key, format!("environment variable {var}"), file)?
            }),
            None => {
                warnings.push(format!(
                    "auth.admin_key_env: environment variable {var} is not set; relay's own API answers loopback callers only"
                ));
                None
            }
        },
        (None, Some(key)) if !key.trim().is_empty() => {
            warnings.push("auth.admin_key: the admin key is written in the config file; better keep it in an environment variable named by auth.admin_key_env".to_string());
            Some(admin_key(key.trim(), "auth.admin_key".to_string(), file)?)
        }
        _ => None,
    };
    Ok(AuthConfig {
        enabled: raw.enabled.unwrap_or(false),
        admin_key,
        keys_path: raw.keys_path.filter(|p| !p.is_empty()).map(PathBuf::from),
    })
}

/// Shortest admin key accepted: a guessable one would open relay's own API to the network.
const ADMIN_KEY_MIN: usize = 16;

fn admin_key(key: &str, source: String, file: &str) -> Result<AdminKey, ConfigError> {
    if key.len() < ADMIN_KEY_MIN {
        return Err(ConfigError::Invalid {
            file: file.to_string(),
            path: "auth.admin_key".to_string(),
            message: format!(
                "the admin key ({source}) is {} characters; use at least {ADMIN_KEY_MIN} (e.g. `openssl rand -hex 24`)",
                key.len()
            ),
        });
    }
    Ok(AdminKey {
        hash: blake3::hash(key.as_bytes()),
        source,
        env: None,
    })
}

impl Config {
    /// Refuses a config that would let anyone who reaches `listen` spend a provider key: relay
    /// listens beyond loopback, injects a key of its own, and asks callers for none (auth off)
    /// without `server.allow_unauthenticated: true`. Checked at start and on every reload.
    pub fn exposure(&self, listen: SocketAddr) -> Result<(), ConfigError> {
        if listen.ip().is_loopback() || self.auth.enabled || self.server.allow_unauthenticated {
            return Ok(());
        }
        let Some(p) = self.providers.iter().find(|p| !p.keys.is_empty()) else {
            return Ok(());
        };
        let vars: Vec<&str> = p.keys.iter().map(|k| k.env.as_str()).collect();
        Err(ConfigError::Invalid {
            file: self
                .source
                .as_ref()
                .map_or_else(|| "(defaults)".to_string(), |p| p.display().to_string()),
            path: "auth.enabled".to_string(),
            message: format!(
                "relay would listen on {listen}, beyond this machine, and add provider {:?}'s key ({}) to every request while auth is off: anyone who reaches the port would spend that key. Turn auth on (auth.enabled: true, then `relay keys create --name NAME`), listen on 127.0.0.1, or, if the network in front of relay is trusted, say so with server.allow_unauthenticated: true",
                p.name,
                vars.join(", ")
            ),
        })
    }
}
