//! The `koyo-job-migrate` command: what it prints, its exit status, and that it never shows the
//! database URL's password.

use std::process::{Command, Output};

use koyo_job::testing::TestDatabase;

const PASSWORD: &str = "hunter2-not-to-be-shown";

/// Runs the command with `args`, without inheriting `DATABASE_URL` unless `database_url` says so.
fn run(args: &[&str], database_url: Option<&str>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_koyo-job-migrate"));
    command.args(args).env_remove("DATABASE_URL");
    if let Some(url) = database_url {
        command.env("DATABASE_URL", url);
    }
    command.output().expect("run koyo-job-migrate")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn print_writes_the_schema_without_touching_a_database() {
    let output = run(&["--print"], Some("postgresql://nobody@127.0.0.1:1/none"));
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).contains("CREATE TABLE koyo_jobs"));
    assert!(stdout(&output).contains("INSERT INTO koyo_job_migrations"));
}

#[tokio::test]
async fn up_applies_the_schema_and_status_then_reports_it() {
    let db = TestDatabase::create().await.unwrap();
    let url = db.url();

    let up = run(&["up", "--database-url", &url], None);
    assert_eq!(up.status.code(), Some(0), "{}", stderr(&up));
    let latest = koyo_job_migrate::latest_version();
    assert_eq!(stdout(&up), format!("applied {latest} migration(s); schema is at version {latest}\n"));

    let again = run(&[], Some(&url));
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    assert_eq!(stdout(&again), format!("already at version {latest}\n"));

    let status = run(&["status", "--database-url", &url], None);
    assert_eq!(status.status.code(), Some(0), "{}", stderr(&status));
    assert!(stdout(&status).contains(&format!("current version: {latest}\n")), "{}", stdout(&status));
    assert!(stdout(&status).contains("pending:         none\n"), "{}", stdout(&status));
}

#[tokio::test]
async fn status_of_a_fresh_database_lists_what_is_pending() {
    let db = TestDatabase::create().await.unwrap();
    let status = run(&["status"], Some(&db.url()));
    assert_eq!(status.status.code(), Some(0), "{}", stderr(&status));
    assert!(stdout(&status).starts_with("current version: none"), "{}", stdout(&status));
    let all: Vec<String> = (1..=koyo_job_migrate::latest_version()).map(|v| v.to_string()).collect();
    let pending = format!("pending:         {}\n", all.join(", "));
    assert!(stdout(&status).contains(&pending), "{}", stdout(&status));
}

#[tokio::test]
async fn the_schema_option_is_honoured_by_up_and_status() {
    let db = TestDatabase::create().await.unwrap();
    let url = db.url();

    let up = run(&["--schema", "jobs"], Some(&url));
    assert_eq!(up.status.code(), Some(0), "{}", stderr(&up));

    let in_schema = run(&["status", "--schema=jobs"], Some(&url));
    let current = format!("current version: {}\n", koyo_job_migrate::latest_version());
    assert!(stdout(&in_schema).contains(&current), "{}", stdout(&in_schema));
    let elsewhere = run(&["status"], Some(&url));
    assert!(stdout(&elsewhere).starts_with("current version: none"), "{}", stdout(&elsewhere));
}

#[test]
fn a_missing_database_url_is_a_usage_error() {
    let output = run(&["status"], None);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("DATABASE_URL"), "{}", stderr(&output));
    assert!(!stderr(&output).contains("panicked"), "{}", stderr(&output));
}

#[test]
fn an_unknown_option_is_a_usage_error() {
    let output = run(&["--frobnicate"], None);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("unknown option `--frobnicate`"), "{}", stderr(&output));
}

#[test]
fn an_invalid_schema_is_a_usage_error() {
    let output = run(&["--print", "--schema", "Jobs"], None);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("invalid schema name"), "{}", stderr(&output));
}

