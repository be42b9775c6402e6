//! The admin page (koyo-job-web) in a real browser: headless Chromium driven over the DevTools
//! protocol (`koyo_job_tests::browser`) against the router served on a local port, on a fresh
//! database per test.
//!
//! Without Chromium these tests print "skipped" and pass, unless `KOYO_REQUIRE_BROWSER` is set
//! (CI sets it), in which case they fail and say what to install.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use koyo_job::{Broker, JobId, define_job, schedule_in};
use koyo_job_tests::browser::{Browser, browser_or_skip};
use koyo_job_tests::{Env, env, poll_until};
use serde_json::{Value, json};

/// How long the page may take to show a change (it refreshes every 2 s).
const UI: Duration = Duration::from_secs(10);
/// How long a worker may take to finish the test's jobs.
const RUN: Duration = Duration::from_secs(15);

const DECLINED: &str = "the card was declined: insufficient funds (on purpose)";

#[define_job(queue = "mail")]
async fn send_welcome(user_id: i64, email: String) {
    let _ = (user_id, email);
}

#[define_job(queue = "billing", max_attempts = 1)]
async fn charge_card(order_id: i64, customer: String, amount_cents: i64) -> Result<(), String> {
    let _ = (order_id, customer, amount_cents);
    Err(DECLINED.to_owned())
}

#[define_job(queue = "search")]
async fn rebuild_index(shard: i32, full: bool) {
    let _ = (shard, full);
}

/// Fails its first two attempts (with markup in the error, which the page must show as text),
/// then succeeds.
#[define_job(queue = "exports", max_attempts = 5)]
async fn export_report(report: String) -> Result<(), String> {
    let _ = report;
    let attempt = koyo_job::current_job().expect("a job body knows its job").attempt;
    if attempt <= 2 { Err(format!("<b>storage</b> busy on attempt {attempt}")) } else { Ok(()) }
}

/// Lets the screenshot's running webhook jobs finish.
static WEBHOOKS_RELEASED: AtomicBool = AtomicBool::new(false);

/// Runs until the screenshot test releases it (it keeps the live worker busy meanwhile).
#[define_job(queue = "webhooks", max_attempts = 5)]
async fn deliver_webhook(endpoint: String, event: String) {
    let _ = (endpoint, event);
    while !WEBHOOKS_RELEASED.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How the test application mounts the admin router.
#[derive(Clone, Copy)]
enum Mount {
    /// `Router::new().nest("/admin/jobs", Admin::new(..).router())`. With axum 0.8 this routes
    /// `/admin/jobs` only: `/admin/jobs/` is a 404 of the outer router.
    Nest,
    /// `Admin::new(..).mount("/admin/jobs")`: the page at `/admin/jobs`, and `/admin/jobs/`
    /// redirecting there.
    Mount,
}

/// Serves the admin router under `/admin/jobs` on a free local port; returns the page's URL
/// (with the trailing slash when `how` serves that too).
async fn serve_admin(broker: &Broker, how: Mount) -> String {
    let admin = koyo_job_web::Admin::new(broker.clone());
    let app = match how {
        Mount::Nest => axum::Router::new().nest("/admin/jobs", admin.router()),
        Mount::Mount => axum::Router::new().merge(admin.mount("/admin/jobs")),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a local port");
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.expect("the admin server") });
    match how {
        Mount::Nest => format!("http://127.0.0.1:{port}/admin/jobs"),
        Mount::Mount => format!("http://127.0.0.1:{port}/admin/jobs/"),
    }
}

/// Checks what the server filled into the page's meta tags.
fn assert_page_config(browser: &Browser) {
    let config = browser
        .eval(
            "['koyo-base', 'koyo-csrf', 'koyo-read-only']
                .map(n => document.querySelector(`meta[name=${n}]`)?.content ?? null)",
        )
        .unwrap();
    assert_eq!(config[0], json!("/admin/jobs/"), "the mount point with its trailing slash: {config}");
    let token = config[1].as_str().unwrap_or_default();
    assert!(token.len() >= 16 && !token.contains("{{"), "a CSRF token: {config}");
    assert_eq!(config[2], json!("false"), "{config}");
}

