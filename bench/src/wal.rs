//! wal: what each step of a job's life costs the server, in WAL bytes and server CPU time per
//! job, for koyo-job and for the raw-SQL bound, measured in the same run on a private cluster.
//!
//! Each measurement starts from a `CHECKPOINT` (so the first change to every page after it
//! writes a full-page image, as it does in production after each checkpoint) and reads
//! `pg_current_wal_insert_lsn()` before and after; the CPU time is that of all of the cluster's
//! processes (backends, WAL writer, background writer, checkpointer), from `/proc`. The WAL
//! between the two positions is broken down by record type with `pg_waldump --stats=record`.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use koyo_job::{Broker, BrokerOptions};

use crate::cluster::{Cluster, WalRecord};
use crate::raw::{self, Finish};
use crate::{Keep, Res, args::Args, count_of, jobs, progress, show_statuses, statuses};

/// What the workload produced, printed after the main tables.
pub struct Section {
    pub markdown: String,
    pub json: String,
    pub ok: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Step {
    KoyoSingle,
    KoyoBulk,
    RawSingle,
    RawBulk,
    KoyoKeep,
    KoyoDelete,
    RawDelete,
    RawUpdate,
}

const STEPS: [Step; 8] = [
    Step::KoyoSingle,
    Step::RawSingle,
    Step::KoyoBulk,
    Step::RawBulk,
    Step::KoyoKeep,
    Step::KoyoDelete,
    Step::RawDelete,
    Step::RawUpdate,
];

const BATCH: u64 = 1000;

impl Step {
    fn label(self) -> &'static str {
        match self {
            Step::KoyoSingle => "koyo-job enqueue, single (`enqueue_on`, awaited, one client)",
            Step::RawSingle => "raw enqueue, single (prepared INSERT … RETURNING id + pg_notify, one client)",
            Step::KoyoBulk => "koyo-job enqueue, bulk (`enqueue_many`, 1,000 per call)",
            Step::RawBulk => "raw enqueue, bulk (prepared unnest INSERT of 1,000 + pg_notify)",
            Step::KoyoKeep => "koyo-job processing, done rows kept (worker pool_size 16, default retention)",
            Step::KoyoDelete => "koyo-job processing, done rows deleted (retention zero)",
            Step::RawDelete => {
                "raw bound processing: claim up to 100 (locking CTE) + one fenced DELETE per batch, 16 conns"
            }
            Step::RawUpdate => {
                "raw processing, claim up to 100 + one fenced UPDATE to done per batch, 16 conns"
            }
        }
    }

    fn key(self) -> &'static str {
        match self {
            Step::KoyoSingle => "koyo_enqueue_single",
            Step::RawSingle => "raw_enqueue_single",
            Step::KoyoBulk => "koyo_enqueue_bulk",
            Step::RawBulk => "raw_enqueue_bulk",
            Step::KoyoKeep => "koyo_process_keep",
            Step::KoyoDelete => "koyo_process_delete",
            Step::RawDelete => "raw_process_delete",
            Step::RawUpdate => "raw_process_update",
        }
    }

    fn enqueues(self) -> bool {
        matches!(self, Step::KoyoSingle | Step::RawSingle | Step::KoyoBulk | Step::RawBulk)
    }
}

/// One measurement of one step.
#[derive(Clone, Debug)]
struct Sample {
    wal_bytes: i64,
    cpu_secs: f64,
    seconds: f64,
    records: Option<Vec<WalRecord>>,
    ok: bool,
    detail: String,
}

/// All measurements of one step.
struct Measured {
    step: Step,
    samples: Vec<Sample>,
}

impl Measured {
    fn wal_per_job(&self, n: u64) -> f64 {
        let mut v: Vec<i64> = self.samples.iter().map(|s| s.wal_bytes).collect();
        v.sort_unstable();
        v[v.len() / 2] as f64 / n as f64
    }

    fn wal_range(&self, n: u64) -> (f64, f64) {
        let min = self.samples.iter().map(|s| s.wal_bytes).min().unwrap_or(0);
        let max = self.samples.iter().map(|s| s.wal_bytes).max().unwrap_or(0);
        (min as f64 / n as f64, max as f64 / n as f64)
    }

    /// Median, min, max CPU µs per job.
    fn cpu_us(&self, n: u64) -> (f64, f64, f64) {
        let mut v: Vec<f64> = self.samples.iter().map(|s| s.cpu_secs * 1e6 / n as f64).collect();
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[0], v[v.len() - 1])
    }

    /// The sample with the median WAL, for its record breakdown.
    fn median_sample(&self) -> &Sample {
        let mut v: Vec<&Sample> = self.samples.iter().collect();
        v.sort_by_key(|s| s.wal_bytes);
        v[v.len() / 2]
    }

    fn ok(&self) -> bool {
        self.samples.iter().all(|s| s.ok)
    }
}

