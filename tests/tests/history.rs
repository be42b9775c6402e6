//! Attempt history: every attempt of a job kept with its row (bounded), written only when an
//! attempt does not succeed, and read back as one timeline by `koyo_job::admin::job` (which the
//! JSON API, the page and `koyo-job-admin show` use).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use koyo_job::admin::{self, Action, Attempt, JobDetail};
use koyo_job::{Backoff, JobId, define_job};
use koyo_job_tests::{Env, env, record};
use tokio::sync::Notify;

#[define_job(queue = "history", max_attempts = 5)]
async fn fails_twice(key: String) -> Result<(), String> {
    let attempt = koyo_job::current_job().expect("a job body knows its job").attempt;
    record(&key, format!("attempt {attempt}")).await;
    if attempt <= 2 { Err(format!("failure number {attempt}")) } else { Ok(()) }
}

#[define_job(queue = "history")]
async fn succeeds_at_once(key: String) {
    record(&key, "ran").await;
}

#[define_job(queue = "history", max_attempts = 30)]
async fn fails_every_time(key: String) -> Result<(), String> {
    let _ = key;
    let attempt = koyo_job::current_job().expect("a job body knows its job").attempt;
    Err(format!("failure number {attempt}"))
}

fn gates() -> &'static Mutex<HashMap<String, Arc<Notify>>> {
    static GATES: OnceLock<Mutex<HashMap<String, Arc<Notify>>>> = OnceLock::new();
    GATES.get_or_init(Default::default)
}

fn gate(key: &str) -> Arc<Notify> {
    gates().lock().unwrap().entry(key.to_owned()).or_default().clone()
}

#[define_job(queue = "history")]
async fn waits_for_gate(key: String) {
    record(&key, "started").await;
    gate(&key).notified().await;
}

async fn detail(env: &Env, id: JobId) -> JobDetail {
    let client = env.broker.client().await.unwrap();
    admin::job(&client, id.0).await.unwrap().expect("the job exists")
}

/// The timeline as (attempt, outcome, error) for comparing.
fn outline(history: &[Attempt]) -> Vec<(i32, String, Option<String>)> {
    history.iter().map(|a| (a.attempt, a.outcome.clone(), a.error.clone())).collect()
}

