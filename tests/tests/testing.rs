//! `koyo_job::testing`: fresh databases per test, dropped afterwards, and the throwaway cluster
//! that is started when no server is at hand and removed when the test process ends.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use koyo_job::testing::TestDatabase;
use koyo_job::tokio_postgres::{Client, Config, NoTls};

async fn connect(config: &Config) -> Client {
    let (client, connection) = config.connect(NoTls).await.expect("connect to the test database");
    tokio::spawn(connection);
    client
}

async fn current_database(client: &Client) -> String {
    client.query_one("SELECT current_database()", &[]).await.unwrap().get(0)
}

async fn database_exists(client: &Client, name: &str) -> bool {
    client
        .query_one("SELECT count(*) FROM pg_database WHERE datname = $1", &[&name])
        .await
        .unwrap()
        .get::<_, i64>(0)
        == 1
}

#[tokio::test]
async fn two_databases_are_distinct_and_usable() {
    let a = TestDatabase::create().await.unwrap();
    let b = TestDatabase::create().await.unwrap();
    assert_ne!(a.name(), b.name());

    let client_a = connect(a.config()).await;
    let client_b = connect(b.config()).await;
    assert_eq!(current_database(&client_a).await, a.name());
    assert_eq!(current_database(&client_b).await, b.name());

    client_a.batch_execute("CREATE TABLE only_in_a (x int)").await.unwrap();
    let in_b = client_b.query_opt("SELECT to_regclass('only_in_a')::text", &[]).await.unwrap();
    assert_eq!(in_b.unwrap().get::<_, Option<String>>(0), None);
}

#[tokio::test]
async fn a_database_is_named_after_the_process() {
    let db = TestDatabase::create().await.unwrap();
    let prefix = format!("koyo_test_{}_", std::process::id());
    assert!(db.name().starts_with(&prefix), "{}", db.name());
}

#[tokio::test]
async fn the_url_leads_to_the_same_database() {
    let db = TestDatabase::create().await.unwrap();
    let config: Config = db.url().parse().unwrap();
    assert_eq!(current_database(&connect(&config).await).await, db.name());
}

#[tokio::test]
async fn the_database_is_gone_after_drop_even_with_a_connection_open() {
    let witness = TestDatabase::create().await.unwrap();
    let observer = connect(witness.config()).await;

    let db = TestDatabase::create().await.unwrap();
    let name = db.name().to_owned();
    let still_open = connect(db.config()).await;
    assert!(database_exists(&observer, &name).await);

    drop(db);

    assert!(!database_exists(&observer, &name).await);
    assert!(still_open.simple_query("SELECT 1").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_databases_can_be_created_at_once() {
    let tasks: Vec<_> = (0..12).map(|_| tokio::spawn(TestDatabase::create())).collect();
    let mut names = Vec::new();
    for task in tasks {
        names.push(task.await.unwrap().unwrap().name().to_owned());
    }
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 12);
}

/// What the child process reports about its throwaway cluster.
#[derive(Debug)]
struct Cluster {
    dir: PathBuf,
    port: u16,
    postmaster_pid: u32,
}

/// A child process of this test binary, killed if the test fails before it ends.
struct ChildProcess(Child);

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the `cluster_child` program (`tests/src/bin/cluster_child.rs`) with the throwaway
/// cluster forced by `KOYO_TEST_PRIVATE_CLUSTER` for that process only.
fn spawn_cluster_child(mode: &str) -> ChildProcess {
    let child = Command::new(env!("CARGO_BIN_EXE_cluster_child"))
        .arg(mode)
        .env("KOYO_TEST_PRIVATE_CLUSTER", "1")
        .env_remove("DATABASE_URL")
        // The "hang" child waits for this pipe to close, so it cannot outlive this process.
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    ChildProcess(child)
}

/// Reads the child's report, up to its `ready` line.
fn read_report(child: &mut ChildProcess) -> Cluster {
    let (mut dir, mut port, mut pid) = (None, None, None);
    for line in BufReader::new(child.0.stdout.as_mut().unwrap()).lines() {
        let line = line.unwrap();
        if let Some((_, value)) = line.split_once("cluster-dir=") {
            dir = Some(PathBuf::from(value));
        } else if let Some((_, value)) = line.split_once("cluster-port=") {
            port = Some(value.parse().unwrap());
        } else if let Some((_, value)) = line.split_once("postmaster-pid=") {
            pid = Some(value.parse().unwrap());
        } else if line.ends_with("cluster-ready") {
            break;
        }
    }
    Cluster {
        dir: dir.expect("the child reported its cluster directory"),
        port: port.expect("the child reported its port"),
        postmaster_pid: pid.expect("the child reported the postmaster's pid"),
    }
}

/// Waits until the cluster's server has stopped and its directory is gone.
fn assert_cleaned_up(cluster: &Cluster) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let dir_gone = !cluster.dir.exists();
        let server_gone = !Path::new(&format!("/proc/{}", cluster.postmaster_pid)).exists();
        let port_closed = std::net::TcpStream::connect(("127.0.0.1", cluster.port)).is_err();
        if dir_gone && server_gone && port_closed {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not cleaned up within 60 s: dir gone {dir_gone}, server gone {server_gone}, port closed {port_closed} ({cluster:?})"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_throwaway_cluster_is_removed_when_the_test_process_exits() {
    let mut child = spawn_cluster_child("exit");
    let cluster = read_report(&mut child);
    let status = child.0.wait().unwrap();
    assert!(status.success(), "child failed: {status}");
    assert_cleaned_up(&cluster);
}

#[test]
fn a_throwaway_cluster_is_removed_when_the_test_process_is_killed() {
    let mut child = spawn_cluster_child("hang");
    let cluster = read_report(&mut child);
    assert!(cluster.dir.exists());
    child.0.kill().unwrap(); // SIGKILL: no destructor, no exit handler runs
    child.0.wait().unwrap();
    assert_cleaned_up(&cluster);
}
