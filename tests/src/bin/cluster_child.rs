//! The child half of the throwaway-cluster tests in `tests/tests/testing.rs`: creates a
//! database on a throwaway cluster (forced by `KOYO_TEST_PRIVATE_CLUSTER=1`), reports where the
//! cluster lives on stdout, then exits (`exit`) or waits to be killed (`hang`).

use std::path::PathBuf;

use koyo_job::testing::TestDatabase;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mode = std::env::args().nth(1).expect("usage: cluster_child exit|hang");

    let db = TestDatabase::create().await.expect("a throwaway cluster");
    let (client, connection) = db.config().connect(koyo_job::tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(connection);
    let name: String = client.query_one("SELECT current_database()", &[]).await.unwrap().get(0);
    assert_eq!(name, db.name());

    let port = db.config().get_ports()[0];
    assert_ne!(port, 5432, "the throwaway cluster must not be the local server");

    let prefix = format!("koyo-job-pg-{}-", std::process::id());
    let dirs: Vec<PathBuf> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().starts_with(&prefix))
        .map(|entry| entry.path())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    let pid_file = std::fs::read_to_string(dirs[0].join("data/postmaster.pid")).unwrap();

    println!("cluster-dir={}", dirs[0].display());
    println!("cluster-port={port}");
    println!("postmaster-pid={}", pid_file.lines().next().unwrap());
    println!("cluster-ready");

    if mode == "hang" {
        // Until the parent kills us, or dies itself and so closes our stdin.
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
    }
}
