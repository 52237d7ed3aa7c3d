//! What one model costs: its rate for each token class, in integer micro-USD per million tokens,
//! with the long-context tiers of the price data, and the cost of a [`Usage`] at those rates.
//!
//! Rates come from the config (`models:`) or from the `genai-prices` data ([`probe`]). The data's
//! own calculator prices one request in about 5 µs (it decomposes the usage over its 59 units
//! each time); relay asks it once per model for the rates in force (what 1 token of each class
//! costs, and where the price changes with the prompt's length) and then prices every request
//! with a handful of integer multiplications (a test checks both agree, model by model).

use std::time::SystemTime;

use genai_prices::{Calculator, PriceRequest, UsageKey};
use serde::Serialize;

use super::usage::Usage;
use crate::config::ModelPrice;

/// The version of the price data compiled in (the `genai-prices` crate, bundled data).
pub const DATA: &str = "genai-prices 0.2.1";

/// Micro-USD per million tokens of each class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Rates {
    /// Input tokens neither read from nor written to a prompt cache.
    pub input: u64,
    /// Input read from the provider's prompt cache.
    pub cached_input: u64,
    /// Input written to the prompt cache for 5 minutes.
    pub cache_write: u64,
    /// Input written to the 1-hour prompt cache (Anthropic).
    pub cache_write_1h: u64,
    pub output: u64,
    /// Output spent on reasoning (the output rate where the data has none of its own).
    pub reasoning: u64,
}

impl Rates {
    /// A config price (`models:`): a class without a price of its own is charged at the input
    /// rate (cache reads and 5-minute writes), the 5-minute write rate (1-hour writes) or the
    /// output rate (reasoning).
    pub fn of_config(p: &ModelPrice) -> Rates {
        let cache_write = p.cache_write.unwrap_or(p.input);
        Rates {
            input: p.input,
            cached_input: p.cached_input.unwrap_or(p.input),
            cache_write,
            cache_write_1h: p.cache_write_1h.unwrap_or(cache_write),
            output: p.output,
            reasoning: p.output,
        }
    }
}

/// Rates that apply to a request whose prompt (all input classes) is longer than `above` tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Tier {
    pub above: u64,
    pub rates: Rates,
}

/// Where a price comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "from", rename_all = "lowercase")]
pub enum Source {
    /// `models.<key>` in the config file.
    Config { key: String },
    /// The price data: its provider and model ids.
    Data {
        provider: String,
        model: String,
        name: Option<String>,
    },
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Config { key } => write!(f, "config models.{key}"),
            Source::Data {
                provider, model, ..
            } => write!(f, "{DATA} data: {provider} {model}"),
        }
    }
}

/// The price of one model: base rates, longer-prompt tiers (ascending), and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Price {
    pub base: Rates,
    pub tiers: Vec<Tier>,
    pub source: Source,
}

/// What one request cost, micro-USD.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cost {
    pub micros: u64,
    /// What the prompt-cache reads saved: the reads at the input rate minus at the cached rate.
    pub prompt_cache_saved_micros: u64,
}

impl Price {
    /// The rates for a prompt of `prompt` tokens.
    pub fn rates_for(&self, prompt: u64) -> &Rates {
        self.tiers
            .iter()
            .rev()
            .find(|t| prompt > t.above)
            .map_or(&self.base, |t| &t.rates)
    }

    /// What `u` costs: every class once, at its own rate, at the tier its prompt falls in;
    /// rounded to the nearest micro-USD.
    pub fn cost(&self, u: &Usage) -> Cost {
        let r = self.rates_for(u.prompt());
        let m = |n: u64, rate: u64| u128::from(n) * u128::from(rate);
        let reasoning = u.reasoning.min(u.output);
        let per_million = m(u.input, r.input)
            + m(u.cached_input, r.cached_input)
            + m(u.cache_write, r.cache_write)
            + m(u.cache_write_1h, r.cache_write_1h)
            + m(u.output - reasoning, r.output)
            + m(reasoning, r.reasoning);
        let saved = m(u.cached_input, r.input.saturating_sub(r.cached_input));
        Cost {
            micros: micros(per_million),
            prompt_cache_saved_micros: micros(saved),
        }
    }
}

