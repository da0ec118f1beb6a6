//! Counters (micro-USD, tokens, model calls) as PostgreSQL's `bigint`, both ways.

/// A counter as PostgreSQL's `bigint` (amounts above `i64::MAX` are clamped to it).
pub(crate) fn to_sql(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A `bigint` counter read back (a negative one, which no write makes, as 0).
pub(crate) fn from_sql(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}
