//! Chaos suite, periodic jobs: several worker *processes* running one schedule (one of them
//! killed mid-way), and a fleet that was down for longer than several slots.

use std::time::Duration;

use koyo_job_tests::chaos::{ChaosDb, ChaosWorker, WorkerArgs, tick_job, tick_latest_job, tick_skip_job};

const WORKER: &str = env!("CARGO_BIN_EXE_chaos_worker");

/// The slots (Unix seconds) of the jobs stored for `job`, with how many jobs each has.
async fn slots(db: &ChaosDb, job: &str) -> Vec<(i64, i64)> {
    db.query(
        "SELECT EXTRACT(EPOCH FROM scheduled_at)::int8 AS slot, count(*) FROM koyo_jobs WHERE job = $1
         GROUP BY slot ORDER BY slot",
        &[&job],
    )
    .await
    .iter()
    .map(|row| (row.get(0), row.get(1)))
    .collect()
}

/// The database's time, in Unix seconds.
async fn db_now(db: &ChaosDb) -> f64 {
    db.query("SELECT EXTRACT(EPOCH FROM now())::float8", &[]).await[0].get(0)
}

/// Three worker processes run a one-second schedule for 20 s, and one is killed half-way: every
/// slot from the first to the last has exactly one job, and each job ran once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_worker_processes_enqueue_one_job_per_slot_and_a_kill_changes_nothing() {
    let db = ChaosDb::create().await;
    let args = |label: &str| WorkerArgs::new(label).queues(&["periodic"]).pool(2).poll_ms(200).lease_ms(1000);
    let mut workers = Vec::new();
    for label in ["a", "b", "c"] {
        workers.push(ChaosWorker::spawn(WORKER, db.url(), args(label)).await);
    }
    let started = db_now(&db).await;
    let name = tick_job().name();
    db.wait_count("SELECT count(*) FROM koyo_jobs WHERE job = 'chaos.tick'", Duration::from_secs(30), |n| {
        n >= 10
    })
    .await;
    workers[1].kill();
    let killed_after = db_now(&db).await - started;
    while db_now(&db).await < started + 20.0 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (i, worker) in workers.iter_mut().enumerate() {
        if i != 1 {
            worker.terminate(Duration::from_secs(10)).await;
        }
    }
    let slots = slots(&db, name).await;
    let twice: Vec<_> = slots.iter().filter(|(_, n)| *n > 1).collect();
    assert!(twice.is_empty(), "slots with more than one job: {twice:?}");
    let gaps: Vec<_> = slots.windows(2).filter(|w| w[1].0 - w[0].0 != 1).collect();
    assert!(gaps.is_empty(), "slots without a job: {gaps:?}");
    assert!(slots.len() >= 18, "only {} slots in 20 s", slots.len());
    // Each job ran at most once, but for the one the killed worker may have been running.
    let reruns = db
        .count(
            "SELECT count(*) FROM (SELECT job_id FROM chaos_ledger GROUP BY job_id HAVING count(*) > 1) AS r",
        )
        .await;
    assert!(reruns <= 1, "{reruns} jobs ran more than once");
    eprintln!(
        "chaos[periodic]: 3 worker processes (1 killed after {killed_after:.1} s of 20), {} one-second slots, one job each, {reruns} rerun",
        slots.len()
    );
}

/// A fleet down for 10 s (over two slots of a 4 s schedule) comes back: a schedule that runs
/// the latest missed slot gets one job, for that slot, and none for the slots before it; one
/// that skips missed slots gets none until its next slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_outage_the_latest_missed_slot_runs_once_or_missed_slots_are_skipped() {
    let db = ChaosDb::create().await;
    let args = |label: &str| {
        WorkerArgs::new(label).queues(&["periodic_latest", "periodic_skip"]).pool(2).poll_ms(200)
    };
    let (latest, skip) = (tick_latest_job().name(), tick_skip_job().name());
    let mut before = ChaosWorker::spawn(WORKER, db.url(), args("before")).await;
    db.wait_count(
        "SELECT count(DISTINCT job) FROM koyo_jobs WHERE status = 'done'",
        Duration::from_secs(15),
        |n| n == 2,
    )
    .await;
    before.terminate(Duration::from_secs(10)).await;
    let down = db_now(&db).await;
    let last_before = |slots: &[(i64, i64)]| slots.iter().map(|s| s.0).max().unwrap();
    let (latest_before, skip_before) =
        (last_before(&slots(&db, latest).await), last_before(&slots(&db, skip).await));
    // Come back at least 10 s later, half-way between two slots, so that the latest slot is
    // clearly missed (2 s old) and the next one clearly ahead.
    let back = {
        let earliest = down + 10.0;
        (earliest / 4.0).ceil() * 4.0 + 2.0
    };
    while db_now(&db).await < back {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut after = ChaosWorker::spawn(WORKER, db.url(), args("after")).await;
    let missed_latest = back as i64 - 2;
    let next = missed_latest + 4;
    db.wait_count(
        &format!("SELECT count(*) FROM koyo_jobs WHERE EXTRACT(EPOCH FROM scheduled_at)::int8 = {next}"),
        Duration::from_secs(15),
        |n| n == 2,
    )
    .await;
    after.terminate(Duration::from_secs(10)).await;

    let latest_slots: Vec<i64> =
        slots(&db, latest).await.iter().map(|s| s.0).filter(|s| *s > latest_before).collect();
    assert_eq!(
        latest_slots,
        [missed_latest, next],
        "run_latest: one job for the latest missed slot, then on"
    );
    let skip_slots: Vec<i64> =
        slots(&db, skip).await.iter().map(|s| s.0).filter(|s| *s > skip_before).collect();
    assert_eq!(skip_slots, [next], "skip: nothing for the missed slots");
    let caught_up: f64 = db
        .query(
            "SELECT EXTRACT(EPOCH FROM created_at - scheduled_at)::float8 FROM koyo_jobs
             WHERE job = $1 AND EXTRACT(EPOCH FROM scheduled_at)::int8 = $2",
            &[&latest, &missed_latest],
        )
        .await[0]
        .get(0);
    eprintln!(
        "chaos[periodic outage]: down {:.1} s; run_latest enqueued slot {missed_latest} {caught_up:.1} s late on return, skip enqueued none of the {} missed slots",
        back - down,
        (missed_latest - skip_before) / 4
    );
}
