//! Transactional completion, read-only servers, and the PgBouncer-friendly mode.

use std::time::Duration;

use koyo_job::{Broker, BrokerOptions, Error, define_job};
use koyo_job_tests::{broker_for, env};

#[define_job(queue = "tx")]
async fn credit(key: String, account: i64, cents: i64, fail_after: bool) -> Result<(), Error> {
    let broker = broker_for(&key);
    let mut client = broker.client().await?;
    let tx = client.transaction().await?;
    tx.execute("UPDATE accounts SET cents = cents + $2 WHERE id = $1", &[&account, &cents]).await?;
    koyo_job::complete_in(&tx).await?;
    if fail_after {
        // Rolled back: neither the credit nor the completion happened; the attempt fails.
        tx.rollback().await?;
        return Err(Error::NotInJob);
    }
    tx.commit().await?;
    Ok(())
}

#[define_job(queue = "tx")]
async fn steals_its_own_job(key: String) -> Result<(), Error> {
    let broker = broker_for(&key);
    let mut client = broker.client().await?;
    // Once is enough: after the rescue gives the job back, later runs do nothing.
    if client.query_one("SELECT count(*) FROM ledger", &[]).await?.get::<_, i64>(0) > 0 {
        return Ok(());
    }
    // Pretend another worker took the job over: the row is no longer ours.
    client.execute("UPDATE koyo_jobs SET worker_id = worker_id + 1000 WHERE status = 'running'", &[]).await?;
    let tx = client.transaction().await?;
    tx.execute("UPDATE accounts SET cents = cents + 1 WHERE id = 1", &[]).await?;
    let lost = koyo_job::complete_in(&tx).await;
    drop(tx);
    client.execute("INSERT INTO ledger (label) VALUES ($1)", &[&format!("{lost:?}")]).await.ok();
    Ok(())
}

#[define_job(queue = "plain")]
async fn noop(key: String) {
    koyo_job_tests::record(&key, "ran").await;
}

async fn balance(env: &koyo_job_tests::Env) -> i64 {
    env.query("SELECT cents FROM accounts WHERE id = 1", &[]).await[0].get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_and_its_own_writes_commit_together() {
    let env = env().await;
    env.query("CREATE TABLE accounts (id bigint PRIMARY KEY, cents bigint NOT NULL)", &[]).await;
    env.query("INSERT INTO accounts VALUES (1, 0)", &[]).await;
    let worker = env.worker().queue("tx").start().await.unwrap();

    let ok = credit(env.key.clone(), 1, 500, false).enqueue_on(&env.broker).await.unwrap();
    let row = env.wait_for_status(ok, "done", Duration::from_secs(10)).await;
    assert_eq!(row.attempts, 1);
    assert_eq!(balance(&env).await, 500);

    // Rolled back after complete_in: the job is not done and the credit did not happen; it
    // retries and fails the same way each time.
    let bad = credit(env.key.clone(), 1, 7, true).enqueue_on(&env.broker).await.unwrap();
    env.query("UPDATE koyo_jobs SET max_attempts = 2 WHERE id = $1", &[&bad.0]).await;
    let row = env.wait_for_status(bad, "failed", Duration::from_secs(10)).await;
    worker.shutdown().await;
    assert_eq!(row.attempts, 2);
    assert_eq!(balance(&env).await, 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_in_refuses_when_the_lease_was_lost() {
    let env = env().await;
    env.query("CREATE TABLE accounts (id bigint PRIMARY KEY, cents bigint NOT NULL)", &[]).await;
    env.query("INSERT INTO accounts VALUES (1, 0)", &[]).await;
    let worker = env.worker().queue("tx").start().await.unwrap();
    steals_its_own_job(env.key.clone()).enqueue_on(&env.broker).await.unwrap();
    env.wait_for_count("SELECT count(*) FROM ledger", 1, Duration::from_secs(10)).await;
    worker.shutdown().await;
    let ledger = env.ledger().await;
    assert!(ledger[0].contains("LeaseLost"), "{ledger:?}");
    // The stale attempt's transaction was rolled back: its write never happened.
    assert_eq!(balance(&env).await, 0);
}

#[tokio::test]
async fn complete_in_outside_a_job_is_an_error() {
    let env = env().await;
    let client = env.broker.client().await.unwrap();
    assert!(matches!(koyo_job::complete_in(&client).await, Err(Error::NotInJob)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_database_is_reported_as_such() {
    let env = env().await;
    let sql = format!("ALTER DATABASE \"{}\" SET default_transaction_read_only = on", env.db.name());
    env.query(&sql, &[]).await;
    // New connections see the setting.
    let broker = Broker::new(env.db.config().clone(), BrokerOptions::default()).unwrap();
    let err = noop(env.key.clone()).enqueue_on(&broker).await.unwrap_err();
    assert!(matches!(err, Error::ReadOnly(_)), "{err:?}");
    assert!(err.to_string().contains("read-only"), "{err}");
    let err = koyo_job::Worker::builder(broker).queue("plain").start().await.unwrap_err();
    assert!(matches!(err, Error::ReadOnly(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_prepared_statements_or_listen_everything_still_works() {
    let env = env().await;
    let options = BrokerOptions { prepared_statements: false, ..BrokerOptions::default() };
    let broker = Broker::new(env.db.config().clone(), options).unwrap();
    let ids = broker.enqueue_many((0..20).map(|_| noop(env.key.clone()))).await.unwrap();
    broker.enqueue(noop(env.key.clone())).await.unwrap();
    let worker = koyo_job::Worker::builder(broker)
        .queue("plain")
        .listen(false)
        .poll_interval(Duration::from_millis(100))
        .lease(Duration::from_secs(1))
        .start()
        .await
        .unwrap();
    env.wait_for_count("SELECT count(*) FROM koyo_jobs WHERE status = 'done'", 21, Duration::from_secs(10))
        .await;
    worker.shutdown().await;
    assert_eq!(ids.len(), 20);
    let named: i64 = env
        .query(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN%'",
            &[],
        )
        .await[0]
        .get(0);
    assert_eq!(named, 0, "a poll-only worker never listens");
}
