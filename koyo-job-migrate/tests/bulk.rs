//! Finding and acting on many jobs (`koyo_job_migrate::admin`): the list's search criteria
//! (id, job name, error text with LIKE's metacharacters taken literally, time ranges), counts,
//! and bulk retry, cancel and delete on a filter or a selection — the single actions' state
//! rules per job, bounded batches with progress, and a worker never held up for long while
//! 100,000 jobs are retried. Then the `koyo-job-admin count` and `bulk` commands.

use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use koyo_job::testing::TestDatabase;
use koyo_job::tokio_postgres::{Client, NoTls};
use koyo_job_migrate::admin::{self, Action, AdminError, BulkTarget, JobFilter, TimeBound};

struct Fixture {
    db: TestDatabase,
    client: Client,
}

impl Fixture {
    async fn new() -> Fixture {
        let db = TestDatabase::create().await.unwrap();
        let client = Fixture::connect(&db).await;
        let mut migrating = Fixture::connect(&db).await;
        koyo_job_migrate::migrate(&mut migrating, None).await.unwrap();
        Fixture { db, client }
    }

    async fn connect(db: &TestDatabase) -> Client {
        let (client, connection) = db.config().connect(NoTls).await.unwrap();
        tokio::spawn(connection);
        client
    }

    /// Inserts a job; `created_ago` in seconds; a finished state gets `finished_at = now()`.
    async fn job(&self, queue: &str, job: &str, status: &str, error: Option<&str>, created_ago: f64) -> i64 {
        self.client
            .query_one(
                "INSERT INTO koyo_jobs (queue, job, args, status, attempts, max_attempts, created_at, finished_at,
                                        last_error)
                 VALUES ($1, $2, '\\x00'::bytea, $3, CASE WHEN $3 IN ('failed', 'done') THEN 3 ELSE 0 END, 3,
                         now() - make_interval(secs => $5),
                         CASE WHEN $3 IN ('done', 'failed', 'cancelled') THEN now() END, $4)
                 RETURNING id",
                &[&queue, &job, &status, &error, &created_ago],
            )
            .await
            .unwrap()
            .get(0)
    }

    async fn worker(&self) -> i64 {
        self.client
            .query_one(
                "INSERT INTO koyo_workers (hostname, pid, queues, pool_size) VALUES ('host', 1, ARRAY['mail'], 8)
                 RETURNING id",
                &[],
            )
            .await
            .unwrap()
            .get(0)
    }

    async fn status(&self, id: i64) -> Option<String> {
        let rows = self.client.query("SELECT status FROM koyo_jobs WHERE id = $1", &[&id]).await.unwrap();
        rows.first().map(|row| row.get(0))
    }

    async fn ids(&self, filter: JobFilter) -> Vec<i64> {
        let page = admin::jobs(&self.client, &JobFilter { limit: 1000, ..filter }).await.unwrap();
        page.jobs.iter().map(|j| j.id).collect()
    }
}

