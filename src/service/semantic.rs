//! The semantic health check as `serve` runs it: every `health.semantic_every_secs` it asks a
//! model (`health.semantic_model`, else the standard tier's) the configured question, and sets
//! `impresario_health_semantic_up{model}` to whether the answer contained the expected text.
//! Its cost is charged to a tenant of its own, [`HEALTH_TENANT`], so it never eats a real
//! tenant's budget, and a halt of everything stops it too. Off with the offline stand-in, which
//! does not reason, and when the interval is 0.

use std::time::Duration;

use impresario::agents::Role;
use impresario::offline::OfflineModel;
use impresario::runtime::health::SemanticCheck;
use impresario::runtime::llm::{CallOptions, ChatRequest};
use impresario::runtime::TenantId;

use crate::config::Config;
use crate::engine::Engine;
use crate::models;

/// The tenant the check's calls are charged to.
pub const HEALTH_TENANT: &str = "_health";

/// The most tokens the check's answer may take.
const ANSWER_TOKENS: u32 = 64;

/// Starts the check on the current runtime, unless it is off. Returns whether it started.
pub fn spawn(config: &Config, engine: &Engine) -> Result<bool, String> {
    let health = &config.health;
    if engine.offline || health.semantic_every_secs == 0 {
        tracing::info!(
            "semantic health check off (offline model, or health.semantic_every_secs = 0)"
        );
        return Ok(false);
    }
    let model = match health.semantic_model.trim() {
        "" => engine.models.choice(Role::Executor).model.clone(),
        named => named.to_owned(),
    };
    // Answers must come from the model, never from the response cache.
    let client = match config.models.cache_entries {
        0 => engine.client.clone(),
        _ => models::choose(config, OfflineModel::new(), 0)?.setup.client,
    };
    if client.prices().get(&model).is_none() {
        return Err(format!(
            "health.semantic_model `{model}` has no price: price it in [prices] or name a priced model"
        ));
    }
    let ledger = engine.orchestrator.ledger();
    let health_tenant = TenantId::new(HEALTH_TENANT);
    // A tenant like any other: its ceiling is `[budget.tenants] _health`, else the default
    // (with `journal.url`, the database's, which counts the check's spend for every process).
    let tenant = ledger.tenant(&health_tenant).id().clone();
    let account = ledger.path(&tenant).map_err(|e| e.to_string())?;
    let store = engine.ceilings.store();
    let halts = engine.orchestrator.halts().clone();
    let request = ChatRequest::new(model.clone())
        .user(health.semantic_question.clone())
        .max_tokens(ANSWER_TOKENS);
    let (expected, every) = (
        health.semantic_expected.clone(),
        Duration::from_secs(health.semantic_every_secs),
    );
    tracing::info!(%model, every_secs = health.semantic_every_secs, "semantic health check on");
    actix_web::rt::spawn(async move {
        loop {
            // The tenant's token of the moment: a lifted halt gives it a fresh one.
            let halt = halts.tenant(&health_tenant).cancellation();
            let mut options = CallOptions::new(account.clone(), halt);
            if let Some(store) = &store {
                options = options.held_in(store.clone());
            }
            let check = SemanticCheck::new(client.clone(), request.clone(), &expected, options);
            if let Err(e) = check.run().await {
                tracing::warn!(model = %request.model, error = %e, "semantic health check failed");
            }
            actix_web::rt::time::sleep(every).await;
        }
    });
    Ok(true)
}