pub async fn wal(args: &Args) -> Res<Section> {
    let n = args.wal_jobs;
    progress("wal: starting a private cluster (full_page_writes on, autovacuum off)");
    let cluster = Cluster::start(args, crate::cluster::diagnostics()).await?;
    let mut measured: Vec<Measured> =
        STEPS.iter().map(|&step| Measured { step, samples: Vec::new() }).collect();
    for _ in 0..args.repeat {
        for m in &mut measured {
            progress(&format!("wal: {} — {n} jobs", m.step.label()));
            m.samples.push(measure(&cluster, m.step, n).await?);
        }
    }
    let settings = settings(&cluster).await?;
    cluster.keep_log();
    drop(cluster);
    Ok(section(&measured, n, args.repeat, &settings))
}

async fn settings(cluster: &Cluster) -> Res<String> {
    let mut out = Vec::new();
    for name in
        ["server_version", "full_page_writes", "wal_compression", "synchronous_commit", "fsync", "autovacuum"]
    {
        let v: String = cluster.ctx.admin.query_one("SELECT current_setting($1)", &[&name]).await?.get(0);
        out.push(format!("{name}={v}"));
    }
    Ok(out.join(", "))
}

/// Client sessions on the database other than the asking one.
async fn sessions(cluster: &Cluster) -> Res<i64> {
    Ok(cluster
        .ctx
        .admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
            &[],
        )
        .await?
        .get(0))
}

