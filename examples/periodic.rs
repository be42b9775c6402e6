//! Periodic and unique jobs: a job that carries its schedule (`every`), one added to the
//! worker with arguments and a cron expression in a time zone, and a unique job that a burst of
//! calls enqueues once.
//!
//! ```text
//! cargo run --example periodic
//! ```

use std::sync::LazyLock;
use std::time::Duration;

use koyo_job::{Enqueued, Periodic, Schedule, Worker, define_job};
use tokio::sync::Semaphore;

static HEARTBEATS: LazyLock<Semaphore> = LazyLock::new(|| Semaphore::new(0));
static REPORTS: LazyLock<Semaphore> = LazyLock::new(|| Semaphore::new(0));

/// Every two seconds, on whichever worker serves its queue: no arguments, so the schedule can
/// live on the definition.
#[define_job(queue = "maintenance", every = "2s")]
async fn heartbeat() {
    println!("heartbeat (a periodic job defined with `every = \"2s\"`)");
    HEARTBEATS.add_permits(1);
}

/// A report for one team: it has an argument, so its schedule is added to the worker.
#[define_job(queue = "reports")]
async fn team_report(team: String) {
    println!("report for {team} (every second by the cron expression `* * * * * *`, zone Europe/Berlin)");
    REPORTS.add_permits(1);
}

/// At most one refresh per feed waits or runs at a time, however often it is asked for.
#[define_job(queue = "feeds", unique)]
async fn refresh_feed(feed_id: i64) {
    println!("refreshing feed {feed_id} (once, although it was enqueued five times)");
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (_db, broker) = koyo_job_examples::scratch_broker().await?;
    koyo_job::set_current_broker(broker.clone());

    // Unique: five calls, one job; each call learns the id of the job that holds the key.
    for _ in 0..5 {
        match refresh_feed(7).await? {
            Enqueued::Created(id) => println!("refresh_feed(7): stored as job {id}"),
            Enqueued::Existing(id) => println!("refresh_feed(7): already there, job {id}"),
            other => println!("refresh_feed(7): {other:?}"),
        }
    }

    // Periodic: the worker runs the schedules of its queues' jobs and the ones added to it.
    let every_second = Schedule::parse("* * * * * *")?.in_time_zone("Europe/Berlin")?;
    let worker = Worker::builder(broker.clone())
        .queues(["maintenance", "reports", "feeds"])
        .periodic(Periodic::new("report-team-blue", every_second, || team_report("blue".into())))
        .start()
        .await?;

    let _two_heartbeats = tokio::time::timeout(Duration::from_secs(15), HEARTBEATS.acquire_many(2)).await??;
    let _two_reports = tokio::time::timeout(Duration::from_secs(15), REPORTS.acquire_many(2)).await??;
    worker.shutdown().await;

    let client = broker.client().await?;
    for row in client
        .query("SELECT name, schedule, time_zone, last_slot::text FROM koyo_periodic ORDER BY name", &[])
        .await?
    {
        let (name, schedule, zone, last): (String, String, String, Option<String>) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        println!("schedule {name}: {schedule} ({zone}), last slot {}", last.unwrap_or_default());
    }
    Ok(())
}
