//! The price table: what a token costs, per model, in integer money.
//!
//! The file format is LiteLLM's `model_prices_and_context_window.json` (USD per token, field
//! names `input_cost_per_token`, `output_cost_per_token`, `cache_read_input_token_cost`,
//! `cache_creation_input_token_cost`, `output_cost_per_reasoning_token`, the
//! `..._above_200k_tokens` variants, `litellm_provider`, `max_input_tokens`,
//! `max_output_tokens`), so that file or a trimmed copy can be dropped in; other fields are
//! ignored, entries without both input and output token prices (images, audio...) are skipped.
//!
//! On load every price becomes an integer number of **micro-USD per million tokens** (which is
//! also pico-USD per token): USD per token × 10^12. The conversion is done on the decimal text
//! of the number, not by float multiplication: the parsed `f64` is printed back in its shortest
//! round-trip form (Rust's `Display`, which equals the literal for any literal of at most 15
//! significant digits) and that decimal string is scaled exactly. Digits below 10^-12 USD per
//! token are rounded up. The cost of a call is the exact sum of tokens × rate, divided by 10^6
//! and rounded **up** to the next micro-USD, so a call is never under-charged.

use std::collections::HashMap;
use std::path::Path;

use serde_json::{Map, Value};

use super::types::Usage;
use crate::ledger::MicroUsd;

/// The bundled table: current mainstream OpenAI and Anthropic models at their published list
/// prices (`runtime/data/model_prices.json`).
pub const BUNDLED_PRICES: &str = include_str!("../../data/model_prices.json");

/// Prompts longer than this many input tokens use the `..._above_200k_tokens` rates, when the
/// model has them (this is how Anthropic and LiteLLM price long context).
pub const LONG_CONTEXT_THRESHOLD: u64 = 200_000;

/// Token prices of one model, in micro-USD per million tokens (USD per million × 10^6;
/// $0.15 per million tokens is `150_000`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rates {
    /// Uncached prompt tokens.
    pub input: u64,
    /// Generated tokens.
    pub output: u64,
    /// Prompt tokens read from the prompt cache.
    pub cache_read: u64,
    /// Prompt tokens written to the prompt cache.
    pub cache_creation: u64,
    /// Reasoning tokens (priced as output unless the file says otherwise).
    pub reasoning: u64,
}

/// Everything the layer knows about a model: who serves it and what it costs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelPrice {
    /// Provider name (`litellm_provider`): the name the provider is registered under on the
    /// [`Client`](super::Client), e.g. `openai`, `anthropic`, `ollama`.
    pub provider: String,
    /// Rates for prompts up to [`LONG_CONTEXT_THRESHOLD`] tokens.
    pub rates: Rates,
    /// Rates for longer prompts, when the model prices long context differently.
    pub above_200k: Option<Rates>,
    /// Context window, when known.
    pub max_input_tokens: Option<u64>,
    /// Largest `max_tokens` the model accepts, when known.
    pub max_output_tokens: Option<u64>,
}

impl ModelPrice {
    /// A model served by `provider` at `rates`, with no long-context tier and no known limits.
    pub fn new(provider: impl Into<String>, rates: Rates) -> Self {
        ModelPrice {
            provider: provider.into(),
            rates,
            above_200k: None,
            max_input_tokens: None,
            max_output_tokens: None,
        }
    }

    fn rates_for(&self, input_tokens: u64) -> &Rates {
        match &self.above_200k {
            Some(long) if input_tokens > LONG_CONTEXT_THRESHOLD => long,
            _ => &self.rates,
        }
    }

    /// What `usage` costs. Cached and reasoning tokens are carved out of the input and output
    /// totals and priced at their own rates.
    pub fn cost(&self, usage: &Usage) -> MicroUsd {
        let r = self.rates_for(usage.input_tokens);
        let cache_read = usage.cache_read_tokens.min(usage.input_tokens);
        let cache_creation = usage
            .cache_creation_tokens
            .min(usage.input_tokens - cache_read);
        let plain_input = usage.input_tokens - cache_read - cache_creation;
        let reasoning = usage.reasoning_tokens.min(usage.output_tokens);
        let plain_output = usage.output_tokens - reasoning;
        to_micro_usd(&[
            (plain_input, r.input),
            (cache_read, r.cache_read),
            (cache_creation, r.cache_creation),
            (plain_output, r.output),
            (reasoning, r.reasoning),
        ])
    }

