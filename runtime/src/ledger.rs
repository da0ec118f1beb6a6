//! The cost ledger: budgets on a tree of accounts (global > tenant > run), and
//! reservations that make a paid call fit every ceiling on its path *before* it is sent.
//!
//! A paid call goes through three steps:
//! 1. [`Ledger::path`] once per run: the accounts from the run up to `Global`.
//! 2. [`AccountPath::reserve`] with the call's worst case (input estimate + `max_tokens`
//!    output). It reserves on every account of the path or on none, and fails before any
//!    request is sent.
//! 3. [`Reservation::settle`] with the real usage, [`Reservation::release`] if the call failed
//!    before the provider billed, or [`Reservation::cancel`] with what the provider may still
//!    bill when the call was halted. Dropping a [`Reservation`] releases it, so no path leaks.
//!
//! Money is integer micro-USD ([`MicroUsd`]), never floating point.
//!
//! Periods: with a [`BudgetPeriod`] ([`Ledger::set_period`]), the tenant and global accounts
//! count only the spend of the current calendar period (UTC): the first operation on such an
//! account in a new period sets its spent back to 0 and re-arms its warnings. Reservations in
//! flight stay reserved across the boundary and settle into the period they settle in. Run
//! accounts are never reset (a run budget is per run).
//!
//! Concurrency: every account has its own small mutex, held for a few additions; there is no
//! ledger-wide lock. Reserving walks the path leaf to root and rolls back what it took if an
//! account refuses, so a concurrent reservation may briefly be refused because of capacity
//! that is about to be given back. That errs on the side of never overspending. Accounts
//! shared by many paths (a tenant, and `Global`, which is on every path) are where parallel
//! calls meet; see BENCHMARKS.md for what that costs.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Add;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Instant, SystemTime};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::envelope::{RunId, TenantId};
use crate::telemetry::LabelValue;

mod period;

pub use period::{utc_text, BudgetPeriod};

/// Where the ledger reads the time of day from (periods): [`SystemTime::now`] unless a test
/// injects another with [`Ledger::with_clock`].
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// An amount of money in millionths of a US dollar.
pub type MicroUsd = u64;

/// Warning thresholds, in percent of a limit, used by [`Ledger::new`] (and by the ledger on
/// PostgreSQL).
pub const DEFAULT_WARNING_PERCENTS: [u8; 3] = [50, 80, 100];

/// Whether `spent` reached `percent` of `limit` (nothing spent reaches nothing).
fn reached(spent: u64, limit: u64, percent: u8) -> bool {
    spent > 0 && u128::from(spent) * 100 >= u128::from(limit) * u128::from(percent)
}

/// The fractions of `percents` (ascending) that a charge taking an account's spending from
/// `before` to `after` crossed, in percent of `limit`: each is crossed by exactly one charge
/// while the limit stays the same, so a store that charges under a lock reports each once.
pub fn percents_crossed(
    percents: &[u8],
    before: u64,
    after: u64,
    limit: u64,
) -> impl Iterator<Item = u8> + '_ {
    percents
        .iter()
        .copied()
        .filter(move |&p| !reached(before, limit, p) && reached(after, limit, p))
}

/// Events are rare (warnings, refusals, overshoots); a slow subscriber lags rather than
/// blocking a reservation.
const EVENT_CAPACITY: usize = 1024;

/// Who is charged: accounts form a tree rooted at `Global`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AccountId {
    /// The root account: everything spent by this process.
    Global,
    /// A customer or team.
    Tenant(TenantId),
    /// One run (a goal with a budget).
    Run(RunId),
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AccountId::Global => f.write_str("global"),
            AccountId::Tenant(id) => write!(f, "tenant:{id}"),
            AccountId::Run(id) => write!(f, "run:{id}"),
        }
    }
}

/// Parses what [`Display`](fmt::Display) writes: `global`, `tenant:<id>`, `run:<id>`.
impl std::str::FromStr for AccountId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            None if s == "global" => Ok(AccountId::Global),
            Some(("tenant", id)) if !id.is_empty() => Ok(AccountId::Tenant(id.into())),
            Some(("run", id)) if !id.is_empty() => Ok(AccountId::Run(id.into())),
            _ => Err(format!(
                "`{s}` is not an account: expected `global`, `tenant:<id>` or `run:<id>`"
            )),
        }
    }
}

/// The account's kind as the `account_kind` label: `global`, `tenant` or `run`, never its id.
impl LabelValue for AccountId {
    fn label_value(&self) -> &'static str {
        match self {
            AccountId::Global => "global",
            AccountId::Tenant(_) => "tenant",
            AccountId::Run(_) => "run",
        }
    }
}

/// What a call costs (or may cost) in every counted dimension.
///
/// Build one with the constructors and `+`, e.g. `Charge::usd(1_200) + Charge::tokens(900)`.
/// Addition saturates: a charge never wraps around to a small number.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Charge {
    /// Money, in micro-USD.
    pub micro_usd: MicroUsd,
    /// Input plus output tokens.
    pub tokens: u64,
    /// Number of calls to a model provider.
    pub model_calls: u64,
}

impl Charge {
    /// Nothing at all.
    pub const ZERO: Charge = Charge {
        micro_usd: 0,
        tokens: 0,
        model_calls: 0,
    };

    /// A charge of `micro_usd` micro-USD and nothing else.
    pub const fn usd(micro_usd: MicroUsd) -> Self {
        Charge {
            micro_usd,
            ..Charge::ZERO
        }
    }

    /// A charge of `n` tokens and nothing else.
    pub const fn tokens(n: u64) -> Self {
        Charge {
            tokens: n,
            ..Charge::ZERO
        }
    }

    /// A charge of `n` model calls and nothing else.
    pub const fn model_calls(n: u64) -> Self {
        Charge {
            model_calls: n,
            ..Charge::ZERO
        }
    }

    /// Component-wise sum, saturating at `u64::MAX`.
    pub const fn saturating_add(self, other: Charge) -> Charge {
        Charge {
            micro_usd: self.micro_usd.saturating_add(other.micro_usd),
            tokens: self.tokens.saturating_add(other.tokens),
            model_calls: self.model_calls.saturating_add(other.model_calls),
        }
    }

    /// Component-wise difference, saturating at zero.
    pub const fn saturating_sub(self, other: Charge) -> Charge {
        Charge {
            micro_usd: self.micro_usd.saturating_sub(other.micro_usd),
            tokens: self.tokens.saturating_sub(other.tokens),
            model_calls: self.model_calls.saturating_sub(other.model_calls),
        }
    }

    /// True when every component is zero.
    pub const fn is_zero(self) -> bool {
        self.micro_usd == 0 && self.tokens == 0 && self.model_calls == 0
    }

    /// The component for `dimension` (zero for [`Dimension::Deadline`], which is not counted).
    pub const fn get(self, dimension: Dimension) -> u64 {
        match dimension {
            Dimension::MicroUsd => self.micro_usd,
            Dimension::Tokens => self.tokens,
            Dimension::ModelCalls => self.model_calls,
            Dimension::Deadline => 0,
        }
    }
}

impl Add for Charge {
    type Output = Charge;

