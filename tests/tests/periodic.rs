//! Periodic jobs in one process: schedules on definitions and added to workers, one job per
//! slot however many workers run a schedule, what `koyo_periodic` shows, and bad schedules.
//! (Worker processes, kills and outages: `chaos_periodic.rs`.)

use std::time::Duration;

use koyo_job::{Error, Periodic, Schedule, Worker, define_job};
use koyo_job_tests::{env, poll_until, record};

#[define_job(queue = "every_second", every = "1s")]
async fn every_second() {}

#[define_job(queue = "bad_zone", cron = "0 3 * * *", time_zone = "Mars/Olympus_Mons")]
async fn on_mars() {}

#[define_job(queue = "periodic_args")]
async fn digest(key: String, team: i64) {
    record(&key, format!("digest {team}")).await;
}

/// Slot times (Unix seconds) of the jobs stored for `job`, in order.
async fn slots(env: &koyo_job_tests::Env, job: &str) -> Vec<i64> {
    env.query(
        "SELECT EXTRACT(EPOCH FROM scheduled_at)::int8 FROM koyo_jobs WHERE job = $1 ORDER BY scheduled_at",
        &[&job],
    )
    .await
    .iter()
    .map(|row| row.get(0))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_run_by_several_workers_gets_one_job_per_slot() {
    let env = env().await;
    let schedule = || Schedule::parse("* * * * * *").unwrap();
    let key = env.key.clone();
    let periodic = || {
        let key = key.clone();
        Periodic::new("team-7-digest", schedule(), move || digest(key.clone(), 7))
    };
    let mut workers = Vec::new();
    for _ in 0..3 {
        workers.push(env.worker().queue("periodic_args").periodic(periodic()).start().await.unwrap());
    }
    let name = digest(String::new(), 0).name();
    let enough = poll_until(Duration::from_secs(20), || async {
        let slots = slots(&env, name).await;
        (slots.len() >= 5).then_some(slots)
    })
    .await
    .expect("five slots within 20 s");
    for worker in workers {
        worker.shutdown().await;
    }
    let all = slots(&env, name).await;
    let mut distinct = all.clone();
    distinct.dedup();
    assert_eq!(distinct, all, "a slot got two jobs: {all:?}");
    assert!(all.windows(2).all(|w| w[1] - w[0] == 1), "a slot was skipped: {all:?}");
    assert!(enough.len() >= 5);
    // Every job ran (or runs) once: the ledger has no more rows than there are jobs.
    let runs: i64 = env.query("SELECT count(*) FROM ledger", &[]).await[0].get(0);
    assert!(runs <= all.len() as i64, "{runs} runs for {} jobs", all.len());
    let row = &env
        .query("SELECT schedule, time_zone, missed, last_slot IS NOT NULL, next_slot > last_slot FROM koyo_periodic", &[])
        .await[0];
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, String>(1), row.get::<_, String>(2)),
        ("* * * * * *".to_owned(), "UTC".to_owned(), "run_latest".to_owned())
    );
    assert!(row.get::<_, bool>(3) && row.get::<_, bool>(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_defined_with_a_schedule_is_enqueued_by_the_workers_of_its_queue() {
    let env = env().await;
    let name = every_second().name();
    // A worker on another queue does not run it.
    let other = env.worker().queue("periodic_args").start().await.unwrap();
    let worker = env.worker().queue("every_second").start().await.unwrap();
    let done = poll_until(Duration::from_secs(20), || async {
        let n: i64 =
            env.query("SELECT count(*) FROM koyo_jobs WHERE job = $1 AND status = 'done'", &[&name]).await[0]
                .get(0);
        (n >= 2).then_some(n)
    })
    .await;
    worker.shutdown().await;
    other.shutdown().await;
    assert!(done.is_some(), "the defined schedule's jobs ran");
    let rows = env.query("SELECT name, job, queue, schedule FROM koyo_periodic", &[]).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, String>(0), name);
    assert_eq!(rows[0].get::<_, String>(2), "every_second");
    assert_eq!(rows[0].get::<_, String>(3), "@every 1s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_schedules_are_typed_errors_before_anything_runs() {
    let env = env().await;
    // On a definition, a zone this machine's database does not know stops the worker's start.
    let started = env.worker().queue("bad_zone").start().await;
    let Err(Error::Schedule { name, source }) = started else { panic!("{started:?}") };
    assert_eq!(name, on_mars().name());
    assert!(source.to_string().contains("Mars/Olympus_Mons"), "{source}");
    // Added to a worker: the schedule itself is checked when it is built.
    assert!(Schedule::parse("61 * * * *").is_err());
    assert!(Schedule::parse("@every 0s").is_err());
    assert!(Schedule::parse("0 3 * * *").unwrap().in_time_zone("Nowhere/Else").is_err());
    // Two schedules of one name.
    let key = env.key.clone();
    let twice = |n| {
        let key = key.clone();
        Periodic::new("same", Schedule::parse("@hourly").unwrap(), move || digest(key.clone(), n))
    };
    let started = Worker::builder(env.broker.clone()).periodic(twice(1)).periodic(twice(2)).start().await;
    assert!(matches!(started, Err(Error::WorkerConfig(ref why)) if why.contains("\"same\"")), "{started:?}");
    let long_name =
        Periodic::new("x".repeat(201), Schedule::parse("@hourly").unwrap(), || digest(String::new(), 0));
    let started = Worker::builder(env.broker.clone()).periodic(long_name).start().await;
    assert!(matches!(started, Err(Error::WorkerConfig(_))), "{started:?}");
    let stored: i64 = env.query("SELECT count(*) FROM koyo_jobs", &[]).await[0].get(0);
    assert_eq!(stored, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_schedule_stops_and_a_changed_one_takes_effect_at_the_next_start() {
    let env = env().await;
    let key = env.key.clone();
    let schedule = |name: &str, text: &str, team: i64| {
        let key = key.clone();
        Periodic::new(name, Schedule::parse(text).unwrap(), move || digest(key.clone(), team))
    };
    let count = |team: i64| {
        let env = &env;
        async move {
            env.query(
                "SELECT count(*) FROM koyo_jobs WHERE unique_key LIKE $1",
                &[&format!("% key:periodic {} %", if team == 1 { "doomed" } else { "kept" })],
            )
            .await[0]
                .get::<_, i64>(0)
        }
    };
    let first = env
        .worker()
        .queue("periodic_args")
        .periodic(schedule("doomed", "@every 1s", 1))
        .periodic(schedule("kept", "@every 1s", 2))
        .start()
        .await
        .unwrap();
    poll_until(Duration::from_secs(15), || async { (count(1).await >= 2).then_some(()) })
        .await
        .expect("doomed ran");
    first.shutdown().await;
    let doomed_before = count(1).await;
    // Restarted without `doomed`, and with `kept` every 2 s instead of every second.
    let second =
        env.worker().queue("periodic_args").periodic(schedule("kept", "@every 2s", 2)).start().await.unwrap();
    let kept_at_restart = count(2).await;
    poll_until(Duration::from_secs(20), || async { (count(2).await >= kept_at_restart + 3).then_some(()) })
        .await
        .expect("kept went on");
    second.shutdown().await;
    assert_eq!(count(1).await, doomed_before, "the removed schedule enqueued nothing more");
    let changed: String =
        env.query("SELECT schedule FROM koyo_periodic WHERE name = 'kept'", &[]).await[0].get(0);
    assert_eq!(changed, "@every 2s");
    let late: Vec<i64> = env
        .query(
            "SELECT EXTRACT(EPOCH FROM scheduled_at)::int8 FROM koyo_jobs
             WHERE unique_key LIKE '% key:periodic kept %' ORDER BY scheduled_at DESC LIMIT 3",
            &[],
        )
        .await
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(late.iter().all(|slot| slot % 2 == 0), "the new expression's slots: {late:?}");
}
