//! The models the binary uses, from `[models]` and `[prices]`: the providers whose keys the
//! environment holds (`OPENAI_API_KEY`, `ANTHROPIC_API_KEY`, `OPENAI_BASE_URL` for a compatible
//! server such as LiteLLM's proxy, Ollama or vLLM), the price table (bundled, then
//! `models.prices_file`, then `[prices]`), the tiers and roles with their fallback chains, the
//! per-request timeout, retries and the response cache. Every model named must be priced and
//! served by a configured provider, or the start fails naming it.

use impresario::agents::{ModelChoice, ModelMap, Role};
use impresario::offline::OfflineModel;
use impresario::runtime::llm::{
    Anthropic, AnthropicConfig, ClientBuilder, HttpConfig, ModelPrice, OpenAi, OpenAiConfig,
    PriceTable, Rates, RetryPolicy, Tier,
};
use impresario::setup::{self, ModelSetup};

use crate::config::Config;

/// The provider of `OPENAI_BASE_URL` without `OPENAI_API_KEY`: a compatible server.
pub const LOCAL_PROVIDER: &str = "local";

/// The models chosen, and whether they are the offline stand-in.
pub struct Chosen {
    /// The client, models and description.
    pub setup: ModelSetup,
    /// True for the offline stand-in (which does not reason: no semantic health check).
    pub offline: bool,
}

/// The client and models `config` describes, with a response cache of `cache_entries`
/// answers (0: none). `offline` serves when no provider is configured (and no model is named).
pub fn choose(
    config: &Config,
    offline: OfflineModel,
    cache_entries: u64,
) -> Result<Chosen, String> {
    if config.models.provider == "offline" {
        let setup = setup::offline(offline).map_err(|e| e.to_string())?;
        return Ok(Chosen {
            setup,
            offline: true,
        });
    }
    let http = HttpConfig {
        request_timeout: config.models.request_timeout(),
        ..HttpConfig::default()
    };
    let (builder, providers, default_model) = providers(&http)?;
    let Some(default_model) = default_model else {
        if let Some((key, _)) = config.models.chosen().first() {
            return Err(format!(
                "models.{key} names a model, but no provider is configured: set OPENAI_API_KEY, ANTHROPIC_API_KEY or OPENAI_BASE_URL"
            ));
        }
        let setup = setup::offline(offline).map_err(|e| e.to_string())?;
        return Ok(Chosen {
            setup,
            offline: true,
        });
    };
    let mut prices = prices(config)?;
    if providers.contains(&LOCAL_PROVIDER) && prices.get(&default_model).is_none() {
        // A local server's default model costs nothing, unless priced otherwise.
        prices.insert(
            default_model.clone(),
            ModelPrice::new(LOCAL_PROVIDER, Rates::default()),
        );
    }
    let models = model_map(config, &default_model);
    check(&models, &prices, &providers)?;
    let mut builder = builder.prices(prices).retry(RetryPolicy {
        max_retries: u32::try_from(config.models.max_retries).unwrap_or(u32::MAX),
        ..RetryPolicy::default()
    });
    if cache_entries > 0 {
        builder = builder.cache(usize::try_from(cache_entries).unwrap_or(usize::MAX));
    }
    let client = builder.build().map_err(|e| e.to_string())?;
    let description = describe(&providers, &models);
    Ok(Chosen {
        setup: ModelSetup {
            client,
            models,
            description,
        },
        offline: false,
    })
}

/// A builder with every provider the environment configures, their names, and the default
/// model (`IMPRESARIO_MODEL`, else the first provider's), `None` when there is no provider.
fn providers(
    http: &HttpConfig,
) -> Result<(ClientBuilder, Vec<&'static str>, Option<String>), String> {
    let env = |name: &str| std::env::var(name).ok();
    let mut builder = impresario::runtime::llm::Client::builder();
    let mut names = Vec::new();
    let mut default = None;
    let base_url = env("OPENAI_BASE_URL");
    if let Some(key) = env("OPENAI_API_KEY") {
        let mut config = OpenAiConfig::openai(key);
        config.base_url = base_url.clone().unwrap_or(config.base_url);
        config.http = http.clone();
        builder = builder.provider("openai", OpenAi::new(config).map_err(|e| e.to_string())?);
        names.push("openai");
        default = default.or(Some("gpt-4o-mini"));
    } else if let Some(base_url) = base_url {
        let mut config = OpenAiConfig::compatible(base_url);
        config.http = http.clone();
        builder = builder.provider(
            LOCAL_PROVIDER,
            OpenAi::new(config).map_err(|e| e.to_string())?,
        );
        names.push(LOCAL_PROVIDER);
        default = default.or(Some("llama3.2"));
    }
    if let Some(key) = env("ANTHROPIC_API_KEY") {
        let mut config = AnthropicConfig::new(key);
        config.base_url = env("ANTHROPIC_BASE_URL").unwrap_or(config.base_url);
        config.http = http.clone();
        builder = builder.provider(
            "anthropic",
            Anthropic::new(config).map_err(|e| e.to_string())?,
        );
        names.push("anthropic");
        default = default.or(Some("claude-haiku-4-5"));
    }
    let default = default.map(|d| env("IMPRESARIO_MODEL").unwrap_or_else(|| d.to_owned()));
    Ok((builder, names, default))
}

