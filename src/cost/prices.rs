//! Model prices: the config's `models:` entries, else the `genai-prices` data (pydantic's open
//! price database, bundled in the binary), and the metric label each model gets.
//!
//! A request's model is looked up, for the provider that answers it:
//! 1. in `models:` as written, or without a date or version suffix (`-20250929`, `-2024-08-06`,
//!    `-0613`, `-latest`): never by cutting other parts off, so `claude-opus-4-8` is not
//!    `claude-opus-4`;
//! 2. in the price data, by the data's own matching rules, for the data's provider of the
//!    upstream: the one whose API URL the provider's `base_url` matches (Groq, DeepSeek,
//!    OpenRouter, ...), else the provider's kind (`openai`, `anthropic`).
//!
//! A model found nowhere is unpriced: it costs $0 and is flagged (the caller warns once). Each
//! result is kept per model for [`HOLD_MS`] (the data has prices that start on a date and, for a
//! few providers, prices by time of day), and the data's rates per model id, so a stream of made-up
//! names costs one lookup each, not a probe.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, UNIX_EPOCH};

use genai_prices::{Calculator, PriceRequest, UsageKey};

use super::rates::{self, Price, Rates, Source};
use crate::config::{Config, ProviderKind};
use crate::shard::Sharded;

/// How long a model's resolved price is kept before it is looked up again.
pub const HOLD_MS: u64 = 30 * 60 * 1000;
/// Models remembered per shard; past that, a model is looked up on every request.
const MAX_NAMES: usize = 512;
const SHARDS: usize = 8;

/// The price data, decoded on first use (about 60 ms: call [`warm`] off the async workers).
pub fn data() -> &'static Calculator {
    Calculator::bundled()
}

/// Decodes the price data now (server start, on the blocking pool).
pub fn warm() {
    let _ = data();
}

/// What relay knows about one model of one provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// `None`: unpriced.
    pub price: Option<Arc<Price>>,
    /// The metric and ledger label: the config key or data model id, a literal route model, else
    /// `other` (bounded: a client cannot make up labels).
    pub label: String,
}

impl Resolved {
    fn unpriced(label: String) -> Resolved {
        Resolved { price: None, label }
    }
}

/// Resolved models of one data provider, by the name requests give (looked up without
/// allocating).
type Names = Sharded<RwLock<HashMap<String, (Arc<Resolved>, u64)>>>;
type Probes = HashMap<(String, String), (Option<Arc<Price>>, u64)>;

/// Lookups kept (module docs). Shared by the clones of one config's [`Prices`].
#[derive(Debug)]
struct Memo {
    /// By data provider id.
    names: HashMap<String, Names>,
    probes: Sharded<RwLock<Probes>>,
}

/// The effective prices of one config. Built at config load; read-only after, but for its memo.
#[derive(Debug, Clone)]
pub struct Prices {
    overrides: BTreeMap<String, Arc<Price>>,
    /// Literal route models: labels of their own without a price.
    known: HashSet<String>,
    /// Config provider name → the data's provider id.
    providers: HashMap<String, String>,
    memo: Arc<Memo>,
}

impl Prices {
    pub fn from_config(cfg: &Config) -> Prices {
        let overrides = cfg
            .models
            .iter()
            .map(|(k, p)| {
                let price = Price {
                    base: Rates::of_config(p),
                    tiers: Vec::new(),
                    source: Source::Config { key: k.clone() },
                };
                (k.clone(), Arc::new(price))
            })
            .collect();
        let known = cfg
            .routes
            .iter()
            .filter_map(|r| r.model.as_ref())
            .map(|p| p.as_str())
            .filter(|p| !p.contains(['*', '?', '[']))
            .map(String::from)
            .collect();
        let providers: HashMap<String, String> = cfg
            .providers
            .iter()
            .map(|p| {
                (
                    p.name.clone(),
                    data_provider(p.kind, &p.base_url.to_string()),
                )
            })
            .collect();
        let names = providers
            .values()
            .map(|pid| (pid.clone(), Sharded::with_default(SHARDS)))
            .collect();
        Prices {
            overrides,
            known,
            providers,
            memo: Arc::new(Memo {
                names,
                probes: Sharded::with_default(SHARDS),
            }),
        }
    }

    /// The data's provider id for a config provider (`None` for an unknown name).
    pub fn data_provider(&self, provider: &str) -> Option<&str> {
        self.providers.get(provider).map(String::as_str)
    }

    /// The `models:` entry for `model`: as written, or without a date or version suffix.
    pub fn configured(&self, model: &str) -> Option<&Arc<Price>> {
        self.overrides
            .get(model)
            .or_else(|| undated(model).and_then(|m| self.overrides.get(m)))
    }

