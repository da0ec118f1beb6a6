//! The cursor of `GET /v1/runs` pages: `<start in unix ms>:<run id>`, the position of a run in
//! the journal's order (start, then id), so a page continues where the last one ended even
//! while new runs arrive.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use impresario::runtime::journal::RunSummary;
use impresario::runtime::RunId;

use super::errors::ApiError;

/// The cursor after `run`.
pub fn of(run: &RunSummary) -> String {
    let (at, id) = run.cursor();
    let ms = at
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    format!("{ms}:{id}")
}

/// The position a cursor names; 422 naming `after` if it is not one this service gave out.
pub fn parse(cursor: &str) -> Result<(SystemTime, RunId), ApiError> {
    let bad = || {
        ApiError::invalid(
            "after",
            format!("{cursor:?} is not a cursor; pass the `next` of the previous page as it was"),
        )
    };
    let (ms, id) = cursor.split_once(':').ok_or_else(bad)?;
    let ms: u64 = ms.parse().map_err(|_| bad())?;
    if id.is_empty() {
        return Err(bad());
    }
    Ok((UNIX_EPOCH + Duration::from_millis(ms), RunId::new(id)))
}
