//! `koyo_job_migrate` against a real server: applying the schema once, concurrently, into a
//! chosen PostgreSQL schema, and refusing a database newer than the build.
//!
//! Concurrent callers run on one thread here: what serialises them is the server's advisory
//! lock, and each client's connection is its own task, so they really do race on the server.

use koyo_job::testing::TestDatabase;
use koyo_job::tokio_postgres::{Client, Config, NoTls};
use koyo_job_migrate::{MIGRATIONS, MigrateError, Report, Status, migrate, status};

async fn connect(config: &Config) -> Client {
    let (client, connection) = config.connect(NoTls).await.expect("connect to the test database");
    tokio::spawn(connection);
    client
}

/// Where the tables named `koyo_*` live: `(schema, table)`, sorted.
async fn koyo_tables(client: &Client) -> Vec<(String, String)> {
    client
        .query(
            "SELECT schemaname::text, tablename::text FROM pg_tables WHERE tablename LIKE 'koyo%' ORDER BY 1, 2",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

fn latest() -> i32 {
    MIGRATIONS.last().unwrap().version
}

fn all_versions() -> Vec<i32> {
    MIGRATIONS.iter().map(|m| m.version).collect()
}

/// Brings a fresh database to `version` as a database of that version would be (its migrations'
/// SQL, then their record), with `rows` (SQL) run in between: what an upgrade starts from.
async fn at_version(client: &Client, version: i32, rows: &str) {
    let mut setup = String::new();
    for migration in MIGRATIONS.iter().filter(|m| m.version <= version) {
        setup.push_str(migration.sql);
        setup.push('\n');
    }
    setup.push_str(
        "CREATE TABLE koyo_job_migrations (version integer PRIMARY KEY, name text NOT NULL,
                                           applied_at timestamptz NOT NULL DEFAULT now());",
    );
    setup.push_str(rows);
    client.batch_execute(&setup).await.unwrap();
    for migration in MIGRATIONS.iter().filter(|m| m.version <= version) {
        client
            .execute(
                "INSERT INTO koyo_job_migrations (version, name) VALUES ($1, $2)",
                &[&migration.version, &migration.name],
            )
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn migrating_twice_applies_nothing_the_second_time() {
    let db = TestDatabase::create().await.unwrap();
    let mut client = connect(db.config()).await;

    let first = migrate(&mut client, None).await.unwrap();
    assert_eq!(first, Report { applied: all_versions(), version: latest() });

    let second = migrate(&mut client, None).await.unwrap();
    assert_eq!(second, Report { applied: vec![], version: latest() });

    let recorded: Vec<(i32, String)> = client
        .query("SELECT version, name FROM koyo_job_migrations ORDER BY version", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let expected: Vec<(i32, String)> = MIGRATIONS.iter().map(|m| (m.version, m.name.to_owned())).collect();
    assert_eq!(recorded, expected);
}

#[tokio::test]
async fn concurrent_migrations_all_succeed_and_apply_each_version_once() {
    let db = TestDatabase::create().await.unwrap();
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(connect(db.config()).await);
    }

    let runs: Vec<_> = clients
        .into_iter()
        .map(|mut client| tokio::spawn(async move { migrate(&mut client, None).await }))
        .collect();
    let mut applied = Vec::new();
    for run in runs {
        let report = run.await.unwrap().expect("every concurrent migration succeeds");
        assert_eq!(report.version, latest());
        applied.extend(report.applied);
    }
    assert_eq!(applied, all_versions(), "each version applied by exactly one caller");

    let client = connect(db.config()).await;
    let tables = koyo_tables(&client).await;
    assert_eq!(tables.iter().filter(|(_, table)| table == "koyo_jobs").count(), 1);
}

#[tokio::test]
async fn concurrent_migrations_succeed_in_sessions_defaulting_to_serializable() {
    let db = TestDatabase::create().await.unwrap();
    let mut config = db.config().clone();
    config.options("-c default_transaction_isolation=serializable");

    let mut runs = Vec::new();
    for _ in 0..4 {
        let mut client = connect(&config).await;
        runs.push(tokio::spawn(async move { migrate(&mut client, None).await }));
    }
    for run in runs {
        run.await.unwrap().expect("the migration transaction is READ COMMITTED whatever the default");
    }
}

#[tokio::test]
async fn status_reports_pending_migrations_before_and_none_after() {
    let db = TestDatabase::create().await.unwrap();
    let mut client = connect(db.config()).await;

    let before = status(&client, None).await.unwrap();
    assert_eq!(before, Status { version: None, latest: latest(), pending: all_versions() });

    migrate(&mut client, None).await.unwrap();

    let after = status(&client, None).await.unwrap();
    assert_eq!(after, Status { version: Some(latest()), latest: latest(), pending: vec![] });
}

#[tokio::test]
async fn the_schema_option_puts_every_table_in_that_schema() {
    let db = TestDatabase::create().await.unwrap();
    let mut client = connect(db.config()).await;

    let report = migrate(&mut client, Some("jobs")).await.unwrap();
    assert_eq!(report.applied, all_versions());

    let tables = koyo_tables(&client).await;
    assert!(!tables.is_empty());
    assert!(tables.iter().all(|(schema, _)| schema == "jobs"), "{tables:?}");
    // The search_path change lasted only for the migration transaction.
    let path: String = client.query_one("SHOW search_path", &[]).await.unwrap().get(0);
    assert!(!path.contains("jobs"), "{path}");

    assert_eq!(status(&client, Some("jobs")).await.unwrap().version, Some(latest()));
    assert_eq!(status(&client, None).await.unwrap().version, None);

    // How the runtime finds the tables: the schema on the connection's search_path.
    let mut in_schema = db.config().clone();
    in_schema.options("-csearch_path=jobs");
    let mut runtime_client = connect(&in_schema).await;
    runtime_client.query("SELECT id FROM koyo_jobs", &[]).await.unwrap();
    assert_eq!(migrate(&mut runtime_client, None).await.unwrap().applied, Vec::<i32>::new());
}

#[tokio::test]
async fn a_schema_named_like_a_keyword_works() {
    let db = TestDatabase::create().await.unwrap();
    let mut client = connect(db.config()).await;
    migrate(&mut client, Some("user")).await.unwrap();
    assert!(koyo_tables(&client).await.iter().all(|(schema, _)| schema == "user"));
}

#[tokio::test]
async fn an_invalid_schema_is_refused_before_touching_the_database() {
    let db = TestDatabase::create().await.unwrap();
    let mut client = connect(db.config()).await;

    let error = migrate(&mut client, Some("jobs; DROP TABLE x")).await.unwrap_err();
    assert!(matches!(error, MigrateError::InvalidSchema { .. }), "{error:?}");
    assert!(matches!(status(&client, Some("Jobs")).await, Err(MigrateError::InvalidSchema { .. })));
    assert_eq!(koyo_tables(&client).await, vec![]);
}

#[tokio::test]
async fn a_database_newer_than_this_build_is_refused_and_left_alone() {
    let db = TestDatabase::create().await.unwrap();
    let mut client = connect(db.config()).await;
    migrate(&mut client, None).await.unwrap();
    client
        .execute("INSERT INTO koyo_job_migrations (version, name) VALUES (999, 'future')", &[])
        .await
        .unwrap();

    let error = migrate(&mut client, None).await.unwrap_err();
    assert!(matches!(error, MigrateError::TooNew { found: 999, known } if known == latest()), "{error:?}");
    assert!(error.to_string().contains("999"), "{error}");

    let now = status(&client, None).await.unwrap();
    assert_eq!(now.version, Some(999));
    assert!(now.is_too_new());
}

#[tokio::test]
async fn a_failing_migration_applies_nothing_and_names_itself() {
    let db = TestDatabase::create().await.unwrap();
    let mut client = connect(db.config()).await;
    client.batch_execute("CREATE TABLE koyo_jobs (x int)").await.unwrap();

    let error = migrate(&mut client, None).await.unwrap_err();
    assert!(matches!(error, MigrateError::Apply { version: 1, .. }), "{error:?}");
    assert!(error.to_string().starts_with("migration 001_jobs failed"), "{error}");

    // The whole transaction rolled back: not even the version table was kept.
    let tables = koyo_tables(&client).await;
    assert_eq!(tables, vec![("public".to_owned(), "koyo_jobs".to_owned())]);
}

#[tokio::test]
async fn the_table_itself_refuses_bad_names_and_sizes() {
    let db = TestDatabase::create().await.unwrap();
    let mut client = connect(db.config()).await;
    migrate(&mut client, None).await.unwrap();
    let insert = async |queue: &str, job: &str| {
        client
            .execute("INSERT INTO koyo_jobs (queue, job, args) VALUES ($1, $2, '\\x00')", &[&queue, &job])
            .await
            .map_err(|e| e.as_db_error().map(|d| d.constraint().unwrap_or_default().to_owned()))
    };
    let longest_queue = "q".repeat(64);
    let longest_job = "j".repeat(200);
    assert!(insert(&longest_queue, &longest_job).await.is_ok());
    assert!(insert("a.b:c-d_E9", "app::mail::send_welcome").await.is_ok());
    for (queue, job, constraint) in [
        ("", "job", "koyo_jobs_queue_check"),
        (&"q".repeat(65), "job", "koyo_jobs_queue_check"),
        ("mail queue", "job", "koyo_jobs_queue_check"),
        ("mail\n", "job", "koyo_jobs_queue_check"),
        ("mail", "", "koyo_jobs_job_check"),
        ("mail", &"j".repeat(201), "koyo_jobs_job_check"),
        ("mail", "drop table;", "koyo_jobs_job_check"),
        ("mail", "é", "koyo_jobs_job_check"),
    ] {
        assert_eq!(insert(queue, job).await, Err(Some(constraint.to_owned())), "{queue:?} {job:?}");
    }
}

#[tokio::test]
async fn a_database_at_version_1_with_rows_upgrades_in_place() {
    let db = TestDatabase::create().await.unwrap();
    let mut client = connect(db.config()).await;
    // What version 1 left behind: its tables, its record, a worker and jobs.
    client
        .batch_execute(&format!(
            "{}
             CREATE TABLE koyo_job_migrations (version integer PRIMARY KEY, name text NOT NULL,
                                               applied_at timestamptz NOT NULL DEFAULT now());
             INSERT INTO koyo_job_migrations (version, name) VALUES (1, 'jobs');
             INSERT INTO koyo_workers (hostname, pid, queues, pool_size) VALUES ('old-host', 7, ARRAY['mail'], 4);
             INSERT INTO koyo_jobs (queue, job, args, status, attempts, finished_at, last_error)
             VALUES ('mail', 'app::send', '\\x01', 'failed', 3, now(), 'boom'),
                    ('mail', 'app::send', '\\x02', 'ready', 0, NULL, NULL);",
            MIGRATIONS[0].sql
        ))
        .await
        .unwrap();

    let report = migrate(&mut client, None).await.unwrap();
    assert_eq!(report.applied, all_versions()[1..].to_vec());
    let worker = client.query_one("SELECT hostname, lease_secs FROM koyo_workers", &[]).await.unwrap();
    assert_eq!((worker.get::<_, String>(0), worker.get::<_, f64>(1)), ("old-host".to_owned(), 30.0));
    let failed: Vec<i64> = client
        .query("SELECT id FROM koyo_jobs WHERE status IN ('failed', 'cancelled') ORDER BY id DESC", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(failed.len(), 1);
    // The rows written before still obey the (rewritten) name rules, and new ones are checked.
    let bad = client.execute("UPDATE koyo_jobs SET queue = 'no spaces allowed'", &[]).await.unwrap_err();
    assert_eq!(bad.as_db_error().and_then(|e| e.constraint()), Some("koyo_jobs_queue_check"));
}

/// Version 10 (attempt history) on a table full of jobs: the table is not rewritten nor read
/// under its lock (two nullable columns, a constraint added `NOT VALID`), its rows read back
/// with a timeline from their own columns, and the log's bound holds for every row written after.
#[tokio::test]
async fn a_populated_database_at_version_9_gains_attempt_history_in_place() {
    let db = TestDatabase::create().await.unwrap();
    let mut client = connect(db.config()).await;
    at_version(&client, 9, "
         INSERT INTO koyo_jobs (queue, job, args, status, attempts, started_at, finished_at, worker_id, last_error)
         SELECT 'mail', 'app::send', '\\x01', 'failed', 3, now() - interval '90 seconds', now() - interval '30 seconds',
                7, 'boom ' || n
         FROM generate_series(1, 20000) AS n;
         INSERT INTO koyo_jobs (queue, job, args) SELECT 'mail', 'app::send', '\\x02' FROM generate_series(1, 20000);").await;
    let file = "SELECT pg_relation_filenode('koyo_jobs')::int8";
    let file_before: i64 = client.query_one(file, &[]).await.unwrap().get(0);

    let report = migrate(&mut client, None).await.unwrap();
    assert_eq!(report.applied.first(), Some(&10), "{report:?}");
    let file_after: i64 = client.query_one(file, &[]).await.unwrap().get(0);
    assert_eq!(file_before, file_after, "the table was not rewritten");
    let validated: bool = client
        .query_one(
            "SELECT convalidated FROM pg_constraint WHERE conname = 'koyo_jobs_attempt_log_check'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!validated, "added NOT VALID: the existing rows (all NULL) were not read under the lock");
    let logged: i64 = client
        .query_one(
            "SELECT count(*) FROM koyo_jobs WHERE attempt_log IS NOT NULL OR attempt_log_dropped IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(logged, 0);

    // An old failed job's timeline is its last attempt, from its own columns.
    let id: i64 = client.query_one("SELECT min(id) FROM koyo_jobs", &[]).await.unwrap().get(0);
    let job = koyo_job_migrate::admin::job(&client, id).await.unwrap().unwrap();
    assert_eq!(job.history_dropped, 0);
    assert_eq!(job.history.len(), 1, "{:?}", job.history);
    let last = &job.history[0];
    assert_eq!((last.attempt, last.outcome.as_str(), last.error.as_deref()), (3, "failed", Some("boom 1")));
    assert_eq!(last.worker_id, Some(7));
    assert!(last.duration_secs.is_some_and(|d| (d - 60.0).abs() < 1.0), "{last:?}");

    // New writes are checked: at most 25 entries, a count that is not negative.
    let write = async |log: &str, dropped: i32| {
        client
            .execute(
                "UPDATE koyo_jobs SET attempt_log = $2::text::jsonb, attempt_log_dropped = $3 WHERE id = $1",
                &[&id, &log, &dropped],
            )
            .await
            .map_err(|e| e.as_db_error().and_then(|d| d.constraint().map(str::to_owned)))
    };
    let entries = |n: usize| format!("[{}]", vec!["{}"; n].join(","));
    assert_eq!(write(&entries(25), 4).await, Ok(1));
    for (log, dropped) in [(entries(26), 0), (entries(1), -1), ("{}".to_owned(), 0)] {
        assert_eq!(
            write(&log, dropped).await,
            Err(Some("koyo_jobs_attempt_log_check".to_owned())),
            "{log} {dropped}"
        );
    }
}

/// Version 9 (queue limits) on a database with jobs and paused queues: `koyo_queues` is not
/// rewritten (nullable columns, and arrays with a constant default), a pause stays, and no
/// queue has a limit until an operator sets one.
#[tokio::test]
async fn a_populated_database_at_version_8_gains_queue_limits_in_place() {
    let db = TestDatabase::create().await.unwrap();
    let mut client = connect(db.config()).await;
    at_version(&client, 8, "
         INSERT INTO koyo_jobs (queue, job, args) SELECT 'q' || (n % 50), 'app::send', '\\x02' FROM generate_series(1, 20000) AS n;
         INSERT INTO koyo_queues (queue, paused_at, paused_by) SELECT 'q' || n, now(), 'ops' FROM generate_series(1, 10) AS n;").await;
    let file = "SELECT pg_relation_filenode('koyo_queues')::int8, pg_relation_filenode('koyo_jobs')::int8";
    let row = client.query_one(file, &[]).await.unwrap();
    let before_files: (i64, i64) = (row.get(0), row.get(1));

    let report = migrate(&mut client, None).await.unwrap();
    assert_eq!(report.applied.first(), Some(&9), "{report:?}");
    let row = client.query_one(file, &[]).await.unwrap();
    assert_eq!(before_files, (row.get(0), row.get(1)), "neither table was rewritten");
    let queues = koyo_job_migrate::admin::queues(&client).await.unwrap();
    assert_eq!(queues.len(), 50);
    let paused: Vec<_> = queues.iter().filter(|q| q.paused_at.is_some()).collect();
    assert_eq!(paused.len(), 10);
    assert!(queues.iter().all(|q| !q.limits.any()), "no limits until set");
    let limits = koyo_job_migrate::admin::QueueLimits { max_running: Some(2), ..Default::default() };
    let set = koyo_job_migrate::admin::set_limits(&client, "q1", &limits, "ops").await.unwrap();
    assert_eq!(set, limits);
    // The table refuses a half-set rate, whoever writes it.
    let bad =
        client.execute("UPDATE koyo_queues SET rate_limit = 5 WHERE queue = 'q2'", &[]).await.unwrap_err();
    assert_eq!(bad.as_db_error().and_then(|e| e.constraint()), Some("koyo_queues_rate_check"));
}

/// Version 12 (fillfactor) on a table full of jobs: the setting is stored without rewriting the
/// table, and the rows written before stay where they were.
#[tokio::test]
async fn a_populated_database_gains_room_for_updates_in_place() {
    let db = TestDatabase::create().await.unwrap();
    let mut client = connect(db.config()).await;
    at_version(&client, 10, "
         INSERT INTO koyo_jobs (queue, job, args) SELECT 'mail', 'app::send', '\\x01' FROM generate_series(1, 20000);").await;
    let file = "SELECT pg_relation_filenode('koyo_jobs')::int8, pg_relation_size('koyo_jobs')::int8";
    let before_file: (i64, i64) = client.query_one(file, &[]).await.map(|r| (r.get(0), r.get(1))).unwrap();

    let report = migrate(&mut client, None).await.unwrap();
    assert!(report.applied.contains(&11), "{report:?}");
    let after_file: (i64, i64) = client.query_one(file, &[]).await.map(|r| (r.get(0), r.get(1))).unwrap();
    assert_eq!(before_file, after_file, "the table was not rewritten");
    let options: Vec<String> = client
        .query_one("SELECT COALESCE(reloptions, '{}') FROM pg_class WHERE oid = 'koyo_jobs'::regclass", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(options, vec!["fillfactor=70".to_owned()]);

    // Pages filled from now on keep 30 % free: the same rows take more pages than before.
    client
        .batch_execute(
            "INSERT INTO koyo_jobs (queue, job, args) SELECT 'mail', 'app::send', '\\x01' FROM generate_series(1, 20000)",
        )
        .await
        .unwrap();
    let size: i64 = client.query_one("SELECT pg_relation_size('koyo_jobs')::int8", &[]).await.unwrap().get(0);
    let grown = (size - before_file.1) as f64 / before_file.1 as f64;
    assert!(grown > 1.3, "20,000 more rows took {grown:.2} × the pages of the first 20,000");
}
