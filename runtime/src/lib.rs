//! placeholder
/// Halt tokens: immediate and graceful stops on a tree of cancellation tokens.
pub mod halt;
/// Cost ledger: reserve, settle and cap spending on a tree of accounts.
pub mod ledger;
/// The LLM layer: providers over reqwest, with cost reservation, retries, breaker, cache.
pub mod llm;