/// `s` as a JavaScript string literal.
fn js(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// JavaScript for the trimmed text of the first element matching `selector`, or null.
fn text_of(selector: &str) -> String {
    format!("(document.querySelector({})?.textContent.trim() ?? null)", js(selector))
}

/// Waits until the text of `selector` is exactly `want`.
fn wait_for_text(browser: &Browser, selector: &str, want: &str) {
    let expr = format!("{} === {}", text_of(selector), js(want));
    browser.wait_for(&expr, UI).unwrap_or_else(|e| panic!("{selector} never read {want:?}: {e}"));
}

/// The job list's row of job `id`.
fn row(id: JobId) -> String {
    format!("#jobs tbody tr[data-job-id=\"{id}\"]")
}

/// The six states, in the order the counts are compared.
const STATES: [&str; 6] = ["scheduled", "ready", "running", "done", "failed", "cancelled"];

/// JavaScript for the counts the queue table shows for `queue`, as one line
/// `scheduled=0 ready=1 …` (null without a row).
fn queue_counts_js(queue: &str) -> String {
    format!(
        "(() => {{ const tr = document.querySelector({}); if (!tr) return null; \
         return {}.map(s => s + '=' + (tr.querySelector('td[data-state=' + s + ']')?.textContent.trim() ?? '?')).join(' '); }})()",
        js(&format!("#queues tbody tr[data-queue=\"{queue}\"]")),
        serde_json::to_string(&STATES).unwrap()
    )
}

/// Waits until the queue table's row of `queue` shows the counts `nonzero`, and 0 for the
/// other states.
fn wait_for_queue_counts(browser: &Browser, queue: &str, nonzero: &[(&str, i64)]) {
    let count = |state: &str| nonzero.iter().find(|(s, _)| *s == state).map_or(0, |(_, n)| *n);
    let want: Vec<String> = STATES.iter().map(|s| format!("{s}={}", count(s))).collect();
    let want = want.join(" ");
    let expr = format!("{} === {}", queue_counts_js(queue), js(&want));
    if let Err(e) = browser.wait_for(&expr, UI) {
        let shown = browser.eval(&queue_counts_js(queue));
        panic!("the queue row of {queue} never showed {want}; it shows {shown:?}\n{e}");
    }
}

fn assert_no_page_errors(browser: &Browser) {
    let errors = browser.errors();
    assert!(errors.is_empty(), "the page reported errors:\n{}", errors.join("\n"));
}

/// One job done (mail), one failed (billing, its only attempt) and one ready in a queue no
/// worker serves (search); returns (done, failed, ready).
async fn three_jobs(env: &Env) -> (JobId, JobId, JobId) {
    let done = send_welcome(42, "ada@example.com".into()).enqueue_on(&env.broker).await.unwrap();
    let failed = charge_card(4217, "grace@example.com".into(), 1999).enqueue_on(&env.broker).await.unwrap();
    let worker = env.worker().queues(["mail", "billing"]).start().await.unwrap();
    env.wait_for_status(done, "done", RUN).await;
    let row = env.wait_for_status(failed, "failed", RUN).await;
    assert_eq!((row.attempts, row.max_attempts), (1, 1));
    worker.shutdown().await;
    let ready = rebuild_index(3, true).enqueue_on(&env.broker).await.unwrap();
    (done, failed, ready)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_a_failed_job_from_its_detail() {
    let Some(browser) = browser_or_skip("retry_a_failed_job_from_its_detail") else { return };
    let env = env().await;
    let (done, failed, ready) = three_jobs(&env).await;
    let base = serve_admin(&env.broker, Mount::Nest).await;

    browser.goto(&base).unwrap();
    assert_page_config(&browser);
    wait_for_text(&browser, &format!("{} [data-col=status]", row(ready)), "ready");
    wait_for_text(&browser, &format!("{} [data-col=status]", row(done)), "done");
    wait_for_text(&browser, &format!("{} [data-col=status]", row(failed)), "failed");
    wait_for_queue_counts(&browser, "mail", &[("done", 1)]);
    wait_for_queue_counts(&browser, "billing", &[("failed", 1)]);
    wait_for_queue_counts(&browser, "search", &[("ready", 1)]);

    // The failed job's detail: state, error, decoded arguments.
    browser.click(&format!("{} [data-col=job]", row(failed))).unwrap();
    browser
        .wait_for(
            &format!(
                "(() => {{ const d = document.querySelector('#job-detail'); \
                 return d && !d.hidden && d.getAttribute('data-job-id') === '{failed}'; }})()"
            ),
            UI,
        )
        .unwrap_or_else(|e| panic!("the detail of job {failed} did not open: {e}"));
    wait_for_text(&browser, "#detail-status", "failed");
    browser
        .wait_for(&format!("{}?.includes({})", text_of("#detail-error pre"), js(DECLINED)), UI)
        .unwrap_or_else(|e| panic!("#detail-error never showed the job's error in a <pre>: {e}"));
    let args = browser.eval(&text_of("#detail-args pre")).unwrap();
    let args =
        args.as_str().unwrap_or_else(|| panic!("#detail-args holds no <pre> with the arguments: {args}"));
    // The arguments as the job's definition prints them (its parameters' names and `Debug`).
    assert_eq!(args, r#"order_id: 4217, customer: "grace@example.com", amount_cents: 1999"#, "#detail-args");
    assert_eq!(
        browser.eval("document.querySelector('#retry')?.hidden").unwrap(),
        json!(false),
        "a failed job offers retry"
    );

    // Retry: no worker serves billing, so the job stays ready.
    browser.click("#retry").unwrap();
    wait_for_text(&browser, "#detail-status", "ready");
    wait_for_text(&browser, &format!("{} [data-col=status]", row(failed)), "ready");
    let row_after = env.job(failed).await;
    assert_eq!(row_after.status, "ready", "the database should say ready after a retry: {row_after:?}");
    wait_for_queue_counts(&browser, "billing", &[("ready", 1)]);
    browser
        .wait_for("document.querySelector('#retry')?.hidden === true", UI)
        .unwrap_or_else(|e| panic!("a ready job should not offer retry: {e}"));
    assert_eq!(
        browser.eval("document.querySelector('#status-line').hasAttribute('data-error')").unwrap(),
        json!(false)
    );
    assert_no_page_errors(&browser);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opens_a_job_from_its_url_and_refuses_posts_without_the_csrf_token() {
    let Some(browser) = browser_or_skip("opens_a_job_from_its_url_and_refuses_posts_without_the_csrf_token")
    else {
        return;
    };
    let env = env().await;
    let (_, failed, ready) = three_jobs(&env).await;
    // `mount` serves the page at `/admin/jobs`, and `/admin/jobs/` redirects there.
    let base = serve_admin(&env.broker, Mount::Mount).await;
    browser.goto(&base).unwrap();
    assert_page_config(&browser);
    wait_for_text(&browser, &format!("{} [data-col=status]", row(ready)), "ready");

    // A link to a job opens its detail on load (the fragment survives the redirect).
    browser.goto("about:blank").unwrap();
    browser.goto(&format!("{base}#job/{ready}")).unwrap();
    browser
        .wait_for(
            &format!(
                "(() => {{ const d = document.querySelector('#job-detail'); \
                 return d && !d.hidden && d.getAttribute('data-job-id') === '{ready}'; }})()"
            ),
            UI,
        )
        .unwrap_or_else(|e| panic!("#job/{ready} did not open the job's detail: {e}"));
    wait_for_text(&browser, "#detail-status", "ready");
    browser
        .wait_for(&format!("{}?.includes('3') && {0}?.includes('true')", text_of("#detail-args pre")), UI)
        .unwrap_or_else(|e| panic!("#detail-args never showed rebuild_index(3, true): {e}"));

    // Mutations need the page's token in `x-koyo-csrf`.
    let token = browser.eval("document.querySelector('meta[name=koyo-csrf]').content").unwrap();
    let token = token.as_str().expect("the page's CSRF token").to_owned();
    assert!(!token.is_empty() && !token.contains("{{"), "the page's CSRF token is {token:?}");
    let status = |path: &str, method: &str, header: Option<&str>| -> Value {
        let headers = header.map_or_else(|| "{}".to_owned(), |h| format!("{{'x-koyo-csrf': {}}}", js(h)));
        browser
            .eval(&format!(
                "fetch(document.querySelector('meta[name=koyo-base]').content + {}, \
                 {{method: {}, headers: {headers}}}).then(async r => [r.status, await r.json()])",
                js(path),
                js(method)
            ))
            .unwrap()
    };
    for (path, method) in [
        (format!("api/jobs/{failed}/retry"), "POST"),
        (format!("api/jobs/{ready}/cancel"), "POST"),
        (format!("api/jobs/{ready}"), "DELETE"),
    ] {
        for header in [None, Some("not-the-token")] {
            let got = status(&path, method, header);
            assert_eq!(got[0], json!(403), "{method} {path} with x-koyo-csrf {header:?}: {got}");
            assert!(got[1]["error"].is_string(), "{method} {path}: the 403 should say why: {got}");
        }
    }
    assert_eq!(env.job(failed).await.status, "failed", "a refused retry changed nothing");
    assert_eq!(env.job(ready).await.status, "ready", "a refused cancel or delete changed nothing");

    // With the token, the state rules decide: a ready job cannot be retried (409), a failed one can.
    let got = status(&format!("api/jobs/{ready}/retry"), "POST", Some(&token));
    assert_eq!(got[0], json!(409), "retrying a ready job: {got}");
    let got = status(&format!("api/jobs/{failed}/retry"), "POST", Some(&token));
    assert_eq!(got[0], json!(200), "retrying a failed job with the token: {got}");
    assert_eq!(got[1]["status"], json!("ready"), "{got}");
    assert_eq!(env.job(failed).await.status, "ready");

    // The script endpoint hands out the same token.
    let api_token = browser
        .eval(
            "fetch(document.querySelector('meta[name=koyo-base]').content + 'api/csrf').then(r => r.json())",
        )
        .unwrap();
    assert_eq!(api_token["token"], json!(token));
    assert_no_page_errors(&browser);
}

/// Where the screenshot goes: `$CARGO_TARGET_DIR`, else the workspace's `target/`.
/// Cancelling a job a live worker runs, from its detail: the page says the cancel was asked
/// for, the worker stops the body about a second later, and the detail then shows the job
/// cancelled, with who cancelled it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_a_running_job_from_its_detail() {
    let Some(browser) = browser_or_skip("cancel_a_running_job_from_its_detail") else { return };
    let env = env().await;
    let worker = env.worker().queue("webhooks").start().await.unwrap();
    let id = deliver_webhook("https://example.com/hook".into(), "order.paid".into())
        .enqueue_on(&env.broker)
        .await
        .unwrap();
    env.wait_for_status(id, "running", RUN).await;
    let base = serve_admin(&env.broker, Mount::Mount).await;
    browser.goto(&format!("{base}#job/{id}")).unwrap();
    wait_for_text(&browser, "#detail-status", "running");
    browser
        .wait_for("document.querySelector('#cancel')?.hidden === false", UI)
        .unwrap_or_else(|e| panic!("a running job on a live worker offers cancel: {e}"));
    browser.click("#cancel").unwrap();
    wait_for_text(&browser, "#detail-status", "cancelled");
    wait_for_text(&browser, "#detail-cancel", "the admin page");
    browser
        .wait_for(
            &format!(
                "{}?.includes('cancelled while running, by the admin page')",
                text_of("#detail-error pre")
            ),
            UI,
        )
        .unwrap_or_else(|e| panic!("the detail never said who cancelled it: {e}"));
    assert_eq!(env.job(id).await.status, "cancelled");
    worker.shutdown().await;
    assert_no_page_errors(&browser);
}

/// A job that failed twice and then succeeded: its detail shows the three attempts in order,
/// each with its outcome, worker, times, duration and error (as text), and the count of
/// attempts the log no longer keeps; the job list shows how long the latest attempt ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_detail_shows_every_attempt_and_the_list_their_duration() {
    let Some(browser) = browser_or_skip("the_detail_shows_every_attempt_and_the_list_their_duration") else {
        return;
    };
    let env = env().await;
    let id = export_report("q3".into()).enqueue_on(&env.broker).await.unwrap();
    let worker = env.worker().queue("exports").start().await.unwrap();
    let worker_id = worker.id();
    env.wait_for_status(id, "done", RUN).await;
    worker.shutdown().await;
    let base = serve_admin(&env.broker, Mount::Mount).await;
    browser.goto(&format!("{base}#job/{id}")).unwrap();
    wait_for_text(&browser, "#detail-status", "done");

    let attempts_js = "[...document.querySelectorAll('#detail-history li[data-attempt]')].map(li => [\
         li.getAttribute('data-attempt'), li.querySelector('.pill')?.textContent, \
         li.querySelector('.attempt-worker')?.textContent ?? null, \
         li.querySelector('.attempt-error')?.textContent ?? null, \
         li.querySelector('.attempt-duration')?.textContent ?? null, \
         li.querySelector('.attempt-time')?.textContent ?? null, \
         li.querySelectorAll('b').length])";
    browser
        .wait_for(&format!("{attempts_js}.length === 3"), UI)
        .unwrap_or_else(|e| panic!("#detail-history never listed three attempts: {e}"));
    let shown = browser.eval(attempts_js).unwrap();
    let shown = shown.as_array().unwrap();
    let worker_text = format!("worker {worker_id} on ");
    for (n, attempt) in shown.iter().enumerate() {
        let want_outcome = if n < 2 { "retry" } else { "done" };
        assert_eq!(
            (attempt[0].as_str(), attempt[1].as_str()),
            (Some(&*(n + 1).to_string()), Some(want_outcome))
        );
        let worker = attempt[2].as_str().unwrap_or_default();
        // The host is kept for the two logged attempts; the worker has deregistered since.
        assert!(
            worker.starts_with(&worker_text) || (n == 2 && worker == format!("worker {worker_id}")),
            "{attempt}"
        );
        let duration = attempt[4].as_str().unwrap_or_default();
        assert!(duration.ends_with(" s"), "a duration such as 0.1 s: {attempt}");
        let times = attempt[5].as_str().unwrap_or_default();
        assert!(times.contains(" UTC → ") && times.ends_with(" UTC"), "start → end: {attempt}");
        assert_eq!(attempt[6], json!(0), "no element from the error's text: {attempt}");
    }
    assert_eq!(shown[0][3].as_str(), Some("failed: <b>storage</b> busy on attempt 1"), "{shown:?}");
    assert_eq!(shown[1][3].as_str(), Some("failed: <b>storage</b> busy on attempt 2"), "{shown:?}");
    assert_eq!(shown[2][3], Value::Null, "the successful attempt has no error: {shown:?}");
    assert_eq!(browser.eval(&text_of("#detail-history-note")).unwrap(), json!(""));

    // The list's duration cell, and the count of dropped attempts once there is one.
    let cell = browser.eval(&text_of(&format!("{} [data-col=duration]", row(id)))).unwrap();
    assert!(cell.as_str().is_some_and(|t| t.ends_with(" s")), "the list shows the duration: {cell}");
    env.query("UPDATE koyo_jobs SET attempt_log_dropped = 3 WHERE id = $1", &[&id.0]).await;
    wait_for_text(&browser, "#detail-history-note", "3 earlier attempts not kept");
    assert_no_page_errors(&browser);
}

/// A queue paused from its row (after the confirmation) shows as paused, no worker claims its
/// jobs, and resuming it from the same row lets them run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_resume_a_queue_from_the_page() {
    let Some(browser) = browser_or_skip("pause_and_resume_a_queue_from_the_page") else { return };
    let env = env().await;
    let worker = env.worker().queues(["search", "mail"]).start().await.unwrap();
    let first = rebuild_index(1, false).enqueue_on(&env.broker).await.unwrap();
    env.wait_for_status(first, "done", RUN).await;
    let base = serve_admin(&env.broker, Mount::Mount).await;
    browser.goto(&base).unwrap();
    let search = "#queues tbody tr[data-queue=\"search\"]";
    wait_for_text(&browser, &format!("{search} button[data-toggle-queue]"), "Pause");
    // The page asks before pausing; this test answers yes.
    browser.eval("window.confirm = () => true").unwrap();
    browser.click(&format!("{search} button[data-toggle-queue]")).unwrap();
    browser
        .wait_for(
            &format!("document.querySelector({})?.getAttribute('data-paused') === 'true'", js(search)),
            UI,
        )
        .unwrap_or_else(|e| panic!("the row never showed the queue paused: {e}"));
    wait_for_text(&browser, &format!("{search} .paused-tag"), "paused");
    wait_for_text(&browser, &format!("{search} button[data-toggle-queue]"), "Resume");
    let paused: Option<String> = env
        .query("SELECT paused_by FROM koyo_queues WHERE queue = 'search' AND paused_at IS NOT NULL", &[])
        .await
        .first()
        .map(|row| row.get(0));
    assert_eq!(paused.as_deref(), Some("the admin page"));

    // Paused: a new job waits while the worker goes on with another queue.
    let held = rebuild_index(2, false).enqueue_on(&env.broker).await.unwrap();
    let done = send_welcome(1, "a@example.com".into()).enqueue_on(&env.broker).await.unwrap();
    env.wait_for_status(done, "done", RUN).await;
    wait_for_queue_counts(&browser, "search", &[("ready", 1), ("done", 1)]);
    assert_eq!(env.job(held).await.status, "ready");

    browser.click(&format!("{search} button[data-toggle-queue]")).unwrap();
    env.wait_for_status(held, "done", RUN).await;
    wait_for_text(&browser, &format!("{search} button[data-toggle-queue]"), "Pause");
    worker.shutdown().await;
    assert_no_page_errors(&browser);
}

/// The periodic schedules a live worker runs are listed, with their last slot linking to its
/// job and their next slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shows_the_periodic_schedules_of_live_workers() {
    let Some(browser) = browser_or_skip("shows_the_periodic_schedules_of_live_workers") else { return };
    let env = env().await;
    let every_second = koyo_job::Schedule::parse("* * * * * *").unwrap();
    let worker = env
        .worker()
        .queue("search")
        .periodic(koyo_job::Periodic::new("reindex-shard-3", every_second, || rebuild_index(3, false)))
        .start()
        .await
        .unwrap();
    let base = serve_admin(&env.broker, Mount::Mount).await;
    browser.goto(&base).unwrap();
    let row = "#periodic tbody tr[data-periodic=\"reindex-shard-3\"]";
    wait_for_text(&browser, &format!("{row} td:nth-child(2)"), "* * * * * *");
    wait_for_text(&browser, &format!("{row} td:nth-child(3)"), "UTC");
    browser
        .wait_for(
            &format!(
                "document.querySelector({})?.href?.includes('#job/') ?? false",
                js(&format!("{row} a.job-link"))
            ),
            UI,
        )
        .unwrap_or_else(|e| panic!("the last slot never linked to its job: {e}"));
    worker.shutdown().await;
    assert_no_page_errors(&browser);
}

