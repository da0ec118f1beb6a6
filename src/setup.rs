//! Choosing models the way the examples and the CLI do: a real provider when one is configured
//! in the environment, otherwise an offline model (a script, or the binary's
//! [`OfflineModel`](crate::offline::OfflineModel)), so everything runs without a network.

use impresario_agents::ModelMap;
use impresario_runtime::llm::{
    Anthropic, ChatModel, Client, LlmError, ModelPrice, OpenAi, OpenAiConfig, PriceTable, Rates,
};

/// The model setup chosen from the environment.
pub struct ModelSetup {
    /// The client to call models through.
    pub client: Client,
    /// The models runs should use.
    pub models: ModelMap,
    /// What was chosen, for a person (`offline`, `openai gpt-4o-mini`, ...).
    pub description: String,
}

/// The offline model's name in the price table.
pub const OFFLINE_MODEL: &str = "scripted";

/// Picks, in order: `OPENAI_API_KEY` (OpenAI, `gpt-4o-mini`, or `IMPRESARIO_MODEL`),
/// `ANTHROPIC_API_KEY` (`claude-haiku-4-5`, or `IMPRESARIO_MODEL`), `OPENAI_BASE_URL` without a
/// key (an OpenAI-compatible server such as Ollama or vLLM: `IMPRESARIO_MODEL`, default
/// `llama3.2`, priced at zero), else [`offline`]`(offline)`.
pub fn from_env_or(offline: impl ChatModel + 'static) -> Result<ModelSetup, LlmError> {
    let chosen = std::env::var("IMPRESARIO_MODEL").ok();
    if std::env::var_os("OPENAI_API_KEY").is_some() {
        let model = chosen.unwrap_or_else(|| "gpt-4o-mini".into());
        let client = Client::builder()
            .provider("openai", OpenAi::from_env()?)
            .build()?;
        return Ok(setup(client, &model, format!("openai {model}")));
    }
    if std::env::var_os("ANTHROPIC_API_KEY").is_some() {
        let model = chosen.unwrap_or_else(|| "claude-haiku-4-5".into());
        let client = Client::builder()
            .provider("anthropic", Anthropic::from_env()?)
            .build()?;
        return Ok(setup(client, &model, format!("anthropic {model}")));
    }
    if let Ok(base_url) = std::env::var("OPENAI_BASE_URL") {
        let model = chosen.unwrap_or_else(|| "llama3.2".into());
        let mut prices = PriceTable::bundled();
        prices.insert(model.clone(), ModelPrice::new("local", Rates::default()));
        let client = Client::builder()
            .provider(
                "local",
                OpenAi::new(OpenAiConfig::compatible(base_url.clone()))?,
            )
            .prices(prices)
            .build()?;
        let at = impresario_runtime::redact::redact(&base_url).into_owned();
        return Ok(setup(client, &model, format!("{model} at {at}")));
    }
    self::offline(offline)
}

/// `model` (a script, or [`OfflineModel`](crate::offline::OfflineModel)) under the name
/// [`OFFLINE_MODEL`], priced at 1 USD per million input tokens and 2 per million output
/// tokens, so costs show.
pub fn offline(model: impl ChatModel + 'static) -> Result<ModelSetup, LlmError> {
    let mut prices = PriceTable::default();
    let rates = Rates {
        input: 1_000_000,
        output: 2_000_000,
        cache_read: 1_000_000,
        cache_creation: 1_000_000,
        reasoning: 2_000_000,
    };
    prices.insert(OFFLINE_MODEL, ModelPrice::new("offline", rates));
    let client = Client::builder()
        .provider("offline", model)
        .prices(prices)
        .build()?;
    Ok(setup(client, OFFLINE_MODEL, "offline".into()))
}

fn setup(client: Client, model: &str, description: String) -> ModelSetup {
    ModelSetup {
        client,
        models: ModelMap::all(model),
        description,
    }
}