    /// The price and label of `model` answered by the config provider `provider`, at `now_ms`
    /// (unix ms). `None` model: label `none`, unpriced.
    pub fn resolve(&self, provider: &str, model: Option<&str>, now_ms: u64) -> Arc<Resolved> {
        let Some(model) = model else {
            return Arc::new(Resolved::unpriced("none".into()));
        };
        if let Some(p) = self.configured(model) {
            let Source::Config { key } = &p.source else {
                unreachable!("overrides come from the config")
            };
            return Arc::new(Resolved {
                label: key.clone(),
                price: Some(p.clone()),
            });
        }
        let Some((pid, names)) = self
            .data_provider(provider)
            .and_then(|pid| Some((pid, self.memo.names.get(pid)?)))
        else {
            return Arc::new(self.unpriced(model));
        };
        let shard = names.by_key(model);
        if let Some((r, until)) = crate::shard::read(shard).get(model) {
            if *until > now_ms {
                return r.clone();
            }
        }
        let r = Arc::new(self.look_up(pid, model, now_ms));
        let mut names = crate::shard::write(shard);
        if names.len() >= MAX_NAMES {
            names.retain(|_, (_, until)| *until > now_ms);
        }
        if names.len() < MAX_NAMES {
            names.insert(model.to_string(), (r.clone(), now_ms + HOLD_MS));
        }
        r
    }

    fn unpriced(&self, model: &str) -> Resolved {
        let label = match self.known.get(model) {
            Some(k) => k.clone(),
            None => "other".to_string(),
        };
        Resolved::unpriced(label)
    }

    /// The data's price of `model` (module docs), its rates read once per model id.
    fn look_up(&self, pid: &str, model: &str, now_ms: u64) -> Resolved {
        let calc = data();
        let at = UNIX_EPOCH + Duration::from_millis(now_ms);
        let one = genai_prices::Usage::from([(UsageKey::INPUT_TOKENS, 1.0)]);
        let req = PriceRequest::new(model, &one)
            .with_provider_id(pid)
            .with_timestamp(at);
        let Ok(found) = calc.calculate(&req) else {
            return self.unpriced(model);
        };
        let key = (found.provider_id.clone(), found.model_id.clone());
        let shard = self.memo.probes.by_key(&key);
        let held = crate::shard::read(shard)
            .get(&key)
            .filter(|(_, until)| *until > now_ms)
            .map(|(p, _)| p.clone());
        let price = match held {
            Some(p) => p,
            None => {
                let p = rates::probe(calc, pid, model, at).map(|mut p| {
                    p.source = Source::Data {
                        provider: found.provider_id.clone(),
                        model: found.model_id.clone(),
                        name: model_name(calc, &found.provider_id, &found.model_id),
                    };
                    Arc::new(p)
                });
                let mut probes = crate::shard::write(shard);
                if probes.len() >= MAX_NAMES {
                    probes.retain(|_, (_, until)| *until > now_ms);
                }
                probes.insert(key, (p.clone(), now_ms + HOLD_MS));
                p
            }
        };
        match price {
            Some(p) => Resolved {
                label: found.model_id,
                price: Some(p),
            },
            None => self.unpriced(model),
        }
    }

    /// Every price `relay prices` lists: the config's, then the data's models of each
    /// configured provider (`(provider, model, price)`).
    pub fn listing(&self, now_ms: u64) -> Vec<(String, String, Arc<Price>)> {
        let mut out: Vec<(String, String, Arc<Price>)> = self
            .overrides
            .iter()
            .map(|(k, p)| ("config".to_string(), k.clone(), p.clone()))
            .collect();
        let calc = data();
        let mut seen = HashSet::new();
        let mut ids: Vec<&String> = self.providers.values().collect();
        ids.sort();
        for pid in ids {
            if !seen.insert(pid.clone()) {
                continue;
            }
            let Ok(Some(p)) = calc.find_provider(Some(pid), None) else {
                continue;
            };
            for m in p.models() {
                let r = self.look_up(pid, m.id(), now_ms);
                if let Some(price) = r.price {
                    out.push((pid.clone(), m.id().to_string(), price));
                }
            }
        }
        out
    }
}

/// The data's display name of a model.
fn model_name(calc: &Calculator, provider: &str, model: &str) -> Option<String> {
    let p = calc.find_provider(Some(provider), None).ok()??;
    p.models()
        .find(|m| m.id() == model)
        .and_then(|m| m.name())
        .map(String::from)
}

/// The data's provider for an upstream: by its API URL, else by its kind.
fn data_provider(kind: ProviderKind, base_url: &str) -> String {
    match data().find_provider(None, Some(base_url)) {
        Ok(Some(p)) => p.id().to_string(),
        _ => kind.as_str().to_string(),
    }
}