    /// Saturating, like [`Charge::saturating_add`].
    fn add(self, other: Charge) -> Charge {
        self.saturating_add(other)
    }
}

/// A dimension an account can be limited in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dimension {
    /// Money, in micro-USD.
    MicroUsd,
    /// Tokens.
    Tokens,
    /// Model calls.
    ModelCalls,
    /// Wall-clock deadline.
    Deadline,
}

impl Dimension {
    /// The dimensions measured by a [`Charge`], in the order of [`State::warned`].
    const COUNTED: [Dimension; 3] = [
        Dimension::MicroUsd,
        Dimension::Tokens,
        Dimension::ModelCalls,
    ];
}

impl fmt::Display for Dimension {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label_value())
    }
}

/// Its snake_case name, as shown and as the `dimension` label.
impl LabelValue for Dimension {
    fn label_value(&self) -> &'static str {
        match self {
            Dimension::MicroUsd => "micro_usd",
            Dimension::Tokens => "tokens",
            Dimension::ModelCalls => "model_calls",
            Dimension::Deadline => "deadline",
        }
    }
}

/// Ceilings of one account; `None` means unlimited.
#[derive(Clone, Debug, Default)]
pub struct Limits {
    /// Most money the account may spend, in micro-USD.
    pub micro_usd: Option<MicroUsd>,
    /// Most tokens.
    pub tokens: Option<u64>,
    /// Most model calls.
    pub model_calls: Option<u64>,
    /// No reservation is accepted at or after this instant.
    pub deadline: Option<Instant>,
}

impl Limits {
    /// The ceiling for a counted dimension.
    fn get(&self, dimension: Dimension) -> Option<u64> {
        match dimension {
            Dimension::MicroUsd => self.micro_usd,
            Dimension::Tokens => self.tokens,
            Dimension::ModelCalls => self.model_calls,
            Dimension::Deadline => None,
        }
    }
}

/// A reservation was refused because it would not fit under a ceiling.
///
/// For [`Dimension::Deadline`] the numeric fields are zero: the deadline has passed, no amount
/// would fit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{}", refusal_message(self))]
pub struct CeilingReached {
    /// The account whose ceiling refused the reservation.
    pub account: AccountId,
    /// The limited dimension that did not fit.
    pub dimension: Dimension,
    /// The account's limit in that dimension.
    pub limit: u64,
    /// Already spent in that dimension.
    pub spent: u64,
    /// Reserved by calls still in flight.
    pub reserved: u64,
    /// What this reservation asked for.
    pub requested: u64,
}

fn refusal_message(e: &CeilingReached) -> String {
    if e.dimension == Dimension::Deadline {
        return format!(
            "account {} is past its deadline; nothing was sent. \
             Extend the account's deadline (set_limits) or stop the work",
            e.account
        );
    }
    format!(
        "account {} would exceed its {} ceiling: limit {}, spent {}, reserved {}, requested {}; \
         nothing was sent. Raise the account's limit, or lower max_tokens so the worst case fits",
        e.account, e.dimension, e.limit, e.spent, e.reserved, e.requested
    )
}

/// The money ceilings above the run, in micro-USD; `None` means unlimited.
///
/// A reservation must fit the run's budget, its tenant's ceiling and the global ceiling
/// ([`AccountPath::reserve`] checks every account of its path under that account's lock, so
/// this holds under any concurrency). Set them with [`Ledger::set_ceilings`]; tenant accounts
/// are opened with them by [`Ledger::tenant`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ceilings {
    /// Most the whole process may spend.
    pub global: Option<MicroUsd>,
    /// Most a tenant without an override may spend.
    pub tenant_default: Option<MicroUsd>,
    /// Per-tenant ceilings, overriding `tenant_default`.
    pub tenants: BTreeMap<TenantId, MicroUsd>,
    /// The largest budget one run may ask for.
    pub max_run: Option<MicroUsd>,
}

impl Ceilings {
    /// The ceiling of `tenant`: its override, else the default.
    pub fn tenant(&self, tenant: &TenantId) -> Option<MicroUsd> {
        self.tenants.get(tenant).copied().or(self.tenant_default)
    }

    /// Checks a run's requested budget against `max_run`. A run that asks for no budget is
    /// refused when `max_run` is set: it would be unlimited.
    pub fn check_run(&self, budget: Option<MicroUsd>) -> Result<(), RunBudgetTooLarge> {
        match (self.max_run, budget) {
            (Some(max), Some(asked)) if asked > max => Err(RunBudgetTooLarge {
                asked: Some(asked),
                max,
            }),
            (Some(max), None) => Err(RunBudgetTooLarge { asked: None, max }),
            _ => Ok(()),
        }
    }
}

/// A run asked for more than the largest run budget ([`Ceilings::max_run`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", run_budget_message(self))]
pub struct RunBudgetTooLarge {
    /// What the run asked for, in micro-USD (`None`: no budget, i.e. unlimited).
    pub asked: Option<MicroUsd>,
    /// The largest run budget, in micro-USD.
    pub max: MicroUsd,
}

fn run_budget_message(e: &RunBudgetTooLarge) -> String {
    let max = format!("{} USD", usd_text(e.max));
    match e.asked {
        Some(asked) => format!(
            "a run budget of {} USD is above the largest run budget, {max}; ask for at most {max}",
            usd_text(asked)
        ),
        None => format!("a run must have a budget of at most {max}; set one"),
    }
}

/// `micro_usd` as decimal dollars, exactly (`1_500_000` is `1.5`).
pub fn usd_text(micro_usd: MicroUsd) -> String {
    let (whole, frac) = (micro_usd / 1_000_000, micro_usd % 1_000_000);
    if frac == 0 {
        return whole.to_string();
    }
    let frac = format!("{frac:06}");
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

/// A tenant's money, as [`Ledger::tenant_budget`] reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantBudget {
    /// The tenant.
    pub tenant: TenantId,
    /// Its ceiling in micro-USD (`None`: unlimited).
    pub ceiling: Option<MicroUsd>,
    /// What its runs spent (settled calls, aborted calls included).
    pub spent: MicroUsd,
    /// What its calls in flight hold.
    pub reserved: MicroUsd,
    /// The period `spent` counts in ([`BudgetPeriod::None`]: since the journal's first run).
    pub period: BudgetPeriod,
    /// When that period started (`None` without a period).
    pub period_start: Option<SystemTime>,
}

/// Something an operator or a supervisor may want to react to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LedgerEvent {
    /// An account's spending crossed a warning fraction of a limit (fired once per fraction).
    Warning {
        /// The account.
        account: AccountId,
        /// The dimension whose spending crossed the fraction.
        dimension: Dimension,
        /// The fraction crossed, in percent of `limit`.
        fraction_percent: u8,
        /// Spent in that dimension after the charge that crossed it.
        spent: u64,
        /// The limit in that dimension.
        limit: u64,
    },
    /// A reservation was refused.
    CeilingReached(CeilingReached),
    /// A call cost more than it reserved; it was charged in full anyway.
    Overshoot {
        /// The leaf account of the path that was charged.
        account: AccountId,
        /// How much the actual charge exceeded the reservation.
        by: Charge,
    },
}