fn screenshot_path() -> PathBuf {
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace.join("target"), PathBuf::from);
    workspace.join(target).join("admin-screenshot.png")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn screenshot_of_a_busy_admin_page() {
    let Some(browser) = browser_or_skip("screenshot_of_a_busy_admin_page") else { return };
    let env = env().await;

    // The last hour's history: a few hundred jobs over four queues, stored as new jobs and
    // then, in the same transaction (so no worker ever sees them), marked finished at times
    // spread over the hour, some failed.
    let mut client = env.broker.client().await.unwrap();
    let tx = client.transaction().await.unwrap();
    let mut ids = Vec::new();
    for i in 0..160_i64 {
        ids.push(send_welcome(1000 + i, format!("user{i}@example.com")).enqueue_in(&tx).await.unwrap().0);
    }
    for i in 0..90_i64 {
        let job = charge_card(5000 + i, format!("customer{}@example.com", i % 17), 500 + 137 * i);
        ids.push(job.enqueue_in(&tx).await.unwrap().0);
    }
    for i in 0..110_i64 {
        let job = deliver_webhook(format!("https://hooks.example.com/{}", i % 7), format!("order.paid#{i}"));
        ids.push(job.enqueue_in(&tx).await.unwrap().0);
    }
    for i in 0..30 {
        ids.push(rebuild_index(i % 8, i % 5 == 0).enqueue_in(&tx).await.unwrap().0);
    }
    tx.execute(
        "WITH seeded AS (
             SELECT id,
                    -- more work lately: finish times lean towards now
                    now() - interval '58 minutes' * power(random(), 1.4) - interval '20 seconds' AS finished,
                    interval '1 millisecond' * (40 + 2500 * power(random(), 3)) AS took,
                    interval '1 second' * (120 * power(random(), 4)) AS waited,
                    random() < CASE queue WHEN 'billing' THEN 0.14 WHEN 'webhooks' THEN 0.07 ELSE 0.02 END
                        AS fails
             FROM koyo_jobs WHERE id = ANY($1)
         )
         UPDATE koyo_jobs j SET
             status = CASE WHEN s.fails THEN 'failed' ELSE 'done' END,
             attempts = CASE WHEN s.fails THEN j.max_attempts ELSE 1 END,
             last_error = CASE WHEN s.fails THEN CASE j.queue
                 WHEN 'billing' THEN 'the card was declined: insufficient funds (code 51)'
                 WHEN 'webhooks' THEN 'POST https://hooks.example.com/: 503 Service Unavailable after 10 s'
                 WHEN 'mail' THEN 'smtp: 421 4.7.0 too many connections from this address'
                 ELSE 'shard is locked by another rebuild' END
             END,
             finished_at = s.finished,
             started_at = s.finished - s.took,
             scheduled_at = s.finished - s.took - s.waited,
             created_at = s.finished - s.took - s.waited
         FROM seeded s WHERE j.id = s.id",
        &[&ids],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    drop(client);

    // Now: a backlog on search (no worker), three scheduled mails, and a live worker busy
    // with webhooks while more wait.
    for shard in 0..9 {
        rebuild_index(shard, false).enqueue_on(&env.broker).await.unwrap();
    }
    for i in 0..3_i64 {
        let job = send_welcome(9000 + i, format!("later{i}@example.com"));
        schedule_in(Duration::from_secs(600 + 300 * i as u64), job).enqueue_on(&env.broker).await.unwrap();
    }
    WEBHOOKS_RELEASED.store(false, Ordering::SeqCst);
    let worker = env.worker().queue("webhooks").pool_size(3).start().await.unwrap();
    for i in 0..14_i64 {
        let job =
            deliver_webhook(format!("https://hooks.example.com/{}", i % 3), format!("invoice.sent#{i}"));
        job.enqueue_on(&env.broker).await.unwrap();
    }
    let running = "SELECT count(*) FROM koyo_jobs WHERE status = 'running'";
    let busy =
        poll_until(RUN, || async { (env.query(running, &[]).await[0].get::<_, i64>(0) == 3).then_some(()) });
    if busy.await.is_none() {
        let states = env
            .query(
                "SELECT queue || ' ' || status || ' ' || count(*) FROM koyo_jobs GROUP BY queue, status ORDER BY 1",
                &[],
            )
            .await;
        let states: Vec<String> = states.iter().map(|r| r.get(0)).collect();
        panic!("the webhooks worker (pool 3) never ran 3 jobs at once within {RUN:?}; jobs: {states:?}");
    }

    let failed: i64 = env
        .query(
            "SELECT id FROM koyo_jobs WHERE status = 'failed' AND queue = 'billing' ORDER BY finished_at DESC LIMIT 1",
            &[],
        )
        .await
        .first()
        .expect("the seeding failed at least one billing job")
        .get(0);
    // Its attempts: two that failed and were retried (one of them on a worker that was lost),
    // then the final one, the row's own.
    env.query(
        "UPDATE koyo_jobs SET attempts = 3, max_attempts = 3, created_at = started_at - interval '96 seconds',
                              attempt_log = jsonb_build_array(
             jsonb_build_object('attempt', 1, 'worker_id', 3, 'hostname', 'worker-a.internal',
                                'started_at', started_at - interval '95 seconds', 'ended_at', started_at - interval '93 seconds',
                                'outcome', 'retry', 'error', 'payment gateway timed out after 2 s'),
             jsonb_build_object('attempt', 2, 'worker_id', 4, 'hostname', 'worker-b.internal',
                                'started_at', started_at - interval '40 seconds', 'ended_at', started_at - interval '9 seconds',
                                'outcome', 'lost', 'error', 'worker 4 was lost during attempt 2 (its heartbeat stopped)'))
         WHERE id = $1",
        &[&failed],
    )
    .await;
    // The webhooks queue runs under fleet-wide limits (its 3 running jobs are at the first).
    env.query(
        "INSERT INTO koyo_queues (queue, max_running, rate_limit, rate_period_secs, limited_by)
         VALUES ('webhooks', 3, 120, 60, 'the screenshot')",
        &[],
    )
    .await;
    let base = serve_admin(&env.broker, Mount::Nest).await;
    browser.goto(&format!("{base}#job/{failed}")).unwrap();
    wait_for_text(&browser, "#detail-status", "failed");
    browser
        .wait_for(
            "document.querySelectorAll('#queues tbody tr[data-queue]').length === 4 \
             && document.querySelectorAll('#charts figure[data-queue] svg').length === 4 \
             && document.querySelectorAll('#workers tbody tr[data-worker-id]').length === 1 \
             && document.querySelectorAll('#jobs tbody tr[data-job-id]').length >= 20 \
             && document.querySelector('#detail-args pre') !== null \
             && document.querySelectorAll('#detail-history li[data-attempt]').length === 3",
            UI,
        )
        .unwrap_or_else(|e| panic!("the busy page did not fill in: {e}"));
    let path = screenshot_path();
    browser.screenshot_png(&path, 1000.0).unwrap();
    let png = std::fs::read(&path).unwrap();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "{}: {} bytes",
        path.display(),
        png.len()
    );
    eprintln!("screenshot: {}", path.canonicalize().unwrap_or(path).display());
    assert_no_page_errors(&browser);

    WEBHOOKS_RELEASED.store(true, Ordering::SeqCst);
    worker.shutdown().await;
}

