//! Errors and log lines that say what to do: a database that was never migrated, one migrated
//! by an older koyo-job, and jobs waiting on a queue that no worker of the process serves.
//!
//! This test binary installs a process-wide `tracing` subscriber that keeps every log line
//! (`koyo_job_tests::chaos::LogCapture`), so the tests can read what was logged.

use std::time::Duration;

use koyo_job::testing::TestDatabase;
use koyo_job::{Broker, BrokerOptions, Error, Worker};
use koyo_job_tests::chaos::{LogCapture, LogTo, ledger_job};
use koyo_job_tests::poll_until;

fn broker_on(db: &TestDatabase) -> Broker {
    Broker::new(db.config().clone(), BrokerOptions::default()).unwrap()
}

fn says_how_to_migrate(message: &str) {
    assert!(message.contains("koyo-job-migrate"), "{message}");
    assert!(message.contains("koyo_job::migrate(&broker)"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_was_never_migrated_is_named_as_such_with_the_fix() {
    let db = TestDatabase::create().await.unwrap();
    let broker = broker_on(&db);

    let started = Worker::builder(broker.clone()).start().await;
    let Err(error @ Error::SchemaMissing { .. }) = started else { panic!("{started:?}") };
    says_how_to_migrate(&error.to_string());

    let enqueued = ledger_job(1, 0).enqueue_on(&broker).await;
    let Err(error @ Error::SchemaMissing { .. }) = enqueued else { panic!("{enqueued:?}") };
    let message = error.to_string();
    says_how_to_migrate(&message);
    assert!(message.contains("koyo_jobs"), "{message}");

    // Inside the caller's own transaction too.
    let mut client = broker.client().await.unwrap();
    let tx = client.transaction().await.unwrap();
    let enqueued = ledger_job(2, 0).enqueue_in(&tx).await;
    assert!(matches!(enqueued, Err(Error::SchemaMissing { .. })), "{enqueued:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_older_than_the_build_is_named_with_both_versions() {
    let db = TestDatabase::create().await.unwrap();
    let broker = broker_on(&db);
    koyo_job::migrate(&broker).await.unwrap();
    // As if the newest migrations had not been applied yet.
    let client = broker.client().await.unwrap();
    let latest: i32 =
        client.query_one("SELECT max(version) FROM koyo_job_migrations", &[]).await.unwrap().get(0);
    assert!(latest > 1);
    client.execute("DELETE FROM koyo_job_migrations WHERE version > 1", &[]).await.unwrap();

    let started = Worker::builder(broker.clone()).start().await;
    let Err(error @ Error::SchemaOutdated { .. }) = started else { panic!("{started:?}") };
    let message = error.to_string();
    says_how_to_migrate(&message);
    assert!(message.contains("version 1") && message.contains(&format!("version {latest}")), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_on_a_queue_no_worker_serves_are_pointed_out() {
    let logs = LogCapture::install(LogTo::Memory);
    let env = koyo_job_tests::env().await;
    // The chaos jobs linked into this binary use queues `chaos`, `gated` and `burst`.
    let worker = env.worker().queue("default").start().await.unwrap();
    let started = logs.lines().into_iter().find(|l| l.contains("koyo-job worker started"));
    assert!(started.is_some_and(|l| l.contains("default")));
    let warned = poll_until(Duration::from_secs(10), || async {
        logs.lines()
            .into_iter()
            .find(|l| l.contains("no worker in this process serves") && l.contains("chaos.ledger"))
    })
    .await;
    worker.shutdown().await;
    let line = warned.expect("a warning naming the unserved queue and its jobs");
    assert!(line.contains("queue=chaos") || line.contains("queue=\"chaos\""), "{line}");
    assert!(line.contains(".queue(\"chaos\")"), "{line}");
    // Served queues are not named.
    assert!(
        !logs
            .lines()
            .iter()
            .any(|l| l.contains("no worker in this process serves") && l.contains("queue=default"))
    );
}
