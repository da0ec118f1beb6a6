//! The operator console (`/ui`) in headless Chromium over WebDriver, against the real
//! `impresario serve` on a loopback port. Screenshots (1280x800 and 420x900) are saved in
//! `target/tmp/console-screenshots/`.

use crate::binary::{Server, TOKEN};
use crate::browser::Browser;
use reqwest::header;
use serde_json::json;

/// Signs in with `token` on the sign-in page.
async fn sign_in(browser: &Browser, server: &Server, token: &str) {
    browser.goto(&format!("{}/ui", server.url)).await;
    assert_eq!(browser.path().await, "/ui/signin");
    browser.find("#token").await.send_keys(token).await.unwrap();
    // A marker the next page will not have: the click returns before the page is replaced.
    browser.js("window.leaving = true; return null").await;
    browser
        .find("section.signin button[type=submit]")
        .await
        .click()
        .await
        .unwrap();
    browser
        .until(
            "the page after signing in",
            "return window.leaving === undefined && document.readyState === 'complete'",
        )
        .await;
}

/// The value of the browser's session cookie.
async fn session_cookie(browser: &Browser) -> String {
    let cookie = browser
        .client
        .get_named_cookie("impresario_session")
        .await
        .unwrap();
    cookie.value().to_owned()
}

#[tokio::test]
async fn signing_in_sets_an_http_only_strict_cookie_and_forms_need_the_csrf_token() {
    let server = Server::start("");
    let browser = Browser::start().await;
    sign_in(&browser, &server, "not-the-token-0123456789").await;
    assert!(browser.text(".error").await.contains("not valid"));
    assert_eq!(browser.path().await, "/ui/signin");
    browser.screenshot("signin-refused").await;

    sign_in(&browser, &server, TOKEN).await;
    assert_eq!(browser.text("h1").await, "Runs");
    assert_eq!(browser.path().await, "/ui/runs");
    let cookies = browser.client.get_all_cookies().await.unwrap();
    assert_eq!(cookies.len(), 1, "{cookies:?}");
    let cookie = &cookies[0];
    assert_eq!(cookie.name(), "impresario_session");
    assert_eq!(cookie.http_only(), Some(true));
    assert_eq!(format!("{:?}", cookie.same_site()), "Some(Strict)");
    assert_eq!(cookie.path(), Some("/ui"));
    assert_eq!(cookie.value().len(), 64);
    assert!(!cookie.value().contains(TOKEN));
    // HttpOnly: the page's script cannot read it.
    assert_eq!(browser.js("return document.cookie").await, json!(""));

    // The session works outside the browser too, with the console's headers...
    let session = session_cookie(&browser).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let page = http
        .get(format!("{}/ui/runs", server.url))
        .header(header::COOKIE, format!("impresario_session={session}"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"));
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(page.headers()["x-content-type-options"], "nosniff");
    assert_eq!(page.headers()["referrer-policy"], "same-origin");
    let csrf = browser
        .find("input[name=csrf]")
        .await
        .attr("value")
        .await
        .unwrap()
        .unwrap();
    // ...but no form acts without the session's CSRF token, or from another origin.
    let sign_out = |form: &[(&str, &str)], origin: &str| {
        http.post(format!("{}/ui/signout", server.url))
            .header(header::COOKIE, format!("impresario_session={session}"))
            .header(header::ORIGIN, origin)
            .form(form)
    };
    let zeros = "0".repeat(64);
    let wrong = sign_out(&[("csrf", &zeros)], &server.url)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 403);
    let missing = sign_out(&[], &server.url).send().await.unwrap();
    assert_eq!(missing.status(), 400);
    let elsewhere = sign_out(&[("csrf", &csrf)], "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(elsewhere.status(), 403);
    assert_eq!(browser.path().await, "/ui/runs");

    // Signing out ends the session: the old cookie no longer opens a page.
    browser
        .find("header form button")
        .await
        .click()
        .await
        .unwrap();
    browser.find("#token").await;
    let after = http
        .get(format!("{}/ui/runs", server.url))
        .header(header::COOKIE, format!("impresario_session={session}"))
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 303);
    assert_eq!(after.headers()["location"], "/ui/signin");
    browser.close().await;
}

#[tokio::test]
async fn a_run_appears_live_and_is_halted_from_its_page() {
    // Every model call takes a minute: the run is still planning when it is halted.
    let server = Server::start("[models]\noffline_latency_ms = 60000");
    let browser = Browser::start().await;
    sign_in(&browser, &server, TOKEN).await;
    browser.find("table.runs").await;
    // A marker that a reload would lose: the row must come without one.
    browser.js("window.notReloaded = true; return null").await;
    let id = server
        .submit(json!({ "goal": "How do trams climb hills?", "tenant": "acme" }))
        .await;
    let row = format!("tr[data-run='{id}']");
    browser.find(&row).await;
    assert_eq!(
        browser.js("return window.notReloaded === true").await,
        json!(true)
    );
    assert!(browser
        .text(&row)
        .await
        .contains("How do trams climb hills?"));
    browser.screenshot("runs").await;

    browser
        .find(&format!("{row} a"))
        .await
        .click()
        .await
        .unwrap();
    assert_eq!(browser.path().await, format!("/ui/runs/{id}"));
    browser.find("ol.timeline li").await;
    assert!(browser.text("ul.tree").await.contains(&format!("run/{id}")));
    browser
        .find("button.danger[value=halt]")
        .await
        .click()
        .await
        .unwrap();
    server.until(&id, |s| s["state"] == "halted").await;
    browser.find(".summary .s-halted").await;
    browser.find("ol.timeline li.k-halt").await;
    let (_, run) = server.get(&format!("/v1/runs/{id}")).await;
    assert_eq!(run["state"]["reason"], "operator", "{run}");
    assert!(run["state"]["detail"].as_str().unwrap().contains("console"));
    browser.screenshot("run-halted").await;
    browser.close().await;
}

#[tokio::test]
async fn a_step_waiting_for_approval_is_approved_from_the_inbox() {
    let server = Server::start("[models]\noffline_latency_ms = 50");
    let browser = Browser::start().await;
    sign_in(&browser, &server, TOKEN).await;
    browser.goto(&format!("{}/ui/approvals", server.url)).await;
    let id = server
        .submit(json!({ "goal": "Lisbon has trams", "tools": ["save_note"], "autonomy": "manual" }))
        .await;
    let waiting = format!("article[data-run='{id}']");
    assert!(browser.text(&waiting).await.contains("save_note"));
    assert!(browser
        .text(&format!("{waiting} pre"))
        .await
        .contains("Lisbon has trams"));
    browser.screenshot("approvals").await;
    browser
        .find(&format!("{waiting} button.ok"))
        .await
        .click()
        .await
        .unwrap();
    let state = server.until(&id, |s| s["state"] == "succeeded").await;
    assert!(
        state["answer"].as_str().unwrap().contains("saved"),
        "{state}"
    );
    browser
        .until(
            "the inbox empties",
            &format!("return !document.querySelector(\"{waiting}\")"),
        )
        .await;
    browser.goto(&format!("{}/ui/runs/{id}", server.url)).await;
    let timeline = browser.text("ol.timeline").await;
    for shown in [
        "plan revision",
        "model call",
        "latency",
        "tool save_note called",
        "step 1 approved",
        "run finished",
    ] {
        assert!(timeline.contains(shown), "{shown:?} not in {timeline}");
    }

    // A rejection from the run's page keeps its reason; the tool is not called.
    let rejected = server
        .submit(json!({ "goal": "Porto has trams", "tools": ["save_note"], "autonomy": "manual" }))
        .await;
    browser
        .goto(&format!("{}/ui/runs/{rejected}", server.url))
        .await;
    browser
        .find("form.decide input[name=reason]")
        .await
        .send_keys("not today")
        .await
        .unwrap();
    browser
        .find("form.decide button.danger")
        .await
        .click()
        .await
        .unwrap();
    server.until(&rejected, |s| s["state"] == "succeeded").await;
    browser
        .until(
            "the rejection shows",
            "return document.querySelector('ol.timeline').textContent.includes('step 1 rejected')",
        )
        .await;
    let timeline = browser.text("ol.timeline").await;
    assert!(timeline.contains("not today"), "{timeline}");
    assert!(!timeline.contains("tool save_note called"), "{timeline}");
    browser.screenshot("run-succeeded").await;
    browser.close().await;
}

#[tokio::test]
async fn a_script_in_a_goal_or_a_tool_output_is_shown_as_text_and_never_run() {
    let server = Server::start("");
    let goal = "Trams <script>window.pwned = 1</script><img src=x onerror=\"window.pwned = 2\">";
    // The first run saves the goal as a note; the second finds it: a tool output with markup.
    let saved = server
        .submit(json!({ "goal": goal, "tools": ["save_note"], "autonomy": "full" }))
        .await;
    server.until(&saved, |s| s["state"] == "succeeded").await;
    let found = server
        .submit(json!({ "goal": goal, "tools": ["search_notes"] }))
        .await;
    server.until(&found, |s| s["state"] == "succeeded").await;

    let browser = Browser::start().await;
    sign_in(&browser, &server, TOKEN).await;
    let row = browser
        .text(&format!("tr[data-run='{found}'] td.goal"))
        .await;
    assert!(row.contains("<script>window.pwned = 1</script>"), "{row}");
    browser
        .goto(&format!("{}/ui/runs/{found}", server.url))
        .await;
    assert!(browser
        .text("h1.goal")
        .await
        .contains("<img src=x onerror="));
    let timeline = browser.text("ol.timeline").await;
    assert!(
        timeline.contains("tool output")
            && timeline
                .matches("<script>window.pwned = 1</script>")
                .count()
                >= 3,
        "the goal, the tool's output and the answer show the markup as text: {timeline}"
    );
    assert_eq!(
        browser.js("return window.pwned === undefined").await,
        json!(true)
    );
    assert_eq!(
        browser
            .js("return document.querySelectorAll('main script, main img').length")
            .await,
        json!(0)
    );
    browser.screenshot("run-xss-as-text").await;
    browser.close().await;
}

#[tokio::test]
async fn an_admin_halts_and_lifts_a_tenant() {
    let server = Server::start("");
    let first = server
        .submit(json!({ "goal": "trams", "tenant": "acme" }))
        .await;
    server.until(&first, |s| s["state"] == "succeeded").await;
    let browser = Browser::start().await;
    sign_in(&browser, &server, TOKEN).await;
    browser.goto(&format!("{}/ui/tenants", server.url)).await;
    let row = "tr[data-tenant='acme']";
    assert!(browser.text(row).await.contains("0 · 0 · 1"));
    browser
        .find(&format!("{row} button.danger"))
        .await
        .click()
        .await
        .unwrap();
    browser.find(&format!("{row} .s-halted")).await;
    let halted = server
        .submit(json!({ "goal": "trams", "tenant": "acme" }))
        .await;
    server.until(&halted, |s| s["state"] == "halted").await;
    browser.screenshot("tenants-halted").await;

    browser
        .find(&format!("{row} button"))
        .await
        .click()
        .await
        .unwrap();
    browser
        .until(
            "the halt is lifted",
            &format!("return !document.querySelector(\"{row} .s-halted\")"),
        )
        .await;
    let lifted = server
        .submit(json!({ "goal": "trams", "tenant": "acme" }))
        .await;
    server.until(&lifted, |s| s["state"] == "succeeded").await;
    browser.close().await;
}

#[tokio::test]
async fn a_streaming_runs_model_text_shows_as_it_arrives() {
    // Each model call takes 1.5 s, then its text arrives as one delta (the offline model).
    let server = Server::start("[models]\noffline_latency_ms = 1500");
    let browser = Browser::start().await;
    sign_in(&browser, &server, TOKEN).await;
    let id = server
        .submit(json!({ "goal": "How do trams climb hills?", "tools": ["search_notes"], "stream": true }))
        .await;
    browser.goto(&format!("{}/ui/runs/{id}", server.url)).await;
    browser.find("pre#stream").await;
    // Record the longest text the streaming panel showed (a refresh replaces it later).
    browser
        .js("window.streamed = ''; new MutationObserver(() => { \
               const s = document.getElementById('stream'); \
               if (s && s.textContent.length > window.streamed.length) window.streamed = s.textContent; \
             }).observe(document.getElementById('live'), { subtree: true, childList: true, characterData: true }); \
             return null")
        .await;
    browser
        .until(
            "a model's text in the streaming panel",
            "return window.streamed.includes('\"steps\"')",
        )
        .await;
    server.until(&id, |s| s["state"] == "succeeded").await;
    browser.close().await;
}

#[tokio::test]
async fn a_tenants_session_sees_only_its_tenant() {
    const ACME: &str = "acme-token-0123456789abcdef";
    let dir = std::sync::Arc::new(crate::binary::TempDir::new());
    let acme_token = dir.write("acme.token", ACME);
    let server = Server::start_in(
        dir,
        &format!("[[server.tokens]]\ntenant = \"acme\"\ntoken_file = {acme_token:?}\n"),
    );
    let ours = server
        .submit(json!({ "goal": "acme goal: trams", "tenant": "acme", "tools": ["save_note"], "autonomy": "manual" }))
        .await;
    let theirs = server
        .submit(json!({ "goal": "beta secret goal", "tenant": "beta", "tools": ["save_note"], "autonomy": "manual" }))
        .await;
    for id in [&ours, &theirs] {
        server
            .until(id, |s| s["state"] == "awaiting_approval")
            .await;
    }
    let browser = Browser::start().await;
    sign_in(&browser, &server, ACME).await;
    browser.find(&format!("tr[data-run='{ours}']")).await;
    let everything = [
        format!("{}/ui/runs", server.url),
        format!("{}/ui/runs?tenant=beta", server.url),
        format!("{}/ui/approvals", server.url),
        format!("{}/ui/tenants", server.url),
    ];
    for page in &everything {
        browser.goto(page).await;
        let text = browser.text("main").await;
        assert!(
            !text.contains("beta") && !text.contains(theirs.as_str()),
            "{page}: {text}"
        );
    }
    // Another tenant's run: the same answer as a run that does not exist.
    browser
        .goto(&format!("{}/ui/runs/{theirs}", server.url))
        .await;
    let text = browser.text("main").await;
    assert!(
        text.contains("Error 404") && !text.contains("beta"),
        "{text}"
    );
    browser.goto(&format!("{}/ui/approvals", server.url)).await;
    assert!(browser.text("main").await.contains("acme goal"));
    // No tenant-wide buttons for a tenant's session; another tenant's run is not found.
    browser.goto(&format!("{}/ui/tenants", server.url)).await;
    assert!(browser
        .text("tr[data-tenant='acme']")
        .await
        .contains("acme"));
    assert_eq!(
        browser
            .js("return document.querySelectorAll('form[action^=\"/ui/tenants/\"]').length")
            .await,
        json!(0)
    );
    browser.screenshot("tenant-session").await;
    let session = session_cookie(&browser).await;
    let http = reqwest::Client::new();
    let page = http
        .get(format!("{}/ui/runs/{theirs}", server.url))
        .header(header::COOKIE, format!("impresario_session={session}"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 404);
    browser.close().await;
}
