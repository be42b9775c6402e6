//! Fleet-wide queue limits: at most N of a queue's jobs running at once across every worker
//! process, and at most N starts in any window of a period; set, changed and removed at run
//! time; enforced inside the claim, so several worker processes claiming at once never exceed
//! them.

use std::time::Duration;

use koyo_job::admin::{self, QueueLimits};
use koyo_job_tests::chaos::{
    ChaosDb, ChaosWorker, Execution, WorkerArgs, fleet_peak_concurrency, ledger_job, noop_job,
};
use time::OffsetDateTime;

const WORKER: &str = env!("CARGO_BIN_EXE_chaos_worker");

async fn set(db: &ChaosDb, queue: &str, limits: QueueLimits) -> QueueLimits {
    let client = db.broker.client().await.unwrap();
    admin::set_limits(&client, queue, &limits, "the limits test").await.unwrap()
}

async fn spawn_workers(db: &ChaosDb, n: usize, args: impl Fn(usize) -> WorkerArgs) -> Vec<ChaosWorker> {
    let mut workers = Vec::new();
    for i in 0..n {
        workers.push(ChaosWorker::spawn(WORKER, db.url(), args(i)).await);
    }
    workers
}

async fn stop(workers: Vec<ChaosWorker>) {
    for mut worker in workers {
        worker.terminate(Duration::from_secs(20)).await;
    }
}

/// Three worker processes of 4 slots each (12 in all) and a queue limited to 3 running: the
/// ledger never shows more than 3 bodies at once, shows 3 at some point (the limit is reached,
/// not undershot), and every job ran exactly once. Raising the limit at run time lets more run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_limited_to_n_running_never_runs_more_across_worker_processes() {
    let db = ChaosDb::create().await;
    set(&db, "chaos", QueueLimits { max_running: Some(3), ..QueueLimits::default() }).await;
    let workers =
        spawn_workers(&db, 3, |i| WorkerArgs::new(&format!("w{i}")).pool(4).poll_ms(200).lease_ms(3000))
            .await;
    db.broker.enqueue_many((0..24).map(|n| ledger_job(n, 150))).await.unwrap();
    db.expect_count(
        "waiting",
        "SELECT count(*) FROM koyo_jobs WHERE status = 'done'",
        Duration::from_secs(60),
        |n| n == 24,
    )
    .await;
    let runs = db.executions().await;
    assert_eq!(runs.len(), 24, "each job ran once");
    let peak = fleet_peak_concurrency(&runs);
    assert_eq!(peak, 3, "at most 3 running at once, and the limit is reached");

    // Raised at run time: the same workers run up to 8 at once.
    set(&db, "chaos", QueueLimits { max_running: Some(8), ..QueueLimits::default() }).await;
    db.broker.enqueue_many((100..132).map(|n| ledger_job(n, 300))).await.unwrap();
    db.expect_count(
        "waiting",
        "SELECT count(*) FROM koyo_jobs WHERE status = 'done'",
        Duration::from_secs(60),
        |n| n == 56,
    )
    .await;
    let later: Vec<Execution> = db.executions().await.into_iter().filter(|e| e.n >= 100).collect();
    let peak = fleet_peak_concurrency(&later);
    assert!((4..=8).contains(&peak), "with the limit raised to 8, {peak} ran at once");
    stop(workers).await;
}

/// A rate limit of 5 starts per second over two worker processes: no window of one second
/// holds more than 5 starts (by the database's clock, which the limit uses), and the queue
/// keeps to the rate rather than far below it (a worker looks again when the window has room,
/// not only at its next poll).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_queue_starts_at_most_n_per_period_and_keeps_to_the_rate() {
    let db = ChaosDb::create().await;
    set(
        &db,
        "burst",
        QueueLimits { rate_limit: Some(5), rate_period_secs: Some(1.0), ..QueueLimits::default() },
    )
    .await;
    // Polls rarely, so that keeping to the rate shows the room timer at work.
    let workers = spawn_workers(&db, 2, |i| {
        WorkerArgs::new(&format!("r{i}")).queues(&["burst"]).pool(8).poll_ms(5000).lease_ms(15_000)
    })
    .await;
    db.broker.enqueue_many((0..20).map(noop_job)).await.unwrap();
    db.expect_count(
        "waiting",
        "SELECT count(*) FROM koyo_jobs WHERE status = 'done'",
        Duration::from_secs(30),
        |n| n == 20,
    )
    .await;
    let starts: Vec<f64> = db
        .query("SELECT EXTRACT(EPOCH FROM started_at)::float8 FROM koyo_jobs ORDER BY started_at", &[])
        .await
        .iter()
        .map(|row| row.get(0))
        .collect();
    for (i, first) in starts.iter().enumerate() {
        let within = starts[i..].iter().take_while(|t| **t < first + 1.0).count();
        assert!(within <= 5, "{within} starts within one second from {first}: {starts:?}");
    }
    let span = starts[19] - starts[0];
    // 20 starts at 5 per second: the last window opens 3 s after the first.
    assert!(span >= 3.0, "20 starts in {span:.2} s");
    assert!(span < 5.0, "20 starts took {span:.2} s at a limit of 5/s: {starts:?}");
    stop(workers).await;
}

