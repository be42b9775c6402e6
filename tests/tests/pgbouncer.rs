//! koyo-job behind a real PgBouncer (Debian's `pgbouncer`, a private instance per test):
//! transaction mode with `prepared_statements: false` and `listen(false)` runs every kind of
//! enqueue and job and survives a PgBouncer restart mid-drain; migrations and the admin queries
//! send no named prepared statement; the default settings in transaction mode recover (the
//! broker drops named statements and says what to set) instead of failing for ever; session
//! mode works with the default settings, LISTEN included.
//!
//! PgBouncer missing: these tests pass with a note, unless `KOYO_REQUIRE_PGBOUNCER` is set (CI
//! sets it, and installs the package), when they fail.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use koyo_job::testing::{PgBouncer, PoolMode, TestDatabase, TestDbError};
use koyo_job::tokio_postgres::{Client, Config, NoTls, SimpleQueryMessage};
use koyo_job::{
    Backoff, Broker, BrokerOptions, Worker, WorkerBuilder, admin, define_job, retry, schedule_in,
};
use koyo_job_tests::chaos::{ChaosDb, ChaosWorker, LogCapture, LogTo, WorkerArgs, ledger_job};
use koyo_job_tests::poll_until;

const WORKER: &str = env!("CARGO_BIN_EXE_chaos_worker");

/// A PgBouncer in front of `target`, or `None` (the test then passes with a note) when
/// PgBouncer is not installed and `KOYO_REQUIRE_PGBOUNCER` is not set.
async fn bouncer(test: &str, target: &Config, mode: PoolMode, servers: usize) -> Option<PgBouncer> {
    match PgBouncer::start_with(target, mode, servers).await {
        Ok(bouncer) => Some(bouncer),
        Err(TestDbError::NoPgBouncer) if std::env::var_os("KOYO_REQUIRE_PGBOUNCER").is_none() => {
            eprintln!(
                "{test}: skipped: PgBouncer is not installed (apt-get install pgbouncer; CI sets KOYO_REQUIRE_PGBOUNCER=1)"
            );
            None
        }
        Err(error) => panic!("{test}: {error}"),
    }
}

fn brokers() -> &'static Mutex<HashMap<String, Broker>> {
    static BROKERS: OnceLock<Mutex<HashMap<String, Broker>>> = OnceLock::new();
    BROKERS.get_or_init(Default::default)
}

/// The broker (through PgBouncer) of the test whose key is `key`, for job bodies.
fn broker_for(key: &str) -> Broker {
    brokers().lock().unwrap().get(key).cloned().unwrap_or_else(|| panic!("no broker for {key}"))
}

/// Appends `label` to the test's ledger, through PgBouncer, unnamed.
async fn record(key: &str, label: &str) {
    broker_for(key)
        .client()
        .await
        .expect("a pooled connection")
        .query_typed(
            "INSERT INTO ledger (label) VALUES ($1)",
            &[(&label, koyo_job::tokio_postgres::types::Type::TEXT)],
        )
        .await
        .expect("ledger insert");
}

#[define_job(queue = "pgb")]
async fn note(key: String, label: String) {
    record(&key, &label).await;
}

#[define_job(queue = "pgb", max_attempts = 3)]
async fn flaky(key: String) {
    let attempt = koyo_job::current_job().expect("in a job").attempt;
    record(&key, &format!("flaky attempt {attempt}")).await;
    if attempt == 1 {
        retry!(Duration::from_millis(10), "once more");
    }
}

/// Writes its ledger row and completes itself in one transaction of its own.
#[define_job(queue = "pgb")]
async fn transfer(key: String) -> Result<(), String> {
    let mut client = broker_for(&key).client().await.map_err(|e| e.to_string())?;
    let tx = client.transaction().await.map_err(|e| e.to_string())?;
    tx.query_typed("INSERT INTO ledger (label) VALUES ('transfer')", &[]).await.map_err(|e| e.to_string())?;
    koyo_job::complete_in(&tx).await.map_err(|e| e.to_string())?;
    tx.commit().await.map_err(|e| e.to_string())
}

/// A direct connection to `config`'s database (not through PgBouncer), for the test's checks.
async fn connect(config: &Config) -> Client {
    let (client, connection) = config.connect(NoTls).await.expect("connect");
    tokio::spawn(connection);
    client
}

