//! Model-based test of the ledger with halts: random sequences of reserve / settle / release /
//! cancel / drop / halt / resume across two tenants and four runs. After every operation the
//! ledger must agree exactly with a simple model (so every refusal and every acceptance is
//! checked), spend never exceeds a limit, and at quiescence nothing is reserved.

use impresario_runtime::halt::{HaltMode, HaltReason, HaltScope, HaltToken, Halts};
use impresario_runtime::ledger::{AccountId, Charge, Ledger, Limits, Reservation};
use impresario_runtime::{RunId, TenantId};
use proptest::prelude::*;
use std::time::Duration;

const TENANTS: usize = 2;
const RUNS: usize = 4; // run i belongs to tenant i % TENANTS

#[derive(Clone, Debug)]
enum Op {
    Reserve { run: usize, usd: u64, tokens: u64 },
    Settle { pick: usize, percent: u64 },
    Release { pick: usize },
    Cancel { pick: usize, percent: u64 },
    Drop { pick: usize },
    HaltRun { run: usize, immediate: bool },
    HaltTenant { tenant: usize, immediate: bool },
    ResumeRun { run: usize },
    ResumeTenant { tenant: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..RUNS, 0..400u64, 0..400u64).prop_map(|(run, usd, tokens)| Op::Reserve { run, usd, tokens }),
        3 => (any::<usize>(), 0..=100u64).prop_map(|(pick, percent)| Op::Settle { pick, percent }),
        1 => any::<usize>().prop_map(|pick| Op::Release { pick }),
        1 => (any::<usize>(), 0..=100u64).prop_map(|(pick, percent)| Op::Cancel { pick, percent }),
        1 => any::<usize>().prop_map(|pick| Op::Drop { pick }),
        1 => (0..RUNS, any::<bool>()).prop_map(|(run, immediate)| Op::HaltRun { run, immediate }),
        1 => (0..TENANTS, any::<bool>()).prop_map(|(tenant, immediate)| Op::HaltTenant { tenant, immediate }),
        1 => (0..RUNS).prop_map(|run| Op::ResumeRun { run }),
        1 => (0..TENANTS).prop_map(|tenant| Op::ResumeTenant { tenant }),
    ]
}

fn limit() -> impl Strategy<Value = Option<u64>> {
    prop_oneof![1 => Just(None), 3 => (0..3_000u64).prop_map(Some)]
}

/// Money and token limits for global, tenants, then runs.
fn limits() -> impl Strategy<Value = Vec<(Option<u64>, Option<u64>)>> {
    proptest::collection::vec((limit(), limit()), 1 + TENANTS + RUNS)
}

/// The model's view of one account, plus where it sits in the tree.
struct Model {
    id: AccountId,
    limits: (Option<u64>, Option<u64>),
    spent: (u64, u64),
    reserved: (u64, u64),
}

/// A call in flight: its reservation, the halt token it started under, its path indices.
struct InFlight {
    reservation: Reservation,
    token: HaltToken,
    path: [usize; 3],
}

struct World {
    ledger: Ledger,
    halts: Halts,
    model: Vec<Model>,
    in_flight: Vec<InFlight>,
}

fn tenant_name(t: usize) -> TenantId {
    TenantId::new(format!("t{t}"))
}
fn run_name(r: usize) -> RunId {
    RunId::new(format!("r{r}"))
}

impl World {
    fn new(limits: &[(Option<u64>, Option<u64>)]) -> Self {
        let ledger = Ledger::new();
        let mut ids = vec![AccountId::Global];
        ids.extend((0..TENANTS).map(|t| AccountId::Tenant(tenant_name(t))));
        ids.extend((0..RUNS).map(|r| AccountId::Run(run_name(r))));
        for (i, id) in ids.iter().enumerate() {
            let l = Limits {
                micro_usd: limits[i].0,
                tokens: limits[i].1,
                ..Limits::default()
            };
            if i == 0 {
                ledger.account(id).unwrap().set_limits(l);
            } else {
                let parent = if i <= TENANTS {
                    None
                } else {
                    Some(&ids[1 + (i - 1 - TENANTS) % TENANTS])
                };
                ledger.open(id.clone(), parent, l).unwrap();
            }
        }
        let model = ids
            .into_iter()
            .zip(limits)
            .map(|(id, &limits)| Model {
                id,
                limits,
                spent: (0, 0),
                reserved: (0, 0),
            })
            .collect();
        World {
            ledger,
            halts: Halts::new(),
            model,
            in_flight: Vec::new(),
        }
    }

    fn path(run: usize) -> [usize; 3] {
        [1 + TENANTS + run, 1 + run % TENANTS, 0]
    }

    fn take(&mut self, pick: usize) -> Option<InFlight> {
        if self.in_flight.is_empty() {
            return None;
        }
        let i = pick % self.in_flight.len();
        Some(self.in_flight.swap_remove(i))
    }