/// Removing a limit at run time lets the queue's waiting jobs run at once, on the plain claim;
/// a paused queue stays paused whatever its limits; a worker that serves a limited queue and an
/// unlimited one keeps running the unlimited one's jobs while the limited one is full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_change_at_run_time_and_leave_other_queues_alone() {
    let db = ChaosDb::create().await;
    set(&db, "chaos", QueueLimits { max_running: Some(1), ..QueueLimits::default() }).await;
    let workers = spawn_workers(&db, 1, |_| WorkerArgs::new("m").queues(&["chaos", "burst"]).pool(6)).await;
    // One long job holds the limited queue's only place.
    db.broker.enqueue(ledger_job(1, 60_000)).await.unwrap();
    db.expect_count(
        "waiting",
        "SELECT count(*) FROM koyo_jobs WHERE status = 'running'",
        Duration::from_secs(10),
        |n| n == 1,
    )
    .await;
    db.broker.enqueue_many((2..6).map(|n| ledger_job(n, 0))).await.unwrap();
    // The unlimited queue's jobs run meanwhile.
    db.broker.enqueue_many((10..20).map(noop_job)).await.unwrap();
    db.expect_count(
        "waiting",
        "SELECT count(*) FROM koyo_jobs WHERE status = 'done' AND queue = 'burst'",
        Duration::from_secs(10),
        |n| n == 10,
    )
    .await;
    assert_eq!(
        db.count("SELECT count(*) FROM koyo_jobs WHERE status = 'ready' AND queue = 'chaos'").await,
        4
    );

    // Paused with a limit: nothing more starts; removing the limit does not unpause.
    let client = db.broker.client().await.unwrap();
    admin::pause(&client, "chaos", "the limits test").await.unwrap();
    set(&db, "chaos", QueueLimits::default()).await;
    let queues = admin::queues(&client).await.unwrap();
    let chaos = queues.iter().find(|q| q.queue == "chaos").unwrap();
    assert_eq!((chaos.limits.clone(), chaos.paused_at.is_some()), (QueueLimits::default(), true));
    // Every worker has looked at the table since (a heartbeat after the change).
    let since = OffsetDateTime::now_utc();
    let looked = koyo_job_tests::poll_until(Duration::from_secs(10), || async {
        let rows = db.query("SELECT count(*) FROM koyo_workers WHERE heartbeat_at > $1", &[&since]).await;
        (rows[0].get::<_, i64>(0) == 1).then_some(())
    })
    .await;
    assert!(looked.is_some(), "the worker sent no heartbeat for 10 s");
    assert_eq!(
        db.count("SELECT count(*) FROM koyo_jobs WHERE status = 'ready' AND queue = 'chaos'").await,
        4
    );

    // Resumed without a limit: the 4 waiting jobs run beside the long one at once.
    admin::resume(&client, "chaos").await.unwrap();
    db.expect_count(
        "waiting",
        "SELECT count(*) FROM koyo_jobs WHERE status = 'done' AND queue = 'chaos'",
        Duration::from_secs(10),
        |n| n == 4,
    )
    .await;
    stop(workers).await;
}

/// Limits out of range, half a rate, or a bad queue name are refused with a message that says
/// what is allowed, and change nothing.
#[tokio::test]
async fn bad_limits_are_refused_and_change_nothing() {
    let db = ChaosDb::create().await;
    let client = db.broker.client().await.unwrap();
    let bad = [
        (QueueLimits { max_running: Some(0), ..QueueLimits::default() }, "max_running is a number of jobs"),
        (QueueLimits { max_running: Some(-3), ..QueueLimits::default() }, "max_running is a number of jobs"),
        (QueueLimits { max_running: Some(1_000_001), ..QueueLimits::default() }, "from 1 to 1000000"),
        (
            QueueLimits { rate_limit: Some(5), ..QueueLimits::default() },
            "needs both rate_limit and rate_period_secs",
        ),
        (QueueLimits { rate_period_secs: Some(1.0), ..QueueLimits::default() }, "needs both"),
        (
            QueueLimits { rate_limit: Some(0), rate_period_secs: Some(1.0), ..QueueLimits::default() },
            "rate_limit is",
        ),
        (
            QueueLimits { rate_limit: Some(5), rate_period_secs: Some(f64::NAN), ..QueueLimits::default() },
            "seconds",
        ),
        (
            QueueLimits {
                rate_limit: Some(5),
                rate_period_secs: Some(f64::INFINITY),
                ..QueueLimits::default()
            },
            "seconds",
        ),
        (
            QueueLimits { rate_limit: Some(5), rate_period_secs: Some(0.0), ..QueueLimits::default() },
            "seconds",
        ),
        (
            QueueLimits { rate_limit: Some(5), rate_period_secs: Some(-1.0), ..QueueLimits::default() },
            "seconds",
        ),
    ];
    for (limits, message) in bad {
        let error = admin::set_limits(&client, "chaos", &limits, "t").await.unwrap_err().to_string();
        assert!(error.contains(message), "{limits:?}: {error}");
    }
    let error = admin::set_limits(&client, "no spaces", &QueueLimits::default(), "t").await.unwrap_err();
    assert!(error.to_string().contains("not a queue name"), "{error}");
    let error =
        admin::set_limits(&client, "chaos", &QueueLimits::default(), &"x".repeat(201)).await.unwrap_err();
    assert!(error.to_string().contains("200 bytes"), "{error}");
    assert_eq!(db.count("SELECT count(*) FROM koyo_queues").await, 0);
}
