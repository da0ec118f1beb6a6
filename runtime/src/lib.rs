//! placeholder
/// TEMP: stand-in for the cost ledger on `wip/ledger` (take theirs on merge).
pub mod ledger;
/// The LLM layer: providers over reqwest, with cost reservation, retries, breaker, cache.
pub mod llm;