/// A misuse of the account tree.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    /// `open` was called for an account that is already open.
    #[error("account {0} is already open; reuse it (Ledger::account) or close it first")]
    AlreadyOpen(AccountId),
    /// An account (or the parent named in `open`) is not open.
    #[error("account {0} is not open; open it, and its parent first, before using it")]
    UnknownAccount(AccountId),
}

/// The mutable part of an account, behind its own mutex.
#[derive(Default)]
struct State {
    limits: Limits,
    spent: Charge,
    reserved: Charge,
    /// Per counted dimension: how many warning fractions have fired. Spending only grows, so
    /// fractions are crossed in ascending order and a count is enough.
    warned: [usize; 3],
    /// The key of the period `spent` counts in ([`BudgetPeriod::key`]; tenants and `Global`).
    period: u64,
}

/// The periods an operation on a path runs in: the current one (a [`BudgetPeriod::key`]), and
/// the one its charge was made in when that is known to be earlier (spend recorded from the
/// journal); `None` charges whatever period the account is in.
#[derive(Clone, Copy)]
struct Periods {
    now: u64,
    charged_in: Option<u64>,
}

struct Node {
    id: AccountId,
    parent: Option<Arc<Node>>,
    state: Mutex<State>,
}

impl Node {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The critical sections only do arithmetic and cannot leave the state half-updated.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Locks the state, first moving a tenant's or the global account into the period `now`
    /// (a key) if it is still in an earlier one: its spent goes back to 0 and its warnings
    /// re-arm; its reservations stay. Run accounts have no period.
    fn lock_in(&self, now: u64) -> MutexGuard<'_, State> {
        let mut s = self.lock();
        if now > s.period && matches!(self.id, AccountId::Global | AccountId::Tenant(_)) {
            s.period = now;
            s.spent = Charge::ZERO;
            s.warned = [0; 3];
        }
        s
    }

    /// Reserves `amount` here if it fits. `now` is read at most once per path, and only when
    /// some account on it has a deadline; `period` is the current period's key.
    fn try_reserve(
        &self,
        amount: Charge,
        now: &mut Option<Instant>,
        period: u64,
    ) -> Result<(), CeilingReached> {
        let mut s = self.lock_in(period);
        if let Some(deadline) = s.limits.deadline {
            if *now.get_or_insert_with(Instant::now) >= deadline {
                return Err(self.refusal(Dimension::Deadline, 0, 0, 0, 0));
            }
        }
        for dim in Dimension::COUNTED {
            if let Some(limit) = s.limits.get(dim) {
                let (spent, reserved, requested) =
                    (s.spent.get(dim), s.reserved.get(dim), amount.get(dim));
                if spent.saturating_add(reserved).saturating_add(requested) > limit {
                    return Err(self.refusal(dim, limit, spent, reserved, requested));
                }
            }
        }
        s.reserved = s.reserved + amount;
        Ok(())
    }

    fn refusal(
        &self,
        dimension: Dimension,
        limit: u64,
        spent: u64,
        reserved: u64,
        requested: u64,
    ) -> CeilingReached {
        CeilingReached {
            account: self.id.clone(),
            dimension,
            limit,
            spent,
            reserved,
            requested,
        }
    }

    /// Turns `reserved` into `charge` spent, and fires the warnings that charge crossed. A
    /// charge made in a period before the account's counts on run accounts only.
    fn settle(&self, reserved: Charge, charge: Charge, shared: &Shared, periods: Periods) {
        let mut s = self.lock_in(periods.now);
        s.reserved = s.reserved.saturating_sub(reserved);
        let past = periods.charged_in.is_some_and(|made| made < s.period);
        if charge.is_zero() || past {
            return;
        }
        s.spent = s.spent + charge;
        for (i, dim) in Dimension::COUNTED.into_iter().enumerate() {
            let Some(limit) = s.limits.get(dim) else {
                continue;
            };
            let spent = s.spent.get(dim);
            while let Some(&percent) = shared.warning_percents.get(s.warned[i]) {
                if !reached(spent, limit, percent) {
                    break;
                }
                s.warned[i] += 1;
                // Sent under the account lock: rare, and the channel's lock never waits on ours.
                shared.emit(LedgerEvent::Warning {
                    account: self.id.clone(),
                    dimension: dim,
                    fraction_percent: percent,
                    spent,
                    limit,
                });
            }
        }
    }

    /// The nodes from this one up to the root.
    fn ancestry(&self) -> impl Iterator<Item = &Node> {
        std::iter::successors(Some(self), |n| n.parent.as_deref())
    }
}

/// What every path of one ledger shares.
struct Shared {
    events: broadcast::Sender<LedgerEvent>,
    /// Ascending, deduplicated.
    warning_percents: Box<[u8]>,
    /// The money ceilings above the run; tenant accounts are opened with them.
    ceilings: Mutex<Ceilings>,
    /// The [`BudgetPeriod`] of the tenant and global accounts, as its index in
    /// [`BudgetPeriod::ALL`] (read on every reservation, so not behind a lock).
    period: AtomicU8,
    clock: Clock,
}

impl Shared {
    fn emit(&self, event: LedgerEvent) {
        // No subscriber is not an error: events are for whoever wants them.
        let _ = self.events.send(event);
    }

    fn period(&self) -> BudgetPeriod {
        BudgetPeriod::ALL[usize::from(self.period.load(Ordering::Relaxed))]
    }

    /// The current period's key; the clock is read only when there is a period.
    fn period_now(&self) -> u64 {
        match self.period() {
            BudgetPeriod::None => 0,
            period => period.key((self.clock)()),
        }
    }

    /// The periods of an operation charging now.
    fn charging_now(&self) -> Periods {
        Periods {
            now: self.period_now(),
            charged_in: None,
        }
    }
}

/// The set of accounts of one process. Cheap to clone; clones share the accounts.
#[derive(Clone)]
pub struct Ledger {
    accounts: Arc<DashMap<AccountId, Account>>,
    shared: Arc<Shared>,
}

impl Default for Ledger {
    fn default() -> Self {
        Ledger::new()
    }
}

impl Ledger {
    /// A ledger with only the `Global` account (unlimited), warning at 50, 80 and 100 %.
    pub fn new() -> Self {
        Ledger::with_warning_fractions(DEFAULT_WARNING_PERCENTS.to_vec())
    }

    /// Like [`Ledger::new`], warning when spending crosses each of `percents` (of a limit).
    /// Values above 100 are allowed: they report overshoot past the ceiling.
    pub fn with_warning_fractions(percents: Vec<u8>) -> Self {
        Ledger::build(percents, Arc::new(SystemTime::now))
    }

    /// Like [`Ledger::new`], reading the time of day (for periods) from `clock`: what tests
    /// use to cross a period's boundary without waiting for it.
    pub fn with_clock(clock: Clock) -> Self {
        Ledger::build(DEFAULT_WARNING_PERCENTS.to_vec(), clock)
    }

