//! Running jobs: order, scheduling, retries, failures, panics, concurrency, several workers,
//! shutdown, unknown jobs, corrupt arguments and middleware.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use koyo_job::{JobId, JobInfo, Next, define_job, retry};
use koyo_job_tests::{Env, env, record};
use tokio::sync::Notify;

#[define_job(queue = "order")]
async fn ordered(key: String, label: String) {
    record(&key, label).await;
}

#[define_job(queue = "later")]
async fn stamped(key: String) {
    record(&key, "ran").await;
}

#[define_job(queue = "retry", max_attempts = 5)]
async fn retry_once(key: String) {
    record(&key, "attempt").await;
    let client = koyo_job_tests::broker_for(&key).client().await.unwrap();
    let n: i64 = client.query_one("SELECT count(*) FROM ledger", &[]).await.unwrap().get(0);
    if n == 1 {
        retry!(Duration::from_millis(10), format!("try again after attempt {n}"));
    }
}

#[define_job(queue = "retry")]
async fn retry_plain(key: String) {
    record(&key, "plain").await;
    retry!();
}

#[define_job(queue = "fail", max_attempts = 3)]
async fn always_fails(key: String) -> Result<(), String> {
    let job = koyo_job::current_job().expect("a job body knows its job");
    record(&key, format!("attempt {} of {} ({})", job.attempt, job.max_attempts, job.name)).await;
    Err("the mail server said no".to_owned())
}

#[define_job(queue = "fail", max_attempts = 2)]
async fn always_panics(key: String) {
    record(&key, "attempt").await;
    panic!("index out of bounds, on purpose");
}

#[define_job(queue = "fail", max_attempts = 2, timeout = "100ms")]
async fn too_slow(key: String) {
    record(&key, "attempt").await;
    tokio::time::sleep(Duration::from_secs(30)).await;
}

fn gauges() -> &'static Mutex<HashMap<String, Arc<Gauge>>> {
    static GAUGES: OnceLock<Mutex<HashMap<String, Arc<Gauge>>>> = OnceLock::new();
    GAUGES.get_or_init(Default::default)
}

#[derive(Default)]
struct Gauge {
    now: AtomicUsize,
    peak: AtomicUsize,
}

fn gauge(key: &str) -> Arc<Gauge> {
    gauges().lock().unwrap().entry(key.to_owned()).or_default().clone()
}

#[define_job(queue = "busy")]
async fn busy(key: String, n: i32) {
    let g = gauge(&key);
    let now = g.now.fetch_add(1, Ordering::SeqCst) + 1;
    g.peak.fetch_max(now, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(30)).await;
    g.now.fetch_sub(1, Ordering::SeqCst);
    koyo_job_tests::broker_for(&key)
        .client()
        .await
        .unwrap()
        .execute("INSERT INTO ledger (label, job_id) VALUES ('ran', $1)", &[&(n as i64)])
        .await
        .unwrap();
}

fn gates() -> &'static Mutex<HashMap<String, Arc<Notify>>> {
    static GATES: OnceLock<Mutex<HashMap<String, Arc<Notify>>>> = OnceLock::new();
    GATES.get_or_init(Default::default)
}

fn gate(key: &str) -> Arc<Notify> {
    gates().lock().unwrap().entry(key.to_owned()).or_default().clone()
}

/// Runs until its test opens the gate.
#[define_job(queue = "slow")]
async fn waits_for_gate(key: String) {
    record(&key, "started").await;
    gate(&key).notified().await;
    record(&key, "finished").await;
}

/// A short job on the prefetch tests' queue.
#[define_job(queue = "prefetch")]
async fn quick(key: String, n: i32) {
    record(&key, format!("quick {n}")).await;
}

/// Holds its slot on the prefetch tests' queue until its test opens the gate.
#[define_job(queue = "prefetch")]
async fn holds_the_slot(key: String) {
    record(&key, "holding").await;
    gate(&key).notified().await;
    record(&key, "released").await;
}

#[define_job(queue = "corrupt")]
async fn takes_a_string(key: String, text: String) {
    record(&key, text).await;
}

