//! placeholder
/// TEMP: stand-in for the cost ledger on `wip/ledger` (take theirs on merge).
pub mod ledger;
