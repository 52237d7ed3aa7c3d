//! `relay prices [MODEL]`: the price in force for each token class, per configured provider, and
//! where it comes from (the config's `models:` or the bundled price data). Works without a
//! running relay: it resolves prices exactly as the proxy does ([`crate::cost::Prices`]).

use std::fmt::Write as _;
use std::path::PathBuf;

use serde::Serialize;

use crate::config::Config;
use crate::cost::rates::{Price, Rates};
use crate::cost::Prices;

/// `relay prices` options.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct PricesArgs {
    /// A model as requests name it (`claude-opus-4-8`, `gpt-4o-2024-08-06`). Without it: every
    /// model the config prices, then the price data's models of each configured provider.
    pub model: Option<String>,
    /// Only this configured provider (by name).
    #[arg(long, value_name = "NAME")]
    pub provider: Option<String>,
    /// Print JSON (rates in micro-USD per million tokens).
    #[arg(long)]
    pub json: bool,
    /// Config file (providers, `models:`). Default: as for `serve`.
    #[arg(long, short, value_name = "PATH")]
    pub config: Option<PathBuf>,
}

/// One line of the answer: a model as one provider prices it.
#[derive(Debug, Clone, Serialize)]
pub struct Priced {
    /// The configured provider (`config` for a `models:` entry in the listing).
    pub provider: String,
    pub model: String,
    /// `None`: the model has no price there.
    pub price: Option<Price>,
}

/// What `relay prices` prints, and whether the model asked about has a price at one provider
/// asked (always true for the listing).
#[derive(Debug)]
pub struct Answer {
    pub text: String,
    pub priced: bool,
}

/// Resolves `args` against `cfg` at `now_ms`.
pub fn run(args: &PricesArgs, cfg: &Config, now_ms: u64) -> Result<Answer, String> {
    let prices = Prices::from_config(cfg);
    let providers: Vec<&str> = match &args.provider {
        Some(p) => {
            if !cfg.providers.iter().any(|c| &c.name == p) {
                let names: Vec<&str> = cfg.providers.iter().map(|c| c.name.as_str()).collect();
                return Err(format!(
                    "no provider {p:?} in the config (providers: {})",
                    names.join(", ")
                ));
            }
            vec![p.as_str()]
        }
        None => cfg.providers.iter().map(|p| p.name.as_str()).collect(),
    };
    let found: Vec<Priced> = match &args.model {
        Some(model) => providers
            .iter()
            .map(|p| Priced {
                provider: p.to_string(),
                model: model.clone(),
                price: prices
                    .resolve(p, Some(model), now_ms)
                    .price
                    .as_deref()
                    .cloned(),
            })
            .collect(),
        None => prices
            .listing(now_ms)
            .into_iter()
            .filter(|(p, _, _)| {
                p == "config" || providers.iter().any(|c| prices.data_provider(c) == Some(p))
            })
            .map(|(provider, model, price)| Priced {
                provider,
                model,
                price: Some(Price::clone(&price)),
            })
            .collect(),
    };
    let priced = args.model.is_none() || found.iter().any(|f| f.price.is_some());
    let text = if args.json {
        let mut s = serde_json::to_string_pretty(&found).map_err(|e| e.to_string())?;
        s.push('\n');
        s
    } else if args.model.is_some() {
        render_model(&found)
    } else {
        render_list(&found)
    };
    Ok(Answer { text, priced })
}

const HEAD: [&str; 6] = [
    "input",
    "cache read",
    "cache write 5m",
    "cache write 1h",
    "output",
    "reasoning",
];

/// USD per million tokens, from micro-USD: at least two decimals, up to six.
fn per_million(micro: u64) -> String {
    let s = format!("{:.6}", micro as f64 / 1e6);
    let t = s.trim_end_matches('0');
    match t.find('.') {
        Some(dot) if t.len() - dot - 1 < 2 => format!("{t:0<w$}", w = dot + 3),
        _ => t.to_string(),
    }
}

fn cells(r: &Rates) -> [String; 6] {
    [
        r.input,
        r.cached_input,
        r.cache_write,
        r.cache_write_1h,
        r.output,
        r.reasoning,
    ]
    .map(per_million)
}

/// The rows of one price: its base rates, then one row per longer-prompt tier.
fn rows(p: &Price) -> Vec<(String, [String; 6])> {
    let first = match p.tiers.first() {
        Some(t) => format!("prompt ≤ {}", t.above),
        None => "any prompt".to_string(),
    };
    let mut out = vec![(first, cells(&p.base))];
    for t in &p.tiers {
        out.push((format!("prompt > {}", t.above), cells(&t.rates)));
    }
    out
}