/// The bundled prices, then `models.prices_file`, then `[prices]`: each wins over the last.
fn prices(config: &Config) -> Result<PriceTable, String> {
    let mut prices = PriceTable::bundled();
    if let Some(file) = &config.models.prices_file {
        let loaded = PriceTable::load(file).map_err(|e| format!("models.prices_file: {e}"))?;
        prices.merge(loaded);
    }
    if !config.prices.is_empty() {
        let json = serde_json::to_string(&config.prices).map_err(|e| format!("[prices]: {e}"))?;
        let inline = PriceTable::from_json(&json).map_err(|e| format!("[prices]: {e}"))?;
        for model in config.prices.keys() {
            if inline.get(model).is_none() {
                return Err(format!(
                    "[prices.\"{model}\"]: give both input_cost_per_token and output_cost_per_token (0 is allowed)"
                ));
            }
        }
        prices.merge(inline);
    }
    Ok(prices)
}

/// The tiers and roles the keys name; a tier left out takes `standard`'s, `standard` left out
/// the default model. A role key gives the role its own model in its default tier.
fn model_map(config: &Config, default_model: &str) -> ModelMap {
    let keys = &config.models;
    let standard = keys
        .standard
        .clone()
        .unwrap_or_else(|| ModelChoice::new(default_model));
    let or_standard = |choice: &Option<ModelChoice>| choice.clone().unwrap_or(standard.clone());
    let mut map = ModelMap::all(default_model)
        .tier(Tier::Light, or_standard(&keys.light))
        .tier(Tier::Standard, standard.clone())
        .tier(Tier::Heavy, or_standard(&keys.heavy));
    for (role, choice) in [
        (Role::Planner, &keys.planner),
        (Role::Executor, &keys.executor),
        (Role::Summarizer, &keys.summarizer),
    ] {
        if let Some(choice) = choice {
            let tier = map.tier_of(role);
            map = map.tier(tier, choice.clone());
        }
    }
    map
}

/// Every model named is priced, and its provider is configured.
fn check(models: &ModelMap, prices: &PriceTable, providers: &[&str]) -> Result<(), String> {
    let mut named = models.named();
    // Tiers left out take `standard`'s models: name that key first.
    named.sort_by_key(|(place, _)| !place.starts_with("standard"));
    for (place, model) in named {
        let Some(price) = prices.get(model) else {
            return Err(format!(
                "model `{model}` ({place} of [models]) has no price: add [prices.\"{model}\"] with litellm_provider, input_cost_per_token and output_cost_per_token (0 is allowed), or a models.prices_file that has it"
            ));
        };
        if !providers.contains(&price.provider.as_str()) {
            return Err(format!(
                "model `{model}` ({place} of [models]) is served by provider `{}`, which is not configured (configured: {providers:?}); set its key, or price the model under a configured provider",
                price.provider
            ));
        }
    }
    Ok(())
}

/// `openai: light gpt-5-nano, standard gpt-4o-mini (+1 fallback), heavy gpt-4o`.
fn describe(providers: &[&str], models: &ModelMap) -> String {
    let tier = |name: &str, tier: Tier| {
        let choice = models.of_tier(tier);
        match choice.fallbacks.len() {
            0 => format!("{name} {}", choice.model),
            n => format!(
                "{name} {} (+{n} fallback{})",
                choice.model,
                if n == 1 { "" } else { "s" }
            ),
        }
    };
    format!(
        "{}: {}, {}, {}",
        providers.join(", "),
        tier("light", Tier::Light),
        tier("standard", Tier::Standard),
        tier("heavy", Tier::Heavy)
    )
}
