//! Paused queues: no worker claims their jobs, enqueueing goes on, running jobs finish, and the
//! pause is stored (it outlasts workers) until an operator resumes the queue.

use std::time::Duration;

use koyo_job::{JobId, define_job};
use koyo_job_tests::{Env, env, record};
use time::OffsetDateTime;

#[define_job(queue = "pausable")]
async fn pausable(key: String, n: i64) {
    record(&key, format!("pausable {n}")).await;
}

#[define_job(queue = "other")]
async fn other(key: String, n: i64) {
    record(&key, format!("other {n}")).await;
}

async fn admin_client(env: &Env) -> koyo_job::deadpool_postgres::Object {
    env.broker.client().await.unwrap()
}

/// Waits until every registered worker has sent a heartbeat after `since`: each has since
/// claimed at least once more, by notification or by its periodic look.
async fn every_worker_looked_again(env: &Env, since: OffsetDateTime) {
    let looked = koyo_job_tests::poll_until(Duration::from_secs(10), || async {
        let behind: i64 =
            env.query("SELECT count(*) FROM koyo_workers WHERE heartbeat_at <= $1", &[&since]).await[0]
                .get(0);
        (behind == 0).then_some(())
    })
    .await;
    assert!(looked.is_some(), "a worker sent no heartbeat for 10 s");
}

async fn statuses(env: &Env, ids: &[JobId]) -> Vec<String> {
    let ids: Vec<i64> = ids.iter().map(|id| id.0).collect();
    env.query("SELECT status FROM koyo_jobs WHERE id = ANY($1) ORDER BY id", &[&ids])
        .await
        .iter()
        .map(|row| row.get(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_worker_claims_from_a_paused_queue_until_it_is_resumed() {
    let env = env().await;
    let key = env.key.clone();
    let workers = [
        env.worker().queues(["pausable", "other"]).start().await.unwrap(),
        env.worker().queues(["pausable", "other"]).start().await.unwrap(),
    ];
    let client = admin_client(&env).await;
    koyo_job::admin::pause(&client, "pausable", "the pause test").await.unwrap();

    // Enqueueing goes on while paused.
    let mut held = Vec::new();
    for n in 0..10 {
        held.push(pausable(key.clone(), n).enqueue_on(&env.broker).await.unwrap());
    }
    // The workers go on with the other queue, and look at the table again.
    let paused_at = OffsetDateTime::now_utc();
    let done = other(key.clone(), 1).enqueue_on(&env.broker).await.unwrap();
    env.wait_for_status(done, "done", Duration::from_secs(10)).await;
    every_worker_looked_again(&env, paused_at).await;
    assert!(statuses(&env, &held).await.iter().all(|s| s == "ready"), "a paused queue's job was claimed");

    let listed = koyo_job::admin::queues(&client).await.unwrap();
    let pausable_row = listed.iter().find(|q| q.queue == "pausable").unwrap();
    assert!(pausable_row.paused_at.is_some());
    assert_eq!(pausable_row.paused_by.as_deref(), Some("the pause test"));
    assert_eq!(pausable_row.ready, 10);

    // Resumed: they run, at once (the resume notifies the queue).
    assert!(koyo_job::admin::resume(&client, "pausable").await.unwrap());
    for id in &held {
        env.wait_for_status(*id, "done", Duration::from_secs(10)).await;
    }
    assert!(!koyo_job::admin::resume(&client, "pausable").await.unwrap(), "resuming twice is harmless");
    for worker in workers {
        worker.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_outlasts_the_workers_and_shows_without_jobs() {
    let env = env().await;
    let key = env.key.clone();
    let client = admin_client(&env).await;
    koyo_job::admin::pause(&client, "pausable", "").await.unwrap();
    let listed = koyo_job::admin::queues(&client).await.unwrap();
    assert_eq!(listed.len(), 1, "a paused queue is listed even without jobs: {listed:?}");
    assert!(listed[0].paused_at.is_some() && listed[0].paused_by.is_none());

    let first = env.worker().queues(["pausable", "other"]).start().await.unwrap();
    first.shutdown().await;
    let worker = env.worker().queues(["pausable", "other"]).start().await.unwrap();
    let id = pausable(key.clone(), 1).enqueue_on(&env.broker).await.unwrap();
    let since = OffsetDateTime::now_utc();
    let done = other(key.clone(), 1).enqueue_on(&env.broker).await.unwrap();
    env.wait_for_status(done, "done", Duration::from_secs(10)).await;
    every_worker_looked_again(&env, since).await;
    assert_eq!(statuses(&env, &[id]).await, ["ready"]);
    koyo_job::admin::resume(&client, "pausable").await.unwrap();
    env.wait_for_status(id, "done", Duration::from_secs(10)).await;
    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_queue_names_and_who_texts_are_refused() {
    let env = env().await;
    let client = admin_client(&env).await;
    for (queue, by) in [("no spaces", ""), ("", ""), ("ok", "nul\0byte"), ("ok", &"x".repeat(201))] {
        let refused = koyo_job::admin::pause(&client, queue, by).await;
        assert!(
            matches!(refused, Err(koyo_job::admin::AdminError::Refused(_))),
            "{queue:?} {by:?}: {refused:?}"
        );
    }
    assert!(koyo_job::admin::queues(&client).await.unwrap().is_empty());
}