/// Waits until at most `keep` other sessions are left, so that the CPU time of every backend
/// that served the step has reached the postmaster's count of its exited children.
async fn wait_sessions(cluster: &Cluster, keep: i64) -> Res<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = sessions(cluster).await?;
        if now <= keep {
            tokio::time::sleep(Duration::from_millis(100)).await;
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{now} sessions left after a step, expected {keep}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn measure(cluster: &Cluster, step: Step, n: u64) -> Res<Sample> {
    let ctx = &cluster.ctx;
    if step.enqueues() {
        crate::reset(ctx).await?;
        crate::settle(ctx).await?;
    } else {
        crate::fill_ready(ctx, n).await?;
    }
    ctx.admin.batch_execute("CHECKPOINT").await?;
    let keep = sessions(cluster).await?;
    let (lsn0, at0, segment) = cluster.lsn().await?;
    let _ = ctx.admin.batch_execute("SELECT pg_stat_statements_reset()").await;
    let cpu0 = cluster.server_cpu()?;
    let started = Instant::now();

    let (ok, detail) = match step {
        Step::KoyoSingle | Step::KoyoBulk => {
            let broker = Broker::new(ctx.config.clone(), BrokerOptions::default())?;
            let mut ids = Vec::with_capacity(n as usize);
            if step == Step::KoyoSingle {
                for _ in 0..n {
                    ids.push(jobs::noop().enqueue_on(&broker).await?.0);
                }
            } else {
                let mut left = n;
                while left > 0 {
                    let size = left.min(BATCH);
                    ids.extend(
                        broker
                            .enqueue_many((0..size).map(|_| jobs::noop()))
                            .await?
                            .into_iter()
                            .map(|id| id.0),
                    );
                    left -= size;
                }
            }
            drop(broker);
            enqueued(cluster, n, ids).await?
        }
        Step::RawSingle => {
            let (_, ids) = raw::enqueue_singles(&ctx.config, ctx.queue, ctx.job, n).await?;
            enqueued(cluster, n, ids).await?
        }
        Step::RawBulk => {
            let (_, ids) = raw::enqueue_bulk(&ctx.config, ctx.queue, ctx.job, n, BATCH).await?;
            enqueued(cluster, n, ids).await?
        }
        Step::KoyoKeep | Step::KoyoDelete => {
            let keep_rows = if step == Step::KoyoKeep { Keep::Done } else { Keep::Nothing };
            let m = crate::koyo_drain_filled(ctx, n, 16, keep_rows, None).await?;
            (m.check.ok, m.check.detail)
        }
        Step::RawDelete | Step::RawUpdate => {
            let finish = if step == Step::RawDelete { Finish::Delete } else { Finish::Update };
            let (_, finished) = raw::drain(&ctx.config, ctx.queue, 16, 100, finish).await?;
            let after = statuses(ctx).await?;
            let ok = finished == n
                && match finish {
                    Finish::Update => count_of(&after, "done") == n as i64 && after.len() == 1,
                    _ => after.is_empty(),
                };
            (ok, format!("{finished} jobs finished; rows: {}", show_statuses(&after)))
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    wait_sessions(cluster, keep).await?;
    let (lsn1, at1, last) = cluster.lsn().await?;
    let cpu1 = cluster.server_cpu()?;
    // Flushes the WAL up to the second position, for pg_waldump to read (a commit that wrote
    // nothing but its xid would not: PostgreSQL commits those asynchronously).
    ctx.admin.batch_execute("CHECKPOINT").await?;
    let records = cluster.waldump(&lsn0, &lsn1, (&segment, &last));
    if std::env::var_os("KOYO_BENCH_PGSS").is_some() {
        for row in ctx
            .admin
            .query(
                "SELECT calls, rows, total_exec_time, left(regexp_replace(query, '\\s+', ' ', 'g'), 90)
                 FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 6",
                &[],
            )
            .await?
        {
            let (calls, rows, ms, q): (i64, i64, f64, String) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            progress(&format!("  pgss {calls} calls {rows} rows {ms:.0} ms: {q}"));
        }
    }
    Ok(Sample { wal_bytes: at1 - at0, cpu_secs: cpu1 - cpu0, seconds, records, ok, detail })
}

async fn enqueued(cluster: &Cluster, n: u64, mut ids: Vec<i64>) -> Res<(bool, String)> {
    ids.sort_unstable();
    ids.dedup();
    let st = statuses(&cluster.ctx).await?;
    let ok = ids.len() as u64 == n && count_of(&st, "ready") == n as i64 && st.len() == 1;
    Ok((ok, format!("{} distinct ids, rows: {}", ids.len(), show_statuses(&st))))
}

fn find(measured: &[Measured], step: Step) -> &Measured {
    measured.iter().find(|m| m.step == step).expect("every step is measured")
}

/// Full-page image bytes per job of a sample's records.
fn fpi_per_job(sample: &Sample, n: u64) -> Option<f64> {
    sample.records.as_ref().map(|r| r.iter().map(|r| r.fpi_bytes).sum::<u64>() as f64 / n as f64)
}

fn section(measured: &[Measured], n: u64, repeat: usize, settings: &str) -> Section {
    let mut md = String::new();
    let mut json = String::new();
    let _ = writeln!(md, "\n## WAL and server CPU per job (`wal`)\n");
    let _ = writeln!(
        md,
        "A private cluster ({settings}); {n} no-op jobs per measurement, {repeat} measurement(s) of each \
         step, alternating. Each starts with a `CHECKPOINT`; WAL is `pg_current_wal_insert_lsn()` after \
         minus before, server CPU the `/proc` time of all of the cluster's processes (backends, WAL writer, \
         background writer, checkpointer). Processing steps start from {n} ready rows stored with one \
         `INSERT … SELECT`, vacuumed, checkpointed. The raw bound runs on koyo-job's table, with its \
         indexes and constraints: it is what PostgreSQL writes for the same rows without koyo-job's \
         statements, not what a minimal table of its own would write.\n"
    );
    md.push_str("| step | WAL B/job (range) | of which full-page images | server CPU µs/job (median; range) | s | verified |\n");
    md.push_str("|---|---|---|---|---|---|\n");
    for m in measured {
        let (lo, hi) = m.wal_range(n);
        let (cpu, cmin, cmax) = m.cpu_us(n);
        let fpi = fpi_per_job(m.median_sample(), n);
        let secs = m.median_sample().seconds;
        let _ = writeln!(
            md,
            "| {} | {:.0} ({lo:.0}–{hi:.0}) | {} | {cpu:.0} ({cmin:.0}–{cmax:.0}) | {secs:.2} | {} |",
            m.step.label(),
            m.wal_per_job(n),
            fpi.map_or("—".to_owned(), |f| format!("{f:.0}")),
            if m.ok() { "ok".to_owned() } else { format!("FAILED: {}", m.median_sample().detail) }
        );
        let _ = writeln!(
            json,
            r#"{{"kind":"wal","step":"{}","jobs":{n},"runs":{},"wal_bytes_per_job":{:.1},"wal_min":{lo:.1},"wal_max":{hi:.1},"fpi_bytes_per_job":{},"cpu_us_per_job":{cpu:.1},"cpu_us_min":{cmin:.1},"cpu_us_max":{cmax:.1},"verified":{}}}"#,
            m.step.key(),
            m.samples.len(),
            m.wal_per_job(n),
            fpi.map_or("null".to_owned(), |f| format!("{f:.1}")),
            m.ok()
        );
    }

    // Whole lives: enqueue + processing, koyo-job against the raw bound of the same shapes.
    md.push_str(
        "\nA job's whole life (enqueue + processing), koyo-job against the raw bound with the same \
         enqueue shape (the bound: plain INSERT, then claim + fenced DELETE; it keeps nothing):\n\n",
    );
    md.push_str("| life | koyo-job WAL B/job | raw bound WAL B/job | ratio | target | met | koyo-job CPU µs/job | raw CPU µs/job | CPU ratio |\n");
    md.push_str("|---|---|---|---|---|---|---|---|---|\n");
    let lives = [
        (
            "single enqueue + processing, done rows kept",
            Step::KoyoSingle,
            Step::KoyoKeep,
            Step::RawSingle,
            true,
        ),
        ("bulk enqueue + processing, done rows kept", Step::KoyoBulk, Step::KoyoKeep, Step::RawBulk, true),
        (
            "single enqueue + processing, done rows deleted",
            Step::KoyoSingle,
            Step::KoyoDelete,
            Step::RawSingle,
            false,
        ),
        (
            "bulk enqueue + processing, done rows deleted",
            Step::KoyoBulk,
            Step::KoyoDelete,
            Step::RawBulk,
            false,
        ),
    ];
    for (label, enq, proc_, raw_enq, targeted) in lives {
        let koyo = find(measured, enq).wal_per_job(n) + find(measured, proc_).wal_per_job(n);
        let bound = find(measured, raw_enq).wal_per_job(n) + find(measured, Step::RawDelete).wal_per_job(n);
        let koyo_cpu = find(measured, enq).cpu_us(n).0 + find(measured, proc_).cpu_us(n).0;
        let raw_cpu = find(measured, raw_enq).cpu_us(n).0 + find(measured, Step::RawDelete).cpu_us(n).0;
        let r = koyo / bound;
        let (target, met) = if targeted {
            ("≤ 1.25".to_owned(), if r <= 1.25 { "yes" } else { "**no**" }.to_owned())
        } else {
            ("—".to_owned(), "—".to_owned())
        };
        let _ = writeln!(
            md,
            "| {label} | {koyo:.0} | {bound:.0} | {r:.2} | {target} | {met} | {koyo_cpu:.0} | {raw_cpu:.0} | {:.2} |",
            koyo_cpu / raw_cpu
        );
        let _ = writeln!(
            json,
            r#"{{"kind":"wal_life","life":"{label}","koyo_wal_bytes_per_job":{koyo:.1},"raw_wal_bytes_per_job":{bound:.1},"ratio":{r:.3},"target":{},"koyo_cpu_us_per_job":{koyo_cpu:.1},"raw_cpu_us_per_job":{raw_cpu:.1},"cpu_ratio":{:.3}}}"#,
            if targeted { "1.25".to_owned() } else { "null".to_owned() },
            koyo_cpu / raw_cpu
        );
    }

    // What the WAL is made of.
    md.push_str(
        "\nWAL by record type (`pg_waldump --stats=record` between the two positions of the median \
         measurement), bytes per job as record + full-page images, largest first:\n\n",
    );
    md.push_str("| step | records |\n|---|---|\n");
    for m in measured {
        let sample = m.median_sample();
        let Some(records) = &sample.records else {
            let _ = writeln!(md, "| {} | (pg_waldump not found) |", m.step.label());
            continue;
        };
        let mut records = records.clone();
        records.sort_by_key(|r| std::cmp::Reverse(r.record_bytes + r.fpi_bytes));
        let shown: Vec<String> = records
            .iter()
            .filter(|r| (r.record_bytes + r.fpi_bytes) as f64 / n as f64 >= 0.5)
            .map(|r| {
                let per = |b: u64| b as f64 / n as f64;
                if r.fpi_bytes > 0 {
                    format!(
                        "{} ×{:.2}: {:.0} + {:.0}",
                        r.kind,
                        r.count as f64 / n as f64,
                        per(r.record_bytes),
                        per(r.fpi_bytes)
                    )
                } else {
                    format!("{} ×{:.2}: {:.0}", r.kind, r.count as f64 / n as f64, per(r.record_bytes))
                }
            })
            .collect();
        let _ = writeln!(md, "| {} | {} |", m.step.label(), shown.join("; "));
    }
    md.push_str("\n(×k: records per job.)\n");
    let ok = measured.iter().all(Measured::ok);
    Section { markdown: md, json, ok }
}