    fn build(mut percents: Vec<u8>, clock: Clock) -> Self {
        percents.sort_unstable();
        percents.dedup();
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let shared = Arc::new(Shared {
            events,
            warning_percents: percents.into(),
            ceilings: Mutex::new(Ceilings::default()),
            period: AtomicU8::new(0),
            clock,
        });
        let accounts = DashMap::new();
        let global = Account::new(AccountId::Global, None, Limits::default());
        accounts.insert(AccountId::Global, global);
        Ledger {
            accounts: Arc::new(accounts),
            shared,
        }
    }

    /// Opens account `id` under `parent` (`None` means `Global`) with `limits`.
    pub fn open(
        &self,
        id: AccountId,
        parent: Option<&AccountId>,
        limits: Limits,
    ) -> Result<Account, LedgerError> {
        let parent_id = parent.unwrap_or(&AccountId::Global);
        // Clone the parent out before touching the map again: holding a dashmap guard while
        // calling `entry` on the same shard would deadlock.
        let parent = self
            .account(parent_id)
            .ok_or_else(|| LedgerError::UnknownAccount(parent_id.clone()))?;
        match self.accounts.entry(id) {
            Entry::Occupied(e) => Err(LedgerError::AlreadyOpen(e.key().clone())),
            Entry::Vacant(e) => {
                let account = Account::new(e.key().clone(), Some(parent.node), limits);
                e.insert(account.clone());
                Ok(account)
            }
        }
    }

    /// The open account `id`, if any.
    pub fn account(&self, id: &AccountId) -> Option<Account> {
        self.accounts.get(id).map(|a| a.value().clone())
    }

    /// The path from `leaf` up to `Global`, to reserve on. Get it once per run and clone it.
    pub fn path(&self, leaf: &AccountId) -> Result<AccountPath, LedgerError> {
        let leaf = self
            .account(leaf)
            .ok_or_else(|| LedgerError::UnknownAccount(leaf.clone()))?;
        Ok(AccountPath {
            leaf,
            shared: self.shared.clone(),
        })
    }

    /// Forgets a finished account so its id can no longer be looked up (or can be opened
    /// again). What it spent stays counted in its parents; paths and reservations already
    /// taken keep working. `Global` is never closed.
    pub fn close(&self, id: &AccountId) {
        if *id != AccountId::Global {
            self.accounts.remove(id);
        }
    }

    /// Sets the ceilings above the run: the global account's money limit at once, every open
    /// tenant account's, and those of tenants opened later by [`Ledger::tenant`]. Spending and
    /// reservations are kept (a ceiling lowered below what was spent refuses every new call).
    pub fn set_ceilings(&self, ceilings: Ceilings) {
        let mut current = self.lock_ceilings();
        *current = ceilings;
        set_money_limit(&self.global(), current.global);
        for entry in self.accounts.iter() {
            if let AccountId::Tenant(tenant) = entry.key() {
                set_money_limit(entry.value(), current.tenant(tenant));
            }
        }
    }

    /// The ceilings above the run, as last set.
    pub fn ceilings(&self) -> Ceilings {
        self.lock_ceilings().clone()
    }

    /// Makes the tenant and global ceilings apply to the spend of each `period` (from the
    /// next operation on each account). Set it before spend is recorded from the journal.
    pub fn set_period(&self, period: BudgetPeriod) {
        self.shared.period.store(period.index(), Ordering::Relaxed);
    }

    /// The period the tenant and global ceilings apply to.
    pub fn period(&self) -> BudgetPeriod {
        self.shared.period()
    }

    /// The account of `tenant`, opened under `Global` with its ceiling on first use. Tenant
    /// accounts are never closed, so what a tenant spent stays counted.
    pub fn tenant(&self, tenant: &TenantId) -> Account {
        let id = AccountId::Tenant(tenant.clone());
        if let Some(found) = self.account(&id) {
            return found;
        }
        let global = self.global().node;
        // Held while inserting, so a concurrent `set_ceilings` cannot miss this account.
        let ceilings = self.lock_ceilings();
        let limits = Limits {
            micro_usd: ceilings.tenant(tenant),
            ..Limits::default()
        };
        let account = self
            .accounts
            .entry(id.clone())
            .or_insert_with(|| Account::new(id, Some(global), limits))
            .clone();
        drop(ceilings);
        account
    }

    /// Overrides the ceiling of `tenant` (`None`: back to the default ceiling).
    pub fn set_tenant_ceiling(&self, tenant: &TenantId, micro_usd: Option<MicroUsd>) {
        let ceiling = {
            let mut ceilings = self.lock_ceilings();
            match micro_usd {
                Some(limit) => ceilings.tenants.insert(tenant.clone(), limit),
                None => ceilings.tenants.remove(tenant),
            };
            ceilings.tenant(tenant)
        };
        set_money_limit(&self.tenant(tenant), ceiling);
    }

    /// The tenants with an open account (every tenant that reserved, was charged or was
    /// asked about), in no particular order.
    pub fn tenants(&self) -> Vec<TenantId> {
        self.accounts
            .iter()
            .filter_map(|entry| match entry.key() {
                AccountId::Tenant(tenant) => Some(tenant.clone()),
                _ => None,
            })
            .collect()
    }

    /// What `tenant` may spend, has spent in the current period and holds (opening its
    /// account if need be).
    pub fn tenant_budget(&self, tenant: &TenantId) -> TenantBudget {
        let account = self.tenant(tenant);
        let (period, now) = (self.period(), (self.shared.clock)());
        let s = account.node.lock_in(period.key(now));
        TenantBudget {
            tenant: tenant.clone(),
            ceiling: s.limits.micro_usd,
            spent: s.spent.micro_usd,
            reserved: s.reserved.micro_usd,
            period,
            period_start: period.start(now),
        }
    }

    fn global(&self) -> Account {
        self.account(&AccountId::Global)
            .expect("the global account is never closed")
    }

    fn lock_ceilings(&self) -> MutexGuard<'_, Ceilings> {
        // Only plain assignments happen under this lock.
        self.shared
            .ceilings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Hands `event`, decided by a store shared with other processes (the ceiling warnings
    /// of the ledger on PostgreSQL), to this ledger's subscribers as if this ledger had raised
    /// it: they report it the same way (supervisor events, metrics).
    pub fn publish(&self, event: LedgerEvent) {
        self.shared.emit(event);
    }

    /// Warnings, refusals and overshoots from now on. A receiver that falls more than 1024
    /// events behind skips the oldest (see [`broadcast::error::RecvError::Lagged`]).
    pub fn subscribe(&self) -> broadcast::Receiver<LedgerEvent> {
        self.shared.events.subscribe()
    }
}

/// One account of the tree. Cheap to clone; clones are the same account.
#[derive(Clone)]
pub struct Account {
    node: Arc<Node>,
}

impl fmt::Debug for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Account").field(&self.node.id).finish()
    }
}

/// An account's state at one moment.
#[derive(Clone, Debug)]
pub struct AccountSnapshot {
    /// The account.
    pub id: AccountId,
    /// Its ceilings.
    pub limits: Limits,
    /// What settled calls charged it.
    pub spent: Charge,
    /// What calls in flight hold on it.
    pub reserved: Charge,
}