/// The first column of the first row of a simple query, as text: works through any pooler.
async fn scalar(client: &Client, sql: &str) -> String {
    let messages = client.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql} returned no row"))
}

/// A fresh database with koyo-job's tables (migrated directly) and a ledger.
async fn database() -> TestDatabase {
    let db = TestDatabase::create().await.expect("a PostgreSQL server for tests");
    let direct = Broker::new(db.config().clone(), BrokerOptions::default()).unwrap();
    koyo_job::migrate(&direct).await.expect("migrate");
    direct
        .client()
        .await
        .unwrap()
        .batch_execute("CREATE TABLE ledger (seq bigserial PRIMARY KEY, label text NOT NULL)")
        .await
        .unwrap();
    db
}

fn no_prepared_statements() -> BrokerOptions {
    BrokerOptions { prepared_statements: false, max_connections: 6, ..BrokerOptions::default() }
}

fn worker(broker: &Broker) -> WorkerBuilder {
    Worker::builder(broker.clone())
        .queue("pgb")
        .poll_interval(Duration::from_millis(50))
        .lease(Duration::from_secs(2))
        .shutdown_grace(Duration::from_secs(5))
        .backoff(Backoff::exponential(Duration::from_millis(20), Duration::from_millis(100)))
}

/// Waits until every job of the database is `done`, and there are `want` of them.
async fn wait_all_done(direct: &Client, want: i64, within: Duration) {
    let sql =
        "SELECT count(*) FILTER (WHERE status = 'done')::text || ' of ' || count(*)::text FROM koyo_jobs";
    let done = poll_until(within, || async {
        let got = scalar(direct, sql).await;
        (got == format!("{want} of {want}")).then_some(())
    })
    .await;
    assert!(done.is_some(), "not every job is done after {within:?}: {} done", scalar(direct, sql).await);
}

/// `PREPARE s{from} … s{from + n - 1}` on the server session behind `client`: a named statement
/// of one of those names sent afterwards on that server connection fails with "already exists"
/// (42P05), as when another process left it there.
async fn seed_statement_names(client: &Client, from: usize, n: usize) {
    let sql: String = (from..from + n).map(|i| format!("PREPARE s{i} AS SELECT {i};")).collect();
    client.batch_execute(&sql).await.expect("PREPARE");
}

/// The number in the name tokio-postgres gives this process's next named statement (`s<n>`,
/// from one counter per process), give or take the statements other tests prepare meanwhile;
/// asked of the server `config` names, directly.
async fn next_statement_number(config: &Config) -> usize {
    let client = connect(config).await;
    let probe = client.prepare("SELECT 'koyo-job probe'").await.unwrap();
    let sql = "SELECT name FROM pg_prepared_statements WHERE statement = 'SELECT ''koyo-job probe'''";
    let name = scalar(&client, sql).await;
    drop(probe);
    name.strip_prefix('s').and_then(|n| n.parse::<usize>().ok()).expect("statements are named s<n>") + 1
}

