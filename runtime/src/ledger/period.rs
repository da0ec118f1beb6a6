//! Budget periods: the calendar periods (UTC) a tenant's and the global ceiling apply to.
//!
//! A period is named by the instant it starts, in whole seconds since the Unix epoch (its
//! *key*): keys grow with time, so a charge belongs to the current period exactly when its
//! key equals the current one. [`BudgetPeriod::None`] has the key 0 forever: spend never
//! goes back to 0.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

const DAY_SECS: u64 = 86_400;

/// How long the spend counted against the tenant and global ceilings runs before it goes
/// back to 0: calendar periods in UTC. Run budgets are per run whatever the period.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetPeriod {
    /// No period: spend counts from the journal's first run.
    #[default]
    None,
    /// A calendar day, from 00:00 UTC.
    Day,
    /// A calendar month, from its first day at 00:00 UTC.
    Month,
}

impl BudgetPeriod {
    /// Every period, as configured.
    pub const ALL: [BudgetPeriod; 3] = [BudgetPeriod::None, BudgetPeriod::Day, BudgetPeriod::Month];

    /// Its place in [`BudgetPeriod::ALL`].
    pub const fn index(self) -> u8 {
        self as u8
    }

    /// Its name as configured and shown: `none`, `day` or `month`.
    pub const fn name(self) -> &'static str {
        match self {
            BudgetPeriod::None => "none",
            BudgetPeriod::Day => "day",
            BudgetPeriod::Month => "month",
        }
    }

    /// The longest such period, in days (`None`: no period, unbounded).
    pub const fn longest_days(self) -> Option<u64> {
        match self {
            BudgetPeriod::None => None,
            BudgetPeriod::Day => Some(1),
            BudgetPeriod::Month => Some(31),
        }
    }

    /// The key of the period `at` falls in: its start in seconds since the Unix epoch, 0 for
    /// [`BudgetPeriod::None`] (and for instants before the epoch).
    pub fn key(self, at: SystemTime) -> u64 {
        let days = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() / DAY_SECS;
        let start_day = match self {
            BudgetPeriod::None => return 0,
            BudgetPeriod::Day => days,
            BudgetPeriod::Month => days - (civil_date(days).2 - 1),
        };
        start_day * DAY_SECS
    }

    /// When the period `at` falls in started (`None` for [`BudgetPeriod::None`]).
    pub fn start(self, at: SystemTime) -> Option<SystemTime> {
        (self != BudgetPeriod::None).then(|| UNIX_EPOCH + Duration::from_secs(self.key(at)))
    }
}

impl fmt::Display for BudgetPeriod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Parses a configured name: `none`, `day` or `month`.
impl FromStr for BudgetPeriod {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        BudgetPeriod::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                format!("{s:?} is not a budget period: use \"none\", \"day\" or \"month\"")
            })
    }
}

/// `at` as an RFC 3339 date and time in UTC, to the second (`2026-11-01T00:00:00Z`).
pub fn utc_text(at: SystemTime) -> String {
    let secs = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let (year, month, day) = civil_date(secs / DAY_SECS);
    let time = secs % DAY_SECS;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        time / 3600,
        time / 60 % 60,
        time % 60
    )
}

/// The proleptic Gregorian (year, month, day) of `days` since 1970-01-01 (H. Hinnant's
/// `civil_from_days`, for days on or after the epoch).
fn civil_date(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn periods_start_at_utc_midnight_and_the_first_of_the_month() {
        // 2026-11-29T21:12:51Z
        let now = at(1_795_986_771);
        assert_eq!(utc_text(now), "2026-11-29T21:12:51Z");
        let start = |p: BudgetPeriod| p.start(now).map(utc_text);
        assert_eq!(start(BudgetPeriod::None), None);
        assert_eq!(start(BudgetPeriod::Day).unwrap(), "2026-11-29T00:00:00Z");
        assert_eq!(start(BudgetPeriod::Month).unwrap(), "2026-11-01T00:00:00Z");
        assert_eq!(BudgetPeriod::None.key(now), 0);
    }

    #[test]
    fn month_boundaries_across_leap_years_and_year_ends() {
        for (inside, first) in [
            ("2024-02-29T23:59:59Z", "2024-02-01T00:00:00Z"),
            ("2024-03-01T00:00:00Z", "2024-03-01T00:00:00Z"),
            ("2023-12-31T23:59:59Z", "2023-12-01T00:00:00Z"),
            ("2000-02-29T12:00:00Z", "2000-02-01T00:00:00Z"),
            ("1970-01-01T00:00:00Z", "1970-01-01T00:00:00Z"),
        ] {
            let secs = seconds_of(inside);
            assert_eq!(utc_text(at(secs)), inside, "round trip");
            let month = BudgetPeriod::Month.start(at(secs)).unwrap();
            assert_eq!(utc_text(month), first, "the month of {inside}");
        }
    }

    /// Seconds since the epoch of `YYYY-MM-DDTHH:MM:SSZ`, by counting days (independent of
    /// `civil_date`).
    fn seconds_of(text: &str) -> u64 {
        let n = |r: std::ops::Range<usize>| text[r].parse::<u64>().unwrap();
        let (year, month, day) = (n(0..4), n(5..7), n(8..10));
        let leap =
            |y: u64| (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400);
        let month_days = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
        let mut days: u64 = (1970..year).map(|y| 365 + u64::from(leap(y))).sum();
        days += month_days[..(month - 1) as usize].iter().sum::<u64>();
        days += u64::from(month > 2 && leap(year)) + day - 1;
        days * DAY_SECS + n(11..13) * 3600 + n(14..16) * 60 + n(17..19)
    }

    #[test]
    fn names_parse_back_and_bad_ones_say_what_is_allowed() {
        for (i, p) in BudgetPeriod::ALL.into_iter().enumerate() {
            assert_eq!(p.name().parse::<BudgetPeriod>(), Ok(p));
            assert_eq!(
                usize::from(p.index()),
                i,
                "{p}: its index is its place in ALL"
            );
        }
        let err = "monthly".parse::<BudgetPeriod>().unwrap_err();
        assert!(
            err.contains("\"monthly\"") && err.contains("\"month\""),
            "{err}"
        );
    }
}