/// Token-times-rate (micro-USD per million) to micro-USD, rounded to the nearest.
fn micros(per_million: u128) -> u64 {
    u64::try_from((per_million + 500_000) / 1_000_000).unwrap_or(u64::MAX)
}

/// Longest prompt probed for tiers (the data's tiers start between 32K and 524K tokens).
const PROBE_MAX: u64 = 4_000_000;
/// Most tiers read for one model.
const MAX_TIERS: usize = 4;
/// Output tokens priced to read an output rate.
const OUT: f64 = 1000.0;

/// The rates in force at `at` for the data's `model` of `provider`, read from `calc` (module
/// docs): what each class costs at a prompt of one token, then, where the price changes with the
/// prompt's length, the first length of each tier (found by bisection). `None` when the data
/// cannot price the model.
pub fn probe(calc: &Calculator, provider: &str, model: &str, at: SystemTime) -> Option<Price> {
    let price = |usage: &[(UsageKey, f64)]| -> Option<f64> {
        let usage: genai_prices::Usage = usage.iter().cloned().collect();
        let req = PriceRequest::new(model, &usage)
            .with_provider_id(provider)
            .with_timestamp(at);
        calc.calculate(&req).ok().map(|p| p.total_price)
    };
    let rates_at = |n: u64| -> Option<Rates> {
        let nf = n as f64;
        let per = |usd: f64, tokens: f64| (usd.max(0.0) * 1e12 / tokens).round() as u64;
        let input = [(UsageKey::INPUT_TOKENS, nf)];
        let base = price(&input)?;
        let with = |extra: &[(UsageKey, f64)]| {
            let mut u = input.to_vec();
            u.extend_from_slice(extra);
            price(&u)
        };
        Some(Rates {
            input: per(base, nf),
            cached_input: per(with(&[(UsageKey::CACHE_READ_TOKENS, nf)])?, nf),
            cache_write: per(with(&[(UsageKey::CACHE_WRITE_TOKENS, nf)])?, nf),
            cache_write_1h: per(
                with(&[
                    (UsageKey::CACHE_WRITE_TOKENS, nf),
                    (UsageKey::CACHE_WRITE_1H_TOKENS, nf),
                ])?,
                nf,
            ),
            output: per(with(&[(UsageKey::OUTPUT_TOKENS, OUT)])? - base, OUT),
            reasoning: per(
                with(&[
                    (UsageKey::OUTPUT_TOKENS, OUT),
                    (UsageKey::OUTPUT_REASONING_TOKENS, OUT),
                ])? - base,
                OUT,
            ),
        })
    };
    let base = rates_at(1)?;
    let mut tiers = Vec::new();
    let (mut lo, mut at_lo) = (1u64, base);
    while tiers.len() < MAX_TIERS && rates_at(PROBE_MAX)? != at_lo {
        // The smallest prompt past `lo` with other rates.
        let mut hi = PROBE_MAX;
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if rates_at(mid)? == at_lo {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        at_lo = rates_at(hi)?;
        tiers.push(Tier {
            above: hi - 1,
            rates: at_lo,
        });
        lo = hi;
    }
    Some(Price {
        base,
        tiers,
        source: Source::Data {
            provider: provider.to_string(),
            model: model.to_string(),
            name: None,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn at() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_796_000_000) // 2026-11-30
    }

    fn probed(provider: &str, model: &str) -> Price {
        probe(Calculator::bundled(), provider, model, at()).expect(model)
    }

    #[test]
    fn the_data_rates_of_claude_code_and_codex_models() {
        let opus = probed("anthropic", "claude-opus-4-8");
        assert_eq!(
            opus.base,
            Rates {
                input: 5_000_000,
                cached_input: 500_000,
                cache_write: 6_250_000,
                cache_write_1h: 10_000_000,
                output: 25_000_000,
                reasoning: 25_000_000,
            }
        );
        assert!(opus.tiers.is_empty());
        // Claude Code's "say hi": 19,349 input and 7 output tokens, $0.09692 by its own count.
        let u = Usage {
            input: 19_349,
            output: 7,
            ..Usage::default()
        };
        assert_eq!(opus.cost(&u).micros, 96_920);
        let sonnet = probed("anthropic", "claude-sonnet-4-5");
        assert_eq!(sonnet.tiers.len(), 1);
        assert_eq!(sonnet.tiers[0].above, 200_000);
        assert_eq!(sonnet.tiers[0].rates.input, 6_000_000);
        assert_eq!(sonnet.tiers[0].rates.output, 22_500_000);
        let gpt = probed("openai", "gpt-5.5");
        assert_eq!(gpt.tiers[0].above, 272_000);
        assert_eq!(
            (gpt.base.input, gpt.base.cached_input),
            (5_000_000, 500_000)
        );
    }

    /// relay's arithmetic at the probed rates equals the data's own calculator, for every
    /// Anthropic and OpenAI model the data has and usages on both sides of the tiers.
    #[test]
    fn integer_pricing_agrees_with_the_data_calculator() {
        let calc = Calculator::bundled();
        let usages = [
            Usage {
                input: 1_200,
                cached_input: 30_000,
                cache_write: 4_000,
                cache_write_1h: 2_000,
                output: 900,
                reasoning: 300,
                estimated: false,
            },
            Usage {
                input: 250_000,
                cached_input: 40_000,
                cache_write: 1_000,
                cache_write_1h: 0,
                output: 5_000,
                reasoning: 1_000,
                estimated: false,
            },
        ];
        let mut checked = 0;
        for provider in ["anthropic", "openai"] {
            let p = calc.find_provider(Some(provider), None).unwrap().unwrap();
            for model in p.models() {
                let Some(price) = probe(calc, provider, model.id(), at()) else {
                    continue;
                };
                for u in &usages {
                    let theirs = genai_prices::Usage::from([
                        (UsageKey::INPUT_TOKENS, u.prompt() as f64),
                        (UsageKey::CACHE_READ_TOKENS, u.cached_input as f64),
                        (
                            UsageKey::CACHE_WRITE_TOKENS,
                            (u.cache_write + u.cache_write_1h) as f64,
                        ),
                        (UsageKey::CACHE_WRITE_1H_TOKENS, u.cache_write_1h as f64),
                        (UsageKey::OUTPUT_TOKENS, u.output as f64),
                        (UsageKey::OUTPUT_REASONING_TOKENS, u.reasoning as f64),
                    ]);
                    let req = PriceRequest::new(model.id(), &theirs)
                        .with_provider_id(provider)
                        .with_timestamp(at());
                    let Ok(expected) = calc.calculate(&req) else {
                        continue;
                    };
                    let ours = price.cost(u).micros as f64 / 1e6;
                    let tol = 2e-6_f64.max(expected.total_price * 1e-6);
                    assert!(
                        (ours - expected.total_price).abs() <= tol,
                        "{provider} {}: relay {ours} vs data {}",
                        model.id(),
                        expected.total_price
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked > 100, "{checked}");
    }

    #[test]
    fn config_rates_default_to_their_neighbours() {
        let r = Rates::of_config(&ModelPrice {
            input: 3,
            output: 15,
            cached_input: None,
            cache_write: Some(4),
            cache_write_1h: None,
        });
        assert_eq!(
            (r.cached_input, r.cache_write, r.cache_write_1h, r.reasoning),
            (3, 4, 4, 15)
        );
    }

    #[test]
    fn each_class_once_and_the_prompt_cache_saving() {
        let p = Price {
            base: Rates {
                input: 3_000_000,
                cached_input: 300_000,
                cache_write: 3_750_000,
                cache_write_1h: 6_000_000,
                output: 15_000_000,
                reasoning: 15_000_000,
            },
            tiers: vec![],
            source: Source::Config { key: "m".into() },
        };
        let u = Usage {
            input: 200,
            cached_input: 800,
            cache_write: 100,
            cache_write_1h: 100,
            output: 50,
            reasoning: 10,
            estimated: false,
        };
        let c = p.cost(&u);
        assert_eq!(c.micros, 600 + 240 + 375 + 600 + 750);
        assert_eq!(c.prompt_cache_saved_micros, 2_160);
    }
}
