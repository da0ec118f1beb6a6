//! TEMP stand-in for the cost ledger being built on `wip/ledger`.
//!
//! It has exactly the API the LLM layer codes against, so that branch can compile and test
//! until the real ledger is merged; on merge, take theirs. Not for production use: one global
//! mutex, no persistence, no deadlines enforced.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Money in integer micro-USD.
pub type MicroUsd = u64;

/// Identifies an account in the tree global -> tenant -> run -> agent.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum AccountId {
    /// The root account.
    Global,
    /// A tenant's account.
    Tenant(String),
    /// A run's account.
    Run(String),
    /// An agent's account within a run.
    Agent {
        /// The run.
        run: String,
        /// The agent.
        agent: String,
    },
}

/// An amount along every budgeted dimension.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Charge {
    /// Money.
    pub micro_usd: u64,
    /// Tokens.
    pub tokens: u64,
    /// Model calls.
    pub model_calls: u64,
    /// Steps.
    pub steps: u64,
}

impl Charge {
    fn dims(&self) -> [u64; 4] {
        [self.micro_usd, self.tokens, self.model_calls, self.steps]
    }
    fn add(&mut self, o: Charge) {
        self.micro_usd += o.micro_usd;
        self.tokens += o.tokens;
        self.model_calls += o.model_calls;
        self.steps += o.steps;
    }
    fn sub(&mut self, o: Charge) {
        self.micro_usd -= o.micro_usd;
        self.tokens -= o.tokens;
        self.model_calls -= o.model_calls;
        self.steps -= o.steps;
    }
    fn excess_over(self, o: Charge) -> Charge {
        Charge {
            micro_usd: self.micro_usd.saturating_sub(o.micro_usd),
            tokens: self.tokens.saturating_sub(o.tokens),
            model_calls: self.model_calls.saturating_sub(o.model_calls),
            steps: self.steps.saturating_sub(o.steps),
        }
    }
}

/// A budgeted dimension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dimension {
    /// Money.
    MicroUsd,
    /// Tokens.
    Tokens,
    /// Model calls.
    ModelCalls,
    /// Steps.
    Steps,
}

const DIMS: [Dimension; 4] = [
    Dimension::MicroUsd,
    Dimension::Tokens,
    Dimension::ModelCalls,
    Dimension::Steps,
];

/// Ceilings of one account; `None` means unlimited.
#[derive(Clone, Debug, Default)]
pub struct Limits {
    /// Money ceiling.
    pub micro_usd: Option<u64>,
    /// Token ceiling.
    pub tokens: Option<u64>,
    /// Model-call ceiling.
    pub model_calls: Option<u64>,
    /// Step ceiling.
    pub steps: Option<u64>,
    /// Deadline (not enforced by the stand-in).
    pub deadline: Option<Instant>,
}

impl Limits {
    fn dims(&self) -> [Option<u64>; 4] {
        [self.micro_usd, self.tokens, self.model_calls, self.steps]
    }
}

/// Ledger errors.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// Opening an account whose parent is not open.
    #[error("parent account {0:?} is not open; open it first")]
    UnknownParent(AccountId),
    /// Opening an account twice.
    #[error("account {0:?} is already open")]
    AlreadyOpen(AccountId),
    /// Asking for an account that is not open.
    #[error("account {0:?} is not open")]
    UnknownAccount(AccountId),
}

/// A reservation did not fit under a ceiling.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{account:?}: {dimension:?} limit {limit}, spent {spent}, reserved {reserved}, requested {requested}")]
pub struct CeilingReached {
    /// The account whose ceiling would be exceeded.
    pub account: AccountId,
    /// Which dimension.
    pub dimension: Dimension,
    /// The ceiling.
    pub limit: u64,
    /// Already spent.
    pub spent: u64,
    /// Currently reserved.
    pub reserved: u64,
    /// Asked for.
    pub requested: u64,
}

struct Entry {
    parent: Option<AccountId>,
    limits: Limits,
    spent: Charge,
    reserved: Charge,
}

type Book = Arc<Mutex<HashMap<AccountId, Entry>>>;

/// The ledger: a tree of accounts.
#[derive(Clone, Default)]
pub struct Ledger {
    book: Book,
}

/// A handle on one account.
#[derive(Clone)]
pub struct Account {
    id: AccountId,
    book: Book,
}