/// The stored log: its length (NULL when there is none) and the dropped count.
async fn stored_log(env: &Env, id: JobId) -> (Option<i32>, Option<i32>) {
    let rows = env
        .query(
            "SELECT jsonb_array_length(attempt_log), attempt_log_dropped FROM koyo_jobs WHERE id = $1",
            &[&id.0],
        )
        .await;
    (rows[0].get(0), rows[0].get(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_fails_twice_then_succeeds_shows_three_attempts() {
    let env = env().await;
    let id = fails_twice(env.key.clone()).enqueue_on(&env.broker).await.unwrap();
    let worker = env.worker().queue("history").start().await.unwrap();
    let worker_id = worker.id();
    env.wait_for_status(id, "done", Duration::from_secs(10)).await;
    worker.shutdown().await;

    let job = detail(&env, id).await;
    let outcomes: Vec<(i32, &str)> = job.history.iter().map(|a| (a.attempt, a.outcome.as_str())).collect();
    assert_eq!(outcomes, [(1, "retry"), (2, "retry"), (3, "done")], "{:#?}", job.history);
    for (attempt, n) in job.history[..2].iter().zip(1..) {
        let error = attempt.error.as_deref().unwrap_or_default();
        assert!(error.contains(&format!("failure number {n}")), "{attempt:?}");
        // Recorded while the worker was registered: its host is kept with the attempt.
        assert!(attempt.hostname.as_deref().is_some_and(|h| !h.is_empty()), "{attempt:?}");
    }
    assert_eq!(job.history[2].error, None, "the successful attempt has no error");
    for attempt in &job.history {
        assert_eq!(attempt.worker_id, Some(worker_id), "{attempt:?}");
        let (started, ended) = (attempt.started_at.as_deref().unwrap(), attempt.ended_at.as_deref().unwrap());
        assert!(started <= ended, "{attempt:?}");
        assert!(attempt.duration_secs.is_some_and(|d| (0.0..10.0).contains(&d)), "{attempt:?}");
    }
    assert!(job.history[0].ended_at <= job.history[1].started_at, "{:#?}", job.history);
    assert_eq!(job.history_dropped, 0);
    assert_eq!(stored_log(&env, id).await, (Some(2), None), "the two failed attempts are stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_attempt_that_succeeds_writes_no_log() {
    let env = env().await;
    let id = succeeds_at_once(env.key.clone()).enqueue_on(&env.broker).await.unwrap();
    let fresh = detail(&env, id).await;
    assert!(fresh.history.is_empty(), "a job that never started has no attempt: {:?}", fresh.history);

    let worker = env.worker().queue("history").start().await.unwrap();
    env.wait_for_status(id, "done", Duration::from_secs(10)).await;
    worker.shutdown().await;
    assert_eq!(stored_log(&env, id).await, (None, None), "nothing written beyond the row's own columns");
    let job = detail(&env, id).await;
    assert_eq!(outline(&job.history), [(1, "done".to_owned(), None)]);
    assert_eq!(job.history[0].started_at, job.started_at);
    assert_eq!(job.history[0].ended_at, job.finished_at);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_attempt_is_open_ended() {
    let env = env().await;
    let id = waits_for_gate(env.key.clone()).enqueue_on(&env.broker).await.unwrap();
    let worker = env.worker().queue("history").start().await.unwrap();
    env.wait_for_status(id, "running", Duration::from_secs(10)).await;
    let job = detail(&env, id).await;
    assert_eq!(job.history.len(), 1, "{:?}", job.history);
    let running = &job.history[0];
    assert_eq!(
        (running.attempt, running.outcome.as_str(), running.ended_at.as_deref()),
        (1, "running", None)
    );
    assert_eq!(running.worker_id, Some(worker.id()));
    assert!(running.hostname.is_some(), "the worker is registered: {running:?}");
    assert!(running.duration_secs.is_some_and(|d| d >= 0.0), "{running:?}");
    gate(&env.key).notify_one();
    env.wait_for_status(id, "done", Duration::from_secs(10)).await;
    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_keeps_the_latest_25_attempts_and_counts_the_dropped_ones() {
    let env = env().await;
    let id = fails_every_time(env.key.clone()).enqueue_on(&env.broker).await.unwrap();
    let worker = env
        .worker()
        .queue("history")
        .backoff(Backoff::exponential(Duration::from_millis(1), Duration::from_millis(1)))
        .start()
        .await
        .unwrap();
    env.wait_for_status(id, "failed", Duration::from_secs(30)).await;
    worker.shutdown().await;

    // 29 retries: the first 4 dropped, 5 to 29 kept; the 30th, final attempt is the row's own.
    assert_eq!(stored_log(&env, id).await, (Some(25), Some(4)));
    let job = detail(&env, id).await;
    assert_eq!(job.history_dropped, 4);
    assert_eq!(job.history.len(), 26, "{:#?}", job.history);
    let numbers: Vec<i32> = job.history.iter().map(|a| a.attempt).collect();
    assert_eq!(numbers, (5..=30).collect::<Vec<_>>());
    assert!(job.history[..25].iter().all(|a| a.outcome == "retry"), "{:#?}", job.history);
    assert!(job.history[0].error.as_deref().unwrap().contains("failure number 5"), "{:?}", job.history[0]);
    let last = job.history.last().unwrap();
    assert_eq!(last.outcome, "failed");
    let error = last.error.as_deref().unwrap();
    assert!(error.contains("failure number 30") && error.contains("no attempts left"), "{error}");
}

/// A worker that stopped heartbeating (as a killed process does) with a job running: the next
/// live worker rescues the job, which shows the lost attempt and then the one that finished it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_rescued_from_a_lost_worker_shows_the_lost_attempt() {
    let env = env().await;
    let id = succeeds_at_once(env.key.clone()).enqueue_on(&env.broker).await.unwrap();
    let lost: i64 = env
        .query(
            "INSERT INTO koyo_workers (hostname, pid, queues, pool_size, heartbeat_at, lease_secs)
             VALUES ('vanished-host', 4242, ARRAY['history'], 1, now() - interval '1 hour', 2) RETURNING id",
            &[],
        )
        .await[0]
        .get(0);
    env.query(
        "UPDATE koyo_jobs SET status = 'running', attempts = 1, started_at = now() - interval '1 hour 1 minute',
                              worker_id = $2
         WHERE id = $1",
        &[&id.0, &lost],
    )
    .await;
    let worker = env.worker().queue("history").start().await.unwrap();
    env.wait_for_status(id, "done", Duration::from_secs(10)).await;
    worker.shutdown().await;

    let job = detail(&env, id).await;
    let outcomes: Vec<(i32, &str)> = job.history.iter().map(|a| (a.attempt, a.outcome.as_str())).collect();
    assert_eq!(outcomes, [(1, "lost"), (2, "done")], "{:#?}", job.history);
    let lost_attempt = &job.history[0];
    assert_eq!(lost_attempt.worker_id, Some(lost));
    assert_eq!(lost_attempt.hostname.as_deref(), Some("vanished-host"), "looked up before its row went");
    assert!(
        lost_attempt.error.as_deref().unwrap().contains(&format!("worker {lost} was lost during attempt 1")),
        "{lost_attempt:?}"
    );
    assert!(lost_attempt.duration_secs.is_some_and(|d| d >= 3600.0), "{lost_attempt:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_given_back_at_shutdown_shares_its_number_with_the_next() {
    let env = env().await;
    let id = waits_for_gate(env.key.clone()).enqueue_on(&env.broker).await.unwrap();
    let worker =
        env.worker().queue("history").shutdown_grace(Duration::from_millis(200)).start().await.unwrap();
    env.wait_for_status(id, "running", Duration::from_secs(10)).await;
    worker.shutdown().await;
    assert_eq!(env.job(id).await.status, "ready");

    gate(&env.key).notify_one();
    let worker = env.worker().queue("history").start().await.unwrap();
    env.wait_for_status(id, "done", Duration::from_secs(10)).await;
    worker.shutdown().await;
    let job = detail(&env, id).await;
    let outcomes: Vec<(i32, &str)> = job.history.iter().map(|a| (a.attempt, a.outcome.as_str())).collect();
    assert_eq!(outcomes, [(1, "given back"), (1, "done")], "{:#?}", job.history);
    assert!(job.history[0].error.as_deref().unwrap().contains("released at worker shutdown"));
    assert_ne!(job.history[0].worker_id, job.history[1].worker_id, "two workers ran it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_no_worker_defines_records_each_claim_as_not_run() {
    let env = env().await;
    env.query(
        "INSERT INTO koyo_jobs (queue, job, args) VALUES ('history', 'gone.from.this.binary', '\\x00'::bytea)",
        &[],
    )
    .await;
    let worker = env.worker().queue("history").start().await.unwrap();
    env.wait_for_count(
        "SELECT count(*) FROM koyo_jobs WHERE status = 'scheduled' AND attempt_log IS NOT NULL",
        1,
        Duration::from_secs(10),
    )
    .await;
    worker.shutdown().await;
    let id: i64 = env.query("SELECT id FROM koyo_jobs", &[]).await[0].get(0);
    let job = detail(&env, JobId(id)).await;
    assert_eq!(job.history.len(), 1, "{:#?}", job.history);
    assert_eq!((job.history[0].attempt, job.history[0].outcome.as_str()), (1, "not run"));
    assert!(job.history[0].error.as_deref().unwrap().contains("gone.from.this.binary"));
    assert_eq!(job.attempts, 0, "not counted");
}

/// An operator's retry of a failed job keeps the failed attempt: the row's columns are reused
/// by the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_retry_keeps_the_final_attempt_in_the_history() {
    let env = env().await;
    let id = fails_twice(env.key.clone()).enqueue_on(&env.broker).await.unwrap();
    env.query("UPDATE koyo_jobs SET max_attempts = 1 WHERE id = $1", &[&id.0]).await;
    let worker = env.worker().queue("history").start().await.unwrap();
    env.wait_for_status(id, "failed", Duration::from_secs(10)).await;
    let client = env.broker.client().await.unwrap();
    let finished =
        format!("SELECT count(*) FROM koyo_jobs WHERE id = {} AND status IN ('failed', 'done')", id.0);
    for _ in 0..2 {
        admin::apply(&client, id.0, Action::Retry).await.unwrap();
        env.wait_for_count(&finished, 1, Duration::from_secs(10)).await;
    }
    worker.shutdown().await;
    let job = detail(&env, id).await;
    assert_eq!(job.status, "done");
    let outcomes: Vec<(i32, &str)> = job.history.iter().map(|a| (a.attempt, a.outcome.as_str())).collect();
    assert_eq!(outcomes, [(1, "failed"), (2, "failed"), (3, "done")], "{:#?}", job.history);
    assert!(job.history[1].error.as_deref().unwrap().contains("failure number 2"), "{:?}", job.history[1]);
}
