//! Search, counts, bulk actions and chart ranges through the admin router, against a real
//! PostgreSQL: the search parameters of `GET api/jobs`, `GET api/jobs/count`, `POST api/bulk`
//! (CSRF, read-only mode, bad input as JSON 400s) with its progress at `GET api/bulk/{id}`,
//! and `GET api/activity?range=`.

use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use koyo_job::testing::TestDatabase;
use koyo_job::{Broker, BrokerOptions};
use koyo_job_web::Admin;
use serde_json::{Value, json};
use tower::ServiceExt as _;

const TOKEN: &str = "test-token-0123456789";

struct Fixture {
    broker: Broker,
    app: Router,
    _db: TestDatabase,
}

impl Fixture {
    async fn new(read_only: bool) -> Fixture {
        let db = TestDatabase::create().await.expect("a PostgreSQL server for tests");
        let broker = Broker::new(db.config().clone(), BrokerOptions::default()).unwrap();
        koyo_job::migrate(&broker).await.unwrap();
        let app = Admin::new(broker.clone()).csrf_token(TOKEN).read_only(read_only).mount("/admin/jobs");
        Fixture { broker, app, _db: db }
    }

    async fn sql(&self, sql: &str) {
        self.broker.client().await.unwrap().batch_execute(sql).await.unwrap()
    }

    async fn count_where(&self, condition: &str) -> i64 {
        let client = self.broker.client().await.unwrap();
        client
            .query_one(&format!("SELECT count(*) FROM koyo_jobs WHERE {condition}"), &[])
            .await
            .unwrap()
            .get(0)
    }

    async fn call(&self, method: Method, path: &str, token: Option<&str>, body: &str) -> (StatusCode, Value) {
        let mut request =
            Request::builder().method(method).uri(path).header("content-type", "application/json");
        if let Some(token) = token {
            request = request.header("x-koyo-csrf", token);
        }
        let response =
            self.app.clone().oneshot(request.body(Body::from(body.to_owned())).unwrap()).await.unwrap();
        let status = response.status();
        let json = response
            .headers()
            .get("content-type")
            .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        assert!(json, "{path}: not JSON: {text}");
        (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}")))
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, None, "").await
    }

    async fn bulk(&self, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, "/admin/jobs/api/bulk", Some(TOKEN), &body.to_string()).await
    }

    /// Polls the operation until it is no longer running.
    async fn finished(&self, id: u64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, body) = self.get(&format!("/admin/jobs/api/bulk/{id}")).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            if body["state"] != "running" {
                return body;
            }
            assert!(Instant::now() < deadline, "still running: {body}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn error_of(body: &Value) -> &str {
    body["error"].as_str().unwrap_or_else(|| panic!("no error in {body}"))
}

/// 2,500 failed jobs in "mail" (half of them with a "quota 100% used" error), 3 done ones, and a
/// failed one in "billing".
async fn populate(f: &Fixture) {
    f.sql(
        "INSERT INTO koyo_jobs (queue, job, args, status, attempts, max_attempts, finished_at, last_error)
         SELECT 'mail', 'app.send', '\\x00', 'failed', 3, 3, now(),
                CASE WHEN n % 2 = 0 THEN 'quota 100% used' ELSE 'timeout' END
         FROM generate_series(1, 2500) AS n;
         INSERT INTO koyo_jobs (queue, job, args, status, finished_at)
         SELECT 'mail', 'app.send', '\\x00', 'done', now() FROM generate_series(1, 3);
         INSERT INTO koyo_jobs (queue, job, args, status, attempts, finished_at, last_error)
         VALUES ('billing', 'billing.charge_card', '\\x00', 'failed', 1, now(), 'quota 100% used');",
    )
    .await;
}