    /// The most a call can cost: every input token at the dearest input rate (cache writes
    /// included) and `max_output_tokens` at the dearest output rate.
    pub fn worst_case(&self, input_tokens: u64, max_output_tokens: u64) -> MicroUsd {
        let r = self.rates_for(input_tokens);
        to_micro_usd(&[
            (input_tokens, r.input.max(r.cache_creation)),
            (max_output_tokens, r.output.max(r.reasoning)),
        ])
    }

    /// What `input_tokens` of uncached prompt cost (charged when a call is cancelled).
    pub fn input_cost(&self, input_tokens: u64) -> MicroUsd {
        to_micro_usd(&[(input_tokens, self.rates_for(input_tokens).input)])
    }
}

/// Σ tokens × rate (micro-USD per million tokens), rounded up to whole micro-USD.
fn to_micro_usd(parts: &[(u64, u64)]) -> MicroUsd {
    let total: u128 = parts
        .iter()
        .map(|&(tokens, rate)| u128::from(tokens) * u128::from(rate))
        .sum();
    u64::try_from(total.div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

/// A price file could not be used. The message names the model and field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("price table: {0}")]
pub struct PriceError(String);

/// Prices of every model the layer may call.
#[derive(Debug, Clone, Default)]
pub struct PriceTable {
    models: HashMap<String, ModelPrice>,
}

impl PriceTable {
    /// The bundled table ([`BUNDLED_PRICES`]).
    pub fn bundled() -> Self {
        Self::from_json(BUNDLED_PRICES).expect("the bundled price file is valid (unit-tested)")
    }

    /// Parses a LiteLLM-format price file.
    pub fn from_json(text: &str) -> Result<Self, PriceError> {
        let root: Map<String, Value> = serde_json::from_str(text).map_err(|e| {
            PriceError(format!(
                "not a JSON object of models: {e}; expected LiteLLM's model_prices_and_context_window.json format"
            ))
        })?;
        let mut models = HashMap::new();
        for (model, entry) in &root {
            if model == "sample_spec" {
                continue; // LiteLLM's documentation entry
            }
            let entry = entry
                .as_object()
                .ok_or_else(|| PriceError(format!("`{model}`: expected an object of fields")))?;
            if let Some(price) = parse_entry(model, entry)? {
                models.insert(model.clone(), price);
            }
        }
        Ok(PriceTable { models })
    }

    /// Reads and parses a LiteLLM-format price file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, PriceError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| PriceError(format!("cannot read {}: {e}", path.display())))?;
        Self::from_json(&text)
            .map_err(|PriceError(m)| PriceError(format!("{}: {m}", path.display())))
    }

    /// Adds or replaces the models of `overrides` (config wins over the bundled file).
    pub fn merge(&mut self, overrides: PriceTable) {
        self.models.extend(overrides.models);
    }

    /// Adds or replaces one model.
    pub fn insert(&mut self, model: impl Into<String>, price: ModelPrice) {
        self.models.insert(model.into(), price);
    }

    /// The price of `model`.
    pub fn get(&self, model: &str) -> Option<&ModelPrice> {
        self.models.get(model)
    }

    /// Names of all priced models.
    pub fn models(&self) -> impl Iterator<Item = &str> {
        self.models.keys().map(String::as_str)
    }
}

fn parse_entry(model: &str, e: &Map<String, Value>) -> Result<Option<ModelPrice>, PriceError> {
    let rate = |field: &str| -> Result<Option<u64>, PriceError> {
        e.get(field)
            .map(|v| usd_per_token_to_rate(v).ok_or_else(|| {
                PriceError(format!(
                    "`{model}`.`{field}`: expected a non-negative number of USD per token, found {v}; fix or remove the entry"
                ))
            }))
            .transpose()
    };
    let (Some(input), Some(output)) = (
        rate("input_cost_per_token")?,
        rate("output_cost_per_token")?,
    ) else {
        return Ok(None); // not priced per token: not a chat model we can bill
    };
    let reasoning = rate("output_cost_per_reasoning_token")?;
    let rates = Rates {
        input,
        output,
        cache_read: rate("cache_read_input_token_cost")?.unwrap_or(input),
        cache_creation: rate("cache_creation_input_token_cost")?.unwrap_or(input),
        reasoning: reasoning.unwrap_or(output),
    };
    let long_input = rate("input_cost_per_token_above_200k_tokens")?;
    let long_output = rate("output_cost_per_token_above_200k_tokens")?;
    let above_200k = if long_input.is_some() || long_output.is_some() {
        let input = long_input.unwrap_or(rates.input);
        let output = long_output.unwrap_or(rates.output);
        Some(Rates {
            input,
            output,
            cache_read: rate("cache_read_input_token_cost_above_200k_tokens")?
                .unwrap_or(rates.cache_read),
            cache_creation: rate("cache_creation_input_token_cost_above_200k_tokens")?
                .unwrap_or(rates.cache_creation),
            reasoning: reasoning.unwrap_or(output),
        })
    } else {
        None
    };
    Ok(Some(ModelPrice {
        provider: provider_of(model, e)?,
        rates,
        above_200k,
        max_input_tokens: token_limit(model, e, "max_input_tokens")?,
        max_output_tokens: token_limit(model, e, "max_output_tokens")?,
    }))
}

/// The entry's `litellm_provider`: the provider registered on the client that serves `model`.
fn provider_of(model: &str, e: &Map<String, Value>) -> Result<String, PriceError> {
    match e.get("litellm_provider") {
        Some(Value::String(p)) if !p.is_empty() => Ok(p.clone()),
        _ => Err(PriceError(format!(
            "`{model}`.`litellm_provider`: missing or not a string; it names the provider registered on the client (e.g. \"openai\")"
        ))),
    }
}

/// A token limit of the entry (`max_input_tokens`, `max_output_tokens`), if it gives one.
fn token_limit(
    model: &str,
    e: &Map<String, Value>,
    field: &str,
) -> Result<Option<u64>, PriceError> {
    match e.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            PriceError(format!(
                "`{model}`.`{field}`: expected a whole number of tokens, found {v}"
            ))
        }),
    }
}

