//! Shared fixtures for koyo-job's integration tests: a fresh migrated database per test, a
//! ledger table jobs write to, and polling with a deadline.
//!
//! Jobs run in worker tasks, which do not see the test's task-locals, so a job finds its
//! test's database through a key passed as its first argument ([`broker_for`]).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use koyo_job::testing::TestDatabase;
use koyo_job::{Broker, BrokerOptions, JobId, Worker, WorkerBuilder};

/// One test's world: its own database, a broker on it, and the key its jobs use.
pub struct Env {
    pub broker: Broker,
    pub key: String,
    // Dropped last: drops the database.
    pub db: TestDatabase,
}

fn brokers() -> &'static Mutex<HashMap<String, Broker>> {
    static BROKERS: OnceLock<Mutex<HashMap<String, Broker>>> = OnceLock::new();
    BROKERS.get_or_init(Default::default)
}

/// The broker of the test whose key is `key` (for use inside job bodies).
pub fn broker_for(key: &str) -> Broker {
    brokers().lock().unwrap().get(key).cloned().unwrap_or_else(|| panic!("no test database for key {key}"))
}

/// A fresh database with koyo-job's tables and a `ledger` table.
pub async fn env() -> Env {
    let db = TestDatabase::create().await.expect("a PostgreSQL server for tests");
    let broker = Broker::new(db.config().clone(), BrokerOptions::default()).expect("broker");
    koyo_job::migrate(&broker).await.expect("migrate");
    broker
        .client()
        .await
        .unwrap()
        .batch_execute(
            "CREATE TABLE ledger (
                seq      bigserial PRIMARY KEY,
                job_id   bigint,
                attempt  int,
                label    text NOT NULL,
                at       timestamptz NOT NULL DEFAULT clock_timestamp()
            )",
        )
        .await
        .unwrap();
    let key = db.name().to_owned();
    brokers().lock().unwrap().insert(key.clone(), broker.clone());
    Env { broker, key, db }
}

impl Env {
    /// A worker builder with test-friendly timings (fast polls, short lease and backoff).
    pub fn worker(&self) -> WorkerBuilder {
        Worker::builder(self.broker.clone())
            .poll_interval(Duration::from_millis(100))
            .lease(Duration::from_secs(2))
            .shutdown_grace(Duration::from_secs(5))
            .backoff(koyo_job::Backoff::exponential(Duration::from_millis(50), Duration::from_millis(200)))
    }

    /// Runs one query and returns its rows.
    pub async fn query(
        &self,
        sql: &str,
        params: &[&(dyn koyo_job::tokio_postgres::types::ToSql + Sync)],
    ) -> Vec<koyo_job::tokio_postgres::Row> {
        self.broker.client().await.unwrap().query(sql, params).await.unwrap()
    }

    /// The row of job `id`.
    pub async fn job(&self, id: JobId) -> JobRow {
        let rows = self
            .query(
                "SELECT queue, job, status, priority, attempts, max_attempts, last_error,
                        scheduled_at, started_at, finished_at
                 FROM koyo_jobs WHERE id = $1",
                &[&id.0],
            )
            .await;
        let r = rows.first().unwrap_or_else(|| panic!("job {id} has no row"));
        JobRow {
            queue: r.get(0),
            name: r.get(1),
            status: r.get(2),
            priority: r.get(3),
            attempts: r.get(4),
            max_attempts: r.get(5),
            last_error: r.get(6),
            scheduled_at: r.get(7),
            started_at: r.get(8),
            finished_at: r.get(9),
        }
    }

    /// Waits until job `id` is in `status`, or panics after `within`.
    pub async fn wait_for_status(&self, id: JobId, status: &str, within: Duration) -> JobRow {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let row = self.job(id).await;
            if row.status == status {
                return row;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("job {id} is still {} (wanted {status}) after {within:?}: {row:?}", row.status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `sql` (returning one bigint) returns `want`, or panics after `within`.
    pub async fn wait_for_count(&self, sql: &str, want: i64, within: Duration) {
        let got = poll_until(within, || async {
            let n: i64 = self.query(sql, &[]).await[0].get(0);
            (n == want).then_some(n)
        })
        .await;
        assert!(got.is_some(), "{sql} never returned {want} within {within:?}");
    }

    /// Waits until a worker of this database listens for notifications and has had its
    /// first look at the table, so that from now on only a notification (or a poll) finds
    /// new jobs.
    pub async fn wait_until_listening(&self) {
        self.wait_for_count(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND query LIKE 'LISTEN koyo_jobs%'",
            1,
            Duration::from_secs(10),
        )
        .await;
        self.wait_for_count(
            "SELECT count(*) FROM koyo_workers WHERE heartbeat_at > started_at",
            1,
            Duration::from_secs(10),
        )
        .await;
    }

    /// The labels of the ledger, in the order they were written.
    pub async fn ledger(&self) -> Vec<String> {
        self.query("SELECT label FROM ledger ORDER BY seq", &[]).await.iter().map(|r| r.get(0)).collect()
    }
}

/// Polls `check` every 20 ms until it returns `Some`, for at most `within`.
pub async fn poll_until<T, F, Fut>(within: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if tokio::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Appends a row to the ledger of the test whose key is `key`.
pub async fn record(key: &str, label: impl Into<String>) {
    let label = label.into();
    broker_for(key)
        .client()
        .await
        .expect("ledger connection")
        .execute("INSERT INTO ledger (label) VALUES ($1)", &[&label])
        .await
        .expect("ledger insert");
}

/// One row of `koyo_jobs`.
#[derive(Debug, Clone)]
pub struct JobRow {
    pub queue: String,
    pub name: String,
    pub status: String,
    pub priority: i16,
    pub attempts: i32,
    pub max_attempts: i32,
    pub last_error: Option<String>,
    pub scheduled_at: time::OffsetDateTime,
    pub started_at: Option<time::OffsetDateTime>,
    pub finished_at: Option<time::OffsetDateTime>,
}