/// A queue's fleet-wide limits set from its row (the page asks for each, this test answers),
/// stored, and shown in the row; bad answers are refused with a message and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_a_queue_s_limits_from_the_page() {
    let Some(browser) = browser_or_skip("set_a_queue_s_limits_from_the_page") else { return };
    let env = env().await;
    rebuild_index(1, false).enqueue_on(&env.broker).await.unwrap();
    let base = serve_admin(&env.broker, Mount::Mount).await;
    browser.goto(&base).unwrap();
    let search = "#queues tbody tr[data-queue=\"search\"]";
    wait_for_text(&browser, &format!("{search} td[data-limits] .limits-text"), "none");
    let answer = |answers: &[&str]| {
        let list: Vec<String> = answers.iter().map(|a| js(a)).collect();
        browser
            .eval(&format!(
                "window.koyoAnswers = [{}]; window.prompt = () => window.koyoAnswers.shift() ?? null",
                list.join(",")
            ))
            .unwrap();
    };
    // Bad answers: refused, nothing stored.
    answer(&["two", ""]);
    browser.click(&format!("{search} button[data-limits-queue]")).unwrap();
    browser
        .wait_for(&format!("{}?.includes('not a number of jobs')", text_of("#status-line")), UI)
        .unwrap_or_else(|e| panic!("no message for a bad answer: {e}"));
    answer(&["", "30 per minute"]);
    browser.click(&format!("{search} button[data-limits-queue]")).unwrap();
    browser
        .wait_for(&format!("{}?.includes('not N/DURATION')", text_of("#status-line")), UI)
        .unwrap_or_else(|e| panic!("no message for a bad rate: {e}"));
    assert!(env.query("SELECT 1 FROM koyo_queues WHERE queue = 'search'", &[]).await.is_empty());

    answer(&["2", "30/1m"]);
    browser.click(&format!("{search} button[data-limits-queue]")).unwrap();
    wait_for_text(
        &browser,
        &format!("{search} td[data-limits] .limits-text"),
        "≤ 2 running · ≤ 30 starts / 1 m",
    );
    let stored = &env
        .query("SELECT max_running, rate_limit, rate_period_secs, limited_by FROM koyo_queues WHERE queue = 'search'", &[])
        .await[0];
    assert_eq!(
        (
            stored.get::<_, i32>(0),
            stored.get::<_, i32>(1),
            stored.get::<_, f64>(2),
            stored.get::<_, String>(3)
        ),
        (2, 30, 60.0, "the admin page".to_owned())
    );
    // Emptied answers remove both limits.
    answer(&["", ""]);
    browser.click(&format!("{search} button[data-limits-queue]")).unwrap();
    wait_for_text(&browser, &format!("{search} td[data-limits] .limits-text"), "none");
    assert_no_page_errors(&browser);
}
