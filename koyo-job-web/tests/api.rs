//! The admin router against a real PostgreSQL: every route, bad ids and filters, the state
//! rules, CSRF, read-only mode, and the page under a mount point. Requests go through the
//! router in process (`tower::ServiceExt::oneshot`); each test has its own database.

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use koyo_job::testing::TestDatabase;
use koyo_job::{Broker, BrokerOptions, JobId, define_job};
use koyo_job_web::Admin;
use serde_json::Value;
use tower::ServiceExt as _;

#[define_job(queue = "mail", max_attempts = 3)]
async fn send_welcome(user_id: i64, email: String) -> Result<(), String> {
    let _ = (user_id, email);
    Ok(())
}

const TOKEN: &str = "test-token-0123456789";

struct Fixture {
    broker: Broker,
    app: Router,
    _db: TestDatabase,
}

impl Fixture {
    async fn new() -> Fixture {
        Fixture::with(|admin| admin).await
    }

    async fn with(configure: impl FnOnce(Admin) -> Admin) -> Fixture {
        let db = TestDatabase::create().await.expect("a PostgreSQL server for tests");
        let broker = Broker::new(db.config().clone(), BrokerOptions::default()).unwrap();
        koyo_job::migrate(&broker).await.unwrap();
        let app = configure(Admin::new(broker.clone()).csrf_token(TOKEN)).mount("/admin/jobs");
        Fixture { broker, app, _db: db }
    }

    async fn sql(&self, sql: &str) {
        self.broker.client().await.unwrap().batch_execute(sql).await.unwrap()
    }

    async fn enqueue(&self, user_id: i64) -> i64 {
        let JobId(id) =
            send_welcome(user_id, format!("u{user_id}@example.com")).enqueue_on(&self.broker).await.unwrap();
        id
    }

    /// A job row in any state, inserted directly.
    async fn job_in(&self, queue: &str, status: &str, worker: Option<i64>) -> i64 {
        let rows = self
            .broker
            .client()
            .await
            .unwrap()
            .query(
                "INSERT INTO koyo_jobs (queue, job, args, status, attempts, max_attempts, started_at, finished_at,
                                        worker_id, last_error)
                 VALUES ($1, 'tests.raw', '\\x00'::bytea, $2, 1, 3, now() - interval '2 seconds',
                         CASE WHEN $2 IN ('done', 'failed', 'cancelled') THEN now() END, $3,
                         CASE WHEN $2 = 'failed' THEN 'boom' END)
                 RETURNING id",
                &[&queue, &status, &worker],
            )
            .await
            .unwrap();
        rows[0].get(0)
    }

    async fn worker(&self, heartbeat_secs_ago: f64, lease_secs: f64) -> i64 {
        let rows = self
            .broker
            .client()
            .await
            .unwrap()
            .query(
                "INSERT INTO koyo_workers (hostname, pid, queues, pool_size, heartbeat_at, lease_secs)
                 VALUES ('host-a', 4242, ARRAY['mail'], 8, now() - make_interval(secs => $1), $2) RETURNING id",
                &[&heartbeat_secs_ago, &lease_secs],
            )
            .await
            .unwrap();
        rows[0].get(0)
    }

    async fn status_of(&self, id: i64) -> Option<String> {
        let rows = self
            .broker
            .client()
            .await
            .unwrap()
            .query("SELECT status FROM koyo_jobs WHERE id = $1", &[&id])
            .await
            .unwrap();
        rows.first().map(|r| r.get(0))
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, String, Vec<(String, String)>) {
        let mut request = Request::builder().method(method).uri(path);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = self.app.clone().oneshot(request.body(Body::empty()).unwrap()).await.unwrap();
        let status = response.status();
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or_default().to_owned()))
            .collect();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap(), headers)
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let (status, body, headers) = self.call(Method::GET, path, &[]).await;
        assert!(
            headers.iter().any(|(k, v)| k == "content-type" && v.starts_with("application/json")),
            "{path}"
        );
        (status, serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}")))
    }

    async fn post(&self, method: Method, path: &str) -> (StatusCode, Value) {
        let (status, body, _) = self.call(method, path, &[("x-koyo-csrf", TOKEN)]).await;
        (status, serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}")))
    }
}

fn error_of(body: &Value) -> &str {
    body["error"].as_str().unwrap_or_else(|| panic!("no error in {body}"))
}

