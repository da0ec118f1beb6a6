//! The bodies of the console's pages (runs, a run, approvals, tenants), from view structs the
//! handlers fill. Layout and shared pieces are in [`super::pages`].

use maud::{html, Markup};

use super::pages::{self, badge, clock, csrf, spend, timeline_item, Live};
use super::session::Session;
use super::timeline::{usd, Item};
use super::tree::Node;

/// A run in the list.
pub struct RunRow {
    /// Its id.
    pub id: String,
    /// Its tenant.
    pub tenant: String,
    /// Its goal (known for the runs this process started or resumed).
    pub goal: Option<String>,
    /// Its state's name (`running`, `succeeded`, ...) or the journal's status.
    pub state: String,
    /// Micro-USD spent, when known.
    pub micro_usd: Option<u64>,
    /// Tokens spent, when known.
    pub tokens: Option<u64>,
    /// When it was submitted (ms since the epoch).
    pub submitted_ms: u64,
}

/// The runs list's filter (the query string).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
pub struct RunsFilter {
    /// A state or journal status; empty for any.
    pub state: String,
    /// A tenant; empty for any.
    pub tenant: String,
    /// Words the goal contains; empty for any.
    pub q: String,
}

/// The states the filter offers.
const STATES: [&str; 10] = [
    "active",
    "planning",
    "running",
    "awaiting_approval",
    "halted",
    "finished",
    "succeeded",
    "failed",
    "ceiling_reached",
    "queued",
];

/// `/ui/runs`.
pub fn runs(session: &Session, filter: &RunsFilter, rows: &[RunRow]) -> Markup {
    let form = html! {
        form.filters method="get" action="/ui/runs" {
            select name="state" aria-label="state" {
                option value="" { "any state" }
                @for s in STATES { option value=(s) selected[filter.state == s] { (s.replace('_', " ")) } }
            }
            @if session.identity.tenant().is_none() {
                input name="tenant" placeholder="tenant" value=(filter.tenant) aria-label="tenant";
            }
            input name="q" type="search" placeholder="search goals" value=(filter.q) aria-label="goal search";
            button type="submit" { "Filter" }
        }
    };
    let table = html! {
        p.count { (rows.len()) @if rows.len() == 1 { " run" } @else { " runs" } }
        table.runs {
            thead { tr { th { "run" } th { "tenant" } th { "state" } th.goal { "goal" } th.num { "cost · tokens" } th { "submitted (UTC)" } } }
            tbody {
                @for row in rows {
                    tr data-run=(row.id) {
                        td.id { a href={ "/ui/runs/" (row.id) } { (row.id) } }
                        td { (row.tenant) }
                        td { (badge(&row.state)) }
                        td.goal { @if let Some(goal) = &row.goal { (goal) } @else { span.dim { "(from the journal)" } } }
                        td.num { (spend(row.micro_usd, row.tokens)) }
                        td.when { (clock(row.submitted_ms)) }
                    }
                }
            }
        }
    };
    html! { h1 { "Runs" } (form) (pages::live(Live::Poll, table)) }
}

/// A run's page.
pub struct RunView {
    /// Its id.
    pub id: String,
    /// Its tenant.
    pub tenant: String,
    /// Its goal.
    pub goal: String,
    /// Its state's name (or the journal's status).
    pub state: String,
    /// The answer or why it ended, when it ended.
    pub outcome: Option<String>,
    /// Micro-USD, tokens and model calls so far.
    pub usage: (u64, u64, u64),
    /// Whether it runs in this process and has not ended (it can be halted).
    pub haltable: bool,
    /// The step waiting for approval, and its tool.
    pub awaiting: Option<(u32, String)>,
    /// Whether it can be resumed (halted, or cut off by a crash).
    pub resumable: bool,
    /// Its timeline.
    pub timeline: Vec<Item>,
    /// The text of the model call streaming now (a streaming run), empty otherwise.
    pub streaming: String,
    /// How many events the run emitted so far (the page's event stream starts after them).
    pub seen: usize,
    /// Its supervision tree.
    pub tree: Vec<Node>,
}

/// `/ui/runs/{id}`.
pub fn run(session: &Session, view: &RunView) -> Markup {
    let events = format!("/ui/runs/{}/events?from={}", view.id, view.seen);
    let inner = html! {
        div.summary {
            (badge(&view.state))
            span.fact { span.name { "tenant" } " " (view.tenant) }
            span.fact { span.name { "cost" } " " (usd(view.usage.0)) }
            span.fact { span.name { "tokens" } " " (view.usage.1) }
            span.fact { span.name { "model calls" } " " (view.usage.2) }
        }
        @if let Some(outcome) = &view.outcome { pre.outcome { (outcome) } }
        (run_actions(session, view))
        div.columns {
            section.timeline {
                h2 { "Timeline" }
                ol.timeline { @for item in &view.timeline { (timeline_item(item)) } }
                @if view.haltable {
                    h2 { "Model text as it arrives" }
                    pre #stream .stream { (view.streaming) }
                    p.hint { "Only for runs submitted with \"stream\": true." }
                }
            }
            section.supervision {
                h2 { "Supervision" }
                (pages::tree(&view.tree))
                p.hint { "Restarts and panics are counted from this service's start." }
            }
        }
    };
    html! {
        p.crumbs { a href="/ui/runs" { "Runs" } " / " span.id { (view.id) } }
        h1.goal { (view.goal) }
        (pages::live(Live::Events(&events), inner))
    }
}