#[tokio::test]
async fn a_connection_failure_exits_1_without_showing_the_password() {
    let db = TestDatabase::create().await.unwrap();
    let port = db.config().get_ports()[0];
    let urls = [
        // Nothing listens on port 1.
        format!("postgresql://postgres:{PASSWORD}@127.0.0.1:1/{}", db.name()),
        // A role the server does not know.
        format!("postgresql://no_such_role:{PASSWORD}@127.0.0.1:{port}/{}", db.name()),
        // Not a valid URL at all.
        format!("postgresql://postgres:{PASSWORD}@127.0.0.1:notaport/{}", db.name()),
    ];
    for url in &urls {
        for output in [run(&["up", "--database-url", url], None), run(&["status"], Some(url))] {
            assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
            let all = format!("{}{}", stdout(&output), stderr(&output));
            assert!(all.contains("could not connect to the database"), "{all}");
            assert!(!all.contains(PASSWORD), "{all}");
            assert!(!all.contains("panicked"), "{all}");
        }
    }
}

#[test]
fn a_url_given_as_a_command_is_not_echoed() {
    let url = format!("postgresql://postgres:{PASSWORD}@127.0.0.1/db");
    let output = run(&[&url], None);
    assert_eq!(output.status.code(), Some(2));
    assert!(!stderr(&output).contains(PASSWORD), "{}", stderr(&output));
}

/// Behind PgBouncer in transaction mode, where one server connection serves every client in
/// turn and still holds the named statements an earlier process left (`s0`, `s1`, … the names a
/// fresh process gives its own): `koyo-job-migrate` and `koyo-job-admin` send unnamed statements
/// only, so they neither collide with those names nor leave any. No flag is needed for it.
#[tokio::test]
async fn the_commands_work_through_pgbouncer_in_transaction_mode() {
    use koyo_job::testing::{PgBouncer, PoolMode, TestDbError};
    use koyo_job::tokio_postgres::{NoTls, SimpleQueryMessage};

    let db = TestDatabase::create().await.unwrap();
    let bouncer = match PgBouncer::start_with(db.config(), PoolMode::Transaction, 1).await {
        Ok(bouncer) => bouncer,
        Err(TestDbError::NoPgBouncer) if std::env::var_os("KOYO_REQUIRE_PGBOUNCER").is_none() => {
            eprintln!(
                "skipped: PgBouncer is not installed (apt-get install pgbouncer; CI sets KOYO_REQUIRE_PGBOUNCER=1)"
            );
            return;
        }
        Err(error) => panic!("{error}"),
    };
    let (client, connection) = bouncer.config().connect(NoTls).await.unwrap();
    tokio::spawn(connection);
    let seed: String = (0..100).map(|i| format!("PREPARE s{i} AS SELECT {i};")).collect();
    client.batch_execute(&seed).await.unwrap();
    let left = async || {
        let messages = client.simple_query("SELECT count(*) FROM pg_prepared_statements").await.unwrap();
        messages
            .into_iter()
            .find_map(|m| match m {
                SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
                _ => None,
            })
            .unwrap()
    };
    assert_eq!(left().await, "100");

    let url = bouncer.url();
    let latest = koyo_job::migrations::latest_version();
    let status = run(&["status", "--database-url", &url], None);
    assert_eq!(status.status.code(), Some(0), "{}", stderr(&status));
    assert!(stdout(&status).starts_with("current version: none"), "{}", stdout(&status));
    let up = run(&["up", "--database-url", &url], None);
    assert_eq!(up.status.code(), Some(0), "{}", stderr(&up));
    for _ in 0..3 {
        let again = run(&[], Some(&url));
        assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
        assert_eq!(stdout(&again), format!("already at version {latest}\n"));
        let status = run(&["status"], Some(&url));
        assert_eq!(status.status.code(), Some(0), "{}", stderr(&status));
        assert!(stdout(&status).contains("pending:         none\n"), "{}", stdout(&status));
    }
    for command in [&["queues"][..], &["jobs"], &["workers"], &["periodic"], &["count"]] {
        let output = Command::new(env!("CARGO_BIN_EXE_koyo-job-admin"))
            .args(command)
            .env("DATABASE_URL", &url)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(0), "koyo-job-admin {command:?}: {}", stderr(&output));
    }
    assert_eq!(left().await, "100", "the commands left no prepared statement behind");
}