/// How many names ahead of [`next_statement_number`] the tests take: more than the other tests
/// of this binary prepare in the few milliseconds until the statement under test.
const AHEAD: usize = 3000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_mode_without_prepared_statements_runs_every_kind_of_job() {
    let db = TestDatabase::create().await.expect("a PostgreSQL server for tests");
    let Some(bouncer) = bouncer("transaction_mode…", db.config(), PoolMode::Transaction, 3).await else {
        return;
    };
    let broker = Broker::new(bouncer.config().clone(), no_prepared_statements()).unwrap();

    // Migrations through PgBouncer: a fresh database, then a migrated one, then its status.
    let first = koyo_job::migrate(&broker).await.expect("migrate a fresh database through PgBouncer");
    assert_eq!(first.version, koyo_job::migrations::latest_version());
    assert!(!first.applied.is_empty());
    for _ in 0..3 {
        let again = koyo_job::migrate(&broker).await.expect("migrate again through PgBouncer");
        assert!(again.applied.is_empty(), "{again:?}");
    }
    let status = koyo_job::migrations::status(&broker.client().await.unwrap(), None).await.unwrap();
    assert!(status.pending.is_empty(), "{status:?}");
    broker
        .client()
        .await
        .unwrap()
        .batch_execute("CREATE TABLE ledger (seq bigserial PRIMARY KEY, label text NOT NULL)")
        .await
        .unwrap();
    let key = db.name().to_owned();
    brokers().lock().unwrap().insert(key.clone(), broker.clone());
    let worker = worker(&broker).listen(false).start().await.expect("a worker through PgBouncer");

    note(key.clone(), "single".into()).enqueue_on(&broker).await.unwrap();
    broker.enqueue_many((0..20).map(|i| note(key.clone(), format!("bulk {i}")))).await.unwrap();
    {
        let mut client = broker.client().await.unwrap();
        let tx = client.transaction().await.unwrap();
        note(key.clone(), "in a transaction".into()).enqueue_in(&tx).await.unwrap();
        koyo_job::enqueue_many_in(&tx, [note(key.clone(), "many in a transaction".into())]).await.unwrap();
        tx.commit().await.unwrap();
        let tx = client.transaction().await.unwrap();
        note(key.clone(), "rolled back".into()).enqueue_in(&tx).await.unwrap();
        tx.rollback().await.unwrap();
    }
    flaky(key.clone()).enqueue_on(&broker).await.unwrap();
    let later = schedule_in(Duration::from_millis(500), note(key.clone(), "later".into()))
        .enqueue_on(&broker)
        .await
        .unwrap();
    transfer(key.clone()).enqueue_on(&broker).await.unwrap();

    let direct = connect(db.config()).await;
    wait_all_done(&direct, 26, Duration::from_secs(30)).await;
    let ledger: Vec<String> = direct
        .query("SELECT label FROM ledger ORDER BY label", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let mut want: Vec<String> = ["single", "in a transaction", "many in a transaction", "later", "transfer"]
        .into_iter()
        .map(str::to_owned)
        .chain((0..20).map(|i| format!("bulk {i}")))
        .chain(["flaky attempt 1".to_owned(), "flaky attempt 2".to_owned()])
        .collect();
    want.sort();
    assert_eq!(ledger, want, "each job ran once (the rolled-back one never)");
    let waited: bool = direct
        .query_one(
            "SELECT started_at >= created_at + interval '500 ms' FROM koyo_jobs WHERE id = $1",
            &[&later.0],
        )
        .await
        .unwrap()
        .get(0);
    assert!(waited, "the scheduled job started before its time");

    // The operator's queries, through PgBouncer.
    let client = broker.client().await.unwrap();
    let queues = admin::queues(&client).await.unwrap();
    assert!(queues.iter().any(|q| q.queue == "pgb" && q.done == 26), "{queues:?}");
    let page =
        admin::jobs(&client, &admin::JobFilter { limit: 50, ..admin::JobFilter::default() }).await.unwrap();
    assert_eq!(page.jobs.len(), 26);
    assert!(admin::job(&client, later.0).await.unwrap().is_some());
    assert_eq!(admin::workers(&client).await.unwrap().len(), 1);
    admin::activity(&client, 10).await.unwrap();
    admin::periodic(&client).await.unwrap();
    admin::pause(&client, "pgb", "test").await.unwrap();
    assert!(admin::resume(&client, "pgb").await.unwrap());
    drop(client);

    worker.shutdown().await;
    assert_eq!(scalar(&direct, "SELECT count(*) FROM koyo_workers").await, "0", "the worker deregistered");
    assert!(!broker.uses_prepared_statements());
    brokers().lock().unwrap().remove(&key);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pgbouncer_restart_mid_drain_loses_no_job() {
    const N: i64 = 400;
    let db = ChaosDb::create().await;
    let target: Config = db.url().parse().unwrap();
    let Some(mut bouncer) = bouncer("a_pgbouncer_restart…", &target, PoolMode::Transaction, 4).await else {
        return;
    };
    let args = |label: &str| {
        WorkerArgs::new(label).prepared(false).listen(false).poll_ms(50).lease_ms(2000).max_connections(6)
    };
    let a = ChaosWorker::spawn(WORKER, &bouncer.url(), args("a")).await;
    let b = ChaosWorker::spawn(WORKER, &bouncer.url(), args("b")).await;
    db.broker.enqueue_many((0..N).map(|n| ledger_job(n, 10))).await.unwrap();

    db.expect_count(
        "jobs done before the restart",
        "SELECT count(*) FROM koyo_jobs WHERE status = 'done'",
        Duration::from_secs(30),
        |n| n >= N / 4,
    )
    .await;
    bouncer.restart().await.expect("restart PgBouncer");
    let done = db
        .wait_count("SELECT count(*) FROM koyo_jobs WHERE status = 'done'", Duration::from_secs(60), |n| {
            n == N
        })
        .await;
    assert!(done.1, "{} of {N} jobs done 60 s after the restart; {}", done.0, bouncer.log_tail());
    let finished = db.count("SELECT count(DISTINCT n) FROM chaos_ledger WHERE outcome = 'ok'").await;
    assert_eq!(finished, N, "every job ran to the end at least once");
    drop((a, b));
}

/// With the default settings in transaction mode, a named statement meets one of the same name
/// (left on the server connection by another process): the broker drops the connection, sends
/// the statement again unnamed, stops naming statements, and says once what to set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_settings_in_transaction_mode_recover_and_name_the_fix() {
    let logs = LogCapture::install(LogTo::Memory);
    let db = database().await;
    // One server connection, so that what one client leaves there the next one meets.
    let Some(bouncer) = bouncer("default_settings…", db.config(), PoolMode::Transaction, 1).await else {
        return;
    };
    let seeder = connect(bouncer.config()).await;
    seed_statement_names(&seeder, next_statement_number(db.config()).await, AHEAD).await;

    let broker = Broker::new(bouncer.config().clone(), BrokerOptions::default()).unwrap();
    assert!(broker.uses_prepared_statements());
    let key = db.name().to_owned();
    brokers().lock().unwrap().insert(key.clone(), broker.clone());
    // The first statement collides, is sent again unnamed, and succeeds.
    note(key.clone(), "first".into()).enqueue_on(&broker).await.expect("the enqueue recovers");
    assert!(!broker.uses_prepared_statements(), "the broker stopped naming statements");
    // Other tests of this process log too: this broker's lines name its database.
    let ours = |line: &String| line.contains("prepared_statements: false") && line.contains(db.name());
    let warnings: Vec<String> = logs.lines().into_iter().filter(ours).collect();
    assert_eq!(warnings.len(), 1, "said once: {warnings:#?}");
    assert!(warnings[0].contains("listen(false)") && warnings[0].contains("42P05"), "{}", warnings[0]);

    // A worker with the default settings on that broker starts and drains (by polling: LISTEN
    // does not cross a transaction-mode pooler); enqueues keep working.
    let worker = worker(&broker).start().await.expect("a worker with the default settings");
    let ids = broker.enqueue_many((0..30).map(|i| note(key.clone(), format!("bulk {i}")))).await.unwrap();
    assert_eq!(ids.len(), 30);
    let direct = connect(db.config()).await;
    wait_all_done(&direct, 31, Duration::from_secs(30)).await;
    worker.shutdown().await;
    assert_eq!(scalar(&direct, "SELECT count(*) FROM ledger").await, "31");
    let said = logs.lines().iter().filter(|line| ours(line)).count();
    assert_eq!(said, 1, "said once per broker, not at every statement");
    brokers().lock().unwrap().remove(&key);
}

/// Two worker processes and an enqueuing one, all with the default settings, in transaction
/// mode: every process starts, no enqueue fails, every job is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_settings_in_transaction_mode_lose_no_job_across_processes() {
    const N: i64 = 300;
    let db = ChaosDb::create().await;
    let target: Config = db.url().parse().unwrap();
    let Some(bouncer) = bouncer("default_settings…processes", &target, PoolMode::Transaction, 2).await
    else {
        return;
    };
    // Names left on both server connections, as an earlier process would leave them: the
    // worker processes name their first statements s0, s1, …
    let (one, two) = (connect(bouncer.config()).await, connect(bouncer.config()).await);
    one.batch_execute("BEGIN").await.unwrap();
    two.batch_execute("BEGIN").await.unwrap();
    seed_statement_names(&one, 0, 50).await;
    seed_statement_names(&two, 0, 50).await;
    one.batch_execute("COMMIT").await.unwrap();
    two.batch_execute("COMMIT").await.unwrap();
    let a = ChaosWorker::spawn(WORKER, &bouncer.url(), WorkerArgs::new("a").max_connections(6)).await;
    let b = ChaosWorker::spawn(WORKER, &bouncer.url(), WorkerArgs::new("b").max_connections(6)).await;
    let enqueuer = Broker::new(bouncer.config().clone(), BrokerOptions::default()).unwrap();
    let tasks: Vec<_> = (0..6)
        .map(|t| {
            let enqueuer = enqueuer.clone();
            tokio::spawn(async move {
                for n in (t..N).step_by(6) {
                    ledger_job(n, 0)
                        .enqueue_on(&enqueuer)
                        .await
                        .unwrap_or_else(|e| panic!("enqueue {n}: {e}"));
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    db.expect_count(
        "jobs done",
        "SELECT count(*) FROM koyo_jobs WHERE status = 'done'",
        Duration::from_secs(60),
        |n| n == N,
    )
    .await;
    assert_eq!(db.count("SELECT count(DISTINCT n) FROM chaos_ledger WHERE outcome = 'ok'").await, N);
    assert_eq!(db.count("SELECT count(*) FROM koyo_jobs WHERE status <> 'done'").await, 0);
    drop((a, b));
}

/// Migrations, their status and the admin queries send no named prepared statement, whatever
/// the broker's setting: on a server connection where every name a process would use is taken,
/// they all succeed and leave nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_and_admin_queries_send_no_named_statement() {
    let db = TestDatabase::create().await.expect("a PostgreSQL server for tests");
    let Some(bouncer) = bouncer("migrations…", db.config(), PoolMode::Transaction, 1).await else { return };
    let seeder = connect(bouncer.config()).await;
    let from = next_statement_number(db.config()).await;
    seed_statement_names(&seeder, from, AHEAD).await;
    let count = "SELECT count(*) FROM pg_prepared_statements";
    let seeded = scalar(&seeder, count).await;

    for options in [BrokerOptions::default(), no_prepared_statements()] {
        let broker = Broker::new(bouncer.config().clone(), options).unwrap();
        for _ in 0..3 {
            let report = koyo_job::migrate(&broker).await.expect("migrate through PgBouncer");
            assert_eq!(report.version, koyo_job::migrations::latest_version());
            let client = broker.client().await.unwrap();
            let status = koyo_job::migrations::status(&client, None).await.expect("status through PgBouncer");
            assert!(status.pending.is_empty());
            admin::queues(&client).await.expect("queues");
            admin::jobs(&client, &admin::JobFilter::default()).await.expect("jobs");
            admin::workers(&client).await.expect("workers");
            admin::periodic(&client).await.expect("periodic");
            admin::activity(&client, 5).await.expect("activity");
        }
        // Migrating named nothing, so the broker still would.
        assert_eq!(broker.uses_prepared_statements(), broker.options().prepared_statements);
    }
    assert_eq!(scalar(&seeder, count).await, seeded, "nothing was left on the server connection");
}

/// Session mode keeps a client's server connection: the default settings work, LISTEN included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_works_with_the_default_settings_including_listen() {
    let db = database().await;
    let Some(bouncer) = bouncer("session_mode…", db.config(), PoolMode::Session, 10).await else { return };
    let broker = Broker::new(bouncer.config().clone(), BrokerOptions::default()).unwrap();
    koyo_job::migrate(&broker).await.expect("migrate through PgBouncer");
    let key = db.name().to_owned();
    brokers().lock().unwrap().insert(key.clone(), broker.clone());
    // Polls only every 30 s: a job runs promptly only if its notification arrives.
    let worker = worker(&broker)
        .poll_interval(Duration::from_secs(30))
        .lease(Duration::from_secs(90))
        .start()
        .await
        .unwrap();
    let direct = connect(db.config()).await;
    let listening = poll_until(Duration::from_secs(10), || async {
        let sql = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                   AND query LIKE 'LISTEN koyo_jobs%'";
        let heartbeat = "SELECT count(*) FROM koyo_workers WHERE heartbeat_at > started_at";
        (scalar(&direct, sql).await == "1" && scalar(&direct, heartbeat).await == "1").then_some(())
    })
    .await;
    assert!(listening.is_some(), "the worker never listened");
    for i in 0..5 {
        note(key.clone(), format!("notified {i}")).enqueue_on(&broker).await.unwrap();
    }
    wait_all_done(&direct, 5, Duration::from_secs(10)).await;
    worker.shutdown().await;
    assert!(broker.uses_prepared_statements(), "session mode loses no prepared statement");
    brokers().lock().unwrap().remove(&key);
}
