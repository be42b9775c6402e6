//! latency: how soon a lone job starts. One job is enqueued every 10 ms (each enqueue awaited),
//! and each sample is the time from the return of its enqueue to the start of its body, on one
//! monotonic clock (enqueuer, worker and body all run in this process).
//!
//! In the same run, alternating with koyo-job, the raw bound: a loop that LISTENs on a
//! dedicated connection and, on each notification, claims with a single-row locking
//! `UPDATE … WHERE id = (SELECT … FOR UPDATE SKIP LOCKED LIMIT 1) RETURNING` on a connection
//! of its own until nothing is left; its "body start" is the moment the claim's reply is read.
//! Both pick up jobs enqueued the same way (`Job::enqueue_on`, which notifies in its own
//! commit when no other enqueue is in flight), so only the pickup differs.
//!
//! Each round measures both idle and under load: `--load-threads` threads (default: one per
//! CPU) of this process spin at normal priority while the jobs are enqueued, so the worker's
//! tasks, the raw loop and the PostgreSQL backends compete with them for the CPUs.

use std::collections::HashMap;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use koyo_job::tokio_postgres::{AsyncMessage, NoTls};
use koyo_job::{Broker, BrokerOptions, Worker};
use tokio::sync::{oneshot, watch};

use crate::report::{Check, Measured, Row, Value};
use crate::{Ctx, Report, Res, count_of, jobs, progress, raw, reset, settle, show_statuses, statuses};

/// The pace of the enqueues.
const GAP: Duration = Duration::from_millis(10);
/// The worker's pool size.
const POOL_SIZE: usize = 16;

/// The raw loop's claim: one row, locked in the claim index's order, its attempt counted.
const RAW_CLAIM: &str = "
UPDATE koyo_jobs
SET status = 'running', attempts = attempts + 1, started_at = now(), worker_id = $2
WHERE id = (
    SELECT id FROM koyo_jobs
    WHERE status = 'ready' AND queue = $1
    ORDER BY priority, scheduled_at, id
    LIMIT 1
    FOR UPDATE SKIP LOCKED
)
RETURNING id, job, args, attempts";

/// The raw loop's finish: fenced by attempt, worker and state.
const RAW_FINISH: &str = "
UPDATE koyo_jobs SET status = 'done', finished_at = now()
WHERE id = $1 AND attempts = $2 AND worker_id = $3 AND status = 'running'";

/// Threads that keep the CPUs busy until dropped.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(threads: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..threads)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut x = 1u64;
                    while !stop.load(Ordering::Relaxed) {
                        for _ in 0..10_000 {
                            x = x
                                .wrapping_mul(6_364_136_223_846_793_005)
                                .wrapping_add(1_442_695_040_888_963_407);
                        }
                        std::hint::black_box(x);
                    }
                })
            })
            .collect();
        Load { stop, threads }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// One measurement: the samples (ms, from enqueue return to body start; negative when the body
/// started before the enqueue call returned) and how many of the `n` jobs were seen to start.
struct Samples {
    ms: Vec<f64>,
    early: usize,
}

/// One side of one measurement, with its check.
type Run = (Samples, Check);

fn samples(returned: &[Instant], starts: &[Option<Instant>]) -> Samples {
    let mut ms = Vec::with_capacity(returned.len());
    let mut early = 0;
    for (ret, start) in returned.iter().zip(starts) {
        if let Some(start) = start {
            let signed = match start.checked_duration_since(*ret) {
                Some(d) => d.as_secs_f64(),
                None => {
                    early += 1;
                    -ret.duration_since(*start).as_secs_f64()
                }
            };
            ms.push(signed * 1000.0);
        }
    }
    Samples { ms, early }
}

