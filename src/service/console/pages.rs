//! The console's HTML, with `maud`: every interpolated value is escaped at compile-time-checked
//! places, so a goal, a model's answer or a tool's output is shown as text, never run. Pages
//! take plain view structs; the handlers ([`super::handlers`]) fill them.

use std::time::{Duration, UNIX_EPOCH};

use impresario::runtime::ledger::utc_text;
use maud::{html, Markup, DOCTYPE};

use super::session::Session;
use super::timeline::{usd, Item};
use super::tree::Node;

/// The tabs of the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    /// The runs list (and a run's page).
    Runs,
    /// The approvals inbox.
    Approvals,
    /// The tenants.
    Tenants,
}

/// How a page's `#live` region stays current (see `console.js`).
pub enum Live<'a> {
    /// Re-read from the page's URL every few seconds.
    Poll,
    /// Re-read on each server-sent event of this URL (and every few seconds).
    Events(&'a str),
}

/// A whole page: header, tabs, and `body`.
pub fn layout(title: &str, session: Option<&Session>, nav: Option<Nav>, body: Markup) -> Markup {
    let tab = |which: Nav, href: &str, label: &str| {
        html! { a href=(href) class=[(nav == Some(which)).then_some("on")] { (label) } }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Impresario" }
                link rel="stylesheet" href="/ui/assets/console.css";
                script src="/ui/assets/console.js" defer {}
            }
            body {
                header {
                    span.brand { "Impresario" }
                    @if let Some(session) = session {
                        nav {
                            (tab(Nav::Runs, "/ui/runs", "Runs"))
                            (tab(Nav::Approvals, "/ui/approvals", "Approvals"))
                            (tab(Nav::Tenants, "/ui/tenants", "Tenants"))
                        }
                        span.who { (session.identity.label()) }
                        form method="post" action="/ui/signout" {
                            (csrf(session))
                            button.link type="submit" { "Sign out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// The hidden CSRF field every form carries.
pub fn csrf(session: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(session.csrf); }
}

/// The `#live` region around `inner`.
pub fn live(how: Live, inner: Markup) -> Markup {
    match how {
        Live::Poll => html! { div #live data-live="poll" { (inner) } },
        Live::Events(url) => html! { div #live data-live="events" data-events=(url) { (inner) } },
    }
}

/// The sign-in form, with `problem` above it when the last attempt failed.
pub fn sign_in(problem: Option<&str>) -> Markup {
    let form = html! {
        section.signin {
            h1 { "Sign in" }
            @if let Some(problem) = problem { p.error role="alert" { (problem) } }
            form method="post" action="/ui/signin" {
                label for="token" { "Bearer token" }
                input #token type="password" name="token" autocomplete="off" required autofocus;
                button type="submit" { "Sign in" }
            }
            p.hint { "The service's token (server.token). It is checked once; the browser keeps only a session cookie." }
        }
    };
    layout("Sign in", None, None, form)
}

/// An error page: what went wrong and where to go.
pub fn problem(session: Option<&Session>, status: u16, message: &str) -> Markup {
    let body = html! {
        section.problem {
            h1 { "Error " (status) }
            p.error role="alert" { (message) }
            p { a href="/ui/runs" { "Back to the runs" } }
        }
    };
    layout("Error", session, None, body)
}

/// A state's badge.
pub fn badge(state: &str) -> Markup {
    html! { span class={ "badge s-" (state) } { (state.replace('_', " ")) } }
}

/// Milliseconds since the epoch as `YYYY-MM-DD HH:MM:SS` UTC.
pub fn clock(unix_ms: u64) -> String {
    let text = utc_text(UNIX_EPOCH + Duration::from_millis(unix_ms));
    // `utc_text` writes `YYYY-MM-DDTHH:MM:SSZ`.
    format!("{} {}", &text[..10], &text[11..19])
}

/// One timeline entry.
pub fn timeline_item(item: &Item) -> Markup {
    html! {
        li class=(item.kind.class()) {
            span.at { "+" (format!("{:.1}", item.offset_ms as f64 / 1000.0)) "s" }
            span.title { (item.title) }
            @for (name, value) in &item.facts {
                span.fact { span.name { (name) } " " (value) }
            }
            @if let Some(text) = &item.text { pre.text { (text) } }
        }
    }
}

/// The supervision tree.
pub fn tree(nodes: &[Node]) -> Markup {
    html! {
        ul.tree {
            @for node in nodes {
                li class={ "d" (node.depth) @if !node.listed { " gone" } } {
                    span.agent { (node.id) }
                    @if node.listed { span.badge.s-running { "listed" } } @else { span.badge.s-finished { "stopped" } }
                    @if let Some(life) = &node.life {
                        span.fact { span.name { "restarts" } " " (life.starts.saturating_sub(1)) }
                        @if life.panics > 0 { span.fact.bad { span.name { "panics" } " " (life.panics) } }
                        @if let Some(exit) = &life.last_exit { span.fact { span.name { "last exit" } " " (exit) } }
                    }
                }
            }
        }
    }
}

/// Money and tokens as a compact cell: `$0.000123 · 456 tok`.
pub fn spend(micro_usd: Option<u64>, tokens: Option<u64>) -> String {
    match (micro_usd, tokens) {
        (Some(m), Some(t)) => format!("{} · {t} tok", usd(m)),
        _ => "—".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_with_markup_is_escaped() {
        let page = problem(None, 404, "<script>alert(1)</script>").into_string();
        assert!(
            page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{page}"
        );
        assert!(!page.contains("<script>alert"), "{page}");
    }

    #[test]
    fn clock_reads_utc() {
        assert_eq!(clock(0), "1970-01-01 00:00:00");
        assert_eq!(clock(1_796_000_000_000), "2026-11-30 00:53:20");
    }
}