impl Account {
    /// What this account has spent.
    pub fn spent(&self) -> Charge {
        self.book.lock().unwrap()[&self.id].spent
    }
    /// What is reserved on this account right now.
    pub fn reserved(&self) -> Charge {
        self.book.lock().unwrap()[&self.id].reserved
    }
}

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    /// Opens an account under `parent`.
    pub fn open(
        &self,
        id: AccountId,
        parent: Option<&AccountId>,
        limits: Limits,
    ) -> Result<Account, LedgerError> {
        let mut book = self.book.lock().unwrap();
        if book.contains_key(&id) {
            return Err(LedgerError::AlreadyOpen(id));
        }
        if let Some(p) = parent {
            if !book.contains_key(p) {
                return Err(LedgerError::UnknownParent(p.clone()));
            }
        }
        book.insert(
            id.clone(),
            Entry {
                parent: parent.cloned(),
                limits,
                spent: Charge::default(),
                reserved: Charge::default(),
            },
        );
        Ok(Account {
            id,
            book: self.book.clone(),
        })
    }

    /// The path from `leaf` up to the root.
    pub fn path(&self, leaf: &AccountId) -> Result<AccountPath, LedgerError> {
        let book = self.book.lock().unwrap();
        let mut ids = Vec::new();
        let mut cur = Some(leaf.clone());
        while let Some(id) = cur {
            let e = book
                .get(&id)
                .ok_or_else(|| LedgerError::UnknownAccount(id.clone()))?;
            cur = e.parent.clone();
            ids.push(id);
        }
        Ok(AccountPath {
            ids: Arc::new(ids),
            book: self.book.clone(),
        })
    }
}

/// The accounts a charge is reserved on: leaf first, root last.
#[derive(Clone)]
pub struct AccountPath {
    ids: Arc<Vec<AccountId>>,
    book: Book,
}

impl fmt::Debug for AccountPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("AccountPath").field(&self.ids).finish()
    }
}

impl AccountPath {
    /// Reserves `worst_case` on every account of the path, or on none.
    pub fn reserve(&self, worst_case: Charge) -> Result<Reservation, CeilingReached> {
        let mut book = self.book.lock().unwrap();
        for id in self.ids.iter() {
            let e = &book[id];
            let (s, r, w) = (e.spent.dims(), e.reserved.dims(), worst_case.dims());
            for (i, limit) in e.limits.dims().into_iter().enumerate() {
                if let Some(limit) = limit {
                    if s[i] + r[i] + w[i] > limit {
                        return Err(CeilingReached {
                            account: id.clone(),
                            dimension: DIMS[i],
                            limit,
                            spent: s[i],
                            reserved: r[i],
                            requested: w[i],
                        });
                    }
                }
            }
        }
        for id in self.ids.iter() {
            book.get_mut(id).unwrap().reserved.add(worst_case);
        }
        Ok(Reservation {
            path: self.clone(),
            amount: worst_case,
            open: true,
        })
    }

    fn close(&self, amount: Charge, charged: Charge) {
        let mut book = self.book.lock().unwrap();
        for id in self.ids.iter() {
            let e = book.get_mut(id).unwrap();
            e.reserved.sub(amount);
            e.spent.add(charged);
        }
    }
}

/// Money held for one call until it is settled, released or cancelled. Drop releases.
#[must_use]
pub struct Reservation {
    path: AccountPath,
    amount: Charge,
    open: bool,
}

/// What a settlement charged.
#[derive(Clone, Copy, Debug)]
pub struct Settlement {
    /// What was charged.
    pub charged: Charge,
    /// The part of `charged` above the reservation.
    pub overshoot: Charge,
}

impl Reservation {
    /// Charges the real usage and frees the reservation.
    pub fn settle(mut self, actual: Charge) -> Settlement {
        self.open = false;
        self.path.close(self.amount, actual);
        Settlement {
            charged: actual,
            overshoot: actual.excess_over(self.amount),
        }
    }
    /// Frees the reservation, charging nothing.
    pub fn release(mut self) {
        self.open = false;
        self.path.close(self.amount, Charge::default());
    }
    /// Frees the reservation, charging what the provider may still bill.
    pub fn cancel(self, billable: Charge) -> Settlement {
        self.settle(billable)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.open {
            self.path.close(self.amount, Charge::default());
        }
    }
}
