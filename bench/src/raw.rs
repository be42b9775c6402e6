//! The raw-SQL baselines: what PostgreSQL itself can do for each workload, with no queue library
//! in between. Each runs on dedicated connections with prepared statements.

use std::future::poll_fn;
use std::time::{Duration, Instant};

use koyo_job::tokio_postgres::{AsyncMessage, Client, Config, NoTls};
use tokio::sync::{Barrier, mpsc};

use crate::Res;

/// Opens a plain connection (not pooled) and drives it in the background.
pub async fn connect(config: &Config) -> Res<Client> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// One job stored with the minimum a queue needs (the columns' defaults do the rest: `ready`,
/// priority 50, due now), its id returned, and the queue's workers notified: one prepared
/// statement, one round trip, one commit.
const INSERT_ONE: &str = "
WITH ins AS (INSERT INTO koyo_jobs (queue, job, args) VALUES ($1, $2, $3) RETURNING id)
SELECT id, pg_notify('koyo_jobs', $1) FROM ins";

/// [`INSERT_ONE`] without the notification: what the same inserts cost when their commits do
/// not queue for PostgreSQL's notification lock (informational, next to the concurrent enqueue).
const INSERT_ONE_SILENT: &str = "
INSERT INTO koyo_jobs (queue, job, args) VALUES ($1, $2, $3) RETURNING id";

/// A batch stored with one multi-row `unnest` insert, ids returned, one notification.
const INSERT_MANY: &str = "
WITH ins AS (
    INSERT INTO koyo_jobs (queue, job, args)
    SELECT q, j, a FROM unnest($1::text[], $2::text[], $3::bytea[]) AS t(q, j, a)
    RETURNING id
)
SELECT COALESCE(array_agg(id), '{}'), pg_notify('koyo_jobs', $1[1]) FROM ins";

/// The at-least-once claim: a locking CTE in the claim index's order, the attempt counted.
const CLAIM: &str = "
WITH picked AS MATERIALIZED (
    SELECT id FROM koyo_jobs
    WHERE status = 'ready' AND queue = $1
    ORDER BY priority, scheduled_at, id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE koyo_jobs AS j
SET status = 'running', attempts = j.attempts + 1, started_at = now(), worker_id = $3
FROM picked
WHERE j.id = picked.id
RETURNING j.id, j.queue, j.job, j.args, j.attempts, j.max_attempts";

/// Finishes a claimed batch by deleting it, each row fenced by id, attempt, worker and state.
const FINISH_DELETE: &str = "
DELETE FROM koyo_jobs AS j
USING unnest($1::int8[], $2::int4[]) AS d(id, attempt)
WHERE j.id = d.id AND j.attempts = d.attempt AND j.worker_id = $3 AND j.status = 'running'";

/// Finishes a claimed batch by marking it done (what koyo-job does: it keeps finished rows),
/// fenced the same way.
const FINISH_UPDATE: &str = "
UPDATE koyo_jobs AS j
SET status = 'done', finished_at = now()
FROM unnest($1::int8[], $2::int4[]) AS d(id, attempt)
WHERE j.id = d.id AND j.attempts = d.attempt AND j.worker_id = $3 AND j.status = 'running'";

/// The ceiling: fetch and remove in one statement. Nothing is left to fence, so a crash after
/// the commit loses the batch: no at-least-once queue can work this way.
const CEILING: &str = "
WITH picked AS MATERIALIZED (
    SELECT id FROM koyo_jobs
    WHERE status = 'ready' AND queue = $1
    ORDER BY priority, scheduled_at, id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
DELETE FROM koyo_jobs AS j
WHERE j.id IN (SELECT id FROM picked)
RETURNING j.id, j.queue, j.job, j.args, j.attempts, j.max_attempts";

/// N single inserts with NOTIFY, awaited one by one on one connection.
pub async fn enqueue_singles(config: &Config, queue: &str, job: &str, n: u64) -> Res<(Duration, Vec<i64>)> {
    let client = connect(config).await?;
    let stmt = client.prepare(INSERT_ONE).await?;
    let args: Vec<u8> = Vec::new();
    let mut ids = Vec::with_capacity(n as usize);
    let started = Instant::now();
    for _ in 0..n {
        let row = client.query_one(&stmt, &[&queue, &job, &args]).await?;
        ids.push(row.get::<_, i64>(0));
    }
    Ok((started.elapsed(), ids))
}

/// N single inserts from `clients` connections at once, each awaiting its own statements one by
/// one and taking the next job from a shared counter until all N are stored; with `notify`,
/// each statement is [`INSERT_ONE`] (insert + `pg_notify`, one commit), without it the bare
/// insert. The clock starts when every connection is open and prepared.
pub async fn enqueue_concurrent(
    config: &Config,
    queue: &str,
    job: &str,
    n: u64,
    clients: usize,
    notify: bool,
) -> Res<(Duration, Vec<i64>)> {
    let barrier = std::sync::Arc::new(Barrier::new(clients + 1));
    let next = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(clients);
    for _ in 0..clients {
        let client = connect(config).await?;
        let stmt = client.prepare(if notify { INSERT_ONE } else { INSERT_ONE_SILENT }).await?;
        let (barrier, next) = (barrier.clone(), next.clone());
        let (queue, job) = (queue.to_owned(), job.to_owned());
        tasks.push(tokio::spawn(async move {
            let args: Vec<u8> = Vec::new();
            let mut ids = Vec::new();
            barrier.wait().await;
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                let row = client.query_one(&stmt, &[&queue, &job, &args]).await?;
                ids.push(row.get::<_, i64>(0));
            }
            Ok::<Vec<i64>, crate::Error>(ids)
        }));
    }
    barrier.wait().await;
    let started = Instant::now();
    let mut ids = Vec::with_capacity(n as usize);
    for task in tasks {
        ids.extend(task.await??);
    }
    Ok((started.elapsed(), ids))
}

/// N jobs in `batch`-sized multi-row `unnest` inserts on one connection. Like koyo-job's bulk
/// enqueue, each batch's arrays are built just before it is sent.
pub async fn enqueue_bulk(
    config: &Config,
    queue: &str,
    job: &str,
    n: u64,
    batch: u64,
) -> Res<(Duration, Vec<i64>)> {
    let client = connect(config).await?;
    let stmt = client.prepare(INSERT_MANY).await?;
    let mut ids = Vec::with_capacity(n as usize);
    let started = Instant::now();
    let mut left = n;
    while left > 0 {
        let size = left.min(batch) as usize;
        let queues = vec![queue; size];
        let jobs = vec![job; size];
        let args: Vec<Vec<u8>> = vec![Vec::new(); size];
        let row = client.query_one(&stmt, &[&queues, &jobs, &args]).await?;
        ids.extend(row.get::<_, Vec<i64>>(0));
        left -= size as u64;
    }
    Ok((started.elapsed(), ids))
}

/// How a raw drain finishes the jobs it claimed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// Claim, then mark done (fenced): the bound for a queue that keeps finished rows.
    Update,
    /// Claim, then delete (fenced): the at-least-once bound (a).
    Delete,
    /// Delete and return in one statement: the ceiling (b), not at-least-once.
    Ceiling,
}