fn run_actions(session: &Session, view: &RunView) -> Markup {
    let action = |what: &str| format!("/ui/runs/{}/{what}", view.id);
    html! {
        div.actions {
            @if view.haltable {
                form method="post" action=(action("halt")) {
                    (csrf(session)) input type="hidden" name="mode" value="immediate";
                    button.danger type="submit" name="go" value="halt" { "Halt now" }
                }
                form method="post" action=(action("halt")) {
                    (csrf(session)) input type="hidden" name="mode" value="graceful";
                    button type="submit" { "Halt after this step" }
                }
            }
            @if view.resumable {
                form method="post" action=(action("resume")) {
                    (csrf(session)) button type="submit" { "Resume" }
                }
            }
            @if let Some((step, tool)) = &view.awaiting {
                (decide_form(session, &view.id, *step, tool, "run"))
            }
        }
    }
}

/// Approve and reject buttons for `step` of `run`, with a reason field.
/// `back` is the page to return to (`run` or `approvals`).
pub fn decide_form(session: &Session, run: &str, step: u32, tool: &str, back: &str) -> Markup {
    html! {
        form.decide method="post" action={ "/ui/runs/" (run) "/approvals/" (step) } {
            (csrf(session)) input type="hidden" name="back" value=(back);
            span.ask { "Step " (step) " wants " code { (tool) } }
            input name="reason" placeholder="reason for a rejection" aria-label="reason";
            button.ok type="submit" name="decision" value="approve" { "Approve" }
            button.danger type="submit" name="decision" value="reject" { "Reject" }
        }
    }
}

/// A step waiting for a person.
pub struct Waiting {
    /// The run.
    pub run: String,
    /// Its tenant.
    pub tenant: String,
    /// Its goal.
    pub goal: String,
    /// The step.
    pub step: u32,
    /// The tool it would call.
    pub tool: String,
    /// The call as planned (tool and arguments), from the journal.
    pub call: String,
}

/// `/ui/approvals`.
pub fn approvals(session: &Session, waiting: &[Waiting]) -> Markup {
    let list = html! {
        p.count { (waiting.len()) " waiting" }
        @for w in waiting {
            article.waiting data-run=(w.run) {
                div { a.id href={ "/ui/runs/" (w.run) } { (w.run) } " " span.dim { (w.tenant) } }
                div.goal { (w.goal) }
                pre.text { (w.call) }
                (decide_form(session, &w.run, w.step, &w.tool, "approvals"))
            }
        }
    };
    html! { h1 { "Approvals" } (pages::live(Live::Poll, list)) }
}

/// A tenant's line.
pub struct TenantRow {
    /// Its name.
    pub name: String,
    /// Micro-USD spent, reserved, and its ceiling (if one is set), from the ledger.
    pub spent: u64,
    /// Micro-USD reserved by calls in flight.
    pub reserved: u64,
    /// Its ceiling in micro-USD, if one is set.
    pub ceiling: Option<u64>,
    /// Runs by journal status: active, halted, finished.
    pub runs: (usize, usize, usize),
    /// Why it is halted, if it is.
    pub halted: Option<String>,
}

/// `/ui/tenants`.
pub fn tenants(session: &Session, rows: &[TenantRow]) -> Markup {
    let admin = session.identity.is_admin();
    let table = html! {
        table.tenants {
            thead { tr { th { "tenant" } th.num { "spent" } th.num { "reserved" } th.num { "ceiling" } th.num { "active · halted · finished" } th { "halt" } } }
            tbody {
                @for t in rows {
                    tr data-tenant=(t.name) {
                        td { a href={ "/ui/runs?tenant=" (query_value(&t.name)) } { (t.name) } }
                        td.num { (usd(t.spent)) }
                        td.num { (usd(t.reserved)) }
                        td.num { @if let Some(c) = t.ceiling { (usd(c)) } @else { span.dim { "none" } } }
                        td.num { (t.runs.0) " · " (t.runs.1) " · " (t.runs.2) }
                        td { (tenant_halt(session, t, admin)) }
                    }
                }
            }
        }
        p.hint { "Only tenants with runs in the journal are listed. A ceiling is what the ledger enforces for the tenant's account (none: only run budgets and the global limit apply)." }
    };
    html! { h1 { "Tenants" } (pages::live(Live::Poll, table)) }
}

fn tenant_halt(session: &Session, t: &TenantRow, admin: bool) -> Markup {
    html! {
        @if let Some(why) = &t.halted { span.badge.s-halted { "halted" } " " span.dim { (why) } }
        @if admin {
            @if t.halted.is_some() {
                form.inline method="post" action="/ui/tenants/lift" {
                    (csrf(session)) input type="hidden" name="tenant" value=(t.name);
                    button type="submit" { "Lift" }
                }
            } @else {
                form.inline method="post" action="/ui/tenants/halt" {
                    (csrf(session)) input type="hidden" name="tenant" value=(t.name);
                    button.danger type="submit" { "Halt tenant" }
                }
            }
        }
    }
}

/// `value` percent-encoded for a query string (everything but `A-Za-z0-9-_.~`).
fn query_value(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(super::query_value("acme-1_x.y~"), "acme-1_x.y~");
        assert_eq!(super::query_value("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
    }
}