/// USD per token (a JSON number) to micro-USD per million tokens, through its decimal text.
fn usd_per_token_to_rate(v: &Value) -> Option<u64> {
    let f = v.as_f64().filter(|f| f.is_finite() && *f >= 0.0)?;
    decimal_to_pico(&f.to_string())
}

/// Scales a plain decimal string (`"0.0000025"`) by 10^12, rounding up below the last digit.
fn decimal_to_pico(s: &str) -> Option<u64> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let mut value = int.parse::<u64>().ok()?.checked_mul(1_000_000_000_000)?;
    let mut scale = 100_000_000_000u64;
    for d in frac.bytes() {
        let digit = u64::from(d.checked_sub(b'0').filter(|d| *d <= 9)?);
        if scale == 0 {
            if digit != 0 {
                return value.checked_add(1); // finer than 10^-12: round up
            }
        } else {
            value = value.checked_add(digit * scale)?;
            scale /= 10;
        }
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_conversion_is_exact() {
        assert_eq!(decimal_to_pico("0.0000025"), Some(2_500_000));
        assert_eq!(decimal_to_pico("0.000000005"), Some(5_000));
        assert_eq!(decimal_to_pico("1"), Some(1_000_000_000_000));
        assert_eq!(
            decimal_to_pico("0.0000000000001"),
            Some(1),
            "rounds up below 1e-12"
        );
        assert_eq!(decimal_to_pico("0.00000000000000"), Some(0));
        assert_eq!(decimal_to_pico("-1"), None);
        // values that are not exact in binary still convert to their decimal meaning
        for (lit, want) in [
            ("1.1e-06", 1_100_000),
            ("2.75e-07", 275_000),
            ("7.5e-08", 75_000),
        ] {
            let v: Value = serde_json::from_str(lit).unwrap();
            assert_eq!(usd_per_token_to_rate(&v), Some(want), "{lit}");
        }
    }

    #[test]
    fn bundled_table_parses_with_expected_prices() {
        let t = PriceTable::bundled();
        let mini = t.get("gpt-4o-mini").unwrap();
        assert_eq!(mini.provider, "openai");
        assert_eq!(mini.rates.input, 150_000);
        assert_eq!(mini.rates.cache_read, 75_000);
        assert_eq!(mini.rates.reasoning, mini.rates.output);
        let sonnet = t.get("claude-sonnet-4-5").unwrap();
        assert_eq!(sonnet.rates.cache_creation, 3_750_000);
        assert_eq!(sonnet.above_200k.unwrap().output, 22_500_000);
        assert_eq!(sonnet.max_output_tokens, Some(64_000));
    }

    #[test]
    fn cost_splits_cached_and_reasoning_tokens_and_rounds_up() {
        let t = PriceTable::bundled();
        let sonnet = t.get("claude-sonnet-4-5").unwrap();
        let usage = Usage {
            input_tokens: 1300,
            cache_read_tokens: 1000,
            cache_creation_tokens: 200,
            output_tokens: 50,
            ..Usage::default()
        };
        // 100*3 + 1000*0.3 + 200*3.75 + 50*15 = 2100 USD per million = 2100 micro-USD
        assert_eq!(sonnet.cost(&usage), 2100);
        let nano = t.get("gpt-5-nano").unwrap();
        let one = Usage {
            input_tokens: 1,
            ..Usage::default()
        };
        assert_eq!(nano.cost(&one), 1, "0.05 micro-USD rounds up to 1");
        assert_eq!(nano.cost(&Usage::default()), 0);
        let long = Usage {
            input_tokens: 300_000,
            ..Usage::default()
        };
        assert_eq!(sonnet.cost(&long), 1_800_000, "long context at $6/M");
    }

    #[test]
    fn worst_case_bounds_any_usage_within_max_tokens() {
        let t = PriceTable::bundled();
        let sonnet = t.get("claude-sonnet-4-5").unwrap();
        let worst = sonnet.worst_case(1000, 100);
        let all_written = Usage {
            input_tokens: 1000,
            cache_creation_tokens: 1000,
            output_tokens: 100,
            ..Usage::default()
        };
        assert!(sonnet.cost(&all_written) <= worst);
        assert_eq!(worst, 3750 + 1500);
    }

    #[test]
    fn litellm_quirks_are_tolerated_and_errors_name_the_field() {
        let text = r#"{
            "sample_spec": {"max_tokens": "LEGACY", "input_cost_per_token": 0.0, "litellm_provider": "one of ..."},
            "dall-e-3": {"litellm_provider": "openai", "mode": "image_generation", "output_cost_per_image": 0.04},
            "local": {"litellm_provider": "ollama", "input_cost_per_token": 0, "output_cost_per_token": 0, "supports_vision": false}
        }"#;
        let t = PriceTable::from_json(text).unwrap();
        assert!(t.get("dall-e-3").is_none());
        assert_eq!(t.get("local").unwrap().rates, Rates::default());
        let bad = r#"{"m": {"litellm_provider": "openai", "input_cost_per_token": "cheap", "output_cost_per_token": 1}}"#;
        let err = PriceTable::from_json(bad).unwrap_err().to_string();
        assert!(err.contains("`m`.`input_cost_per_token`"), "{err}");
        let bad = r#"{"m": {"input_cost_per_token": 1, "output_cost_per_token": 1}}"#;
        let err = PriceTable::from_json(bad).unwrap_err().to_string();
        assert!(err.contains("litellm_provider"), "{err}");
    }
}