impl Finish {
    pub fn label(self) -> &'static str {
        match self {
            Finish::Update => "claim + fenced UPDATE to done",
            Finish::Delete => "claim + fenced DELETE",
            Finish::Ceiling => "DELETE … RETURNING (ceiling)",
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            Finish::Update => "update",
            Finish::Delete => "delete",
            Finish::Ceiling => "ceiling",
        }
    }
}

/// Drains the queue with `conns` connections, each looping "take up to `batch` jobs, finish
/// them" until it finds none. Returns the wall time and how many jobs were finished.
pub async fn drain(
    config: &Config,
    queue: &str,
    conns: usize,
    batch: i64,
    finish: Finish,
) -> Res<(Duration, u64)> {
    let barrier = std::sync::Arc::new(Barrier::new(conns + 1));
    let mut tasks = Vec::with_capacity(conns);
    for i in 0..conns {
        let client = connect(config).await?;
        let barrier = barrier.clone();
        let queue = queue.to_owned();
        // A made-up worker id per connection: nothing references koyo_workers.
        let worker_id = 1_000_000 + i as i64;
        tasks.push(tokio::spawn(async move {
            let main = client.prepare(if finish == Finish::Ceiling { CEILING } else { CLAIM }).await?;
            let end = match finish {
                Finish::Update => Some(client.prepare(FINISH_UPDATE).await?),
                Finish::Delete => Some(client.prepare(FINISH_DELETE).await?),
                Finish::Ceiling => None,
            };
            barrier.wait().await;
            let mut finished = 0u64;
            loop {
                let rows = if finish == Finish::Ceiling {
                    client.query(&main, &[&queue, &batch]).await?
                } else {
                    client.query(&main, &[&queue, &batch, &worker_id]).await?
                };
                if rows.is_empty() {
                    break;
                }
                // Read the columns a worker would need to run the jobs.
                let mut ids = Vec::with_capacity(rows.len());
                let mut attempts = Vec::with_capacity(rows.len());
                for row in &rows {
                    let _job: &str = row.get(2);
                    let _args: &[u8] = row.get(3);
                    ids.push(row.get::<_, i64>(0));
                    attempts.push(row.get::<_, i32>(4));
                }
                match &end {
                    Some(stmt) => {
                        let n = client.execute(stmt, &[&ids, &attempts, &worker_id]).await?;
                        if n != ids.len() as u64 {
                            return Err(format!("a fenced finish wrote {n} of {} rows", ids.len()).into());
                        }
                        finished += n;
                    }
                    None => finished += ids.len() as u64,
                }
            }
            Ok::<u64, crate::Error>(finished)
        }));
    }
    barrier.wait().await;
    let started = Instant::now();
    let mut total = 0;
    for task in tasks {
        total += task.await??;
    }
    Ok((started.elapsed(), total))
}

/// LISTEN/NOTIFY round trips on the same server: `n` notifications sent `gap` apart from one
/// connection; each sample is the time from sending the NOTIFY to its arrival on another
/// connection that LISTENs.
pub async fn notify_round_trips(config: &Config, n: u64, gap: Duration) -> Res<Vec<Duration>> {
    let (listener, mut connection) = config.connect(NoTls).await?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        while let Some(message) = poll_fn(|cx| connection.poll_message(cx)).await {
            match message {
                Ok(AsyncMessage::Notification(_)) => {
                    if tx.send(Instant::now()).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    listener.batch_execute("LISTEN koyo_bench_ping").await?;
    let sender = connect(config).await?;
    let stmt = sender.prepare("SELECT pg_notify('koyo_bench_ping', 'default')").await?;
    sender.query_one(&stmt, &[]).await?; // warm-up
    tokio::time::timeout(Duration::from_secs(5), rx.recv()).await?.ok_or("the listener stopped")?;

    let mut samples = Vec::with_capacity(n as usize);
    let mut ticker = tokio::time::interval(gap);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for _ in 0..n {
        ticker.tick().await;
        let sent = Instant::now();
        sender.query_one(&stmt, &[]).await?;
        let arrived =
            tokio::time::timeout(Duration::from_secs(5), rx.recv()).await?.ok_or("the listener stopped")?;
        samples.push(arrived.saturating_duration_since(sent));
    }
    drop(listener);
    driver.abort();
    Ok(samples)
}