fn render_model(found: &[Priced]) -> String {
    let mut out = String::new();
    for f in found {
        match &f.price {
            None => {
                let _ = writeln!(
                    out,
                    "{} via {}: no price. Its requests are booked at $0 and flagged unpriced; give it one under models: in the config.",
                    f.model, f.provider
                );
            }
            Some(p) => {
                let name = match &p.source {
                    crate::cost::rates::Source::Data {
                        name: Some(name), ..
                    } => format!(" ({name})"),
                    _ => String::new(),
                };
                let _ = writeln!(out, "{} via {}: {}{name}", f.model, f.provider, p.source);
                let mut t = vec![std::iter::once("USD per 1M tokens")
                    .chain(HEAD)
                    .map(String::from)
                    .collect::<Vec<_>>()];
                for (when, c) in rows(p) {
                    t.push(std::iter::once(when).chain(c).collect());
                }
                out.push_str(&super::table::aligned(&t, 1, false));
            }
        }
    }
    out
}

fn render_list(found: &[Priced]) -> String {
    let mut t = vec![["provider", "model", "prompt"]
        .into_iter()
        .chain(HEAD)
        .map(String::from)
        .collect::<Vec<_>>()];
    for f in found {
        let Some(p) = &f.price else { continue };
        for (i, (when, c)) in rows(p).into_iter().enumerate() {
            let (provider, model) = if i == 0 {
                (f.provider.clone(), f.model.clone())
            } else {
                (String::new(), String::new())
            };
            let when = if p.tiers.is_empty() {
                String::new()
            } else {
                when.replace("prompt ", "")
            };
            t.push([provider, model, when].into_iter().chain(c).collect());
        }
    }
    let mut out = format!(
        "USD per 1M tokens; from the config's models:, then {}\n",
        crate::cost::rates::DATA
    );
    out.push_str(&super::table::aligned(&t, 3, false));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Env;

    const NOW: u64 = 1_796_000_000_000;

    fn args(model: Option<&str>) -> PricesArgs {
        PricesArgs {
            model: model.map(String::from),
            provider: None,
            json: false,
            config: None,
        }
    }

    #[test]
    fn one_model_per_provider_with_its_source_and_tiers() {
        let cfg = Config::defaults(&Env::empty());
        let a = run(&args(Some("claude-sonnet-4-5-20250929")), &cfg, NOW).unwrap();
        assert!(a.priced, "{}", a.text);
        assert!(
            a.text.contains(
                "claude-sonnet-4-5-20250929 via anthropic: genai-prices 0.2.1 data: anthropic claude-sonnet-4-5"
            ),
            "{}",
            a.text
        );
        let base = a
            .text
            .lines()
            .find(|l| l.starts_with("prompt ≤ 200000"))
            .unwrap();
        let cols: Vec<&str> = base.split_whitespace().skip(3).collect();
        assert_eq!(cols, ["3.00", "0.30", "3.75", "6.00", "15.00", "15.00"]);
        assert!(a.text.contains("prompt > 200000"), "{}", a.text);
        assert!(a.text.contains("via openai: no price"), "{}", a.text);
    }

    #[test]
    fn config_entries_come_first_and_say_so() {
        let cfg =
            Config::from_yaml_str("models:\n  gpt-4: 0.03\n", "t.yaml", &Env::empty()).unwrap();
        let mut a = args(Some("gpt-4-0613"));
        a.provider = Some("openai".into());
        let out = run(&a, &cfg, NOW).unwrap();
        assert!(out.priced);
        let unknown = run(&args(Some("llama-3-70b")), &cfg, NOW).unwrap();
        assert!(!unknown.priced, "{}", unknown.text);
        assert!(
            out.text.contains("via openai: config models.gpt-4"),
            "{}",
            out.text
        );
        let list = run(&args(None), &cfg, NOW).unwrap().text;
        let first = list.lines().nth(2).unwrap();
        assert!(
            first.starts_with("config") && first.contains("gpt-4"),
            "{list}"
        );
        assert!(
            list.lines().any(|l| l.contains("claude-opus-4-8")),
            "{list}"
        );
        a.provider = Some("nope".into());
        assert!(run(&a, &cfg, NOW)
            .unwrap_err()
            .contains("no provider \"nope\""));
    }

    #[test]
    fn money_text() {
        assert_eq!(per_million(5_000_000), "5.00");
        assert_eq!(per_million(300_000), "0.30");
        assert_eq!(per_million(12_500), "0.0125");
        assert_eq!(per_million(0), "0.00");
    }
}