async fn enqueue_ordered(env: &Env, label: &str, priority: i16) -> JobId {
    ordered(env.key.clone(), label.to_owned()).with_priority(priority).enqueue_on(&env.broker).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lower_priority_runs_first_and_fifo_within_a_priority() {
    let env = env().await;
    enqueue_ordered(&env, "p50-a", 50).await;
    enqueue_ordered(&env, "p10-a", 10).await;
    enqueue_ordered(&env, "p50-b", 50).await;
    enqueue_ordered(&env, "p0", 0).await;
    enqueue_ordered(&env, "p10-b", 10).await;
    enqueue_ordered(&env, "p50-c", 50).await;
    let worker = env.worker().queue("order").pool_size(1).start().await.unwrap();
    env.wait_for_count("SELECT count(*) FROM ledger", 6, Duration::from_secs(10)).await;
    worker.shutdown().await;
    assert_eq!(env.ledger().await, ["p0", "p10-a", "p10-b", "p50-a", "p50-b", "p50-c"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_job_is_not_run_early_and_is_run_soon_after() {
    let env = env().await;
    let worker =
        env.worker().queue("later").poll_interval(Duration::from_secs(5)).lease(Duration::from_secs(20));
    let worker = worker.start().await.unwrap();
    let id = koyo_job::schedule_in(Duration::from_millis(1500), stamped(env.key.clone()))
        .enqueue_on(&env.broker)
        .await
        .unwrap();
    let row = env.wait_for_status(id, "done", Duration::from_secs(10)).await;
    worker.shutdown().await;
    let started = row.started_at.unwrap();
    assert!(started >= row.scheduled_at, "started {started} before {}", row.scheduled_at);
    // The worker sleeps until the due time (it polls only every 5 s here): prompt, not a lottery.
    let late = started - row.scheduled_at;
    assert!(late < time::Duration::milliseconds(500), "started {late} after its time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_reruns_the_job_counting_the_attempt_and_storing_the_reason() {
    let env = env().await;
    let id = retry_once(env.key.clone()).enqueue_on(&env.broker).await.unwrap();
    let worker = env.worker().queue("retry").start().await.unwrap();
    let row = env.wait_for_status(id, "done", Duration::from_secs(10)).await;
    worker.shutdown().await;
    assert_eq!(row.attempts, 2);
    let error = row.last_error.unwrap();
    assert!(error.contains("try again after attempt 1"), "{error}");
    assert_eq!(env.ledger().await, ["attempt", "attempt"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_on_the_last_attempt_ends_failed() {
    let env = env().await;
    let id = retry_plain(env.key.clone()).enqueue_on(&env.broker).await.unwrap();
    env.query("UPDATE koyo_jobs SET max_attempts = 2 WHERE id = $1", &[&id.0]).await;
    let worker = env.worker().queue("retry").start().await.unwrap();
    let row = env.wait_for_status(id, "failed", Duration::from_secs(10)).await;
    worker.shutdown().await;
    assert_eq!(row.attempts, 2);
    assert!(row.last_error.unwrap().contains("no attempts left"));
    assert!(row.finished_at.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_is_retried_with_backoff_then_fails_with_the_message() {
    let env = env().await;
    let id = always_fails(env.key.clone()).enqueue_on(&env.broker).await.unwrap();
    let worker = env.worker().queue("fail").start().await.unwrap();
    let row = env.wait_for_status(id, "failed", Duration::from_secs(10)).await;
    worker.shutdown().await;
    assert_eq!((row.attempts, row.max_attempts), (3, 3));
    let error = row.last_error.unwrap();
    assert!(error.contains("the mail server said no"), "{error}");
    assert_eq!(
        env.ledger().await,
        [1, 2, 3].map(|n| format!("attempt {n} of 3 (worker::always_fails)")),
        "current_job() tells the body which attempt it is"
    );
    assert!(koyo_job::current_job().is_none(), "no job outside a job body");
    let times: Vec<time::OffsetDateTime> =
        env.query("SELECT at FROM ledger ORDER BY seq", &[]).await.iter().map(|r| r.get(0)).collect();
    assert_eq!(times.len(), 3);
    // Backoff is 50 ms doubling (±25 %), capped at 200 ms in these tests.
    for gap in times.windows(2).map(|w| w[1] - w[0]) {
        assert!(gap >= time::Duration::milliseconds(35), "retried after only {gap}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_is_a_failed_attempt_with_the_panic_message() {
    let env = env().await;
    let id = always_panics(env.key.clone()).enqueue_on(&env.broker).await.unwrap();
    let worker = env.worker().queue("fail").start().await.unwrap();
    let row = env.wait_for_status(id, "failed", Duration::from_secs(10)).await;
    assert_eq!(row.attempts, 2);
    assert!(row.last_error.unwrap().contains("panicked: index out of bounds, on purpose"));
    // The worker survived: it still runs jobs.
    let next = always_fails(env.key.clone()).enqueue_on(&env.broker).await.unwrap();
    env.wait_for_status(next, "failed", Duration::from_secs(10)).await;
    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_past_its_timeout_is_dropped_and_fails() {
    let env = env().await;
    let id = too_slow(env.key.clone()).enqueue_on(&env.broker).await.unwrap();
    let worker = env.worker().queue("fail").start().await.unwrap();
    let row = env.wait_for_status(id, "failed", Duration::from_secs(10)).await;
    worker.shutdown().await;
    assert_eq!(row.attempts, 2);
    assert!(row.last_error.unwrap().contains("timed out after 100ms"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_size_bounds_concurrency() {
    let env = env().await;
    let jobs: Vec<_> = (0..40).map(|n| busy(env.key.clone(), n)).collect();
    env.broker.enqueue_many(jobs).await.unwrap();
    let worker = env.worker().queue("busy").pool_size(4).start().await.unwrap();
    env.wait_for_count("SELECT count(*) FROM ledger", 40, Duration::from_secs(20)).await;
    worker.shutdown().await;
    let peak = gauge(&env.key).peak.load(Ordering::SeqCst);
    assert_eq!(peak, 4, "at most pool_size jobs at once, and the pool is used");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_on_one_queue_never_run_a_job_twice() {
    let env = env().await;
    let n = 300;
    let jobs: Vec<_> = (0..n).map(|i| busy(env.key.clone(), i)).collect();
    env.broker.enqueue_many(jobs).await.unwrap();
    let a = env.worker().queue("busy").pool_size(8).start().await.unwrap();
    let b = env.worker().queue("busy").pool_size(8).start().await.unwrap();
    env.wait_for_count(
        "SELECT count(*) FROM koyo_jobs WHERE status = 'done'",
        n as i64,
        Duration::from_secs(30),
    )
    .await;
    a.shutdown().await;
    b.shutdown().await;
    let row = &env.query("SELECT count(*), count(DISTINCT job_id) FROM ledger", &[]).await[0];
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (n as i64, n as i64));
    let by_worker: i64 = env.query("SELECT count(DISTINCT worker_id) FROM koyo_jobs", &[]).await[0].get(0);
    assert_eq!(by_worker, 2, "both workers took part");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_running_jobs_within_the_grace() {
    let env = env().await;
    let id = waits_for_gate(env.key.clone()).enqueue_on(&env.broker).await.unwrap();
    let worker = env.worker().queue("slow").shutdown_grace(Duration::from_secs(10)).start().await.unwrap();
    env.wait_for_status(id, "running", Duration::from_secs(10)).await;
    let opener = {
        let g = gate(&env.key);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            g.notify_one();
        })
    };
    worker.shutdown().await;
    opener.await.unwrap();
    assert_eq!(env.job(id).await.status, "done");
    assert_eq!(env.ledger().await, ["started", "finished"]);
    let workers: i64 = env.query("SELECT count(*) FROM koyo_workers", &[]).await[0].get(0);
    assert_eq!(workers, 0, "the worker removed its row");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_gives_back_jobs_that_outlast_the_grace() {
    let env = env().await;
    let id = waits_for_gate(env.key.clone()).enqueue_on(&env.broker).await.unwrap();
    let worker = env.worker().queue("slow").shutdown_grace(Duration::from_millis(200)).start().await.unwrap();
    env.wait_for_status(id, "running", Duration::from_secs(10)).await;
    worker.shutdown().await;
    let row = env.job(id).await;
    assert_eq!(row.status, "ready");
    assert_eq!(row.attempts, 0, "the interrupted attempt does not count");
    assert!(row.last_error.unwrap().contains("released at worker shutdown"));
    assert_eq!(env.ledger().await, ["started"], "the job body was stopped");

    // Another worker finishes it.
    gate(&env.key).notify_one();
    let worker = env.worker().queue("slow").start().await.unwrap();
    env.wait_for_status(id, "done", Duration::from_secs(10)).await;
    worker.shutdown().await;
}

/// Waits until worker `worker_id` has heartbeated `n` more times (each tick also gives back
/// claims in its name that it does not hold).
async fn wait_for_ticks(env: &Env, worker_id: i64, n: usize) {
    let beat = || async {
        let rows = env.query("SELECT heartbeat_at FROM koyo_workers WHERE id = $1", &[&worker_id]).await;
        rows[0].get::<_, time::OffsetDateTime>(0)
    };
    for _ in 0..n {
        let last = beat().await;
        let next = koyo_job_tests::poll_until(Duration::from_secs(5), || async {
            (beat().await > last).then_some(())
        })
        .await;
        assert!(next.is_some(), "worker {worker_id} stopped heartbeating");
    }
}

/// Jobs claimed ahead of a free slot are `running` under the worker, which keeps holding them
/// (its ticks do not give them back as lost claims); at shutdown it gives them back at once,
/// without waiting for the running job, and their attempt does not count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetched_jobs_are_held_then_given_back_uncounted_at_shutdown_without_waiting() {
    let env = env().await;
    // Short jobs first, so the worker drains a backlog and learns how long its jobs take; then
    // one that holds the only slot; then short jobs for the worker to claim ahead.
    env.broker.enqueue_many((0..20).map(|n| quick(env.key.clone(), n))).await.unwrap();
    let holder = holds_the_slot(env.key.clone()).enqueue_on(&env.broker).await.unwrap();
    let behind = env.broker.enqueue_many((100..110).map(|n| quick(env.key.clone(), n))).await.unwrap();
    let worker = env
        .worker()
        .queue("prefetch")
        .pool_size(1)
        .prefetch(3)
        .shutdown_grace(Duration::from_secs(60))
        .start()
        .await
        .unwrap();
    let worker_id = worker.id();

    let prefetched_sql = "SELECT coalesce(array_agg(id ORDER BY id), '{}') FROM koyo_jobs
                          WHERE status = 'running' AND worker_id = $1 AND id <> $2";
    // Quick jobs that ran before the holder stay `running` in the table until the completer
    // writes their results (a few milliseconds later): wait for only the claimed-ahead ones.
    let is_behind = |id: &i64| behind.iter().any(|b| b.0 == *id);
    let prefetched: Vec<i64> = koyo_job_tests::poll_until(Duration::from_secs(10), || async {
        let holding = env.job(holder).await.status == "running";
        let ids: Vec<i64> = env.query(prefetched_sql, &[&worker_id, &holder.0]).await[0].get(0);
        (holding && !ids.is_empty() && ids.iter().all(is_behind)).then_some(ids)
    })
    .await
    .expect("the worker claims jobs ahead while its only slot is busy");
    assert!(prefetched.len() <= 3, "at most `prefetch` jobs ahead: {prefetched:?}");

    // Two more ticks, each of which gives back claims the worker does not hold: these stay.
    wait_for_ticks(&env, worker_id, 2).await;
    let still: Vec<i64> = env.query(prefetched_sql, &[&worker_id, &holder.0]).await[0].get(0);
    assert!(prefetched.iter().all(|id| still.contains(id)), "prefetched {prefetched:?}, now held {still:?}");

    // Shutdown gives the prefetched jobs back at once, while the holder still runs.
    let stopping = tokio::spawn(worker.shutdown());
    let given_back = koyo_job_tests::poll_until(Duration::from_secs(10), || async {
        let ready: i64 = env
            .query("SELECT count(*) FROM koyo_jobs WHERE id = ANY($1) AND status = 'ready'", &[&prefetched])
            .await[0]
            .get(0);
        (ready == prefetched.len() as i64).then_some(())
    })
    .await;
    assert!(given_back.is_some(), "the prefetched jobs were not given back while the holder ran");
    assert_eq!(env.job(holder).await.status, "running", "shutdown waits for the running job");
    gate(&env.key).notify_one();
    stopping.await.unwrap();

    assert_eq!(env.job(holder).await.status, "done");
    for id in &behind {
        let row = env.job(*id).await;
        assert_eq!((row.status.as_str(), row.attempts), ("ready", 0), "job {id}: {row:?}");
        assert_eq!(row.last_error, None, "job {id} never started: {row:?}");
    }
    let ledger = env.ledger().await;
    let mut expected: Vec<String> = (0..20).map(|n| format!("quick {n}")).collect();
    expected.extend(["holding".to_owned(), "released".to_owned()]);
    assert_eq!(ledger, expected, "no prefetched job started");

    // Another worker runs them.
    let worker = env.worker().queue("prefetch").start().await.unwrap();
    env.wait_for_count(
        "SELECT count(*) FROM koyo_jobs WHERE status = 'done' AND attempts = 1",
        31,
        Duration::from_secs(10),
    )
    .await;
    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_zero_claims_only_free_slots() {
    let env = env().await;
    env.broker.enqueue_many((0..20).map(|n| quick(env.key.clone(), n))).await.unwrap();
    let holder = holds_the_slot(env.key.clone()).enqueue_on(&env.broker).await.unwrap();
    env.broker.enqueue_many((100..110).map(|n| quick(env.key.clone(), n))).await.unwrap();
    let worker = env.worker().queue("prefetch").pool_size(1).prefetch(0).start().await.unwrap();
    env.wait_for_status(holder, "running", Duration::from_secs(10)).await;
    // Two ticks later the worker still holds only the running job.
    let worker_id = worker.id();
    wait_for_ticks(&env, worker_id, 2).await;
    let running: i64 =
        env.query("SELECT count(*) FROM koyo_jobs WHERE status = 'running'", &[]).await[0].get(0);
    assert_eq!(running, 1, "only the job in the slot is claimed");
    gate(&env.key).notify_one();
    env.wait_for_count("SELECT count(*) FROM koyo_jobs WHERE status = 'done'", 31, Duration::from_secs(10))
        .await;
    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_this_binary_does_not_know_waits_with_a_message() {
    let env = env().await;
    env.query(
        "INSERT INTO koyo_jobs (queue, job, args) VALUES ('order', 'gone.from.this.binary', '\\x00'::bytea)",
        &[],
    )
    .await;
    let worker = env.worker().queue("order").start().await.unwrap();
    env.wait_for_count(
        "SELECT count(*) FROM koyo_jobs WHERE status = 'scheduled' AND last_error IS NOT NULL",
        1,
        Duration::from_secs(10),
    )
    .await;
    worker.shutdown().await;
    let rows = env.query("SELECT attempts, last_error, scheduled_at > now() FROM koyo_jobs", &[]).await;
    assert_eq!(rows[0].get::<_, i32>(0), 0, "not counted as an attempt");
    assert!(rows[0].get::<_, String>(1).contains("gone.from.this.binary"));
    assert!(rows[0].get::<_, bool>(2), "put back for later");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_argument_bytes_fail_the_job_with_a_clear_error_and_the_worker_lives_on() {
    let env = env().await;
    let name = takes_a_string(String::new(), String::new()).name();
    let key_bytes = {
        // (key, "x") encoded by hand: varint length then bytes, twice.
        let mut b = vec![env.key.len() as u8];
        b.extend_from_slice(env.key.as_bytes());
        b
    };
    let mut truncated = key_bytes.clone();
    truncated.extend_from_slice(&[5, b'a']);
    let mut huge_prefix = key_bytes.clone();
    huge_prefix.extend_from_slice(&[0xFD, 0, 0, 0, 0, 0, 1, 0, 0]);
    let mut trailing = key_bytes.clone();
    trailing.extend_from_slice(&[1, b'x', 0xFF, 0xFF]);
    let cases: [(&str, Vec<u8>); 4] = [
        ("truncated", truncated),
        ("huge length prefix", huge_prefix),
        ("trailing bytes", trailing),
        ("empty", vec![]),
    ];
    let mut ids = Vec::new();
    for (_, bytes) in &cases {
        let row = &env
            .query(
                "INSERT INTO koyo_jobs (queue, job, args) VALUES ('corrupt', $1, $2) RETURNING id",
                &[&name, bytes],
            )
            .await[0];
        ids.push(JobId(row.get(0)));
    }
    let worker = env.worker().queue("corrupt").start().await.unwrap();
    for (id, (what, _)) in ids.iter().zip(&cases) {
        let row = env.wait_for_status(*id, "failed", Duration::from_secs(10)).await;
        let error = row.last_error.unwrap();
        assert!(error.contains("job arguments"), "{what}: {error}");
        assert_eq!(row.attempts, 1, "{what}: decoding errors are not retried");
    }
    // Still alive: a good job runs.
    let ok = takes_a_string(env.key.clone(), "fine".into()).enqueue_on(&env.broker).await.unwrap();
    env.wait_for_status(ok, "done", Duration::from_secs(10)).await;
    worker.shutdown().await;
    assert_eq!(env.ledger().await, ["fine"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn middleware_wraps_every_run_and_sees_the_job() {
    let env = env().await;
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = seen.clone();
    let middleware = move |job: JobInfo, next: Next| {
        let log = log.clone();
        async move {
            let outcome = next.run().await;
            log.lock().unwrap().push(format!(
                "{} {} {} {} {:?}",
                job.id.0 > 0,
                job.queue,
                job.name,
                job.attempt,
                outcome
            ));
            outcome
        }
    };
    let id = always_fails(env.key.clone()).enqueue_on(&env.broker).await.unwrap();
    let worker = env.worker().queue("fail").middleware(middleware).start().await.unwrap();
    env.wait_for_status(id, "failed", Duration::from_secs(10)).await;
    worker.shutdown().await;
    let seen = seen.lock().unwrap().clone();
    let err = "Err(Error(\"the mail server said no\"))";
    assert_eq!(seen, [1, 2, 3].map(|n| format!("true fail worker::always_fails {n} {err}")),);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_worker_notices_new_jobs_through_notifications() {
    let env = env().await;
    let worker = env.listening_worker("order").await;
    let id = enqueue_ordered(&env, "woken", 1).await;
    env.wait_for_status(id, "done", Duration::from_secs(5)).await;
    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_only_worker_finds_jobs_without_notifications() {
    let env = env().await;
    let worker = env.worker().queue("order").listen(false).start().await.unwrap();
    let id = enqueue_ordered(&env, "polled", 1).await;
    env.wait_for_status(id, "done", Duration::from_secs(5)).await;
    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_jobs_are_deleted_after_their_retention() {
    let env = env().await;
    // Old history: 2,500 done jobs finished two hours ago, one failed job and one recent done job.
    env.query(
        "INSERT INTO koyo_jobs (queue, job, args, status, worker_id, finished_at)
         SELECT 'history', 'old', '\\x00', 'done', 1, now() - interval '2 hours' FROM generate_series(1, 2500)",
        &[],
    )
    .await;
    env.query(
        "INSERT INTO koyo_jobs (queue, job, args, status, worker_id, finished_at) VALUES
         ('history', 'old', '\\x00', 'failed', 1, now() - interval '2 hours'),
         ('history', 'recent', '\\x00', 'done', 1, now())",
        &[],
    )
    .await;
    let retention = koyo_job::Retention {
        done: Some(Duration::from_secs(3600)),
        failed: None,
        cancelled: Some(Duration::from_secs(3600)),
    };
    let worker =
        env.worker().queue("history").retention(retention).prune_interval(Duration::from_millis(100));
    let worker = worker.start().await.unwrap();
    // All 2,500 expired rows go, in batches of 1,000.
    env.wait_for_count("SELECT count(*) FROM koyo_jobs", 2, Duration::from_secs(10)).await;
    worker.shutdown().await;
    let left: Vec<(String, String)> = env
        .query("SELECT status, job FROM koyo_jobs ORDER BY status", &[])
        .await
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(left, [("done".to_owned(), "recent".to_owned()), ("failed".to_owned(), "old".to_owned())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_serves_several_queues_and_ignores_others() {
    let env = env().await;
    let a = enqueue_ordered(&env, "from order", 5).await;
    let b = stamped(env.key.clone()).enqueue_on(&env.broker).await.unwrap();
    let other = always_fails(env.key.clone()).enqueue_on(&env.broker).await.unwrap();
    // Migrating again through the pool itself is a no-op.
    koyo_job::migrate(env.broker.pool()).await.unwrap();
    let worker = env.worker().queues(["order", "later"]).start().await.unwrap();
    env.wait_for_status(a, "done", Duration::from_secs(10)).await;
    env.wait_for_status(b, "done", Duration::from_secs(10)).await;
    worker.shutdown().await;
    assert_eq!(env.job(other).await.status, "ready", "queue `fail` is not served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_zero_retention_done_jobs_are_deleted_as_they_complete() {
    let env = env().await;
    let jobs: Vec<_> = (0..50).map(|n| busy(env.key.clone(), n)).collect();
    env.broker.enqueue_many(jobs).await.unwrap();
    let failing = always_fails(env.key.clone()).enqueue_on(&env.broker).await.unwrap();
    let retention = koyo_job::Retention { done: Some(Duration::ZERO), ..koyo_job::Retention::default() };
    let worker = env.worker().queues(["busy", "fail"]).retention(retention).start().await.unwrap();
    env.wait_for_count("SELECT count(*) FROM ledger WHERE label = 'ran'", 50, Duration::from_secs(20)).await;
    env.wait_for_status(failing, "failed", Duration::from_secs(10)).await;
    env.wait_for_count("SELECT count(*) FROM koyo_jobs", 1, Duration::from_secs(10)).await;
    worker.shutdown().await;
    let left: i64 = env.query("SELECT count(*) FROM koyo_jobs WHERE status = 'failed'", &[]).await[0].get(0);
    assert_eq!(left, 1, "only the failed job is kept");
}

#[define_job(queue = "refused", max_attempts = 1)]
async fn fails_with(key: String, message: String) -> Result<(), String> {
    record(&key, "attempt").await;
    Err(message)
}

#[define_job(queue = "refused")]
async fn succeeds(key: String) {
    record(&key, "attempt").await;
}

/// Results the database refuses for their data (here: constraints an application added to the
/// table, SQLSTATE 23514) are each stored with a replacement error that says what happened, and
/// hold back no other result written beside them; nothing is retried for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_the_database_refuses_are_replaced_and_hold_back_no_other() {
    let env = env().await;
    env.query(
        "ALTER TABLE koyo_jobs ADD CONSTRAINT no_refuse_me CHECK (last_error IS NULL OR last_error NOT LIKE '%refuse me%') NOT VALID",
        &[],
    )
    .await;
    env.query("ALTER TABLE koyo_jobs ADD CONSTRAINT no_done_7 CHECK (NOT (status = 'done' AND priority = 7)) NOT VALID", &[])
        .await;
    let key = env.key.clone();
    let refused_error =
        fails_with(key.clone(), "please refuse me".into()).enqueue_on(&env.broker).await.unwrap();
    let refused_done = succeeds(key.clone()).with_priority(7).enqueue_on(&env.broker).await.unwrap();
    let mut failing = Vec::new();
    let mut ok = Vec::new();
    for _ in 0..10 {
        failing.push(fails_with(key.clone(), "plain".into()).enqueue_on(&env.broker).await.unwrap());
        ok.push(succeeds(key.clone()).enqueue_on(&env.broker).await.unwrap());
    }
    let worker = env.worker().queue("refused").pool_size(8).start().await.unwrap();
    for id in &ok {
        env.wait_for_status(*id, "done", Duration::from_secs(10)).await;
    }
    for id in &failing {
        let row = env.wait_for_status(*id, "failed", Duration::from_secs(10)).await;
        assert!(row.last_error.unwrap_or_default().starts_with("failed: plain"));
    }
    let row = env.wait_for_status(refused_error, "failed", Duration::from_secs(10)).await;
    let error = row.last_error.unwrap_or_default();
    assert!(error.contains("storing its error was refused by the database (23514)"), "{error}");
    let row = env.wait_for_status(refused_done, "failed", Duration::from_secs(10)).await;
    let error = row.last_error.unwrap_or_default();
    assert!(
        error.contains("it succeeded, but marking it done was refused by the database (23514)"),
        "{error}"
    );
    assert_eq!(worker.in_flight(), 0);
    worker.shutdown().await;
    let attempts: i64 = env.query("SELECT count(*) FROM ledger", &[]).await[0].get(0);
    assert_eq!(attempts, 22, "every job ran once");
}
