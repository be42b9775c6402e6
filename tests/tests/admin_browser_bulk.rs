//! The admin page's search and bulk actions in headless Chromium (`koyo_job_tests::browser`):
//! a search by error text, "select all matching" and a bulk retry with its progress, a bulk
//! cancel of a mixed selection that reports the refused job, and the charts' range selector —
//! each seen in the browser and checked in the database.
//!
//! Without Chromium these tests print "skipped" and pass, unless `KOYO_REQUIRE_BROWSER` is set.

use std::time::Duration;

use koyo_job::Broker;
use koyo_job_tests::browser::{Browser, browser_or_skip};
use koyo_job_tests::{Env, env};
use serde_json::json;

/// How long the page may take to show a change (it refreshes every 2 s).
const UI: Duration = Duration::from_secs(15);

async fn serve_admin(broker: &Broker) -> String {
    let app = axum::Router::new().merge(koyo_job_web::Admin::new(broker.clone()).mount("/admin/jobs"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a local port");
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.expect("the admin server") });
    format!("http://127.0.0.1:{port}/admin/jobs")
}

/// `s` as a JavaScript string literal.
fn js(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

fn text_of(selector: &str) -> String {
    format!("(document.querySelector({})?.textContent.trim() ?? null)", js(selector))
}

fn wait_until(browser: &Browser, what: &str, expr: &str) {
    if let Err(e) = browser.wait_for(expr, UI) {
        panic!("{what}: never true: {expr}\n{e}");
    }
}

/// JavaScript: the statuses of the listed rows, in order.
const LISTED: &str = "[...document.querySelectorAll('#jobs tbody tr[data-job-id]')]\
                      .map(tr => tr.querySelector('[data-col=status]').textContent.trim())";

async fn count(env: &Env, condition: &str) -> i64 {
    env.query(&format!("SELECT count(*) FROM koyo_jobs WHERE {condition}"), &[]).await[0].get(0)
}

/// 60 jobs of billing failed "card declined", 5 of mail failed "timeout", one done mail job.
async fn populate(env: &Env) {
    env.query(
        "INSERT INTO koyo_jobs (queue, job, args, status, attempts, max_attempts, finished_at, last_error)
         SELECT 'billing', 'app.charge_card', '\\x00'::bytea, 'failed', 1, 1, now(), 'the card was declined (' || n || ')'
         FROM generate_series(1, 60) AS n",
        &[],
    )
    .await;
    env.query(
        "INSERT INTO koyo_jobs (queue, job, args, status, attempts, max_attempts, finished_at, last_error)
         SELECT 'mail', 'app.send_welcome', '\\x00'::bytea, 'failed', 3, 3, now(), 'smtp timeout'
         FROM generate_series(1, 5)",
        &[],
    )
    .await;
    env.query(
        "INSERT INTO koyo_jobs (queue, job, args, status, attempts, finished_at)
         VALUES ('mail', 'app.send_welcome', '\\x00'::bytea, 'done', 1, now())",
        &[],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_then_bulk_retry_everything_matching_with_progress() {
    let Some(browser) = browser_or_skip("search_then_bulk_retry_everything_matching_with_progress") else {
        return;
    };
    let env = env().await;
    populate(&env).await;
    let base = serve_admin(&env.broker).await;
    browser.goto(&base).unwrap();
    wait_until(&browser, "the list shows its first page", &format!("{LISTED}.length === 50"));

    // Search the error text: only billing's jobs (60, more than a page) match.
    browser
        .eval(
            "document.querySelector('#search-kind').value = 'error';
             document.querySelector('#search').value = 'DECLINED';
             document.querySelector('#search-go').click()",
        )
        .unwrap();
    wait_until(
        &browser,
        "the search lists only declined jobs",
        "[...document.querySelectorAll('#jobs tbody tr[data-job-id] [data-col=error]')]\
         .every(td => td.textContent.includes('declined')) && \
         document.querySelectorAll('#jobs tbody tr[data-job-id]').length === 50",
    );
    let queues = browser
        .eval("[...new Set([...document.querySelectorAll('#jobs tbody [data-col=queue]')].map(td => td.textContent))]")
        .unwrap();
    assert_eq!(queues, json!(["billing"]));

    // Select all 60 that match (not only the page), confirm, and follow the progress.
    browser.click("#bulk-all").unwrap();
    wait_until(
        &browser,
        "the selection counts every match",
        &format!("{} === 'all 60 jobs matching the filter selected'", text_of("#bulk-count")),
    );
    browser.eval("window.confirm = (m) => { window.asked = m; return true; }").unwrap();
    browser.click("#bulk-retry").unwrap();
    wait_until(
        &browser,
        "the progress shows the bulk retry finished",
        "document.querySelector('#bulk-progress-box')?.getAttribute('data-state') === 'finished'",
    );
    let asked = browser.eval("window.asked").unwrap();
    assert!(
        asked
            .as_str()
            .is_some_and(|m| m.starts_with("Retry all 60 jobs matching error containing \"DECLINED\"?")),
        "{asked}"
    );
    assert_eq!(
        browser.eval(&text_of("#bulk-progress-text")).unwrap(),
        json!("retry: 60 of 60 looked at, 60 retried — done")
    );
    assert_eq!(browser.eval("document.querySelector('#bulk-progress').value").unwrap(), json!(60));
    wait_until(&browser, "the list shows the jobs ready", &format!("{LISTED}.every(s => s === 'ready')"));
    assert_eq!(count(&env, "queue = 'billing' AND status = 'ready'").await, 60);
    assert_eq!(count(&env, "queue = 'mail' AND status = 'failed'").await, 5);
    assert!(browser.errors().is_empty(), "{:?}", browser.errors());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_cancel_of_a_mixed_selection_reports_the_refused_job() {
    let Some(browser) = browser_or_skip("bulk_cancel_of_a_mixed_selection_reports_the_refused_job") else {
        return;
    };
    let env = env().await;
    populate(&env).await;
    let mail: Vec<i64> = env
        .query("SELECT id FROM koyo_jobs WHERE queue = 'mail' ORDER BY id DESC LIMIT 3", &[])
        .await
        .iter()
        .map(|row| row.get(0))
        .collect();
    let base = serve_admin(&env.broker).await;
    browser.goto(&base).unwrap();
    // The newest mail job is done; the two before it failed.
    for id in &mail {
        let box_ = format!("#jobs tbody tr[data-job-id=\"{id}\"] input[data-select]");
        wait_until(
            &browser,
            "the row's checkbox",
            &format!("document.querySelector({}) !== null", js(&box_)),
        );
        browser.click(&box_).unwrap();
    }
    wait_until(&browser, "three selected", &format!("{} === '3 selected'", text_of("#bulk-count")));
    // A click on a checkbox selects; it does not open the job.
    assert_eq!(browser.eval("document.querySelector('#job-detail').hidden").unwrap(), json!(true));
    browser.eval("window.confirm = (m) => { window.asked = m; return true; }").unwrap();
    browser.click("#bulk-cancel").unwrap();
    wait_until(
        &browser,
        "the progress shows the cancel finished",
        "document.querySelector('#bulk-progress-box')?.getAttribute('data-state') === 'finished'",
    );
    assert_eq!(
        browser.eval(&text_of("#bulk-progress-text")).unwrap(),
        json!(format!(
            "cancel: 3 of 3 looked at, 2 cancelled, 1 refused (job {}: it has already succeeded) — done",
            mail[0]
        ))
    );
    assert_eq!(count(&env, "queue = 'mail' AND status = 'cancelled'").await, 2);
    assert_eq!(count(&env, "queue = 'mail' AND status = 'done'").await, 1);
    assert_eq!(browser.eval(&text_of("#bulk-count")).unwrap(), json!("none selected"));

    // The charts reach back a week, in 2-hour buckets.
    browser.eval("const r = document.querySelector('#chart-range'); r.value = '7d'; r.dispatchEvent(new Event('change'))").unwrap();
    wait_until(
        &browser,
        "the charts cover 7 days",
        &format!("{} === 'last 7 days, per 2 hours'", text_of("#charts-hint")),
    );
    wait_until(
        &browser,
        "the chart's axis says so",
        "[...document.querySelectorAll('#charts .axis-label')].some(t => t.textContent === '−7 d')",
    );
    assert!(browser.errors().is_empty(), "{:?}", browser.errors());
}
