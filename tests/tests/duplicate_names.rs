//! Two definitions with one stored name: a worker refuses to start, naming both.
//! (Its own test binary, so the conflict does not affect the other tests' registries.)

use koyo_job::{Error, RegistryError, define_job};
use koyo_job_tests::env;

mod billing {
    #[koyo_job::define_job(name = "send_invoice")]
    pub async fn send_invoice(id: i64) {
        let _ = id;
    }
}

#[define_job(name = "send_invoice")]
async fn send_invoice_again(id: i64) {
    let _ = id;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_refuses_to_start_when_two_jobs_share_a_name() {
    let env = env().await;
    let err = env.worker().start().await.unwrap_err();
    let Error::Registry(RegistryError::Duplicate { name, first, second }) = &err else {
        panic!("expected a duplicate-name error, got {err:?}");
    };
    assert_eq!(*name, "send_invoice");
    assert!(
        first.starts_with("tests/tests/duplicate_names.rs:") || first.contains("duplicate_names.rs:"),
        "{first}"
    );
    assert!(second.contains("duplicate_names.rs:") && first != second, "{first} / {second}");
    assert!(err.to_string().contains(first.as_str()) && err.to_string().contains(second.as_str()));
    let workers: i64 = env.query("SELECT count(*) FROM koyo_workers", &[]).await[0].get(0);
    assert_eq!(workers, 0, "nothing registered");
    // Enqueueing still works: the conflict is a worker start-up error.
    billing::send_invoice(1).enqueue_on(&env.broker).await.unwrap();
    send_invoice_again(2).enqueue_on(&env.broker).await.unwrap();
}
