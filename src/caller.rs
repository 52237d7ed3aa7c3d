//! Who a request is from: one identity per request, worked out once by one rule, and read alike
//! by the cache (whose entries it may hit), the rate limits (whose buckets it fills) and the cost
//! ledger (whom it is booked to). The rule, first that applies:
//!
//! 1. **a relay key** (`auth.enabled`), by its name: a rotated key stays the same caller;
//! 2. **the API key the request presents** ([`crate::wire::headers::presented_key`]), by its
//!    blake3 hash: the one hash relay takes of a key (the ledger's `key-<hex>` labels and the
//!    `keys:` aliases are its prefix, as `printf %s "$KEY" | b3sum` prints it);
//! 3. **the provider's own key** (`api_key_env`): the key relay sends for a caller presenting
//!    none, or one of those keys presented by the caller itself. It is named by the provider's
//!    name, so the caller stays the same when the key is rotated, when it arrives from the caller
//!    or from relay, and offline, where the variable may not be set at all (a recording still
//!    replays).
//!
//! The cache scope and the limit buckets take [`Identity::digest`]; the cost ledger books the
//! request to [`Identity::paid_by`], the key that goes upstream, by its hash (its alias or
//! `key-<hex>`, as every key is named), or to `none` when there is no key at all.

/// Who a request is from ([module docs](self)).
#[derive(Clone, PartialEq, Eq)]
pub struct Identity {
    who: Who,
    digest: [u8; 32],
}

/// Which rule named the caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Who {
    /// A relay key, by name.
    RelayKey(String),
    /// A presented API key, by its blake3 hash.
    Key(blake3::Hash),
    /// The provider's own key, by the provider's name; `key`: the one that goes upstream (the
    /// one presented, else the provider's first), `None` when the provider has no key.
    Provider {
        name: String,
        key: Option<blake3::Hash>,
    },
}

/// BLAKE3 derive-key context of the digest of a named caller (rules 1 and 3).
const NAMED_CONTEXT: &str = "relay caller v1";

impl Identity {
    /// The rule: `relay_key` (its name), else the `presented` key, else the own key of the
    /// provider `provider` (whose keys are `own`).
    pub fn of(
        relay_key: Option<&str>,
        presented: Option<&str>,
        provider: &str,
        own: &[crate::config::ProviderKey],
    ) -> Identity {
        if let Some(name) = relay_key {
            return Identity::named(Who::RelayKey(name.to_string()), b'r', name);
        }
        let presented = presented.map(str::trim).filter(|k| !k.is_empty());
        let key = match presented.map(|k| blake3::hash(k.as_bytes())) {
            Some(hash) if !own.iter().any(|k| k.hash == hash) => {
                return Identity {
                    digest: *hash.as_bytes(),
                    who: Who::Key(hash),
                };
            }
            Some(own_key) => Some(own_key),
            None => own.first().map(|k| k.hash),
        };
        let who = Who::Provider {
            name: provider.to_string(),
            key,
        };
        Identity::named(who, b'p', provider)
    }

    fn named(who: Who, tag: u8, name: &str) -> Identity {
        let mut h = blake3::Hasher::new_derive_key(NAMED_CONTEXT);
        h.update(&[tag]);
        h.update(name.as_bytes());
        Identity {
            who,
            digest: *h.finalize().as_bytes(),
        }
    }

    /// Which rule named the caller.
    pub fn who(&self) -> &Who {
        &self.who
    }

    /// The API key the request is paid with, by its hash: the presented one, else the one relay
    /// sends; `None` for a relay key (booked by its name) and without any key.
    pub fn paid_by(&self) -> Option<blake3::Hash> {
        match &self.who {
            Who::RelayKey(_) => None,
            Who::Key(hash) => Some(*hash),
            Who::Provider { key, .. } => *key,
        }
    }

