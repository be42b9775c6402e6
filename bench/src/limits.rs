//! limits: how close a queue with a fleet-wide limit runs to that limit, and that it never
//! goes past it. A `max_running` limit of 4 over a worker of 16 slots with jobs that take 20 ms
//! (at most 200 jobs/s), and a rate limit of 100 starts per second with no-op jobs. The figures
//! come from the table itself: each job's `started_at` (the claim, by the database's clock) and
//! `finished_at`, so "never past the limit" is checked on what the database recorded.

use std::time::{Duration, Instant};

use koyo_job::admin::{self, QueueLimits};
use koyo_job::{Broker, BrokerOptions, Worker};

use crate::wal::Section;
use crate::{Ctx, Res, jobs, progress};

const RUNNING_LIMIT: i32 = 4;
const RUNNING_JOBS: i64 = 400;
const RATE_LIMIT: i32 = 100;
const RATE_JOBS: i64 = 300;

pub async fn limits(ctx: &Ctx) -> Res<Section> {
    let queue = jobs::work20_queue();
    let name = jobs::work20_name();

    progress(&format!("limits: max_running {RUNNING_LIMIT}, {RUNNING_JOBS} jobs of 20 ms, pool_size 16"));
    set(ctx, queue, QueueLimits { max_running: Some(RUNNING_LIMIT), ..QueueLimits::default() }).await?;
    let took = run(ctx, queue, name, RUNNING_JOBS).await?;
    let rate = RUNNING_JOBS as f64 / took.as_secs_f64();
    let ideal = f64::from(RUNNING_LIMIT) / 0.020;
    let peak = peak_running(ctx, queue).await?;

    progress(&format!("limits: rate {RATE_LIMIT}/s, {RATE_JOBS} no-op jobs, pool_size 16"));
    set(
        ctx,
        queue,
        QueueLimits { rate_limit: Some(RATE_LIMIT), rate_period_secs: Some(1.0), ..QueueLimits::default() },
    )
    .await?;
    run(ctx, queue, jobs::work0_name(), RATE_JOBS).await?;
    let (span, most_in_a_second) = starts(ctx, queue).await?;
    // The first window's starts come at once; the rest at the rate, one window after another.
    let start_rate = (RATE_JOBS - i64::from(RATE_LIMIT)) as f64 / span;
    set(ctx, queue, QueueLimits::default()).await?;

    let ok = peak == i64::from(RUNNING_LIMIT) && most_in_a_second <= i64::from(RATE_LIMIT);
    let markdown = format!(
        "### Queue limits\n\n\
         | limit | measured | ratio to the limit | never past it |\n|---|---|---|---|\n\
         | max_running {RUNNING_LIMIT}, 20 ms jobs (at most {ideal:.0} jobs/s) | {rate:.0} jobs/s; at most {peak} running at once (from the table) | {:.2} | {} |\n\
         | rate {RATE_LIMIT} starts per second, no-op jobs | {start_rate:.1} starts/s after the first second's {RATE_LIMIT}; at most {most_in_a_second} starts in any second | {:.2} | {} |\n",
        rate / ideal,
        if peak <= i64::from(RUNNING_LIMIT) { "yes" } else { "NO" },
        start_rate / f64::from(RATE_LIMIT),
        if most_in_a_second <= i64::from(RATE_LIMIT) { "yes" } else { "NO" },
    );
    let json = format!(
        "{{\"workload\":\"limits\",\"max_running\":{RUNNING_LIMIT},\"jobs_per_sec\":{rate:.1},\"ideal_jobs_per_sec\":{ideal:.1},\
         \"peak_running\":{peak},\"rate_limit\":{RATE_LIMIT},\"starts_per_sec\":{start_rate:.2},\"most_starts_in_a_second\":{most_in_a_second},\"ok\":{ok}}}\n"
    );
    Ok(Section { markdown, json, ok })
}

async fn set(ctx: &Ctx, queue: &str, limits: QueueLimits) -> Res<()> {
    admin::set_limits(&ctx.admin, queue, &limits, "koyo-job-bench").await?;
    Ok(())
}

/// Stores `n` ready jobs named `name` on `queue` (after emptying the table), runs one worker of
/// 16 slots until they are all done, and answers how long that took.
async fn run(ctx: &Ctx, queue: &str, name: &str, n: i64) -> Res<Duration> {
    ctx.admin.execute("TRUNCATE koyo_jobs", &[]).await?;
    ctx.admin
        .execute(
            "INSERT INTO koyo_jobs (queue, job, args) SELECT $1, $2, ''::bytea FROM generate_series(1, $3::int8)",
            &[&queue, &name, &n],
        )
        .await?;
    let broker = Broker::new(ctx.config.clone(), BrokerOptions::default())?;
    let started = Instant::now();
    let worker = Worker::builder(broker)
        .queue(queue)
        .pool_size(16)
        .poll_interval(Duration::from_millis(500))
        .start()
        .await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let done: i64 =
            ctx.admin.query_one("SELECT count(*) FROM koyo_jobs WHERE status = 'done'", &[]).await?.get(0);
        if done == n {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("limits: {done} of {n} jobs done after 120 s").into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = started.elapsed();
    worker.shutdown().await;
    Ok(took)
}

/// The most jobs of `queue` that were running at once by the table (claimed and not yet
/// written done).
async fn peak_running(ctx: &Ctx, queue: &str) -> Res<i64> {
    let row = ctx
        .admin
        .query_one(
            "SELECT COALESCE(max(running), 0) FROM (
                 SELECT sum(delta) OVER (ORDER BY at, delta) AS running
                 FROM (SELECT started_at AS at, 1 AS delta FROM koyo_jobs WHERE queue = $1
                       UNION ALL
                       SELECT finished_at, -1 FROM koyo_jobs WHERE queue = $1) AS e
             ) AS s",
            &[&queue],
        )
        .await?;
    Ok(row.get::<_, Option<i64>>(0).unwrap_or(0))
}

/// From the first start to the last, in seconds; and the most starts within any second.
async fn starts(ctx: &Ctx, queue: &str) -> Res<(f64, i64)> {
    let row = ctx
        .admin
        .query_one(
            "SELECT EXTRACT(EPOCH FROM max(started_at) - min(started_at))::float8,
                    (SELECT max(n) FROM (
                         SELECT count(*) OVER (ORDER BY started_at RANGE BETWEEN CURRENT ROW AND interval '999999 microseconds' FOLLOWING) AS n
                         FROM koyo_jobs WHERE queue = $1) AS w)
             FROM koyo_jobs WHERE queue = $1",
            &[&queue],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}
