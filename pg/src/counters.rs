//! Counters (micro-USD, tokens, model calls) as PostgreSQL's `bigint`, both ways.

use impresario_runtime::ledger::{Charge, Dimension};
use tokio_postgres::Row;

/// The counted dimensions in the column order of `ledger_accounts` (money, tokens, calls).
pub(crate) const DIMENSIONS: [Dimension; 3] = [
    Dimension::MicroUsd,
    Dimension::Tokens,
    Dimension::ModelCalls,
];

/// A counter as PostgreSQL's `bigint` (amounts above `i64::MAX` are clamped to it).
pub(crate) fn to_sql(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A `bigint` counter read back (a negative one, which no write makes, as 0).
pub(crate) fn from_sql(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// The charge in `row`'s three counter columns from `at` (money, tokens, calls).
pub(crate) fn charge_at(row: &Row, at: usize) -> Charge {
    Charge::usd(from_sql(row.get(at)))
        + Charge::tokens(from_sql(row.get(at + 1)))
        + Charge::model_calls(from_sql(row.get(at + 2)))
}