    /// 32 bytes that name the caller and nobody else: the presented key's hash, else a digest of
    /// the relay key's or the provider's name (so a name can never pass for a key's hash).
    pub fn digest(&self) -> [u8; 32] {
        self.digest
    }
}

impl Default for Identity {
    /// Before the request is routed: the own key of no provider. Not hashed (every request
    /// opens with it); nothing reads it before routing replaces it.
    fn default() -> Identity {
        Identity {
            who: Who::Provider {
                name: String::new(),
                key: None,
            },
            digest: [0; 32],
        }
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.who {
            Who::RelayKey(name) => write!(f, "RelayKey({name})"),
            Who::Key(h) => write!(f, "Key({})", &h.to_hex()[..12]),
            Who::Provider { name, .. } => write!(f, "Provider({name})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ProviderKey, Secret};

    fn own(keys: &[&str]) -> Vec<ProviderKey> {
        keys.iter()
            .map(|k| ProviderKey {
                env: "OPENAI_API_KEY".into(),
                secret: Secret::new(*k),
                hash: blake3::hash(k.as_bytes()),
                label: "own".into(),
            })
            .collect()
    }

    #[test]
    fn one_rule_first_that_applies() {
        let keys = own(&["sk-own", "sk-own-2"]);
        let relay = Identity::of(Some("ci"), Some("relay-abc"), "openai", &keys);
        assert_eq!(relay.who(), &Who::RelayKey("ci".into()));
        assert_eq!(relay.paid_by(), None);
        let key = Identity::of(None, Some(" sk-a "), "openai", &keys);
        assert_eq!(key.who(), &Who::Key(blake3::hash(b"sk-a")));
        // The key's hash is its digest: the ledger's `key-<hex>` label is its prefix.
        assert_eq!(key.digest(), *blake3::hash(b"sk-a").as_bytes());
        assert_eq!(key.paid_by(), Some(blake3::hash(b"sk-a")));
        // No key: the provider's own, paid by its first key.
        let keyless = Identity::of(None, None, "openai", &keys);
        assert_eq!(keyless.paid_by(), Some(blake3::hash(b"sk-own")));
        for blank in [Some(""), Some("  ")] {
            assert_eq!(Identity::of(None, blank, "openai", &keys), keyless);
        }
        // One of the provider's own keys, presented: the same caller, paid by the key it sent.
        let second = Identity::of(None, Some("sk-own-2"), "openai", &keys);
        assert_eq!(second.digest(), keyless.digest());
        assert_eq!(second.paid_by(), Some(blake3::hash(b"sk-own-2")));
        // Rotated, or not set at all (offline): still the same caller.
        let rotated = Identity::of(None, None, "openai", &own(&["sk-new"]));
        assert_eq!(rotated.digest(), keyless.digest());
        let unset = Identity::of(None, None, "openai", &[]);
        assert_eq!(unset.digest(), keyless.digest());
        assert_eq!(unset.paid_by(), None);
    }

    #[test]
    fn digests_tell_callers_apart() {
        let all = [
            Identity::of(Some("openai"), None, "x", &[]),
            Identity::of(None, None, "openai", &[]),
            Identity::of(None, Some("openai"), "x", &[]),
            Identity::of(None, None, "anthropic", &[]),
            Identity::of(Some("ci"), None, "x", &[]),
            Identity::of(Some("ci2"), None, "x", &[]),
        ];
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a.digest(), b.digest(), "{a:?} and {b:?}");
            }
        }
        // A rotated relay key (same name) stays the caller.
        assert_eq!(
            all[4].digest(),
            Identity::of(Some("ci"), None, "y", &[]).digest()
        );
    }

    #[test]
    fn debug_never_shows_more_than_a_hash_prefix() {
        let key = Identity::of(None, Some("sk-secret"), "openai", &[]);
        let shown = format!("{key:?}");
        assert!(!shown.contains("sk-secret"));
        assert_eq!(shown.len(), "Key()".len() + 12);
    }
}
