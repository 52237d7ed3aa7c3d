//! Model prices: the built-in table (`assets/prices.yaml`, embedded at build time and dated) with the
//! config's `models:` entries laid over it, and the cost of a [`Usage`] in integer micro-USD.
//!
//! A request's model is looked up as written, then with trailing `-segment`s cut off one at a time
//! until a family is found (`gpt-4o-2024-08-06` → `gpt-4o`, `claude-sonnet-4-5-20250929` →
//! `claude-sonnet-4-5`), so dated ids need no entries of their own. No price → cost 0 (the caller
//! warns once per model).

use std::collections::HashMap;
use std::sync::OnceLock;

use serde::Deserialize;

use super::usage::Usage;
use crate::config::{Config, ModelPrice};

/// The built-in table, as shipped.
pub const BUILTIN_YAML: &str = include_str!("../../assets/prices.yaml");

/// The built-in prices and the date they were taken.
#[derive(Debug)]
pub struct Builtin {
    /// `as_of:` in the file (YYYY-MM-DD).
    pub as_of: String,
    pub models: HashMap<String, ModelPrice>,
}

/// The built-in table, parsed once.
pub fn builtin() -> &'static Builtin {
    static TABLE: OnceLock<Builtin> = OnceLock::new();
    TABLE.get_or_init(|| parse_builtin(BUILTIN_YAML).expect("assets/prices.yaml is valid"))
}

fn parse_builtin(text: &str) -> Result<Builtin, String> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        as_of: String,
        models: HashMap<String, Row>,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Row {
        input: f64,
        output: f64,
        cached_input: Option<f64>,
        cache_write: Option<f64>,
    }
    let f: File = yaml_serde::from_str(text).map_err(|e| e.to_string())?;
    let micro = |usd: f64| (usd * 1e6).round() as u64;
    Ok(Builtin {
        as_of: f.as_of,
        models: f
            .models
            .into_iter()
            .map(|(k, r)| {
                (
                    k,
                    ModelPrice {
                        input: micro(r.input),
                        output: micro(r.output),
                        cached_input: r.cached_input.map(micro),
                        cache_write: r.cache_write.map(micro),
                    },
                )
            })
            .collect(),
    })
}

/// The effective price table of one config. Built at config load; read-only after.
#[derive(Debug, Clone)]
pub struct Prices {
    models: HashMap<String, ModelPrice>,
}

impl Prices {
    /// The built-in table with `cfg.models` laid over it.
    pub fn from_config(cfg: &Config) -> Prices {
        let mut models = builtin().models.clone();
        for (k, p) in &cfg.models {
            models.insert(k.clone(), *p);
        }
        Prices { models }
    }

    /// The price of `model` and the family it was found under.
    pub fn lookup<'a>(&'a self, model: &'a str) -> Option<(&'a str, ModelPrice)> {
        if let Some((k, p)) = self.models.get_key_value(model) {
            return Some((k, *p));
        }
        let mut cut = model;
        while let Some(i) = cut.rfind('-') {
            cut = &cut[..i];
            if let Some((k, p)) = self.models.get_key_value(cut) {
                return Some((k, *p));
            }
        }
        None
    }
}

/// What `usage` costs at `price`, in micro-USD (rounded to the nearest). Cached input defaults to the
/// input price when the model has no cached price, cache writes likewise.
pub fn cost_micros(price: &ModelPrice, u: &Usage) -> u64 {
    let per_million = u128::from(u.input) * u128::from(price.input)
        + u128::from(u.cached_input) * u128::from(price.cached_input.unwrap_or(price.input))
        + u128::from(u.cache_write) * u128::from(price.cache_write.unwrap_or(price.input))
        + u128::from(u.output) * u128::from(price.output);
    u64::try_from((per_million + 500_000) / 1_000_000).unwrap_or(u64::MAX)
}