#[tokio::test]
async fn the_page_is_served_under_its_mount_point_with_a_strict_policy() {
    let f = Fixture::new().await;
    let (status, _, headers) = f.call(Method::GET, "/admin/jobs/", &[]).await;
    assert_eq!(status, StatusCode::PERMANENT_REDIRECT);
    assert!(headers.contains(&("location".to_owned(), "/admin/jobs".to_owned())), "{headers:?}");
    // Nested by hand, under another path.
    let nested = Router::new().nest("/ops/queue", Admin::new(f.broker.clone()).router());
    let response = nested.oneshot(Request::get("/ops/queue").body(Body::empty()).unwrap()).await.unwrap();
    let html = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
    assert!(String::from_utf8_lossy(&html).contains(r#"<meta name="koyo-base" content="/ops/queue/">"#));

    for path in ["/admin/jobs"] {
        let (status, html, headers) = f.call(Method::GET, path, &[]).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(html.contains(r#"<meta name="koyo-base" content="/admin/jobs/">"#), "{html}");
        assert!(html.contains(&format!(r#"<meta name="koyo-csrf" content="{TOKEN}">"#)));
        assert!(html.contains(r#"<meta name="koyo-read-only" content="false">"#));
        assert!(html.contains("/admin/jobs/assets/app.js"));
        assert!(!html.contains("{{"), "a placeholder was left: {html}");
        let header = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        assert!(header("content-security-policy").unwrap().contains("script-src 'self'"));
        assert_eq!(header("x-frame-options").as_deref(), Some("DENY"));
        assert_eq!(header("cache-control").as_deref(), Some("no-store"));
    }
    let (status, js, headers) = f.call(Method::GET, "/admin/jobs/assets/app.js", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        !js.is_empty()
            && headers.iter().any(|(k, v)| k == "content-type" && v.starts_with("text/javascript"))
    );
    let (status, css, _) = f.call(Method::GET, "/admin/jobs/assets/app.css", &[]).await;
    assert_eq!((status, css.is_empty()), (StatusCode::OK, false));

    let (status, body) = f.get("/admin/jobs/api/nothing-here").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(error_of(&body).contains("no such"));
}

#[tokio::test]
async fn queues_and_jobs_list_with_filters_and_cursor_paging() {
    let f = Fixture::new().await;
    let ids: Vec<i64> = futures_ids(&f, 5).await;
    let failed = f.job_in("reports", "failed", None).await;

    let (status, body) = f.get("/admin/jobs/api/queues").await;
    assert_eq!(status, StatusCode::OK);
    let queues = body["queues"].as_array().unwrap();
    assert_eq!(queues.len(), 2);
    assert_eq!((queues[0]["queue"].as_str(), queues[0]["ready"].as_i64()), (Some("mail"), Some(5)));
    assert!(queues[0]["lag_secs"].as_f64().unwrap() >= 0.0);
    assert_eq!((queues[1]["failed"].as_i64(), queues[1]["lag_secs"].is_null()), (Some(1), true));

    // Newest first, two per page, three pages.
    let (_, page1) = f.get("/admin/jobs/api/jobs?queue=mail&limit=2").await;
    let listed = |page: &Value| {
        page["jobs"].as_array().unwrap().iter().map(|j| j["id"].as_i64().unwrap()).collect::<Vec<_>>()
    };
    assert_eq!(listed(&page1), [ids[4], ids[3]]);
    let next = page1["next_before"].as_i64().unwrap();
    let (_, page2) = f.get(&format!("/admin/jobs/api/jobs?queue=mail&limit=2&before={next}")).await;
    assert_eq!(listed(&page2), [ids[2], ids[1]]);
    let next = page2["next_before"].as_i64().unwrap();
    let (_, page3) = f.get(&format!("/admin/jobs/api/jobs?queue=mail&limit=2&before={next}")).await;
    assert_eq!((listed(&page3), page3["next_before"].is_null()), (vec![ids[0]], true));
    let first = &page1["jobs"][0];
    assert_eq!((first["job"].as_str(), first["status"].as_str()), (Some("api::send_welcome"), Some("ready")));
    assert!(first["scheduled_at"].as_str().unwrap().ends_with('Z'));

    let (_, both) = f.get("/admin/jobs/api/jobs?state=failed,running").await;
    assert_eq!(listed(&both), [failed]);
    let (_, all) = f.get("/admin/jobs/api/jobs?queue=&state=").await;
    assert_eq!(all["jobs"].as_array().unwrap().len(), 6);
    assert_eq!(all["jobs"][0]["last_error"].as_str(), Some("boom"));
}

async fn futures_ids(f: &Fixture, n: i64) -> Vec<i64> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(f.enqueue(i).await);
    }
    ids
}

#[tokio::test]
async fn bad_ids_and_filters_are_400_with_a_reason() {
    let f = Fixture::new().await;
    for (path, says) in [
        ("/admin/jobs/api/jobs?state=ready,sleeping", "unknown state `sleeping`"),
        ("/admin/jobs/api/jobs?queue=no%20spaces", "invalid queue name"),
        ("/admin/jobs/api/jobs?limit=0", "limit must be"),
        ("/admin/jobs/api/jobs?limit=many", "limit must be"),
        ("/admin/jobs/api/jobs?before=0", "positive integers"),
        ("/admin/jobs/api/jobs/abc", "positive integers"),
        ("/admin/jobs/api/jobs/-1", "positive integers"),
        ("/admin/jobs/api/jobs/99999999999999999999", "positive integers"),
        ("/admin/jobs/api/activity?minutes=0", "minutes must be"),
        ("/admin/jobs/api/activity?minutes=99999", "minutes must be"),
        ("/admin/jobs/api/jobs/%FF%FE", "bad job id"),
        ("/admin/jobs/api/jobs?state=%ZZ", "unknown state `%ZZ`"),
    ] {
        let (status, body) = f.get(path).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert!(error_of(&body).contains(says), "{path}: {body}");
    }
    let (status, body) = f.get("/admin/jobs/api/jobs/424242").await;
    assert_eq!((status, error_of(&body)), (StatusCode::NOT_FOUND, "no job with id 424242"));
    for (method, path) in [
        (Method::POST, "/admin/jobs/api/jobs/424242/retry"),
        (Method::POST, "/admin/jobs/api/jobs/424242/cancel"),
        (Method::DELETE, "/admin/jobs/api/jobs/424242"),
    ] {
        let (status, _) = f.post(method, path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
    }
    let (status, body) = f.post(Method::POST, "/admin/jobs/api/jobs/x1/retry").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test]
async fn a_job_shows_its_decoded_arguments_and_the_actions_its_state_allows() {
    let f = Fixture::new().await;
    let id = f.enqueue(42).await;
    let (status, job) = f.get(&format!("/admin/jobs/api/jobs/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(job["args"]["display"].as_str(), Some(r#"user_id: 42, email: "u42@example.com""#));
    assert!(job["args"]["bytes"].as_u64().unwrap() > 0);
    assert_eq!((job["status"].as_str(), job["max_attempts"].as_i64()), (Some("ready"), Some(3)));
    assert_eq!(job["actions"], serde_json::json!({"retry": false, "cancel": true, "delete": true}));
    assert!(job["created_at"].as_str().unwrap().ends_with('Z') && job["started_at"].is_null());

    // A job this program does not define: shown without its arguments, and says why.
    let raw = f.job_in("other", "failed", None).await;
    let (_, job) = f.get(&format!("/admin/jobs/api/jobs/{raw}")).await;
    assert!(job["args"]["display"].is_null());
    assert!(job["args"]["note"].as_str().unwrap().contains("does not define the job"), "{job}");
    assert_eq!(job["last_error"].as_str(), Some("boom"));
    assert_eq!(job["actions"], serde_json::json!({"retry": true, "cancel": true, "delete": true}));
}

#[tokio::test]
async fn a_job_shows_its_attempts_as_a_timeline_and_the_list_their_duration() {
    let f = Fixture::new().await;
    let worker = f.worker(0.0, 30.0).await;
    let failed = f.job_in("mail", "failed", Some(worker)).await;
    // Two earlier attempts in its log (and five dropped before them): the third is the row's own.
    f.sql(&format!(
        "UPDATE koyo_jobs SET attempts = 8, max_attempts = 8, attempt_log_dropped = 5, attempt_log = jsonb_build_array(
             jsonb_build_object('attempt', 6, 'worker_id', {worker}, 'hostname', 'host-a',
                                'started_at', now() - interval '60 seconds', 'ended_at', now() - interval '58 seconds',
                                'outcome', 'retry', 'error', 'timed out <b>once</b>'),
             jsonb_build_object('attempt', 7, 'worker_id', 99, 'hostname', NULL,
                                'started_at', now() - interval '30 seconds', 'ended_at', now() - interval '20 seconds',
                                'outcome', 'lost', 'error', 'worker 99 was lost during attempt 7'))
         WHERE id = {failed}"
    ))
    .await;
    let (status, job) = f.get(&format!("/admin/jobs/api/jobs/{failed}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(job["history_dropped"].as_i64(), Some(5), "{job}");
    let history = job["history"].as_array().unwrap();
    assert_eq!(history.len(), 3, "{job}");
    let keys: Vec<&str> = history[0].as_object().unwrap().keys().map(String::as_str).collect();
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        ["attempt", "duration_secs", "ended_at", "error", "hostname", "outcome", "started_at", "worker_id"]
    );
    let summary: Vec<(i64, &str, &str)> = history
        .iter()
        .map(|a| {
            (a["attempt"].as_i64().unwrap(), a["outcome"].as_str().unwrap(), a["error"].as_str().unwrap())
        })
        .collect();
    assert_eq!(
        summary,
        [
            (6, "retry", "timed out <b>once</b>"),
            (7, "lost", "worker 99 was lost during attempt 7"),
            (8, "failed", "boom")
        ]
    );
    assert_eq!(
        (history[0]["worker_id"].as_i64(), history[0]["hostname"].as_str()),
        (Some(worker), Some("host-a"))
    );
    assert!(history[1]["hostname"].is_null());
    assert_eq!(
        history[2]["hostname"].as_str(),
        Some("host-a"),
        "the latest attempt's worker is still registered"
    );
    assert!((history[0]["duration_secs"].as_f64().unwrap() - 2.0).abs() < 0.01, "{}", history[0]);
    assert!((history[1]["duration_secs"].as_f64().unwrap() - 10.0).abs() < 0.01, "{}", history[1]);
    for a in history {
        assert!(
            a["started_at"].as_str().unwrap().ends_with('Z')
                && a["ended_at"].as_str().unwrap().ends_with('Z')
        );
    }

    // The list: the latest attempt's run time, none for a job that never ran.
    let ready = f.enqueue(1).await;
    let (_, list) = f.get("/admin/jobs/api/jobs").await;
    let duration = |id: i64| {
        list["jobs"].as_array().unwrap().iter().find(|j| j["id"].as_i64() == Some(id)).unwrap()["duration_secs"]
            .clone()
    };
    assert!(duration(ready).is_null());
    assert!(duration(failed).as_f64().is_some_and(|d| (1.5..10.0).contains(&d)), "{list}");

    // A retry keeps the failed attempt in the log before the row is reused.
    let (status, job) = f.post(Method::POST, &format!("/admin/jobs/api/jobs/{failed}/retry")).await;
    assert_eq!(status, StatusCode::OK, "{job}");
    let outcomes: Vec<(i64, &str)> = job["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["attempt"].as_i64().unwrap(), a["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(outcomes, [(6, "retry"), (7, "lost"), (8, "failed")], "{job}");
    assert_eq!(job["status"].as_str(), Some("ready"));
}

#[tokio::test]
async fn actions_follow_the_state_rules() {
    let f = Fixture::new().await;
    let live = f.worker(1.0, 30.0).await;
    let lost = f.worker(10.0, 2.0).await;
    let failed = f.job_in("mail", "failed", None).await;
    let done = f.job_in("mail", "done", None).await;
    let running_live = f.job_in("mail", "running", Some(live)).await;
    let running_lost = f.job_in("mail", "running", Some(lost)).await;
    let ready = f.job_in("mail", "ready", None).await;

    let (_, before) = f.get("/admin/jobs/api/queues").await;
    assert_eq!(before["queues"][0]["failed"].as_i64(), Some(1));
    let (status, job) = f.post(Method::POST, &format!("/admin/jobs/api/jobs/{failed}/retry")).await;
    assert_eq!((status, job["status"].as_str()), (StatusCode::OK, Some("ready")), "{job}");
    assert_eq!(f.status_of(failed).await.as_deref(), Some("ready"));
    // The counts are shared between viewers for a moment, but a change shows at once.
    let (_, after) = f.get("/admin/jobs/api/queues").await;
    assert_eq!(
        (after["queues"][0]["failed"].as_i64(), after["queues"][0]["ready"].as_i64()),
        (Some(0), Some(2))
    );

    let (status, body) = f.post(Method::POST, &format!("/admin/jobs/api/jobs/{done}/retry")).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(error_of(&body).contains("it succeeded"), "{body}");
    let (status, body) = f.post(Method::POST, &format!("/admin/jobs/api/jobs/{done}/cancel")).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    // A job a live worker runs: no retry or delete; a cancel is a request to its worker, and
    // the job stays running until that worker stops it. A lost worker's job: all three.
    let (_, job) = f.get(&format!("/admin/jobs/api/jobs/{running_live}")).await;
    assert_eq!(job["actions"], serde_json::json!({"retry": false, "cancel": true, "delete": false}));
    for (method, path) in [
        (Method::POST, format!("/admin/jobs/api/jobs/{running_live}/retry")),
        (Method::DELETE, format!("/admin/jobs/api/jobs/{running_live}")),
    ] {
        let (status, body) = f.post(method, &path).await;
        assert_eq!(status, StatusCode::CONFLICT, "{path}");
        assert!(error_of(&body).contains("a live worker is running it"), "{body}");
    }
    let (status, job) = f.post(Method::POST, &format!("/admin/jobs/api/jobs/{running_live}/cancel")).await;
    assert_eq!((status, job["status"].as_str()), (StatusCode::OK, Some("running")), "{job}");
    assert_eq!(f.status_of(running_live).await.as_deref(), Some("running"));
    let by: Option<String> = f
        .broker
        .client()
        .await
        .unwrap()
        .query_one("SELECT cancel_requested_by FROM koyo_jobs WHERE id = $1", &[&running_live])
        .await
        .unwrap()
        .get(0);
    assert_eq!(by.as_deref(), Some("the admin page"));
    let (_, job) = f.get(&format!("/admin/jobs/api/jobs/{running_lost}")).await;
    assert_eq!(job["actions"], serde_json::json!({"retry": true, "cancel": true, "delete": true}));
    let (status, job) = f.post(Method::POST, &format!("/admin/jobs/api/jobs/{running_lost}/cancel")).await;
    assert_eq!((status, job["status"].as_str()), (StatusCode::OK, Some("cancelled")));

    let (status, body) = f.post(Method::DELETE, &format!("/admin/jobs/api/jobs/{ready}")).await;
    assert_eq!((status, body["deleted"].as_i64()), (StatusCode::OK, Some(ready)));
    assert_eq!(f.status_of(ready).await, None);
}

#[tokio::test]
async fn changes_need_the_token_and_a_same_site_request() {
    let f = Fixture::new().await;
    let failed = f.job_in("mail", "failed", None).await;
    let path = format!("/admin/jobs/api/jobs/{failed}/retry");
    for headers in [
        &[][..],
        &[("x-koyo-csrf", "wrong-token-0123456789")],
        &[("x-koyo-csrf", TOKEN), ("sec-fetch-site", "cross-site")],
        &[("x-koyo-csrf", TOKEN), ("origin", "http://evil.example"), ("host", "127.0.0.1")],
    ] {
        let (status, body, _) = f.call(Method::POST, &path, headers).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{headers:?}: {body}");
    }
    assert_eq!(f.status_of(failed).await.as_deref(), Some("failed"));
    // A GET never changes anything.
    let (status, _, _) = f.call(Method::GET, &path, &[]).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);

    let (_, token) = f.get("/admin/jobs/api/csrf").await;
    assert_eq!(token["token"].as_str(), Some(TOKEN));
    let (status, _, _) =
        f.call(Method::POST, &path, &[("x-koyo-csrf", TOKEN), ("sec-fetch-site", "same-origin")]).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_read_only_router_shows_but_refuses_changes() {
    let f = Fixture::with(|admin| admin.read_only(true)).await;
    let failed = f.job_in("mail", "failed", None).await;
    let (_, html, _) = f.call(Method::GET, "/admin/jobs", &[]).await;
    assert!(html.contains(r#"<meta name="koyo-read-only" content="true">"#));
    let (_, job) = f.get(&format!("/admin/jobs/api/jobs/{failed}")).await;
    assert_eq!(job["actions"], serde_json::json!({"retry": false, "cancel": false, "delete": false}));
    let (status, body) = f.post(Method::POST, &format!("/admin/jobs/api/jobs/{failed}/retry")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(error_of(&body).contains("read-only"));
    assert_eq!(f.status_of(failed).await.as_deref(), Some("failed"));
}

#[tokio::test]
async fn workers_list_heartbeat_lease_and_jobs_in_flight() {
    let f = Fixture::new().await;
    let live = f.worker(1.0, 30.0).await;
    let lost = f.worker(10.0, 2.0).await;
    f.job_in("mail", "running", Some(live)).await;
    f.job_in("mail", "running", Some(live)).await;
    let (status, body) = f.get("/admin/jobs/api/workers").await;
    assert_eq!(status, StatusCode::OK);
    let workers = body["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 2);
    let w = &workers[0];
    assert_eq!(
        (w["id"].as_i64(), w["live"].as_bool(), w["running"].as_i64()),
        (Some(live), Some(true), Some(2))
    );
    assert_eq!(
        (w["hostname"].as_str(), w["pid"].as_i64(), w["pool_size"].as_i64()),
        (Some("host-a"), Some(4242), Some(8))
    );
    assert_eq!(w["queues"], serde_json::json!(["mail"]));
    assert!((0.5..5.0).contains(&w["heartbeat_age_secs"].as_f64().unwrap()));
    assert_eq!((workers[1]["id"].as_i64(), workers[1]["live"].as_bool()), (Some(lost), Some(false)));
}

#[tokio::test]
async fn periodic_lists_the_schedules_of_live_workers_with_their_next_slot() {
    let f = Fixture::new().await;
    let hourly = koyo_job::Schedule::parse("@hourly").unwrap().in_time_zone("Europe/Berlin").unwrap();
    let worker = koyo_job::Worker::builder(f.broker.clone())
        .queue("mail")
        .periodic(koyo_job::Periodic::new("hourly-welcome", hourly, || {
            send_welcome(1, "a@example.com".into())
        }))
        .start()
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let listed = loop {
        let (status, body) = f.get("/admin/jobs/api/periodic").await;
        assert_eq!(status, StatusCode::OK);
        if let Some(p) =
            body["periodic"].as_array().and_then(|a| a.first()).filter(|p| !p["next_slot"].is_null())
        {
            break p.clone();
        }
        assert!(std::time::Instant::now() < deadline, "not listed: {body}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    worker.shutdown().await;
    assert_eq!(listed["name"], "hourly-welcome");
    assert_eq!(listed["schedule"], "@hourly");
    assert_eq!(listed["time_zone"], "Europe/Berlin");
    assert_eq!(listed["queue"], "mail");
    assert_eq!(listed["missed"], "run_latest");
    assert!(listed["next_slot"].as_str().unwrap().ends_with(":00:00.000Z"), "{listed}");
}

#[tokio::test]
async fn queues_pause_and_resume_with_the_token_and_show_it() {
    let f = Fixture::new().await;
    f.enqueue(1).await;
    // Without the token: refused, nothing paused.
    let (status, _, _) = f.call(Method::POST, "/admin/jobs/api/queues/mail/pause", &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, body) = f.get("/admin/jobs/api/queues").await;
    assert!(body["queues"][0]["paused_at"].is_null(), "{body}");

    let (status, body) = f.post(Method::POST, "/admin/jobs/api/queues/mail/pause").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["queue"], "mail");
    let (_, body) = f.get("/admin/jobs/api/queues").await;
    let mail = &body["queues"][0];
    assert!(mail["paused_at"].as_str().unwrap().ends_with('Z'), "{body}");
    assert_eq!(mail["paused_by"], "the admin page");
    assert_eq!(mail["ready"], 1);

    let (status, body) = f.post(Method::POST, "/admin/jobs/api/queues/no%20spaces/pause").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(error_of(&body).contains("not a queue name"));
    let (status, _) = f.get("/admin/jobs/api/queues/mail/pause").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);

    let (status, body) = f.post(Method::POST, "/admin/jobs/api/queues/mail/resume").await;
    assert_eq!((status, &body["was_paused"]), (StatusCode::OK, &serde_json::json!(true)));
    let (_, body) = f.get("/admin/jobs/api/queues").await;
    assert!(body["queues"][0]["paused_at"].is_null(), "{body}");

    let read_only = Fixture::with(|admin| admin.read_only(true)).await;
    let (status, body) = read_only.post(Method::POST, "/admin/jobs/api/queues/mail/pause").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(error_of(&body).contains("read-only"));
}

#[tokio::test]
async fn activity_counts_finished_jobs_per_minute_and_the_backlog() {
    let f = Fixture::new().await;
    // The rows are placed by the minute of the database's clock: stay clear of a minute's end, so
    // that the window read below starts where it did when they were stored.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let rows = f
            .broker
            .client()
            .await
            .unwrap()
            .query("SELECT EXTRACT(SECOND FROM now())::float8", &[])
            .await
            .unwrap();
        if rows[0].get::<_, f64>(0) < 55.0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the clock did not pass a minute's end");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // In the queue "mail": 3 done and 1 failed 10 minutes ago; 2 ready jobs due 30 minutes ago
    // and one due 5 minutes ago, none started; a job that waited from 20 to 15 minutes ago.
    f.sql(
        "INSERT INTO koyo_jobs (queue, job, args, status, attempts, scheduled_at, started_at, finished_at)
         SELECT 'mail', 'tests.raw', '\\x00', s, 1, now() - interval '11 minutes', now() - interval '10 minutes',
                date_trunc('minute', now()) - interval '10 minutes' + interval '5 seconds'
         FROM unnest(ARRAY['done', 'done', 'done', 'failed']) AS s;
         INSERT INTO koyo_jobs (queue, job, args, status, scheduled_at)
         VALUES ('mail', 'tests.raw', '\\x00', 'ready', now() - interval '30 minutes'),
                ('mail', 'tests.raw', '\\x00', 'ready', now() - interval '30 minutes'),
                ('mail', 'tests.raw', '\\x00', 'ready', now() - interval '5 minutes');
         INSERT INTO koyo_jobs (queue, job, args, status, attempts, scheduled_at, started_at, finished_at)
         VALUES ('mail', 'tests.raw', '\\x00', 'done', 1, date_trunc('minute', now()) - interval '20 minutes',
                 date_trunc('minute', now()) - interval '15 minutes' + interval '1 second',
                 date_trunc('minute', now()) - interval '15 minutes' + interval '2 seconds');",
    )
    .await;
    let (status, body) = f.get("/admin/jobs/api/activity").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!((body["buckets"].as_u64(), body["step_secs"].as_u64()), (Some(60), Some(60)));
    assert!(body["start"].as_str().unwrap().ends_with(":00.000Z"));
    let mail = &body["queues"][0];
    assert_eq!(mail["queue"].as_str(), Some("mail"));
    let series =
        |name: &str| mail[name].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect::<Vec<_>>();
    let (completed, failed, backlog) = (series("completed"), series("failed"), series("backlog"));
    assert_eq!(completed.len(), 60);
    // Bucket 59 is the current minute; "10 minutes ago (truncated) + 5 s" is bucket 49.
    assert_eq!((completed[49], failed[49]), (3, 1));
    assert_eq!(completed.iter().sum::<i64>(), 4, "{completed:?}");
    assert_eq!(completed[44], 1, "{completed:?}");
    // Two jobs waiting all along (from before the window if the clock is near a minute's end),
    // one more from 5 minutes ago, and the one that waited 20 → 15 minutes ago.
    assert_eq!(backlog[59], 3, "{backlog:?}");
    assert_eq!(backlog[40], 3, "{backlog:?}");
    assert_eq!(backlog[50], 2, "{backlog:?}");

    // One computation serves every viewer for a few seconds: a job finished since is not
    // counted yet.
    f.sql("INSERT INTO koyo_jobs (queue, job, args, status, finished_at) VALUES ('mail', 'tests.raw', '\\x00', 'done', now())")
        .await;
    let (_, again) = f.get("/admin/jobs/api/activity").await;
    assert_eq!(again, body);
}

/// Checks that an answer is a JSON error: `{"error": "…"}` with a JSON content type.
fn json_error(what: &str, body: &str, headers: &[(String, String)]) -> String {
    assert!(
        headers.iter().any(|(k, v)| k == "content-type" && v.starts_with("application/json")),
        "{what}: not JSON: {headers:?}"
    );
    let body: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{what}: {e}: {body}"));
    error_of(&body).to_owned()
}

#[tokio::test]
async fn wrong_methods_and_unknown_api_paths_are_json_errors() {
    let f = Fixture::new().await;
    let id = f.enqueue(1).await;
    let header = |headers: &[(String, String)], name: &str| {
        headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).unwrap_or_default()
    };

    // A method the route does not serve: 405, JSON, and axum's `Allow` with the ones it does.
    for (method, path, allowed) in [
        (Method::GET, format!("/admin/jobs/api/jobs/{id}/retry"), "POST"),
        (Method::GET, format!("/admin/jobs/api/jobs/{id}/cancel"), "POST"),
        (Method::PUT, format!("/admin/jobs/api/jobs/{id}"), "GET,HEAD,DELETE"),
        (Method::PATCH, format!("/admin/jobs/api/jobs/{id}"), "GET,HEAD,DELETE"),
        (Method::POST, "/admin/jobs/api/queues".to_owned(), "GET,HEAD"),
        (Method::DELETE, "/admin/jobs/api/jobs".to_owned(), "GET,HEAD"),
    ] {
        let what = format!("{method} {path}");
        let (status, body, headers) = f.call(method.clone(), &path, &[("x-koyo-csrf", TOKEN)]).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{what}: {body}");
        let error = json_error(&what, &body, &headers);
        assert!(error.contains(method.as_str()) && error.contains("not allowed"), "{what}: {error}");
        assert_eq!(header(&headers, "allow"), allowed, "{what}");
        assert_eq!(header(&headers, "x-frame-options"), "DENY", "{what}: the page's headers too");
    }
    // The mount point's `path/` redirect too (it is outside the page's headers).
    let (status, body, headers) = f.call(Method::POST, "/admin/jobs/", &[]).await;
    assert_eq!((status, header(&headers, "allow")), (StatusCode::METHOD_NOT_ALLOWED, "GET,HEAD".into()));
    assert!(json_error("POST /admin/jobs/", &body, &headers).contains("POST is not allowed"));
    // Nothing was changed by them.
    assert_eq!(f.status_of(id).await.as_deref(), Some("ready"));

    // A path no route serves: 404, JSON, whatever the method and however the router is mounted.
    let nested = Router::new().nest("/ops/queue", Admin::new(f.broker.clone()).router());
    for (app, method, path) in [
        (&f.app, Method::GET, "/admin/jobs/api/nothing-here"),
        (&f.app, Method::GET, "/admin/jobs/api/"),
        (&f.app, Method::POST, &*format!("/admin/jobs/api/jobs/{id}/explode")),
        (&f.app, Method::PUT, "/admin/jobs/api/queues/mail"),
        (&nested, Method::GET, "/ops/queue/api/nothing-here"),
        (&nested, Method::DELETE, "/ops/queue/api/jobs/1/2/3"),
    ] {
        let what = format!("{method} {path}");
        let request = Request::builder().method(method).uri(path).body(Body::empty()).unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers: Vec<(String, String)> = response
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or_default().to_owned()))
            .collect();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        let body = String::from_utf8(body.to_vec()).unwrap();
        assert_eq!(status, StatusCode::NOT_FOUND, "{what}: {body}");
        assert!(json_error(&what, &body, &headers).contains("no such"), "{what}: {body}");
    }
}

/// Posts `body` (JSON text) with the token.
async fn post_json(f: &Fixture, path: &str, body: &str) -> (StatusCode, Value) {
    let request = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header("x-koyo-csrf", TOKEN)
        .header("content-type", "application/json")
        .body(Body::from(body.to_owned()))
        .unwrap();
    let response = f.app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{path}: {e}")))
}

#[tokio::test]
async fn queue_limits_are_set_shown_and_cleared_with_the_token_and_bad_ones_refused() {
    let f = Fixture::new().await;
    f.enqueue(1).await;
    let path = "/admin/jobs/api/queues/mail/limits";
    // Without the token: refused, nothing set.
    let (status, _, _) = f.call(Method::POST, path, &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let (status, body) =
        post_json(&f, path, r#"{"max_running": 5, "rate_limit": 100, "rate_period_secs": 60}"#).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["limits"],
        serde_json::json!({"max_running": 5, "rate_limit": 100, "rate_period_secs": 60.0})
    );
    let (_, body) = f.get("/admin/jobs/api/queues").await;
    assert_eq!(body["queues"][0]["limits"]["max_running"], 5, "{body}");
    assert_eq!(body["queues"][0]["limits"]["rate_limit"], 100, "{body}");

    for (bad, message) in [
        (r#"{"max_running": 0}"#, "max_running is a number of jobs"),
        (r#"{"max_running": -1}"#, "max_running is a number of jobs"),
        (r#"{"max_running": 1.5}"#, "must be a JSON object"),
        (r#"{"max_running": "5"}"#, "must be a JSON object"),
        (r#"{"max_running": 99999999999}"#, "must be a JSON object"),
        (r#"{"rate_limit": 5}"#, "needs both rate_limit and rate_period_secs"),
        (r#"{"rate_limit": 5, "rate_period_secs": 0}"#, "rate_period_secs is a number of seconds"),
        (r#"{"rate_limit": 5, "rate_period_secs": 1e300}"#, "rate_period_secs is a number of seconds"),
        (r#"{"max_runing": 5}"#, "unknown field"),
        (r#"[5]"#, "must be a JSON object"),
        ("not json", "must be a JSON object"),
    ] {
        let (status, body) = post_json(&f, path, bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert!(error_of(&body).contains(message), "{bad}: {body}");
    }
    // Nothing above changed the limits.
    let (_, body) = f.get("/admin/jobs/api/queues").await;
    assert_eq!(body["queues"][0]["limits"]["max_running"], 5, "{body}");
    let (status, body) = post_json(&f, "/admin/jobs/api/queues/no%20spaces/limits", "{}").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // An empty object clears every limit.
    let (status, body) = post_json(&f, path, "{}").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, body) = f.get("/admin/jobs/api/queues").await;
    assert_eq!(
        body["queues"][0]["limits"],
        serde_json::json!({"max_running": null, "rate_limit": null, "rate_period_secs": null})
    );

    let read_only = Fixture::with(|admin| admin.read_only(true)).await;
    let (status, body) = post_json(&read_only, path, "{}").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(error_of(&body).contains("read-only"));
}