/// `model` without a trailing date or version: `-YYYYMMDD`, `-YYYY-MM-DD`, `-MMDD`, `-latest`.
fn undated(model: &str) -> Option<&str> {
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    if let Some(m) = model.strip_suffix("-latest") {
        return Some(m);
    }
    let (head, last) = model.rsplit_once('-')?;
    let month = |s: &str| matches!(s.parse::<u8>(), Ok(1..=12));
    if digits(last, 8) || digits(last, 4) && month(&last[..2]) {
        return Some(head);
    }
    // -YYYY-MM-DD
    let (head2, month) = head.rsplit_once('-')?;
    let (head3, year) = head2.rsplit_once('-')?;
    (digits(year, 4) && digits(month, 2) && digits(last, 2)).then_some(head3)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Env;

    /// 2026-11-30.
    const NOW: u64 = 1_796_000_000_000;

    fn prices(yaml: &str) -> Prices {
        Prices::from_config(&Config::from_yaml_str(yaml, "t.yaml", &Env::empty()).unwrap())
    }

    #[test]
    fn agents_default_models_are_priced_as_themselves() {
        let p = prices("");
        let opus = p.resolve("anthropic", Some("claude-opus-4-8"), NOW);
        assert_eq!(opus.label, "claude-opus-4-8");
        let price = opus.price.as_ref().unwrap();
        assert_eq!(
            (price.base.input, price.base.output),
            (5_000_000, 25_000_000)
        );
        assert_eq!(
            price.source.to_string(),
            "genai-prices 0.2.1 data: anthropic claude-opus-4-8"
        );
        let dated = p.resolve("anthropic", Some("claude-sonnet-4-5-20250929"), NOW);
        assert_eq!(dated.label, "claude-sonnet-4-5");
        for m in ["gpt-5.5", "gpt-5-codex", "gpt-4o-2024-08-06"] {
            let r = p.resolve("openai", Some(m), NOW);
            assert!(r.price.is_some(), "{m}");
        }
        assert_eq!(
            p.resolve("openai", Some("gpt-4o-2024-08-06"), NOW).label,
            "gpt-4o"
        );
    }

    #[test]
    fn unknown_models_are_unpriced_never_another_models() {
        let p = prices("routes:\n  - {model: my-local-llama, provider: openai}\n");
        let r = p.resolve("openai", Some("llama-3-70b"), NOW);
        assert_eq!((r.price.is_none(), r.label.as_str()), (true, "other"));
        let r = p.resolve("openai", Some("my-local-llama"), NOW);
        assert_eq!(
            (r.price.is_none(), r.label.as_str()),
            (true, "my-local-llama")
        );
        assert_eq!(p.resolve("openai", None, NOW).label, "none");
        // An unknown provider name prices nothing.
        assert!(p.resolve("nope", Some("gpt-4o"), NOW).price.is_none());
    }

    #[test]
    fn config_overrides_and_the_legacy_per_1k_form() {
        let p = prices(
            "models:\n  gpt-4: 0.03\n  gpt-4o: {input: 1.0, output: 2.0, cached_input: 0.5}\n  claude-opus-4: {input: 15, output: 75}\n",
        );
        // 0.03 USD per 1K tokens = 30 USD per 1M, input and output alike; dated ids use it.
        let gpt4 = p.resolve("openai", Some("gpt-4-0613"), NOW);
        let r = gpt4.price.as_ref().unwrap().base;
        assert_eq!((r.input, r.output), (30_000_000, 30_000_000));
        assert_eq!(gpt4.label, "gpt-4");
        let o = p.resolve("openai", Some("gpt-4o-2024-11-20"), NOW);
        let r = o.price.as_ref().unwrap().base;
        assert_eq!(
            (r.input, r.output, r.cached_input),
            (1_000_000, 2_000_000, 500_000)
        );
        // Not a family prefix: gpt-4o-mini and claude-opus-4-8 keep the data's prices.
        let mini = p.resolve("openai", Some("gpt-4o-mini"), NOW);
        assert_eq!(mini.price.as_ref().unwrap().base.input, 150_000);
        let opus = p.resolve("anthropic", Some("claude-opus-4-8"), NOW);
        assert_eq!(opus.price.as_ref().unwrap().base.input, 5_000_000);
    }

    #[test]
    fn openai_compatible_upstreams_use_their_own_data_provider() {
        let p = prices(
            "providers:\n  - {name: groq, kind: openai, base_url: \"https://api.groq.com/openai/v1\"}\n",
        );
        assert_eq!(p.data_provider("groq"), Some("groq"));
        let p = prices(
            "providers:\n  - {name: local, kind: openai, base_url: \"http://127.0.0.1:8000/v1\"}\n",
        );
        assert_eq!(p.data_provider("local"), Some("openai"));
    }

    #[test]
    fn dated_suffixes() {
        assert_eq!(undated("gpt-4o-2024-08-06"), Some("gpt-4o"));
        assert_eq!(
            undated("claude-sonnet-4-5-20250929"),
            Some("claude-sonnet-4-5")
        );
        assert_eq!(undated("gpt-4-0613"), Some("gpt-4"));
        assert_eq!(undated("gpt-4o-latest"), Some("gpt-4o"));
        assert_eq!(undated("claude-opus-4-8"), None);
        assert_eq!(undated("gpt-5.5"), None);
        assert_eq!(undated("llama-3-70b"), None);
        assert_eq!(undated("qwen-3-7000"), None);
    }

    #[test]
    fn made_up_names_share_one_probe_per_model() {
        let p = prices("");
        for i in 0..50 {
            let m = format!("claude-opus-4-8-{i}x");
            let r = p.resolve("anthropic", Some(&m), NOW);
            assert_eq!(r.label, "claude-opus-4-8", "{m}");
        }
        let probes: usize = p
            .memo
            .probes
            .iter()
            .map(|s| crate::shard::read(s).len())
            .sum();
        assert_eq!(probes, 1);
    }
}
