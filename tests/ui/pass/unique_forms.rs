use koyo_job::{Enqueued, UniqueJob, define_job};

#[define_job(unique)]
async fn by_args(n: i64) {
    let _ = n;
}

#[define_job(unique = "queue", queue = "sweeps")]
async fn by_queue() {}

#[define_job(unique_for = "1h")]
async fn hourly(n: i64) {
    let _ = n;
}

#[define_job(unique = "args", unique_for = "1d")]
async fn daily(n: i64) {
    let _ = n;
}

async fn answers() -> Result<Option<koyo_job::JobId>, koyo_job::Error> {
    let job: UniqueJob<(i64,)> = by_args(1);
    let answer: Enqueued = job.await?;
    let _: Enqueued = by_queue().await?;
    let _: Enqueued = hourly(1).await?;
    let _: Enqueued = koyo_job::schedule_in(std::time::Duration::from_secs(5), daily(1)).await?;
    Ok(answer.id())
}

fn main() {
    let _ = answers;
}