/// One measurement of both, interleaved: every 10 ms a job for the koyo-job worker and, 5 ms
/// off it, one for the raw loop (which goes first alternates), so each sees a lone job every
/// 10 ms and both see the same machine at the same moments. Returns (koyo-job, raw).
async fn paired_once(ctx: &Ctx, n: u64, load: usize) -> Res<(Run, Run)> {
    reset(ctx).await?;
    settle(ctx).await?;
    *jobs::PING_STARTS.lock().unwrap_or_else(|p| p.into_inner()) = vec![None; n as usize];
    let raw_starts: Arc<Mutex<HashMap<i64, Instant>>> = Arc::default();
    let (ready_tx, ready_rx) = oneshot::channel();
    let (stop_tx, stop_rx) = watch::channel(false);
    let raw_queue = jobs::raw_ping(0).queue();
    let pickup =
        tokio::spawn(raw_pickup(ctx.config.clone(), raw_queue, raw_starts.clone(), ready_tx, stop_rx));
    ready_rx.await.map_err(|_| "the raw pickup loop did not start")?;
    let worker_broker = Broker::new(ctx.config.clone(), BrokerOptions::default())?;
    let worker = Worker::builder(worker_broker).pool_size(POOL_SIZE).start().await?;
    // Let it go idle: first claim and tick done, waiting for a notification.
    tokio::time::sleep(Duration::from_millis(1000)).await;

    let mut koyo_returned = Vec::with_capacity(n as usize);
    let mut raw_returned = Vec::with_capacity(n as usize);
    let mut raw_ids = Vec::with_capacity(n as usize);
    {
        let _load = (load > 0).then(|| Load::start(load));
        let mut ticker = tokio::time::interval(GAP / 2);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for i in 0..2 * n {
            let seq = (i / 2) as u32;
            ticker.tick().await;
            // koyo-job's job first in even pairs, the raw loop's in odd ones.
            if i.is_multiple_of(2) == seq.is_multiple_of(2) {
                jobs::ping(seq).enqueue_on(&ctx.broker).await?;
                koyo_returned.push(Instant::now());
            } else {
                let id = jobs::raw_ping(seq).enqueue_on(&ctx.broker).await?;
                raw_returned.push(Instant::now());
                raw_ids.push(id.0);
            }
        }
        // The last jobs get their time too, under the same load.
        ticker.tick().await;
        ticker.tick().await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let koyo_all =
            jobs::PING_STARTS.lock().unwrap_or_else(|p| p.into_inner()).iter().all(Option::is_some);
        let raw_all = raw_starts.lock().unwrap_or_else(|p| p.into_inner()).len() >= n as usize;
        if (koyo_all && raw_all) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = stop_tx.send(true);
    let finished = pickup.await??;
    crate::wait_drained(ctx, Duration::from_millis(5)).await?;
    worker.shutdown().await;

    let starts = std::mem::take(&mut *jobs::PING_STARTS.lock().unwrap_or_else(|p| p.into_inner()));
    let koyo = samples(&koyo_returned, &starts);
    let raw_starts = std::mem::take(&mut *raw_starts.lock().unwrap_or_else(|p| p.into_inner()));
    let by_seq: Vec<Option<Instant>> = raw_ids.iter().map(|id| raw_starts.get(id).copied()).collect();
    let raw = samples(&raw_returned, &by_seq);
    let done: Vec<(String, i64)> = ctx
        .admin
        .query("SELECT queue, count(*) FROM koyo_jobs WHERE status = 'done' GROUP BY queue", &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let st = statuses(ctx).await?;
    let koyo_done = count_of(&done, jobs::ping(0).queue());
    let raw_done = count_of(&done, raw_queue);
    let all_done = st.len() == 1 && count_of(&st, "done") == 2 * n as i64;
    let koyo_check = Check::new(
        koyo.ms.len() as u64 == n && koyo_done == n as i64 && all_done,
        format!(
            "{} bodies started ({} before their enqueue returned), {koyo_done} done; rows: {}",
            koyo.ms.len(),
            koyo.early,
            show_statuses(&st)
        ),
    );
    let raw_check = Check::new(
        raw.ms.len() as u64 == n && finished == n && raw_done == n as i64 && all_done,
        format!(
            "{} claims seen ({} before their enqueue returned), {finished} finished",
            raw.ms.len(),
            raw.early
        ),
    );
    Ok(((koyo, koyo_check), (raw, raw_check)))
}

/// The raw pickup loop; returns how many jobs it finished.
async fn raw_pickup(
    config: koyo_job::tokio_postgres::Config,
    queue: &'static str,
    starts: Arc<Mutex<HashMap<i64, Instant>>>,
    ready: oneshot::Sender<()>,
    mut stop: watch::Receiver<bool>,
) -> Res<u64> {
    let (listener, mut connection) = config.connect(NoTls).await?;
    let claimer = raw::connect(&config).await?;
    let claim = claimer.prepare(RAW_CLAIM).await?;
    let worker_id: i64 = 1_000_000;
    // Finishing is not on the pickup path: a task of its own marks claimed jobs done, on its
    // own connection (as koyo-job's completer does).
    let finisher = raw::connect(&config).await?;
    let finish = finisher.prepare(RAW_FINISH).await?;
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<(i64, i32)>();
    let finishing = tokio::spawn(async move {
        let mut finished = 0u64;
        while let Some((id, attempt)) = done_rx.recv().await {
            finished += finisher.execute(&finish, &[&id, &attempt, &worker_id]).await?;
        }
        Ok::<u64, crate::Error>(finished)
    });
    // LISTEN while driving the listening connection from this task (no other task in between).
    {
        let listen = listener.batch_execute("LISTEN koyo_jobs");
        tokio::pin!(listen);
        loop {
            tokio::select! {
                done = &mut listen => { done?; break; }
                message = poll_fn(|cx| connection.poll_message(cx)) => match message {
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e.into()),
                    None => return Err("the listening connection closed".into()),
                },
            }
        }
    }
    let _ = ready.send(());
    // Claim at start, then after each notification for this queue, until nothing is left.
    let mut claim_now = true;
    loop {
        while claim_now {
            let rows = claimer.query(&claim, &[&queue, &worker_id]).await?;
            let Some(row) = rows.first() else {
                claim_now = false;
                break;
            };
            let started = Instant::now();
            let id: i64 = row.get(0);
            let _job: &str = row.get(1);
            let _args: &[u8] = row.get(2);
            let attempt: i32 = row.get(3);
            starts.lock().unwrap_or_else(|p| p.into_inner()).insert(id, started);
            let _ = done_tx.send((id, attempt));
        }
        tokio::select! {
            message = poll_fn(|cx| connection.poll_message(cx)) => match message {
                Some(Ok(AsyncMessage::Notification(n))) => claim_now = n.payload() == queue,
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => return Err("the listening connection closed".into()),
            },
            _ = stop.changed() => {
                drop(done_tx);
                return finishing.await?;
            }
        }
    }
}

/// The samples of several runs, pooled, as one measurement.
fn pooled(name: String, runs: &[Run]) -> Measured {
    let mut ms: Vec<f64> = runs.iter().flat_map(|(s, _)| s.ms.iter().copied()).collect();
    let ok = runs.iter().all(|(_, c)| c.ok);
    let detail = runs.iter().map(|(_, c)| c.detail.clone()).collect::<Vec<_>>().join("; ");
    Measured { name, value: Value::latency(&mut ms), check: Check::new(ok, detail) }
}

fn p50_p99(value: &Value) -> (f64, f64) {
    match value {
        Value::Latency { p50, p99, .. } => (*p50, *p99),
        _ => (f64::NAN, f64::NAN),
    }
}

pub async fn latency(ctx: &Ctx, report: &mut Report) -> Res<()> {
    let n = ctx.args.latency_jobs;
    let rounds = ctx.args.latency_rounds;
    let load = ctx.args.load_threads;
    let conditions: Vec<(&str, usize)> =
        if load > 0 { vec![("idle", 0), ("under load", load)] } else { vec![("idle", 0)] };
    // Per condition: koyo-job's runs and the raw loop's.
    let mut runs: Vec<(Vec<Run>, Vec<Run>)> = conditions.iter().map(|_| (Vec::new(), Vec::new())).collect();
    for round in 0..rounds {
        for (i, (label, threads)) in conditions.iter().enumerate() {
            progress(&format!(
                "latency round {}/{rounds}, {label}: koyo-job worker and raw loop, {n} jobs each, interleaved",
                round + 1
            ));
            let (koyo, raw) = paired_once(ctx, n, *threads).await?;
            runs[i].0.push(koyo);
            runs[i].1.push(raw);
        }
    }
    // The floor under both: how long a notification takes to arrive, on an idle machine.
    let m = n.min(500);
    progress(&format!("latency: {m} LISTEN/NOTIFY round trips, 10 ms apart (raw)"));
    let trips = raw::notify_round_trips(&ctx.config, m, GAP).await?;
    let mut ms: Vec<f64> = trips.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    report.baselines.push((
        "latency_notify_round_trip".to_owned(),
        Measured {
            name: "LISTEN/NOTIFY round trip (pg_notify sent → notification received), idle".into(),
            value: Value::latency(&mut ms),
            check: Check::new(trips.len() as u64 == m, format!("{} notifications received", trips.len())),
        },
    ));
    for ((label, threads), (koyo_runs, raw_runs)) in conditions.iter().zip(&runs) {
        let how = if *threads > 0 { format!(", {threads} busy threads") } else { String::new() };
        let koyo = pooled(
            format!("Job::enqueue_on return → body start, idle worker (pool_size {POOL_SIZE}){how}"),
            koyo_runs,
        );
        let baseline = pooled(
            format!("raw LISTEN + single-row locking claim loop, enqueue return → claim returned{how}"),
            raw_runs,
        );
        let (k50, k99) = p50_p99(&koyo.value);
        let (r50, r99) = p50_p99(&baseline.value);
        let (q50, q99) = (k50 / r50, k99 / r99);
        let mut other_ratios = vec![("raw loop: p99 koyo-job / raw".to_owned(), q99)];
        for (round, ((ks, _), (rs, _))) in koyo_runs.iter().zip(raw_runs).enumerate() {
            let (mut kms, mut rms) = (ks.ms.clone(), rs.ms.clone());
            let (a50, a99) = p50_p99(&Value::latency(&mut kms));
            let (b50, b99) = p50_p99(&Value::latency(&mut rms));
            other_ratios.push((
                format!(
                    "raw loop, round {}: p50 koyo-job / raw (koyo {a50:.2} ms, raw {b50:.2} ms)",
                    round + 1
                ),
                a50 / b50,
            ));
            other_ratios.push((
                format!(
                    "raw loop, round {}: p99 koyo-job / raw (koyo {a99:.2} ms, raw {b99:.2} ms)",
                    round + 1
                ),
                a99 / b99,
            ));
        }
        report.rows.push(Row {
            workload: "latency",
            variant: format!(
                "{label}, {n} jobs 10 ms apart × {rounds} round{}",
                if rounds == 1 { "" } else { "s" }
            ),
            target: Some((
                format!("koyo-job / raw: p50 ≤ 1.2 ({q50:.2}), p99 ≤ 1.5 ({q99:.2})"),
                q50 <= 1.2 && q99 <= 1.5,
            )),
            // koyo-job's p50 over the raw loop's (lower is better: 1.0 = as fast as raw SQL).
            ratio: Some(q50),
            other_ratios,
            koyo,
            baseline: Some(baseline),
        });
    }
    Ok(())
}
