//! placeholder
/// Cost ledger: reserve, settle and cap spending on a tree of accounts.
pub mod ledger;
