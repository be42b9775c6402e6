//! Unique jobs: one row per key however many enqueue it at once, through every entry point,
//! with a typed answer that names the job that holds the key.

use std::time::Duration;

use koyo_job::{Enqueued, JobId, JobState, Unique, define_job, enqueue_each_in, schedule_in};
use koyo_job_tests::{env, record};

#[define_job(queue = "uniq", unique)]
async fn refresh(key: String, feed: i64) {
    record(&key, format!("refresh {feed}")).await;
}

#[define_job(queue = "uniq_queue", unique = "queue")]
async fn sweep(key: String, n: i64) {
    record(&key, format!("sweep {n}")).await;
}

#[define_job(queue = "uniq_hourly", unique_for = "1h")]
async fn hourly_report(key: String) {
    record(&key, "report").await;
}

#[define_job(queue = "uniq")]
async fn plain(key: String, n: i64) {
    record(&key, format!("plain {n}")).await;
}

async fn count(env: &koyo_job_tests::Env, sql: &str) -> i64 {
    env.query(sql, &[]).await[0].get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_concurrent_enqueuers_store_one_job_and_all_learn_its_id() {
    let env = env().await;
    for feed in 0..10 {
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let (broker, key) = (env.broker.clone(), env.key.clone());
            tasks.push(tokio::spawn(async move { refresh(key, feed).enqueue_on(&broker).await.unwrap() }));
        }
        let mut answers = Vec::new();
        for task in tasks {
            answers.push(task.await.unwrap());
        }
        let created: Vec<JobId> =
            answers.iter().filter(|a| a.is_created()).map(|a| a.id().unwrap()).collect();
        assert_eq!(created.len(), 1, "feed {feed}: {answers:?}");
        let id = created[0];
        assert!(
            answers.iter().all(|a| *a == Enqueued::Created(id) || *a == Enqueued::Existing(id)),
            "feed {feed}: {answers:?}"
        );
    }
    assert_eq!(count(&env, "SELECT count(*) FROM koyo_jobs").await, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_entry_point_answers_with_the_job_that_holds_the_key() {
    let env = env().await;
    let key = env.key.clone();
    let id = koyo_job::with_broker(env.broker.clone(), async {
        // The awaited stub of a job defined unique.
        let first = refresh(key.clone(), 1).await.unwrap();
        let Enqueued::Created(id) = first else { panic!("{first:?}") };
        assert_eq!(refresh(key.clone(), 1).await.unwrap(), Enqueued::Existing(id));
        // Other arguments: another job.
        assert!(refresh(key.clone(), 2).await.unwrap().is_created());
        // Scheduled for later, it still holds the key.
        let later = schedule_in(Duration::from_secs(3600), refresh(key.clone(), 3)).await.unwrap();
        assert!(later.is_created());
        assert_eq!(refresh(key.clone(), 3).await.unwrap(), Enqueued::Existing(later.id().unwrap()));
        // A plain job made unique for one call, by a key of the application's.
        let by_key = plain(key.clone(), 1).unique(Unique::by_key("nightly-export")).await.unwrap();
        assert!(by_key.is_created());
        let again = plain(key.clone(), 2).unique(Unique::by_key("nightly-export")).await.unwrap();
        assert_eq!(again, Enqueued::Existing(by_key.id().unwrap()));
        // Broker::enqueue gives the id of the job that holds the key.
        assert_eq!(env.broker.enqueue(refresh(key.clone(), 1)).await.unwrap(), id);
        id
    })
    .await;

    // Operators see the key in the job's detail.
    let detail = koyo_job::admin::job(&env.broker.client().await.unwrap(), id.0).await.unwrap().unwrap();
    let shown = detail.unique_key.unwrap_or_default();
    assert!(shown.starts_with(refresh(String::new(), 0).name()) && shown.contains(" args:"), "{shown}");

    // In a transaction: a rollback frees the key, a commit holds it.
    let mut client = env.broker.client().await.unwrap();
    let tx = client.transaction().await.unwrap();
    let inside = refresh(key.clone(), 10).enqueue_in(&tx).await.unwrap();
    assert!(inside.is_created());
    assert_eq!(
        refresh(key.clone(), 10).enqueue_in(&tx).await.unwrap(),
        Enqueued::Existing(inside.id().unwrap())
    );
    tx.rollback().await.unwrap();
    let after_rollback = refresh(key.clone(), 10).enqueue_on(&env.broker).await.unwrap();
    assert!(after_rollback.is_created(), "{after_rollback:?}");

    // In bulk: each item's answer, in order; plain jobs among them are stored as usual.
    let answers = env
        .broker
        .enqueue_each(vec![
            refresh(key.clone(), 20).into_new_job_for_tests(),
            plain(key.clone(), 20).into_new_job_for_tests(),
            refresh(key.clone(), 20).into_new_job_for_tests(),
            refresh(key.clone(), 1).into_new_job_for_tests(),
        ])
        .await
        .unwrap();
    assert!(answers[0].is_created() && answers[1].is_created(), "{answers:?}");
    assert_eq!(answers[2], Enqueued::Existing(answers[0].id().unwrap()));
    assert_eq!(answers[3], Enqueued::Existing(id));
    let ids = env.broker.enqueue_many([refresh(key.clone(), 20), refresh(key.clone(), 21)]).await.unwrap();
    assert_eq!(ids[0], answers[0].id().unwrap());
    let mut client = env.broker.client().await.unwrap();
    let tx = client.transaction().await.unwrap();
    let in_tx = enqueue_each_in(&tx, [refresh(key.clone(), 21), refresh(key.clone(), 22)]).await.unwrap();
    assert_eq!(in_tx[0], Enqueued::Existing(ids[1]));
    assert!(in_tx[1].is_created());
    tx.commit().await.unwrap();
}

trait ForTests {
    fn into_new_job_for_tests(self) -> koyo_job::NewJob;
}

impl<J: koyo_job::IntoNewJob> ForTests for J {
    fn into_new_job_for_tests(self) -> koyo_job::NewJob {
        self.into_new_job().unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_is_free_again_once_the_job_finished_unless_its_state_is_chosen_to_hold_it() {
    let env = env().await;
    let key = env.key.clone();
    let worker = env.worker().queues(["uniq", "uniq_queue", "uniq_hourly"]).start().await.unwrap();
    let first = refresh(key.clone(), 1).enqueue_on(&env.broker).await.unwrap();
    env.wait_for_status(first.id().unwrap(), "done", Duration::from_secs(10)).await;
    // Done: the key is free (default states).
    let second = refresh(key.clone(), 1).enqueue_on(&env.broker).await.unwrap();
    assert!(second.is_created(), "{second:?}");
    env.wait_for_status(second.id().unwrap(), "done", Duration::from_secs(10)).await;
    // Unless `done` holds it.
    let holding = Unique::by_key("once").while_finished(&[JobState::Done]);
    let once = plain(key.clone(), 1).unique(holding.clone()).enqueue_on(&env.broker).await.unwrap();
    env.wait_for_status(once.id().unwrap(), "done", Duration::from_secs(10)).await;
    let again = plain(key.clone(), 2).unique(holding).enqueue_on(&env.broker).await.unwrap();
    assert_eq!(again, Enqueued::Existing(once.id().unwrap()));
    // Per period: a done job holds the key for the rest of its hour.
    let report = hourly_report(key.clone()).enqueue_on(&env.broker).await.unwrap();
    env.wait_for_status(report.id().unwrap(), "done", Duration::from_secs(10)).await;
    assert_eq!(
        hourly_report(key.clone()).enqueue_on(&env.broker).await.unwrap(),
        Enqueued::Existing(report.id().unwrap())
    );
    // By queue: whatever the arguments, one at a time.
    let swept =
        schedule_in(Duration::from_secs(3600), sweep(key.clone(), 1)).enqueue_on(&env.broker).await.unwrap();
    assert_eq!(
        sweep(key.clone(), 2).enqueue_on(&env.broker).await.unwrap(),
        Enqueued::Existing(swept.id().unwrap())
    );
    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_mode_moves_a_waiting_job_and_detaches_a_running_one() {
    let env = env().await;
    let key = env.key.clone();
    let debounce = || Unique::by_key("digest").replace();
    let a = schedule_in(Duration::from_secs(3600), plain(key.clone(), 1).unique(debounce()))
        .enqueue_on(&env.broker)
        .await
        .unwrap();
    let b = schedule_in(Duration::from_secs(60), plain(key.clone(), 2).unique(debounce()))
        .enqueue_on(&env.broker)
        .await
        .unwrap();
    assert_eq!(b, Enqueued::Replaced(a.id().unwrap()));
    let row = &env
        .query("SELECT count(*), max(EXTRACT(EPOCH FROM scheduled_at - now()))::float8 FROM koyo_jobs", &[])
        .await[0];
    assert_eq!(row.get::<_, i64>(0), 1, "replaced, not added");
    assert!(row.get::<_, f64>(1) < 120.0, "the run time moved to the replacement's");
    let args = koyo_job::Registry::global()
        .unwrap()
        .render_args(
            plain(key.clone(), 0).name(),
            &env.query("SELECT args FROM koyo_jobs", &[]).await[0].get::<_, Vec<u8>>(0),
        )
        .unwrap();
    assert!(args.ends_with("n: 2"), "{args}");
    // A running holder keeps running, gives up its key, and the replacement is a new job.
    env.query("UPDATE koyo_jobs SET status = 'running', worker_id = 0", &[]).await;
    let c = plain(key.clone(), 3).unique(debounce()).enqueue_on(&env.broker).await.unwrap();
    assert!(c.is_created(), "{c:?}");
    let keys = env.query("SELECT unique_key IS NULL FROM koyo_jobs ORDER BY id", &[]).await;
    assert_eq!(keys.iter().map(|r| r.get::<_, bool>(0)).collect::<Vec<_>>(), [true, false]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_that_are_not_unique_are_untouched() {
    let env = env().await;
    for _ in 0..3 {
        plain(env.key.clone(), 1).enqueue_on(&env.broker).await.unwrap();
    }
    let row =
        &env.query("SELECT count(*), count(unique_key), count(unique_states) FROM koyo_jobs", &[]).await[0];
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1), row.get::<_, i64>(2)), (3, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_cannot_retry_a_unique_job_whose_key_another_job_holds() {
    let env = env().await;
    let key = env.key.clone();
    let first = plain(key.clone(), 1).unique(Unique::by_key("k")).enqueue_on(&env.broker).await.unwrap();
    let first = first.id().unwrap();
    env.query("UPDATE koyo_jobs SET status = 'failed', finished_at = now() WHERE id = $1", &[&first.0]).await;
    let second = plain(key.clone(), 2).unique(Unique::by_key("k")).enqueue_on(&env.broker).await.unwrap();
    assert!(second.is_created(), "a failed job does not hold its key by default: {second:?}");
    let client = env.broker.client().await.unwrap();
    let refused = koyo_job::admin::apply(&client, first.0, koyo_job::admin::Action::Retry).await;
    let Err(koyo_job::admin::AdminError::Refused(why)) = refused else { panic!("{refused:?}") };
    assert!(why.contains(&format!("job {} holds the same key", second.id().unwrap())), "{why}");
    // Once that one is gone, the retry goes through.
    env.query("DELETE FROM koyo_jobs WHERE id = $1", &[&second.id().unwrap().0]).await;
    let applied = koyo_job::admin::apply(&client, first.0, koyo_job::admin::Action::Retry).await.unwrap();
    assert_eq!(applied.status.as_deref(), Some("ready"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_synchronous_mode_a_unique_job_runs_in_place() {
    let env = env().await;
    let answer = koyo_job::run_jobs_inline(async { refresh(env.key.clone(), 1).await }).await.unwrap();
    assert_eq!(answer, Enqueued::RanInline);
    assert_eq!(answer.id(), None);
    assert_eq!(count(&env, "SELECT count(*) FROM koyo_jobs").await, 0);
    assert_eq!(count(&env, "SELECT count(*) FROM ledger").await, 1);
}