    /// Applies a finished call to the model: `charge` of `reserved` was spent.
    fn finish(&mut self, path: [usize; 3], reserved: Charge, charge: Charge) {
        for &i in &path {
            let m = &mut self.model[i];
            m.reserved.0 -= reserved.micro_usd;
            m.reserved.1 -= reserved.tokens;
            m.spent.0 += charge.micro_usd;
            m.spent.1 += charge.tokens;
        }
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Reserve { run, usd, tokens } => {
                // A halted run starts nothing new.
                let token = self.halts.run(&tenant_name(run % TENANTS), &run_name(run));
                if token.stop_requested() {
                    return;
                }
                let path = Self::path(run);
                let fits = path.iter().all(|&i| {
                    let m = &self.model[i];
                    m.limits
                        .0
                        .is_none_or(|l| m.spent.0 + m.reserved.0 + usd <= l)
                        && m.limits
                            .1
                            .is_none_or(|l| m.spent.1 + m.reserved.1 + tokens <= l)
                });
                let worst = Charge::usd(usd) + Charge::tokens(tokens);
                let got = self
                    .ledger
                    .path(&AccountId::Run(run_name(run)))
                    .unwrap()
                    .reserve(worst);
                assert_eq!(got.is_ok(), fits, "reserve {worst:?} on run {run}: {got:?}");
                if let Ok(reservation) = got {
                    for &i in &path {
                        self.model[i].reserved.0 += usd;
                        self.model[i].reserved.1 += tokens;
                    }
                    self.in_flight.push(InFlight {
                        reservation,
                        token,
                        path,
                    });
                }
            }
            Op::Settle { pick, percent } | Op::Cancel { pick, percent } => {
                let Some(f) = self.take(pick) else { return };
                let r = f.reservation.reserved();
                let part = Charge::usd(r.micro_usd * percent / 100)
                    + Charge::tokens(r.tokens * percent / 100);
                let s = if matches!(op, Op::Settle { .. }) {
                    f.reservation.settle(part)
                } else {
                    f.reservation.cancel(part)
                };
                assert_eq!((s.charged, s.overshoot), (part, Charge::ZERO));
                self.finish(f.path, r, part);
            }
            Op::Release { pick } | Op::Drop { pick } => {
                let Some(f) = self.take(pick) else { return };
                let r = f.reservation.reserved();
                if matches!(op, Op::Release { .. }) {
                    f.reservation.release();
                } else {
                    drop(f.reservation);
                }
                self.finish(f.path, r, Charge::ZERO);
            }
            Op::HaltRun { run, immediate } => {
                self.halts.halt(
                    HaltScope::Run(run_name(run)),
                    mode(immediate),
                    HaltReason::Operator,
                );
            }
            Op::HaltTenant { tenant, immediate } => {
                self.halts.halt(
                    HaltScope::Tenant(tenant_name(tenant)),
                    mode(immediate),
                    HaltReason::CostCeiling,
                );
            }
            Op::ResumeRun { run } => {
                let _ = self
                    .halts
                    .resume_run(&tenant_name(run % TENANTS), &run_name(run));
            }
            Op::ResumeTenant { tenant } => {
                let _ = self.halts.resume_tenant(&tenant_name(tenant));
            }
        }
        self.abort_halted_calls();
    }

    /// What an immediate halt does to calls in flight: cancel them, charging the part the
    /// provider may still bill (here: half of the reservation).
    fn abort_halted_calls(&mut self) {
        let (halted, running): (Vec<_>, Vec<_>) =
            self.in_flight.drain(..).partition(|f| f.token.is_halted());
        self.in_flight = running;
        for f in halted {
            let r = f.reservation.reserved();
            let billable = Charge::usd(r.micro_usd / 2) + Charge::tokens(r.tokens / 2);
            let _ = f.reservation.cancel(billable);
            self.finish(f.path, r, billable);
        }
    }

    fn check(&self) {
        for m in &self.model {
            let s = self.ledger.account(&m.id).unwrap().snapshot();
            assert_eq!(
                (s.spent.micro_usd, s.spent.tokens),
                m.spent,
                "spent on {}",
                m.id
            );
            assert_eq!(
                (s.reserved.micro_usd, s.reserved.tokens),
                m.reserved,
                "reserved on {}",
                m.id
            );
            assert!(
                m.limits.0.is_none_or(|l| m.spent.0 <= l),
                "{} overspent money",
                m.id
            );
            assert!(
                m.limits.1.is_none_or(|l| m.spent.1 <= l),
                "{} overspent tokens",
                m.id
            );
        }
    }
}

fn mode(immediate: bool) -> HaltMode {
    if immediate {
        HaltMode::Immediate
    } else {
        // Long enough never to escalate during a case: graceful means "start nothing new".
        HaltMode::Graceful {
            deadline: Duration::from_secs(3600),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn ledger_agrees_with_model_and_never_leaks(limits in limits(), ops in proptest::collection::vec(op(), 1..80)) {
        // Graceful halts arm an escalation timer; inside a runtime that is never driven it is a
        // task that is simply dropped with the runtime, rather than a sleeping thread.
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let _enter = rt.enter();

        let mut world = World::new(&limits);
        for op in ops {
            world.apply(op);
            world.check();
        }
        // Quiescence: whatever is still in flight ends (drop releases it).
        world.in_flight.clear();
        for m in &mut world.model {
            m.reserved = (0, 0);
        }
        world.check();
    }
}
