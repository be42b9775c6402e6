//! fleet: 1, 2, 4, 8 worker processes (pool_size 16 each) on one PostgreSQL draining one
//! backlog, with no-op jobs and with jobs that sleep 1 ms, on a private cluster configured like a
//! durable server; for each step, where the machine's CPU went (server, workers, idle).

use std::time::{Duration, Instant};

use crate::child::WorkerProcess;
use crate::cluster::{self, Cluster};
use crate::raw::Finish;
use crate::report::{Check, Measured, Report, Row, Value};
use crate::{Ctx, Res, args::Args, count_of, jobs, median, progress, ratio, show_statuses, statuses};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Body {
    Noop,
    Sleep,
}

impl Body {
    fn label(self) -> &'static str {
        match self {
            Body::Noop => "no-op",
            Body::Sleep => "1 ms sleep",
        }
    }

    fn job(self) -> &'static str {
        match self {
            Body::Noop => jobs::noop_name(),
            Body::Sleep => jobs::sleep_name(),
        }
    }
}

/// Where the CPU of one step went, in cores (CPU seconds per wall second).
#[derive(Clone, Copy, Debug, Default)]
struct CpuSplit {
    server: f64,
    workers: f64,
    machine_busy: f64,
}

pub async fn fleet(args: &Args, report: &mut Report) -> Res<()> {
    progress("fleet: starting a private cluster (durable settings, max_connections 300)");
    let cluster = Cluster::start(args, cluster::diagnostics()).await?;
    let ctx = &cluster.ctx;
    let n = args.jobs;

    // The raw bounds of this server, in the same run.
    let mut update_runs = Vec::new();
    let mut delete_runs = Vec::new();
    for _ in 0..args.repeat {
        progress(&format!("fleet: raw claim + fenced UPDATE, 16 connections, {n} jobs"));
        update_runs.push(crate::raw_drain(ctx, n, 16, 100, Finish::Update).await?);
        progress(&format!("fleet: raw claim + fenced DELETE, 16 connections, {n} jobs"));
        delete_runs.push(crate::raw_drain(ctx, n, 16, 100, Finish::Delete).await?);
    }
    let update = median(update_runs);
    let delete = median(delete_runs);
    report.baselines.push((
        "fleet_update_16".into(),
        Measured { name: format!("{} (fleet cluster)", update.name), ..update.clone() },
    ));
    report.baselines.push((
        "fleet_delete_16".into(),
        Measured { name: format!("{} (fleet cluster)", delete.name), ..delete.clone() },
    ));

    for body in [Body::Noop, Body::Sleep] {
        let mut first: Option<f64> = None;
        for &processes in &args.fleet {
            let mut runs = Vec::new();
            for _ in 0..args.repeat {
                progress(&format!(
                    "fleet: {processes} worker processes × pool_size 16, {n} {} jobs",
                    body.label()
                ));
                runs.push(step(&cluster, n, processes, body).await?);
            }
            let koyo = median(runs);
            let rate = koyo.value.per_sec().unwrap_or(f64::NAN);
            let one = *first.get_or_insert(rate);
            let mut other_ratios = vec![
                (
                    "(a) claim + fenced DELETE bound (fleet cluster)".to_owned(),
                    ratio(&koyo, &delete).unwrap_or(f64::NAN),
                ),
                (
                    format!(
                        "the first step ({} process{})",
                        args.fleet[0],
                        if args.fleet[0] == 1 { "" } else { "es" }
                    ),
                    rate / one,
                ),
            ];
            if body == Body::Sleep {
                // Each slot can run at most 1,000 one-millisecond jobs a second.
                let ideal = processes as f64 * 16.0 * 1000.0;
                other_ratios
                    .push((format!("the slots' ceiling ({processes} × 16 slots / 1 ms)"), rate / ideal));
            }
            // The "no collapse": 4 processes at least as fast as 1, on no-op jobs.
            let target = (body == Body::Noop && processes == 4 && args.fleet[0] == 1)
                .then(|| (format!("≥ 1 process ({} jobs/s)", crate::report::group(one)), rate >= one));
            report.rows.push(Row {
                workload: "fleet",
                variant: format!("{processes} processes × pool_size 16, {}", body.label()),
                ratio: ratio(&koyo, &update),
                other_ratios,
                target,
                koyo,
                baseline: Some(Measured {
                    name: format!("(a) {} (fleet cluster)", update.name),
                    ..update.clone()
                }),
            });
        }
    }
    cluster.keep_log();
    drop(cluster);
    Ok(())
}

/// Fills the table with `n` jobs and drains them with `processes` worker processes.
async fn step(cluster: &Cluster, n: u64, processes: usize, body: Body) -> Res<Measured> {
    let ctx: &Ctx = &cluster.ctx;
    crate::reset(ctx).await?;
    ctx.admin
        .execute(
            "INSERT INTO koyo_jobs (queue, job, args) SELECT $1, $2, ''::bytea FROM generate_series(1, $3::int8)",
            &[&ctx.queue, &body.job(), &(n as i64)],
        )
        .await?;
    crate::settle(ctx).await?;

    let mut children = Vec::with_capacity(processes);
    for _ in 0..processes {
        children.push(WorkerProcess::spawn(&ctx.url, 16).await?);
    }
    let server0 = cluster.server_cpu()?;
    let machine0 = cluster::machine_cpu();
    let started = Instant::now();
    for child in &mut children {
        child.go().await?;
    }
    for child in &mut children {
        child.started().await?;
    }
    crate::wait_drained(ctx, Duration::from_millis(10)).await?;
    let elapsed = started.elapsed();
    let server1 = cluster.server_cpu()?;
    let machine1 = cluster::machine_cpu();
    let mut reports = Vec::with_capacity(processes);
    for child in children {
        reports.push(child.stop().await?);
    }
    let executed: u64 = reports.iter().map(|r| r.executed).sum();
    let worker_cpu: f64 = reports.iter().map(|r| r.cpu_ms as f64 / 1000.0).sum();
    let busy = (machine1.0 - machine0.0) as f64 / ((machine1.1 - machine0.1).max(1)) as f64;
    let split = CpuSplit {
        server: cluster::cores(server1 - server0, elapsed),
        // Whole-process CPU of the workers (start-up and shut-down included: a slight overestimate).
        workers: cluster::cores(worker_cpu, elapsed),
        machine_busy: busy,
    };

    let after = statuses(ctx).await?;
    let done = count_of(&after, "done");
    let reruns: i64 =
        ctx.admin.query_one("SELECT count(*) FROM koyo_jobs WHERE attempts <> 1", &[]).await?.get(0);
    let ok = executed == n && done == n as i64 && reruns == 0 && after.len() == 1;
    let per_process = reports.iter().map(|r| r.executed.to_string()).collect::<Vec<_>>().join(" + ");
    Ok(Measured {
        name: format!("{processes} koyo-job worker processes, pool_size 16 each"),
        value: Value::rate(n, elapsed),
        check: Check::new(
            ok,
            format!(
                "{per_process} bodies run, {reruns} run more than once; rows: {}; CPU: server {:.2} cores, \
                 workers {:.2} cores, machine {:.0} % busy of {} cores",
                show_statuses(&after),
                split.server,
                split.workers,
                split.machine_busy * 100.0,
                std::thread::available_parallelism().map_or(0, |n| n.get()),
            ),
        ),
    })
}
