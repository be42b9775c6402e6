//! `retry!` and failures: a job that asks to be run again, and one that fails until it runs
//! out of attempts. `last_error` keeps the reason.
//!
//! ```text
//! cargo run --example retry
//! ```

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use koyo_job::{Backoff, JobId, Worker, define_job, retry};

static CALLS: AtomicU32 = AtomicU32::new(0);

#[define_job(queue = "flaky")]
async fn fetch_rates() {
    let call = CALLS.fetch_add(1, Ordering::SeqCst) + 1;
    if call < 3 {
        println!("fetch_rates: upstream busy on call {call}, retrying in 200 ms");
        retry!(Duration::from_millis(200), format!("upstream busy (call {call})"));
    }
    println!("fetch_rates: done on call {call}");
}

#[define_job(queue = "flaky", max_attempts = 3)]
async fn charge_card(card: String) -> Result<(), String> {
    println!("charge_card: declined");
    Err(format!("card {card} declined"))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (_db, broker) = koyo_job_examples::scratch_broker().await?;
    let worker = Worker::builder(broker.clone())
        .queue("flaky")
        .poll_interval(Duration::from_millis(200))
        .lease(Duration::from_secs(5))
        .backoff(Backoff::exponential(Duration::from_millis(100), Duration::from_secs(1)))
        .start()
        .await?;

    let rates = fetch_rates().enqueue_on(&broker).await?;
    let charge = charge_card("4242".into()).enqueue_on(&broker).await?;

    for id in [rates, charge] {
        let (status, attempts, error) = wait_until_finished(&broker, id).await?;
        println!("job {id}: {status} after {attempts} attempt(s); last error: {error:?}");
    }
    worker.shutdown().await;
    Ok(())
}

async fn wait_until_finished(
    broker: &koyo_job::Broker,
    id: JobId,
) -> Result<(String, i32, Option<String>), Box<dyn std::error::Error>> {
    let client = broker.client().await?;
    loop {
        let row = client
            .query_one("SELECT status, attempts, last_error FROM koyo_jobs WHERE id = $1", &[&id.0])
            .await?;
        let status: String = row.get(0);
        if status == "done" || status == "failed" {
            return Ok((status, row.get(1), row.get(2)));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
