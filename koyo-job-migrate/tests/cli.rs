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
    assert_eq!(stdout(&up), "applied 8 migration(s); schema is at version 8\n");

    let again = run(&[], Some(&url));
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    assert_eq!(stdout(&again), "already at version 8\n");

    let status = run(&["status", "--database-url", &url], None);
    assert_eq!(status.status.code(), Some(0), "{}", stderr(&status));
    assert!(stdout(&status).contains("current version: 8\n"), "{}", stdout(&status));
    assert!(stdout(&status).contains("pending:         none\n"), "{}", stdout(&status));
}

#[tokio::test]
async fn status_of_a_fresh_database_lists_what_is_pending() {
    let db = TestDatabase::create().await.unwrap();
    let status = run(&["status"], Some(&db.url()));
    assert_eq!(status.status.code(), Some(0), "{}", stderr(&status));
    assert!(stdout(&status).starts_with("current version: none"), "{}", stdout(&status));
    assert!(stdout(&status).contains("pending:         1, 2, 3, 4, 5, 6, 7, 8\n"), "{}", stdout(&status));
}

#[tokio::test]
async fn the_schema_option_is_honoured_by_up_and_status() {
    let db = TestDatabase::create().await.unwrap();
    let url = db.url();

    let up = run(&["--schema", "jobs"], Some(&url));
    assert_eq!(up.status.code(), Some(0), "{}", stderr(&up));

    let in_schema = run(&["status", "--schema=jobs"], Some(&url));
    assert!(stdout(&in_schema).contains("current version: 8\n"), "{}", stdout(&in_schema));
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
