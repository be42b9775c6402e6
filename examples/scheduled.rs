//! Jobs that run later: `schedule_at` (an absolute time) and `schedule_in` (a delay measured
//! by the database's clock). The worker sleeps until the next one is due.
//!
//! ```text
//! cargo run --example scheduled
//! ```

use std::sync::LazyLock;
use std::time::Duration;

use koyo_job::{Worker, define_job, schedule_at, schedule_in};
use time::OffsetDateTime;
use tokio::sync::Semaphore;

static RAN: LazyLock<Semaphore> = LazyLock::new(|| Semaphore::new(0));

#[define_job(queue = "reminders")]
async fn remind(what: String, enqueued_at: i128) {
    let waited = OffsetDateTime::now_utc().unix_timestamp_nanos() - enqueued_at;
    println!("reminder {what:?} ran {:.2} s after it was enqueued", waited as f64 / 1e9);
    RAN.add_permits(1);
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (_db, broker) = koyo_job_examples::scratch_broker().await?;
    koyo_job::set_current_broker(broker.clone());
    let worker = Worker::builder(broker).queue("reminders").start().await?;

    let now = OffsetDateTime::now_utc();
    let stamp = now.unix_timestamp_nanos();
    schedule_in(Duration::from_secs(2), remind("in two seconds".into(), stamp)).await?;
    schedule_at(now + time::Duration::seconds(1), remind("at now + 1 s".into(), stamp)).await?;
    remind("right away".into(), stamp).await?;

    let _all_three = RAN.acquire_many(3).await?;
    worker.shutdown().await;
    Ok(())
}