#[tokio::test]
async fn jobs_are_searched_and_counted_through_the_api() {
    let f = Fixture::new(false).await;
    populate(&f).await;
    let (status, body) = f.get("/admin/jobs/api/jobs/count?error=100%25&state=failed").await;
    assert_eq!((status, &body), (StatusCode::OK, &json!({"count": 1251})));
    let (_, body) = f.get("/admin/jobs/api/jobs/count?job=billing.*").await;
    assert_eq!(body["count"], 1);
    let (_, body) = f.get("/admin/jobs/api/jobs?job=billing.charge_card&created_after=1h&limit=5").await;
    let jobs = body["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1);
    let id = jobs[0]["id"].as_i64().unwrap();
    let (_, body) = f.get(&format!("/admin/jobs/api/jobs?id={id}")).await;
    assert_eq!(body["jobs"][0]["queue"], "billing");
    let (_, body) = f.get("/admin/jobs/api/jobs?error=_&created_before=2000-01-01").await;
    assert_eq!(body["jobs"], json!([]));

    for (query, says) in [
        ("jobs?created_after=yesterday", "created_after: `yesterday` is not a time"),
        ("jobs?job=a%20b", "not a job name"),
        ("jobs?id=x", "positive integers"),
        ("jobs/count?finished_before=2026-02-30T00:00:00", "not a time"),
        ("activity?range=2h", "range must be one of 1h, 24h and 7d"),
    ] {
        let (status, body) = f.get(&format!("/admin/jobs/api/{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert!(error_of(&body).contains(says), "{query}: {body}");
    }
}

#[tokio::test]
async fn a_bulk_retry_runs_in_the_background_and_reports_progress() {
    let f = Fixture::new(false).await;
    populate(&f).await;
    let (status, started) = f
        .bulk(json!({"action": "retry", "filter": {"queue": "mail", "state": "failed", "error": "quota"}}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    assert_eq!((&started["action"], &started["total"]), (&json!("retry"), &json!(1250)));
    let done = f.finished(started["id"].as_u64().unwrap()).await;
    assert_eq!(done["state"], "finished", "{done}");
    assert_eq!(
        (&done["applied"], &done["examined"], &done["batches"]),
        (&json!(1250), &json!(1250), &json!(2))
    );
    assert_eq!(f.count_where("queue = 'mail' AND status = 'ready'").await, 1250);
    assert_eq!(f.count_where("status = 'failed'").await, 1251);

    // A selection with states the action refuses: they are listed with the reason.
    let client = f.broker.client().await.unwrap();
    let ids: Vec<i64> = client
        .query("SELECT id FROM koyo_jobs WHERE status IN ('done', 'ready') ORDER BY id LIMIT 3", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let (status, started) = f.bulk(json!({"action": "cancel", "ids": ids})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    let done = f.finished(started["id"].as_u64().unwrap()).await;
    assert_eq!(done["applied"].as_i64().unwrap() + done["refused"].as_i64().unwrap(), 3, "{done}");
    for refusal in done["refusals"].as_array().unwrap() {
        assert_eq!(refusal["status"], "done");
        assert_eq!(refusal["why"], "it has already succeeded");
    }

    // Delete by a filter.
    let (_, started) = f.bulk(json!({"action": "delete", "filter": {"queue": "billing"}})).await;
    let done = f.finished(started["id"].as_u64().unwrap()).await;
    assert_eq!(done["applied"], 1);
    assert_eq!(f.count_where("queue = 'billing'").await, 0);

    let (status, body) = f.get("/admin/jobs/api/bulk/999").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(error_of(&body).contains("no bulk operation 999"));
    let (status, _) = f.get("/admin/jobs/api/bulk/abc").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn bulk_actions_need_the_token_a_writable_router_and_a_clear_request() {
    let f = Fixture::new(false).await;
    populate(&f).await;
    let body = json!({"action": "delete", "filter": {"queue": "mail"}}).to_string();
    for token in [None, Some("wrong-token-0123456789")] {
        let (status, answer) = f.call(Method::POST, "/admin/jobs/api/bulk", token, &body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    }
    for (request, says) in [
        ("not json", "the body must be JSON"),
        (r#"{"action":"retry"}"#, "either `filter`"),
        (r#"{"action":"purge","ids":[1]}"#, "`action` must be"),
        (r#"{"action":"delete","filter":{}}"#, "at least one criterion"),
        (r#"{"action":"delete","filter":{"state":"ready,nope"}}"#, "unknown state `nope`"),
        (r#"{"action":"delete","ids":[-1]}"#, "positive job ids"),
    ] {
        let (status, answer) = f.call(Method::POST, "/admin/jobs/api/bulk", Some(TOKEN), request).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{request}: {answer}");
        assert!(error_of(&answer).contains(says), "{request}: {answer}");
    }
    let (status, _) = f.get("/admin/jobs/api/bulk").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(f.count_where("true").await, 2504);

    let read_only = Fixture::new(true).await;
    populate(&read_only).await;
    let (status, answer) = read_only.call(Method::POST, "/admin/jobs/api/bulk", Some(TOKEN), &body).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(error_of(&answer).contains("read-only"));
    assert_eq!(read_only.count_where("true").await, 2504);
}

#[tokio::test]
async fn the_charts_cover_a_day_and_a_week_in_coarser_buckets() {
    let f = Fixture::new(false).await;
    f.sql(
        "INSERT INTO koyo_jobs (queue, job, args, status, attempts, finished_at)
         VALUES ('mail', 'tests.raw', '\\x00', 'done', 1, now() - interval '3 hours'),
                ('mail', 'tests.raw', '\\x00', 'failed', 1, now() - interval '3 days'),
                ('mail', 'tests.raw', '\\x00', 'done', 1, now() - interval '9 days');",
    )
    .await;
    for (range, buckets, step, completed, failed) in
        [("1h", 60, 60, 0, 0), ("24h", 96, 900, 1, 0), ("7d", 84, 7200, 1, 1)]
    {
        let (status, body) = f.get(&format!("/admin/jobs/api/activity?range={range}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            (body["buckets"].as_u64(), body["step_secs"].as_u64()),
            (Some(buckets), Some(step)),
            "{range}"
        );
        let series = |name: &str| -> i64 {
            body["queues"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|q| q[name].as_array().unwrap().clone())
                .map(|v| v.as_i64().unwrap())
                .sum()
        };
        assert_eq!((series("completed"), series("failed")), (completed, failed), "{range}: {body}");
    }
}