#[tokio::test]
async fn jobs_are_found_by_id_name_error_text_and_time() {
    let f = Fixture::new().await;
    let percent = f.job("mail", "app.send_welcome", "failed", Some("quota 100% used"), 10.0).await;
    let underscore = f.job("mail", "app.send_digest", "failed", Some("no such user_id"), 10.0).await;
    let upper = f.job("mail", "app.send_welcome", "failed", Some("SMTP: Connection REFUSED"), 7200.0).await;
    let plain = f.job("billing", "billing.charge", "done", None, 3.0 * 86400.0).await;
    let cancelled = f.job("billing", "billing.charge_v2", "cancelled", Some("quota 1000 used"), 10.0).await;

    let search = |filter: JobFilter| f.ids(filter);
    assert_eq!(search(JobFilter { id: Some(upper), ..Default::default() }).await, [upper]);
    assert_eq!(
        search(JobFilter { job: Some("app.send_welcome".into()), ..Default::default() }).await,
        [upper, percent]
    );
    // A prefix; `_` and `.` in names are plain characters, not wildcards.
    assert_eq!(
        search(JobFilter { job: Some("app.send_*".into()), ..Default::default() }).await,
        [upper, underscore, percent]
    );
    assert_eq!(search(JobFilter { job: Some("billing.charge".into()), ..Default::default() }).await, [plain]);
    assert_eq!(
        search(JobFilter { job: Some("app_send*".into()), ..Default::default() }).await,
        Vec::<i64>::new()
    );
    // Error text: contained, ignoring case, with `%` and `_` taken literally.
    assert_eq!(search(JobFilter { error: Some("100%".into()), ..Default::default() }).await, [percent]);
    assert_eq!(search(JobFilter { error: Some("%".into()), ..Default::default() }).await, [percent]);
    assert_eq!(search(JobFilter { error: Some("user_id".into()), ..Default::default() }).await, [underscore]);
    assert_eq!(search(JobFilter { error: Some("r_id".into()), ..Default::default() }).await, [underscore]);
    assert_eq!(
        search(JobFilter { error: Some("user%id".into()), ..Default::default() }).await,
        Vec::<i64>::new()
    );
    assert_eq!(
        search(JobFilter { error: Some("connection refused".into()), ..Default::default() }).await,
        [upper]
    );
    assert_eq!(
        search(JobFilter {
            error: Some("quota".into()),
            states: Some(vec!["failed".into()]),
            ..Default::default()
        })
        .await,
        [percent]
    );
    // Time ranges, relative and absolute.
    let hour = Some(TimeBound::Ago(3600));
    assert_eq!(
        search(JobFilter { created_after: hour.clone(), ..Default::default() }).await,
        [cancelled, underscore, percent]
    );
    assert_eq!(
        search(JobFilter {
            created_after: Some(TimeBound::Ago(86400)),
            created_before: hour.clone(),
            ..Default::default()
        })
        .await,
        [upper]
    );
    assert_eq!(
        search(JobFilter { created_before: Some(TimeBound::parse("2d").unwrap()), ..Default::default() })
            .await,
        [plain]
    );
    assert_eq!(TimeBound::parse("2024-02-29").unwrap(), TimeBound::At("2024-02-29T00:00:00Z".into()));
    assert_eq!(TimeBound::parse("90m").unwrap(), TimeBound::Ago(5400));
    assert_eq!(
        search(JobFilter {
            created_after: Some(TimeBound::parse("2000-01-01").unwrap()),
            ..Default::default()
        })
        .await
        .len(),
        5
    );
    assert_eq!(
        search(JobFilter {
            finished_before: Some(TimeBound::parse("2000-01-01T00:00:00+01:00").unwrap()),
            ..Default::default()
        })
        .await,
        Vec::<i64>::new()
    );
    assert_eq!(search(JobFilter { finished_after: hour, ..Default::default() }).await.len(), 5);
    // Counting ignores paging.
    let failed = JobFilter { states: Some(vec!["failed".into()]), limit: 1, ..Default::default() };
    assert_eq!(admin::count(&f.client, &failed).await.unwrap(), 3);
    assert_eq!(f.ids(JobFilter { before: Some(upper), ..failed }).await, [underscore, percent]);

    // Bad criteria are refused before anything is sent, saying why.
    for bad in [
        "",
        "yesterday",
        "7y",
        "0s",
        "2026-13-01",
        "2026-02-29",
        "2026-04-31T00:00:00Z",
        "2026-12-05T25:00:00Z",
        "2026-12-05T10:00:00",
        "2026-12-05T10:00:00+1:00",
    ] {
        assert!(TimeBound::parse(bad).is_err(), "{bad:?} accepted");
    }
    for (filter, says) in [
        (JobFilter { job: Some("has space".into()), ..Default::default() }, "not a job name"),
        (JobFilter { job: Some("*".into()), ..Default::default() }, "not a job name"),
        (JobFilter { error: Some("x".repeat(201)), ..Default::default() }, "1 to 200"),
        (JobFilter { queue: Some("no/slash".into()), ..Default::default() }, "not a queue name"),
        (JobFilter { states: Some(vec!["bogus".into()]), ..Default::default() }, "unknown state"),
    ] {
        match admin::jobs(&f.client, &filter).await {
            Err(AdminError::Invalid(why)) => assert!(why.contains(says), "{why}"),
            other => panic!("{filter:?}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_bulk_retry_of_one_queues_failed_jobs_leaves_everything_else_alone() {
    let f = Fixture::new().await;
    let mut mail_failed = Vec::new();
    for _ in 0..5 {
        mail_failed.push(f.job("mail", "app.send", "failed", Some("boom"), 1.0).await);
    }
    let mail_done = f.job("mail", "app.send", "done", None, 1.0).await;
    let mail_cancelled = f.job("mail", "app.send", "cancelled", None, 1.0).await;
    let billing_failed = f.job("billing", "app.charge", "failed", Some("boom"), 1.0).await;

    let filter =
        JobFilter { queue: Some("mail".into()), states: Some(vec!["failed".into()]), ..Default::default() };
    let mut reports = Vec::new();
    let done = admin::bulk(&f.client, Action::Retry, BulkTarget::Filter(filter), "tester", |p| {
        reports.push(p.clone())
    })
    .await
    .unwrap();
    assert_eq!((done.total, done.examined, done.applied, done.refused, done.missing), (5, 5, 5, 0, 0));
    assert!(done.finished);
    assert_eq!(reports.last(), Some(&done));
    for id in &mail_failed {
        assert_eq!(f.status(*id).await.as_deref(), Some("ready"));
    }
    assert_eq!(f.status(mail_done).await.as_deref(), Some("done"));
    assert_eq!(f.status(mail_cancelled).await.as_deref(), Some("cancelled"));
    assert_eq!(f.status(billing_failed).await.as_deref(), Some("failed"));
    // A retried job that had used its attempts gets one more, as a single retry gives it.
    let row = f
        .client
        .query_one("SELECT max_attempts FROM koyo_jobs WHERE id = $1", &[&mail_failed[0]])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 4);

    // Running it again finds nothing left to do.
    let filter =
        JobFilter { queue: Some("mail".into()), states: Some(vec!["failed".into()]), ..Default::default() };
    let again =
        admin::bulk(&f.client, Action::Retry, BulkTarget::Filter(filter), "tester", |_| {}).await.unwrap();
    assert_eq!((again.total, again.applied, again.batches), (0, 0, 0));

    // A filter that narrows nothing is refused: "everything" is never one call away.
    let everything =
        admin::bulk(&f.client, Action::Delete, BulkTarget::Filter(JobFilter::default()), "t", |_| {});
    assert!(
        matches!(everything.await, Err(AdminError::Invalid(why)) if why.contains("at least one criterion"))
    );
    assert_eq!(f.status(billing_failed).await.as_deref(), Some("failed"));
}

#[tokio::test]
async fn a_selection_of_mixed_states_follows_the_rules_job_by_job() {
    let f = Fixture::new().await;
    let worker = f.worker().await;
    let failed = f.job("mail", "app.send", "failed", Some("boom"), 1.0).await;
    let done = f.job("mail", "app.send", "done", None, 1.0).await;
    let ready = f.job("mail", "app.send", "ready", None, 1.0).await;
    let running = f.job("mail", "app.send", "ready", None, 1.0).await;
    f.client
        .execute(
            "UPDATE koyo_jobs SET status = 'running', worker_id = $2, started_at = now(), attempts = 1 WHERE id = $1",
            &[&running, &worker],
        )
        .await
        .unwrap();
    let gone = i64::MAX - 1;

    let retry = admin::bulk(
        &f.client,
        Action::Retry,
        BulkTarget::Ids(vec![failed, done, ready, running, gone, failed]),
        "tester",
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!((retry.total, retry.applied, retry.refused, retry.missing), (5, 1, 3, 1));
    let why: Vec<(i64, &str, &str)> =
        retry.refusals.iter().map(|r| (r.id, r.status.as_str(), r.why.as_str())).collect();
    assert_eq!(
        why,
        [
            (done, "done", "it succeeded; enqueue a new job to run it again"),
            (ready, "ready", "it is already ready"),
            (running, "running", "a live worker is running it"),
        ]
    );
    assert_eq!(f.status(failed).await.as_deref(), Some("ready"));
    assert_eq!(f.status(done).await.as_deref(), Some("done"));
    assert_eq!(f.status(running).await.as_deref(), Some("running"));

    // Cancel: ready ones are cancelled, the live worker's job gets a cancel request with who
    // asked, a done one is refused.
    let cancel =
        admin::bulk(&f.client, Action::Cancel, BulkTarget::Ids(vec![failed, done, running]), "ops", |_| {})
            .await
            .unwrap();
    assert_eq!((cancel.applied, cancel.cancel_requested, cancel.refused), (2, 1, 1));
    assert_eq!(f.status(failed).await.as_deref(), Some("cancelled"));
    let by = f
        .client
        .query_one("SELECT cancel_requested_by FROM koyo_jobs WHERE id = $1", &[&running])
        .await
        .unwrap();
    assert_eq!(by.get::<_, Option<String>>(0).as_deref(), Some("ops"));

    // Delete: everything but the running job.
    let delete = admin::bulk(
        &f.client,
        Action::Delete,
        BulkTarget::Ids(vec![failed, done, ready, running]),
        "ops",
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!((delete.applied, delete.refused), (3, 1));
    assert_eq!(delete.refusals[0].id, running);
    assert_eq!(f.status(ready).await, None);
    assert_eq!(f.status(running).await.as_deref(), Some("running"));

    for bad in [vec![], vec![0], vec![-4]] {
        let refused = admin::bulk(&f.client, Action::Retry, BulkTarget::Ids(bad.clone()), "t", |_| {}).await;
        assert!(matches!(refused, Err(AdminError::Invalid(_))), "{bad:?}");
    }
}

#[tokio::test]
async fn a_unique_job_whose_key_another_job_holds_is_refused_and_the_rest_of_its_batch_retried() {
    let f = Fixture::new().await;
    let held = f.job("mail", "app.send", "failed", Some("boom"), 1.0).await;
    let holder = f.job("mail", "app.send", "ready", None, 1.0).await;
    let free = f.job("mail", "app.send", "failed", Some("boom"), 1.0).await;
    f.client
        .execute(
            "UPDATE koyo_jobs SET unique_key = 'app.send key:7', unique_states = 7 WHERE id = ANY($1)",
            &[&vec![held, holder]],
        )
        .await
        .unwrap();
    let filter = JobFilter { states: Some(vec!["failed".into()]), ..Default::default() };
    let done = admin::bulk(&f.client, Action::Retry, BulkTarget::Filter(filter), "t", |_| {}).await.unwrap();
    assert_eq!((done.total, done.applied, done.refused), (2, 1, 1));
    assert_eq!(
        (done.refusals[0].id, done.refusals[0].status.as_str(), done.refusals[0].why.as_str()),
        (held, "failed", "another job holds its unique key now")
    );
    assert_eq!(f.status(free).await.as_deref(), Some("ready"));
    assert_eq!(f.status(held).await.as_deref(), Some("failed"));
}

/// 100,000 failed jobs retried in batches of 1,000, while a simulated worker claims and
/// completes jobs of the same table: every batch is reported, none takes long, and the worker's
/// statements are never held up for long.
#[tokio::test]
async fn a_bulk_retry_of_100000_jobs_runs_in_short_batches_beside_a_working_worker() {
    const JOBS: i64 = 100_000;
    let f = Fixture::new().await;
    let worker = f.worker().await;
    f.client
        .execute(
            "INSERT INTO koyo_jobs (queue, job, args, status, attempts, max_attempts, finished_at, last_error)
             SELECT 'bulk', 'app.import', '\\x00'::bytea, 'failed', 3, 3, now(), 'boom ' || n
             FROM generate_series(1, $1::int8) AS n",
            &[&JOBS],
        )
        .await
        .unwrap();
    f.client
        .execute(
            "INSERT INTO koyo_jobs (queue, job, args, status) SELECT 'other', 'app.ping', '\\x00'::bytea, 'ready'
             FROM generate_series(1, 20000)",
            &[],
        )
        .await
        .unwrap();
    f.client.batch_execute("ANALYZE koyo_jobs").await.unwrap();

    // The "worker": claims 10 ready jobs of either queue (as the runtime does, skipping locked
    // rows) and completes them, over and over, timing each statement.
    let stop = Arc::new(AtomicBool::new(false));
    let worker_client = Fixture::connect(&f.db).await;
    let worker_stop = stop.clone();
    let working = tokio::spawn(async move {
        let (mut slowest, mut rounds) = (Duration::ZERO, 0u32);
        while !worker_stop.load(Ordering::SeqCst) {
            let started = Instant::now();
            let claimed: Vec<i64> = worker_client
                .query(
                    "UPDATE koyo_jobs SET status = 'running', worker_id = $1, started_at = now(), attempts = attempts + 1
                     WHERE id IN (SELECT id FROM koyo_jobs WHERE status = 'ready' ORDER BY id
                                  LIMIT 10 FOR UPDATE SKIP LOCKED)
                     RETURNING id",
                    &[&worker],
                )
                .await
                .unwrap()
                .iter()
                .map(|row| row.get(0))
                .collect();
            slowest = slowest.max(started.elapsed());
            let started = Instant::now();
            worker_client
                .execute(
                    "UPDATE koyo_jobs SET status = 'done', finished_at = now() WHERE id = ANY($1) AND status = 'running'",
                    &[&claimed],
                )
                .await
                .unwrap();
            slowest = slowest.max(started.elapsed());
            rounds += 1;
        }
        (slowest, rounds)
    });

    let started = Instant::now();
    let mut last = Instant::now();
    let mut slowest_batch = Duration::ZERO;
    let mut seen = Vec::new();
    let filter =
        JobFilter { queue: Some("bulk".into()), states: Some(vec!["failed".into()]), ..Default::default() };
    let done = admin::bulk(&f.client, Action::Retry, BulkTarget::Filter(filter), "tester", |p| {
        slowest_batch = slowest_batch.max(last.elapsed());
        last = Instant::now();
        seen.push((p.batches, p.examined, p.applied));
    })
    .await
    .unwrap();
    let took = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let (worker_slowest, rounds) = working.await.unwrap();

    assert_eq!(
        (done.total, done.examined, done.applied, done.refused, done.missing),
        (JOBS, JOBS, JOBS, 0, 0)
    );
    // 100 full batches, the last reaching the highest match.
    assert_eq!(done.batches, 100);
    assert_eq!(seen.len(), 100);
    for (i, (batches, examined, applied)) in seen.iter().enumerate() {
        assert_eq!(
            (*batches, *examined, *applied),
            (i as u32 + 1, (i as i64 + 1) * 1000, (i as i64 + 1) * 1000)
        );
    }
    let failed_left: i64 = f
        .client
        .query_one("SELECT count(*) FROM koyo_jobs WHERE queue = 'bulk' AND status = 'failed'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(failed_left, 0);
    println!(
        "bulk retry of {JOBS}: {took:?} in total, slowest batch {slowest_batch:?}; worker: {rounds} rounds, \
         slowest statement {worker_slowest:?}"
    );
    assert!(rounds > 0, "the worker never ran");
    assert!(slowest_batch < Duration::from_secs(5), "a batch took {slowest_batch:?}");
    assert!(worker_slowest < Duration::from_secs(2), "the worker waited {worker_slowest:?}");
}

// ---------------------------------------------------------------------------------------------
// The command line

fn run(f: &Fixture, args: &[&str]) -> Output {
    let url = f.db.url();
    Command::new(env!("CARGO_BIN_EXE_koyo-job-admin"))
        .args(args)
        .args(["--database-url", &url])
        .env_remove("DATABASE_URL")
        .output()
        .expect("run koyo-job-admin")
}

#[track_caller]
fn ok(output: &Output) -> String {
    let (out, err) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert_eq!(output.status.code(), Some(0), "stdout: {out}\nstderr: {err}");
    out.into_owned()
}

#[tokio::test]
async fn the_cli_searches_counts_and_bulk_retries_with_a_line_per_batch() {
    let f = Fixture::new().await;
    f.client
        .execute(
            "INSERT INTO koyo_jobs (queue, job, args, status, attempts, max_attempts, finished_at, last_error)
             SELECT 'mail', 'app.send', '\\x00'::bytea, 'failed', 3, 3, now(), 'smtp: 100% full'
             FROM generate_series(1, 2500)",
            &[],
        )
        .await
        .unwrap();
    let done = f.job("mail", "app.send", "done", None, 1.0).await;
    let other = f.job("mail", "app.other", "failed", Some("timeout"), 1.0).await;

    assert_eq!(ok(&run(&f, &["count", "--queue", "mail", "--error", "100%"])), "2500 job(s)\n");
    assert_eq!(ok(&run(&f, &["count", "--job", "app.oth*", "--json"])), "{\"count\":1}\n");
    let listed = ok(&run(&f, &["jobs", "--error", "TIMEOUT", "--created-after", "1h"]));
    assert!(listed.contains(&format!("{other} ")) && listed.lines().count() == 2, "{listed}");

    let out = ok(&run(&f, &["bulk", "retry", "--queue", "mail", "--state", "failed", "--error", "smtp"]));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "batch 1: 1000 of 2500 looked at, 1000 retried, 0 refused, 0 gone",
            "batch 2: 2000 of 2500 looked at, 2000 retried, 0 refused, 0 gone",
            "batch 3: 2500 of 2500 looked at, 2500 retried, 0 refused, 0 gone",
            "2500 job(s) retried, 0 refused, 0 gone, of 2500 in 3 batch(es)",
        ]
    );
    assert_eq!(f.status(other).await.as_deref(), Some("failed"));

    let ids = format!("{other},{done}");
    let out = ok(&run(&f, &["bulk", "delete", "--ids", &ids, "--json"]));
    assert!(out.starts_with("{\"action\":\"delete\",\"total\":2,\"applied\":2,"), "{out}");
    assert_eq!(f.status(done).await, None);

    for args in [
        &["bulk", "retry"][..],
        &["bulk", "frob", "--queue", "mail"],
        &["bulk", "retry", "--ids", "1,x"],
        &["bulk", "retry", "--ids", "1", "--queue", "mail"],
        &["bulk", "retry", "--queue", "mail", "--limit", "5"],
        &["jobs", "--created-after", "yesterday"],
        &["jobs", "--job", "has space"],
        &["show", "1", "--error", "x"],
    ] {
        let output = run(&f, args);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {}", String::from_utf8_lossy(&output.stdout));
    }
}