pub use crate::wire::usd;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Env;

    #[test]
    fn builtin_table_parses_and_is_dated() {
        let b = builtin();
        assert!(
            b.as_of.len() == 10 && b.as_of.starts_with("20"),
            "{}",
            b.as_of
        );
        assert_eq!(b.models["gpt-4o"].input, 2_500_000);
        assert_eq!(b.models["gpt-4o"].cached_input, Some(1_250_000));
        assert_eq!(b.models["claude-sonnet-4-5"].cache_write, Some(3_750_000));
    }

    #[test]
    fn dated_ids_fold_to_their_family() {
        let p = Prices::from_config(&Config::defaults(&Env::empty()));
        assert_eq!(p.lookup("gpt-4o-2024-08-06").unwrap().0, "gpt-4o");
        assert_eq!(p.lookup("gpt-4o-mini-2024-07-18").unwrap().0, "gpt-4o-mini");
        assert_eq!(
            p.lookup("claude-sonnet-4-5-20250929").unwrap().0,
            "claude-sonnet-4-5"
        );
        assert_eq!(p.lookup("gpt-4.1-nano").unwrap().0, "gpt-4.1-nano");
        assert!(p.lookup("llama-3-70b").is_none());
    }

    #[test]
    fn config_overrides_and_the_legacy_per_1k_form() {
        let yaml = "models:\n  gpt-4: 0.03\n  gpt-4o: {input: 1.0, output: 2.0, cached_input: 0.5}\n  my-model: {input: 3, output: 4}\n";
        let cfg = Config::from_yaml_str(yaml, "t.yaml", &Env::empty()).unwrap();
        let p = Prices::from_config(&cfg);
        // 0.03 USD per 1K tokens = 30 USD per 1M, input and output alike.
        let gpt4 = p.lookup("gpt-4-0613").unwrap().1;
        assert_eq!((gpt4.input, gpt4.output), (30_000_000, 30_000_000));
        let u = Usage {
            input: 1000,
            output: 1000,
            ..Usage::default()
        };
        assert_eq!(cost_micros(&gpt4, &u), 60_000); // $0.03 + $0.03
        let o = p.lookup("gpt-4o-2024-11-20").unwrap().1;
        assert_eq!(
            (o.input, o.output, o.cached_input),
            (1_000_000, 2_000_000, Some(500_000))
        );
        assert_eq!(p.lookup("my-model").unwrap().1.output, 4_000_000);
        // Built-in entries the config does not mention stay.
        assert_eq!(p.lookup("gpt-4o-mini").unwrap().1.input, 150_000);
    }

    #[test]
    fn each_kind_is_priced_once_at_its_own_rate() {
        let gpt4o = builtin().models["gpt-4o"];
        // OpenAI: 1000 prompt tokens of which 800 cached → 200 at $2.50, 800 at $1.25; 100 out at $10.
        let u = Usage {
            input: 200,
            cached_input: 800,
            output: 100,
            ..Usage::default()
        };
        assert_eq!(cost_micros(&gpt4o, &u), 500 + 1000 + 1000);
        let sonnet = builtin().models["claude-sonnet-4-5"];
        // Anthropic: 200 input at $3, 800 read at $0.30, 100 written at $3.75, 50 out at $15.
        let u = Usage {
            input: 200,
            cached_input: 800,
            cache_write: 100,
            output: 50,
            ..Usage::default()
        };
        assert_eq!(cost_micros(&sonnet, &u), 600 + 240 + 375 + 750);
        // No cached price: cached tokens at the input price.
        let gpt4 = builtin().models["gpt-4"];
        let u = Usage {
            cached_input: 1000,
            ..Usage::default()
        };
        assert_eq!(cost_micros(&gpt4, &u), 30_000);
    }

    #[test]
    fn usd_text() {
        assert_eq!(usd(0), "0.000000");
        assert_eq!(usd(1_250), "0.001250");
        assert_eq!(usd(12_345_678), "12.345678");
    }
}
