//! placeholder
/// Halt tokens: immediate and graceful stops on a tree of cancellation tokens.
pub mod halt;
/// Cost ledger: reserve, settle and cap spending on a tree of accounts.
pub mod ledger;
