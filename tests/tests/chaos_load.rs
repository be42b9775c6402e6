//! Chaos suite, load: 50,000 jobs enqueued one by one in a burst (each enqueue its own
//! transaction; concurrent ones share a trailing NOTIFY), with a listening worker, then again with a poll-only
//! worker in PgBouncer mode. Scenario 10 of the reliability issue.

use std::time::{Duration, Instant};

use koyo_job::testing::PrivateCluster;
use koyo_job::{Broker, BrokerOptions};
use koyo_job_tests::chaos::{ChaosDb, ChaosWorker, WorkerArgs, noop_job};

const WORKER: &str = env!("CARGO_BIN_EXE_chaos_worker");
const N: i64 = 50_000;
const ENQUEUERS: i64 = 16;

struct Burst {
    enqueue: Duration,
    total: Duration,
    claims: i64,
    peak_queue_usage: f64,
}

/// Enqueues `N` no-op jobs one by one from `ENQUEUERS` tasks while a worker runs them; checks
/// that each ran exactly once.
async fn burst(db: &ChaosDb, broker: Broker, args: WorkerArgs) -> Burst {
    db.query("TRUNCATE koyo_jobs", &[]).await;
    let mut worker = ChaosWorker::spawn(WORKER, db.url(), args.queues(&["burst"]).pool(32)).await;
    let started = Instant::now();
    let enqueuers: Vec<_> = (0..ENQUEUERS)
        .map(|first| {
            let broker = broker.clone();
            tokio::spawn(async move {
                for n in (first..N).step_by(ENQUEUERS as usize) {
                    broker.enqueue(noop_job(n)).await.expect("enqueue");
                }
            })
        })
        .collect();
    let mut peak_queue_usage: f64 = 0.0;
    let mut enqueue = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(150);
    loop {
        let row = &db
            .query(
                "SELECT pg_notification_queue_usage(), count(*) FILTER (WHERE status = 'done') FROM koyo_jobs",
                &[],
            )
            .await[0];
        peak_queue_usage = peak_queue_usage.max(row.get(0));
        if enqueue.is_none() && enqueuers.iter().all(|t| t.is_finished()) {
            enqueue = Some(started.elapsed());
        }
        if row.get::<_, i64>(1) == N {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{} of {N} done after 150 s", row.get::<_, i64>(1));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let total = started.elapsed();
    for task in enqueuers {
        task.await.unwrap();
    }
    worker.terminate(Duration::from_secs(20)).await;
    let report =
        worker.lines().into_iter().find(|l| l.starts_with("noop-runs")).expect("the worker's report");
    assert_eq!(report, format!("noop-runs total={N} distinct={N}"), "every job ran exactly once");
    // A claim stamps all the jobs it takes with the same started_at (its transaction's time).
    let claims = db.count("SELECT count(DISTINCT started_at) FROM koyo_jobs").await;
    Burst { enqueue: enqueue.unwrap_or(total), total, claims, peak_queue_usage }
}

/// Scenario 10: 50,000 enqueues in a burst all run exactly once; the listening worker keeps up
/// with the notifications (they are coalesced: far fewer claims than jobs, and the server's
/// notification queue stays nearly empty); a poll-only worker without prepared statements
/// (PgBouncer mode) gives the same result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_50_000_enqueues_all_run_with_notifications_and_with_polling_alone() {
    let cluster = PrivateCluster::start().await.expect("a private cluster");
    let db = ChaosDb::on_cluster(&cluster, false).await;
    let config: koyo_job::tokio_postgres::Config = db.url().parse().unwrap();
    let options = BrokerOptions { max_connections: ENQUEUERS as usize, ..BrokerOptions::default() };
    let listening =
        burst(&db, Broker::new(config.clone(), options.clone()).unwrap(), WorkerArgs::new("listen")).await;
    let bouncer = BrokerOptions { prepared_statements: false, ..options };
    let polling = burst(
        &db,
        Broker::new(config, bouncer).unwrap(),
        WorkerArgs::new("poll").listen(false).prepared(false),
    )
    .await;

    for (mode, b) in [("listen", &listening), ("poll-only", &polling)] {
        eprintln!(
            "chaos[10 burst {mode}]: {N} jobs enqueued one by one from {ENQUEUERS} tasks in {:.1} s ({:.0}/s); \
             all done {:.1} s after the first enqueue ({:.1} s after the last); lost=0 duplicates=0; \
             claims={} ({:.1} jobs per claim); peak notification queue usage={:.6}",
            b.enqueue.as_secs_f64(),
            N as f64 / b.enqueue.as_secs_f64(),
            b.total.as_secs_f64(),
            (b.total - b.enqueue).as_secs_f64(),
            b.claims,
            N as f64 / b.claims as f64,
            b.peak_queue_usage,
        );
    }
    // Notifications are coalesced into claims of many jobs, not one claim per notification.
    assert!(listening.claims * 2 <= N, "{} claims for {N} jobs", listening.claims);
    // The listener keeps up: the server's notification queue (8 GB) stays nearly empty.
    assert!(listening.peak_queue_usage < 0.001, "notification queue usage {}", listening.peak_queue_usage);
}