impl Account {
    fn new(id: AccountId, parent: Option<Arc<Node>>, limits: Limits) -> Self {
        let state = Mutex::new(State {
            limits,
            ..State::default()
        });
        Account {
            node: Arc::new(Node { id, parent, state }),
        }
    }

    /// This account's id.
    pub fn id(&self) -> &AccountId {
        &self.node.id
    }

    /// A consistent copy of the account's limits and counters (a tenant's or the global
    /// spent is the period's as of the last operation on it: [`Ledger::tenant_budget`] is
    /// the period's now).
    pub fn snapshot(&self) -> AccountSnapshot {
        let s = self.node.lock();
        AccountSnapshot {
            id: self.node.id.clone(),
            limits: s.limits.clone(),
            spent: s.spent,
            reserved: s.reserved,
        }
    }

    /// Replaces the account's limits. Reservations already taken are kept even if they no
    /// longer fit. Warnings of a dimension whose limit changed are re-armed.
    pub fn set_limits(&self, limits: Limits) {
        let mut s = self.node.lock();
        for (i, dim) in Dimension::COUNTED.into_iter().enumerate() {
            if limits.get(dim) != s.limits.get(dim) {
                s.warned[i] = 0;
            }
        }
        s.limits = limits;
    }
}

/// Replaces the money limit of `account`, keeping its other limits.
fn set_money_limit(account: &Account, micro_usd: Option<MicroUsd>) {
    let mut limits = account.snapshot().limits;
    limits.micro_usd = micro_usd;
    account.set_limits(limits);
}

/// The accounts a call is charged to: a leaf and its ancestors up to `Global`.
/// Cheap to clone (two reference counts).
#[derive(Clone)]
pub struct AccountPath {
    leaf: Account,
    shared: Arc<Shared>,
}

impl fmt::Debug for AccountPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<&AccountId> = self.leaf.node.ancestry().map(|n| &n.id).collect();
        f.debug_tuple("AccountPath").field(&ids).finish()
    }
}

impl AccountPath {
    /// Reserves `worst_case` on every account of the path, or on none.
    ///
    /// An account accepts when `spent + reserved + worst_case <= limit` in every limited
    /// dimension and its deadline (if any) has not arrived. On refusal nothing stays reserved
    /// anywhere, a [`LedgerEvent::CeilingReached`] is emitted, and the call must not be sent.
    pub fn reserve(&self, worst_case: Charge) -> Result<Reservation, CeilingReached> {
        let mut now = None;
        let periods = self.shared.charging_now();
        for node in self.leaf.node.ancestry() {
            if let Err(refusal) = node.try_reserve(worst_case, &mut now, periods.now) {
                // Give back what the accounts below the refusing one already took.
                for taken in self
                    .leaf
                    .node
                    .ancestry()
                    .take_while(|n| !std::ptr::eq(*n, node))
                {
                    taken.settle(worst_case, Charge::ZERO, &self.shared, periods);
                }
                self.shared
                    .emit(LedgerEvent::CeilingReached(refusal.clone()));
                return Err(refusal);
            }
        }
        Ok(Reservation {
            path: self.clone(),
            amount: worst_case,
            finished: false,
        })
    }

    /// Charges `spent` on every account of the path without a reservation: for money already
    /// spent that a new process learns from its journal. No ceiling is checked (the money is
    /// gone); what exceeds a ceiling shows as spending above it.
    pub fn record(&self, spent: Charge) {
        self.record_periods(spent, self.shared.charging_now());
    }

    /// Like [`record`](AccountPath::record), for money spent at `at`: with a period, a charge
    /// made in an earlier period counts on the run account only, not on its tenant nor on
    /// `Global` (their ceilings apply to the current period).
    pub fn record_made_at(&self, spent: Charge, at: SystemTime) {
        let periods = Periods {
            now: self.shared.period_now(),
            charged_in: Some(self.shared.period().key(at)),
        };
        self.record_periods(spent, periods);
    }

    fn record_periods(&self, spent: Charge, periods: Periods) {
        for node in self.leaf.node.ancestry() {
            node.settle(Charge::ZERO, spent, &self.shared, periods);
        }
    }

    /// The account the path starts from (the run).
    pub fn leaf(&self) -> &Account {
        &self.leaf
    }

    /// The ids of the path's accounts, leaf first, up to `Global`.
    pub fn ids(&self) -> Vec<AccountId> {
        self.leaf.node.ancestry().map(|n| n.id.clone()).collect()
    }
}

/// Capacity held on every account of a path for one call in flight.
///
/// Finish it with [`settle`](Reservation::settle), [`release`](Reservation::release) or
/// [`cancel`](Reservation::cancel); if it is dropped unfinished (an early return, a panic, an
/// aborted future), it is released, so a reservation never leaks.
#[must_use = "a reservation is released when dropped; settle it with the call's real usage"]
pub struct Reservation {
    path: AccountPath,
    amount: Charge,
    finished: bool,
}

impl fmt::Debug for Reservation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reservation")
            .field("leaf", self.path.leaf.id())
            .field("amount", &self.amount)
            .finish()
    }
}

/// What finishing a reservation charged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settlement {
    /// Added to `spent` on every account of the path.
    pub charged: Charge,
    /// The part of `charged` above what was reserved (zero when the worst case held).
    pub overshoot: Charge,
}

impl Reservation {
    /// The call finished: charges `actual` on every account of the path and frees the
    /// reservation. If `actual` exceeds what was reserved it is still charged in full (the
    /// provider billed it) and reported as `overshoot` and a [`LedgerEvent::Overshoot`].
    pub fn settle(mut self, actual: Charge) -> Settlement {
        self.finish(actual)
    }

    /// The call failed before the provider billed anything: frees the reservation.
    pub fn release(mut self) {
        self.finish(Charge::ZERO);
    }

    /// The call was halted mid-flight: charges what the provider may still bill (usually
    /// the input estimate) and frees the rest.
    pub fn cancel(mut self, billable: Charge) -> Settlement {
        self.finish(billable)
    }

    /// What this reservation holds on every account of its path.
    pub fn reserved(&self) -> Charge {
        self.amount
    }

    fn finish(&mut self, charge: Charge) -> Settlement {
        self.finished = true;
        let periods = self.path.shared.charging_now();
        for node in self.path.leaf.node.ancestry() {
            node.settle(self.amount, charge, &self.path.shared, periods);
        }
        let overshoot = charge.saturating_sub(self.amount);
        if !overshoot.is_zero() {
            self.path.shared.emit(LedgerEvent::Overshoot {
                account: self.path.leaf.id().clone(),
                by: overshoot,
            });
        }
        Settlement {
            charged: charge,
            overshoot,
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.finished {
            self.finish(Charge::ZERO);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn usd_limit(micro_usd: u64) -> Limits {
        Limits {
            micro_usd: Some(micro_usd),
            ..Limits::default()
        }
    }

    /// Global (unlimited) > tenant:t > run:r, with the given money ceilings.
    fn tree(tenant: Limits, run: Limits) -> (Ledger, AccountPath) {
        let ledger = Ledger::new();
        let t = AccountId::Tenant("t".into());
        ledger.open(t.clone(), None, tenant).unwrap();
        ledger
            .open(AccountId::Run("r".into()), Some(&t), run)
            .unwrap();
        let path = ledger.path(&AccountId::Run("r".into())).unwrap();
        (ledger, path)
    }

    fn snap(ledger: &Ledger, id: AccountId) -> AccountSnapshot {
        ledger.account(&id).unwrap().snapshot()
    }

    fn ids() -> [AccountId; 3] {
        [
            AccountId::Run("r".into()),
            AccountId::Tenant("t".into()),
            AccountId::Global,
        ]
    }

    fn drain(rx: &mut broadcast::Receiver<LedgerEvent>) -> Vec<LedgerEvent> {
        std::iter::from_fn(|| rx.try_recv().ok()).collect()
    }

    #[test]
    fn refusal_on_an_ancestor_reserves_nothing_anywhere() {
        // The run could afford it; the tenant cannot.
        let (ledger, path) = tree(usd_limit(100), usd_limit(1_000));
        let err = path
            .reserve(Charge::usd(101) + Charge::tokens(7))
            .unwrap_err();
        assert_eq!(err.account, AccountId::Tenant("t".into()));
        for id in ids() {
            assert_eq!(snap(&ledger, id).reserved, Charge::ZERO);
        }
    }

    #[test]
    fn ceiling_reached_fields_are_exact() {
        let (ledger, path) = tree(Limits::default(), usd_limit(1_000));
        let _ = path
            .reserve(Charge::usd(400))
            .unwrap()
            .settle(Charge::usd(500));
        let _held = path.reserve(Charge::usd(300)).unwrap();
        let mut rx = ledger.subscribe();
        let err = path.reserve(Charge::usd(201)).unwrap_err();
        let expected = CeilingReached {
            account: AccountId::Run("r".into()),
            dimension: Dimension::MicroUsd,
            limit: 1_000,
            spent: 500,
            reserved: 300,
            requested: 201,
        };
        assert_eq!(err, expected);
        assert_eq!(drain(&mut rx), vec![LedgerEvent::CeilingReached(expected)]);
        let msg = err.to_string();
        assert!(
            msg.contains("run:r") && msg.contains("Raise the account's limit"),
            "{msg}"
        );
        // Exactly at the limit fits.
        assert!(path.reserve(Charge::usd(200)).is_ok());
    }

    #[test]
    fn every_counted_dimension_is_enforced() {
        let run = Limits {
            tokens: Some(10),
            model_calls: Some(1),
            ..Limits::default()
        };
        let (_ledger, path) = tree(Limits::default(), run);
        assert_eq!(
            path.reserve(Charge::tokens(11)).unwrap_err().dimension,
            Dimension::Tokens
        );
        assert_eq!(
            path.reserve(Charge::model_calls(2)).unwrap_err().dimension,
            Dimension::ModelCalls
        );
        assert!(path
            .reserve(Charge::tokens(10) + Charge::model_calls(1))
            .is_ok());
    }

    #[test]
    fn settle_release_cancel_and_drop_arithmetic() {
        let (ledger, path) = tree(usd_limit(10_000), usd_limit(10_000));
        let held = path.reserve(Charge::usd(100) + Charge::tokens(50)).unwrap();
        for id in ids() {
            assert_eq!(
                snap(&ledger, id).reserved,
                Charge::usd(100) + Charge::tokens(50)
            );
        }
        let s = held.settle(Charge::usd(60) + Charge::tokens(30));
        assert_eq!(
            s,
            Settlement {
                charged: Charge::usd(60) + Charge::tokens(30),
                overshoot: Charge::ZERO
            }
        );

        path.reserve(Charge::usd(100)).unwrap().release();
        let c = path
            .reserve(Charge::usd(100))
            .unwrap()
            .cancel(Charge::usd(25));
        assert_eq!(c.charged, Charge::usd(25));
        drop(path.reserve(Charge::usd(100)).unwrap());

        for id in ids() {
            let s = snap(&ledger, id);
            assert_eq!(s.spent, Charge::usd(85) + Charge::tokens(30), "{:?}", s.id);
            assert_eq!(s.reserved, Charge::ZERO, "{:?}", s.id);
        }
    }

    #[test]
    fn overshoot_is_charged_in_full_and_reported() {
        let (ledger, path) = tree(Limits::default(), usd_limit(1_000));
        let mut rx = ledger.subscribe();
        let s = path
            .reserve(Charge::usd(100))
            .unwrap()
            .settle(Charge::usd(130) + Charge::tokens(5));
        assert_eq!(s.charged, Charge::usd(130) + Charge::tokens(5));
        assert_eq!(s.overshoot, Charge::usd(30) + Charge::tokens(5));
        assert_eq!(
            snap(&ledger, AccountId::Run("r".into())).spent.micro_usd,
            130
        );
        assert_eq!(
            drain(&mut rx),
            vec![LedgerEvent::Overshoot {
                account: AccountId::Run("r".into()),
                by: s.overshoot
            }]
        );
    }

    #[test]
    fn warnings_fire_once_per_fraction() {
        let (ledger, path) = tree(Limits::default(), usd_limit(1_000));
        let mut rx = ledger.subscribe();
        let mut fired = Vec::new();
        // 49.9 %, 50 %, 79 %, 85 % (80 crossed), 85 % again, 100 %.
        for spend in [499, 1, 290, 60, 0, 150] {
            let _ = path
                .reserve(Charge::usd(spend))
                .unwrap()
                .settle(Charge::usd(spend));
            for e in drain(&mut rx) {
                match e {
                    LedgerEvent::Warning {
                        account,
                        dimension,
                        fraction_percent,
                        spent,
                        limit,
                    } => {
                        assert_eq!(
                            (account, dimension, limit),
                            (AccountId::Run("r".into()), Dimension::MicroUsd, 1_000)
                        );
                        fired.push((fraction_percent, spent));
                    }
                    other => panic!("unexpected event {other:?}"),
                }
            }
        }
        assert_eq!(fired, vec![(50, 500), (80, 850), (100, 1_000)]);
    }

    #[test]
    fn each_fraction_is_crossed_by_exactly_one_charge() {
        let percents = DEFAULT_WARNING_PERCENTS;
        let crossed =
            |before, after| percents_crossed(&percents, before, after, 1_000).collect::<Vec<u8>>();
        let none: Vec<u8> = Vec::new();
        assert_eq!(crossed(0, 499), none);
        assert_eq!(crossed(499, 500), vec![50]);
        assert_eq!(crossed(500, 799), none, "50 % was crossed before");
        assert_eq!(crossed(0, 1_200), vec![50, 80, 100]);
        assert_eq!(crossed(1_000, 1_200), none);
        // Charges in any sizes cross each fraction once in all.
        let mut fired = Vec::new();
        let mut spent = 0;
        for step in [7, 300, 1, 250, 0, 241, 200, 5] {
            fired.extend(percents_crossed(&percents, spent, spent + step, 1_000));
            spent += step;
        }
        assert_eq!(fired, vec![50, 80, 100]);
    }

    #[test]
    fn account_ids_parse_back_from_their_names() {
        for id in [
            AccountId::Global,
            AccountId::Tenant("acme".into()),
            AccountId::Run("r:1".into()),
        ] {
            assert_eq!(id.to_string().parse::<AccountId>(), Ok(id));
        }
        for bad in ["", "tenant:", "tenant", "user:x", "globals"] {
            let err = bad.parse::<AccountId>().unwrap_err();
            assert!(err.contains(&format!("`{bad}`")), "{err}");
        }
    }

    #[test]
    fn raising_a_limit_rearms_its_warnings() {
        let (ledger, path) = tree(Limits::default(), usd_limit(100));
        let _ = path
            .reserve(Charge::usd(100))
            .unwrap()
            .settle(Charge::usd(100));
        let mut rx = ledger.subscribe();
        path.leaf().set_limits(usd_limit(400));
        let _ = path
            .reserve(Charge::usd(100))
            .unwrap()
            .settle(Charge::usd(100));
        let percents: Vec<u8> = drain(&mut rx)
            .into_iter()
            .filter_map(|e| match e {
                LedgerEvent::Warning {
                    fraction_percent, ..
                } => Some(fraction_percent),
                _ => None,
            })
            .collect();
        assert_eq!(percents, vec![50]);
    }

    #[test]
    fn passed_deadline_refuses() {
        let now = Instant::now();
        let past = now.checked_sub(Duration::from_millis(1)).unwrap_or(now);
        let (_ledger, path) = tree(
            Limits {
                deadline: Some(past),
                ..Limits::default()
            },
            Limits::default(),
        );
        let err = path.reserve(Charge::usd(1)).unwrap_err();
        assert_eq!(
            (err.account, err.dimension),
            (AccountId::Tenant("t".into()), Dimension::Deadline)
        );

        let (_ledger, path) = tree(
            Limits {
                deadline: Some(now + Duration::from_secs(60)),
                ..Limits::default()
            },
            Limits::default(),
        );
        assert!(path.reserve(Charge::usd(1)).is_ok());
    }

    fn ceilings() -> Ceilings {
        Ceilings {
            global: Some(1_000),
            tenant_default: Some(600),
            tenants: [("big".into(), 900)].into(),
            max_run: Some(500),
        }
    }

    fn run_under(ledger: &Ledger, tenant: &str, run: &str) -> AccountPath {
        let id = AccountId::Run(run.into());
        let parent = ledger.tenant(&tenant.into()).id().clone();
        ledger
            .open(id.clone(), Some(&parent), Limits::default())
            .unwrap();
        ledger.path(&id).unwrap()
    }

    #[test]
    fn tenant_and_global_ceilings_bound_every_reservation() {
        let ledger = Ledger::new();
        ledger.set_ceilings(ceilings());
        let small = run_under(&ledger, "small", "r1");
        let err = small.reserve(Charge::usd(601)).unwrap_err();
        assert_eq!(err.account, AccountId::Tenant("small".into()));
        let _ = small
            .reserve(Charge::usd(600))
            .unwrap()
            .settle(Charge::usd(600));
        // The override lets "big" reserve past the default, but not past what global has left.
        let big = run_under(&ledger, "big", "r2");
        let err = big.reserve(Charge::usd(401)).unwrap_err();
        assert_eq!((err.account, err.spent), (AccountId::Global, 600));
        assert!(big.reserve(Charge::usd(400)).is_ok());
        assert_eq!(
            ledger.tenant_budget(&"small".into()),
            TenantBudget {
                tenant: "small".into(),
                ceiling: Some(600),
                spent: 600,
                reserved: 0,
                period: BudgetPeriod::None,
                period_start: None,
            }
        );
    }

    #[test]
    fn tenant_ceilings_change_open_accounts_and_later_ones() {
        let ledger = Ledger::new();
        let early = run_under(&ledger, "early", "r1");
        assert!(early.reserve(Charge::usd(10_000)).is_ok(), "no ceiling yet");
        ledger.set_ceilings(ceilings());
        assert!(
            early.reserve(Charge::usd(601)).is_err(),
            "default applied to an open tenant"
        );
        ledger.set_tenant_ceiling(&"early".into(), Some(50));
        assert_eq!(ledger.tenant_budget(&"early".into()).ceiling, Some(50));
        assert_eq!(ledger.ceilings().tenants.get(&"early".into()), Some(&50));
        ledger.set_tenant_ceiling(&"early".into(), None);
        assert_eq!(
            ledger.tenant_budget(&"early".into()).ceiling,
            Some(600),
            "back to the default"
        );
        assert_eq!(ledger.tenant_budget(&"later".into()).ceiling, Some(600));
        assert_eq!(ledger.tenant_budget(&"big".into()).ceiling, Some(900));
    }

    #[test]
    fn concurrent_runs_of_one_tenant_never_pass_its_ceiling() {
        let ledger = Ledger::new();
        ledger.set_ceilings(Ceilings {
            tenant_default: Some(1_000),
            ..Ceilings::default()
        });
        let paths: Vec<AccountPath> = (0..8)
            .map(|i| run_under(&ledger, "t", &format!("r{i}")))
            .collect();
        let granted: u64 = std::thread::scope(|scope| {
            let workers: Vec<_> = paths
                .iter()
                .map(|path| {
                    scope.spawn(move || {
                        let mut granted = 0;
                        for _ in 0..100 {
                            if let Ok(held) = path.reserve(Charge::usd(7)) {
                                let _ = held.settle(Charge::usd(7));
                                granted += 1;
                            }
                        }
                        granted
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).sum()
        });
        let budget = ledger.tenant_budget(&"t".into());
        assert_eq!(budget.spent, granted * 7, "every granted call charged once");
        assert_eq!(
            granted,
            1_000 / 7,
            "the ceiling is used up to the last whole call"
        );
        assert_eq!(budget.reserved, 0);
    }

    #[test]
    fn run_budgets_are_checked_against_the_largest() {
        let c = ceilings();
        assert!(c.check_run(Some(500)).is_ok());
        let err = c.check_run(Some(1_500_001)).unwrap_err();
        assert_eq!(err.to_string(), "a run budget of 1.500001 USD is above the largest run budget, 0.0005 USD; ask for at most 0.0005 USD");
        assert!(
            c.check_run(None).is_err(),
            "an unlimited run is refused when there is a largest"
        );
        assert!(Ceilings::default().check_run(None).is_ok());
        assert_eq!(usd_text(2_000_000), "2");
    }

    #[test]
    fn recorded_spend_passes_ceilings_and_counts() {
        let ledger = Ledger::new();
        ledger.set_ceilings(Ceilings {
            tenant_default: Some(100),
            ..Ceilings::default()
        });
        let path = run_under(&ledger, "t", "r");
        path.record(Charge::usd(150));
        assert_eq!(ledger.tenant_budget(&"t".into()).spent, 150);
        assert_eq!(snap(&ledger, AccountId::Global).spent.micro_usd, 150);
        assert!(
            path.reserve(Charge::usd(1)).is_err(),
            "over the ceiling: nothing fits"
        );
    }

    #[test]
    fn open_path_and_close_errors() {
        let ledger = Ledger::new();
        let t = AccountId::Tenant("t".into());
        let r = AccountId::Run("r".into());
        assert_eq!(
            ledger
                .open(AccountId::Global, None, Limits::default())
                .unwrap_err(),
            LedgerError::AlreadyOpen(AccountId::Global)
        );
        assert_eq!(
            ledger
                .open(r.clone(), Some(&t), Limits::default())
                .unwrap_err(),
            LedgerError::UnknownAccount(t.clone())
        );
        assert_eq!(
            ledger.path(&r).unwrap_err(),
            LedgerError::UnknownAccount(r.clone())
        );
        ledger.open(t.clone(), None, Limits::default()).unwrap();
        assert_eq!(
            ledger.open(t.clone(), None, Limits::default()).unwrap_err(),
            LedgerError::AlreadyOpen(t.clone())
        );

        // Closing a run keeps its spend in the tenant, and a path taken earlier still works.
        ledger.open(r.clone(), Some(&t), usd_limit(50)).unwrap();
        let path = ledger.path(&r).unwrap();
        ledger.close(&r);
        assert!(ledger.account(&r).is_none());
        let _ = path
            .reserve(Charge::usd(40))
            .unwrap()
            .settle(Charge::usd(40));
        assert_eq!(snap(&ledger, t.clone()).spent.micro_usd, 40);
        ledger.close(&AccountId::Global);
        assert!(ledger.account(&AccountId::Global).is_some());
    }

    #[test]
    fn display_forms() {
        assert_eq!(AccountId::Tenant("acme".into()).to_string(), "tenant:acme");
        assert_eq!(AccountId::Run("r1".into()).to_string(), "run:r1");
        assert_eq!(
            Charge::usd(u64::MAX) + Charge::usd(1),
            Charge::usd(u64::MAX)
        );
    }

    /// 2026-11-30T23:59:00Z, and the first second of December.
    const NOV_END: u64 = 1_796_083_140;
    const DEC_START: u64 = 1_796_083_200;

    /// A ledger with monthly periods, a tenant ceiling of 1 000 and a global one of 5 000, its
    /// clock at `NOV_END` until the test moves it (seconds since the epoch).
    fn monthly() -> (Ledger, Arc<std::sync::atomic::AtomicU64>) {
        let secs = Arc::new(std::sync::atomic::AtomicU64::new(NOV_END));
        let read = secs.clone();
        let clock: Clock = Arc::new(move || {
            std::time::UNIX_EPOCH + Duration::from_secs(read.load(Ordering::Relaxed))
        });
        let ledger = Ledger::with_clock(clock);
        ledger.set_period(BudgetPeriod::Month);
        ledger.set_ceilings(Ceilings {
            global: Some(5_000),
            tenant_default: Some(1_000),
            ..Ceilings::default()
        });
        (ledger, secs)
    }

    fn warned(rx: &mut broadcast::Receiver<LedgerEvent>, account: &AccountId) -> Vec<u8> {
        drain(rx)
            .into_iter()
            .filter_map(|e| match e {
                LedgerEvent::Warning {
                    account: a,
                    fraction_percent,
                    ..
                } if a == *account => Some(fraction_percent),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_new_period_resets_tenant_and_global_spend_and_rearms_warnings() {
        let (ledger, clock) = monthly();
        let tenant = AccountId::Tenant("t".into());
        let path = run_under(&ledger, "t", "r");
        let mut rx = ledger.subscribe();
        let _ = path
            .reserve(Charge::usd(900))
            .unwrap()
            .settle(Charge::usd(900));
        assert_eq!(warned(&mut rx, &tenant), vec![50, 80]);
        let err = path.reserve(Charge::usd(101)).unwrap_err();
        assert_eq!((err.account, err.spent), (tenant.clone(), 900));

        clock.store(DEC_START, Ordering::Relaxed);
        let budget = ledger.tenant_budget(&"t".into());
        assert_eq!((budget.spent, budget.period), (0, BudgetPeriod::Month));
        assert_eq!(
            budget.period_start.map(utc_text).as_deref(),
            Some("2026-12-01T00:00:00Z")
        );
        let _ = path
            .reserve(Charge::usd(900))
            .unwrap()
            .settle(Charge::usd(900));
        assert_eq!(
            warned(&mut rx, &tenant),
            vec![50, 80],
            "warnings fire again"
        );
        assert_eq!(snap(&ledger, AccountId::Global).spent.micro_usd, 900);
        assert_eq!(
            snap(&ledger, AccountId::Run("r".into())).spent.micro_usd,
            1_800,
            "a run's budget is per run, not per period"
        );
    }

    #[test]
    fn a_reservation_in_flight_at_the_boundary_settles_into_the_new_period() {
        let (ledger, clock) = monthly();
        let path = run_under(&ledger, "t", "r");
        let _ = path
            .reserve(Charge::usd(500))
            .unwrap()
            .settle(Charge::usd(500));
        let held = path.reserve(Charge::usd(300)).unwrap();

        clock.store(DEC_START, Ordering::Relaxed);
        let budget = ledger.tenant_budget(&"t".into());
        assert_eq!((budget.spent, budget.reserved), (0, 300), "still held");
        assert!(
            path.reserve(Charge::usd(701)).is_err(),
            "what is held counts against the new period's ceiling"
        );
        let _ = held.settle(Charge::usd(300));
        let budget = ledger.tenant_budget(&"t".into());
        assert_eq!((budget.spent, budget.reserved), (300, 0));
        assert_eq!(snap(&ledger, AccountId::Global).spent.micro_usd, 300);
    }

    #[test]
    fn recorded_spend_of_a_past_period_counts_on_its_run_only() {
        let (ledger, _clock) = monthly();
        let path = run_under(&ledger, "t", "r");
        let at = |secs| std::time::UNIX_EPOCH + Duration::from_secs(secs);
        // October's last second, then November's first and the clock's time.
        path.record_made_at(Charge::usd(4_000), at(1_793_491_199));
        path.record_made_at(Charge::usd(70), at(1_793_491_200));
        path.record_made_at(Charge::usd(5), at(NOV_END));
        assert_eq!(ledger.tenant_budget(&"t".into()).spent, 75);
        assert_eq!(snap(&ledger, AccountId::Global).spent.micro_usd, 75);
        assert_eq!(
            snap(&ledger, AccountId::Run("r".into())).spent.micro_usd,
            4_075
        );
    }

    #[test]
    fn without_a_period_spend_is_never_reset() {
        let (ledger, clock) = monthly();
        ledger.set_period(BudgetPeriod::None);
        let path = run_under(&ledger, "t", "r");
        path.record_made_at(Charge::usd(40), std::time::UNIX_EPOCH);
        let _ = path
            .reserve(Charge::usd(60))
            .unwrap()
            .settle(Charge::usd(60));
        clock.store(DEC_START, Ordering::Relaxed);
        let budget = ledger.tenant_budget(&"t".into());
        assert_eq!((budget.spent, budget.period_start), (100, None));
        assert!(path.reserve(Charge::usd(901)).is_err());
    }

    #[test]
    fn reservation_can_cross_threads() {
        fn send<T: Send + 'static>() {}
        send::<Reservation>();
        send::<AccountPath>();
        send::<Ledger>();
    }
}
