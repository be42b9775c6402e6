//! A private PostgreSQL cluster for the `fleet` and `wal` workloads, configured like a durable
//! server, and what the benchmark reads from the operating system about it: the CPU time of all
//! of its processes and its WAL (with `pg_waldump`).
//!
//! The shared server is not used for these: eight worker processes need more connections than
//! a default server allows, and the server's CPU time and WAL must be its alone, not shared with
//! whatever else runs on it.

use std::path::PathBuf;
use std::time::Duration;

use koyo_job::testing::{ClusterOptions, PrivateCluster};
use koyo_job::{Broker, BrokerOptions};

use crate::{Ctx, Res, args::Args, jobs, raw};

/// The database the benchmark creates in its private cluster.
const DB: &str = "koyo_bench";

/// A running private cluster and a migrated database in it.
pub struct Cluster {
    pub cluster: PrivateCluster,
    /// The benchmark's context on the cluster's database.
    pub ctx: Ctx,
}

/// The server settings: durable like a production server (`full_page_writes`, synchronous
/// commit) except `fsync`, which changes the time a commit waits but neither the WAL written nor
/// the CPU spent; no autovacuum (its WAL would land in some runs and not others) and no
/// checkpoint but the benchmark's own during a measurement.
pub const SETTINGS: &[(&str, &str)] = &[
    ("full_page_writes", "on"),
    ("synchronous_commit", "on"),
    ("fsync", "off"),
    ("wal_level", "replica"),
    ("autovacuum", "off"),
    ("checkpoint_timeout", "1h"),
    ("max_wal_size", "16GB"),
    ("min_wal_size", "1GB"),
    // Keeps the segments of a measurement for pg_waldump after the checkpoint that follows it.
    ("wal_keep_size", "8GB"),
    ("shared_buffers", "128MB"),
    ("max_connections", "300"),
    ("shared_preload_libraries", "pg_stat_statements"),
];

impl Cluster {
    /// Starts a cluster, creates and migrates the benchmark's database.
    pub async fn start(args: &Args, extra: &[(&str, &str)]) -> Res<Cluster> {
        let mut options = ClusterOptions::default();
        for (name, value) in SETTINGS.iter().chain(extra) {
            options = options.setting(*name, *value);
        }
        let cluster = PrivateCluster::start_with(options).await?;
        let admin = raw::connect(cluster.config()).await?;
        admin.batch_execute(&format!("CREATE DATABASE {DB}")).await?;
        drop(admin);
        let mut config = cluster.config().clone();
        config.dbname(DB);
        let url = format!("postgresql://postgres@127.0.0.1:{}/{DB}", cluster.port());
        let broker = Broker::new(config.clone(), BrokerOptions::default())?;
        koyo_job::migrate(&broker).await?;
        let admin = raw::connect(&config).await?;
        admin.batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements").await?;
        if let Some(ff) = args.fillfactor {
            admin.batch_execute(&format!("ALTER TABLE koyo_jobs SET (fillfactor = {ff})")).await?;
        }
        let poller = raw::connect(&config).await?;
        poller.batch_execute("SET enable_seqscan = off").await?;
        let ctx = Ctx {
            args: args.clone(),
            config,
            url,
            db_name: DB.to_owned(),
            broker,
            admin,
            poller,
            queue: jobs::noop_queue(),
            job: jobs::noop_name(),
        };
        Ok(Cluster { cluster, ctx })
    }

    /// The postmaster's pid (the first line of `postmaster.pid`).
    pub fn postmaster(&self) -> Res<u32> {
        let text = std::fs::read_to_string(self.cluster.dir().join("data/postmaster.pid"))?;
        Ok(text.lines().next().unwrap_or_default().trim().parse()?)
    }

    /// CPU seconds used so far by all of the server's processes: the postmaster's own and its
    /// exited children's (`utime + stime + cutime + cstime`), and each live child's. Backends,
    /// the WAL writer, the background writer and the checkpointer are all the postmaster's
    /// children.
    pub fn server_cpu(&self) -> Res<f64> {
        server_cpu(self.postmaster()?)
    }

    /// The WAL insert position: as text, in bytes from the start, and the name of its segment.
    pub async fn lsn(&self) -> Res<(String, i64, String)> {
        let row = self
            .ctx
            .admin
            .query_one(
                "SELECT l::text, pg_wal_lsn_diff(l, '0/0')::int8, pg_walfile_name(l)
                 FROM pg_current_wal_insert_lsn() AS l",
                &[],
            )
            .await?;
        Ok((row.get(0), row.get(1), row.get(2)))
    }

    /// `pg_waldump --stats=record` between two positions, parsed; `None` when `pg_waldump`
    /// cannot be found or fails.
    /// `segments` are the files holding `from` and `to` (without them, pg_waldump takes the
    /// segment size from whichever file it finds first, which may be a preallocated one not
    /// written yet).
    pub fn waldump(&self, from: &str, to: &str, segments: (&str, &str)) -> Option<Vec<WalRecord>> {
        let exe = waldump_exe(self.postmaster().ok()?)?;
        let output = std::process::Command::new(exe)
            .arg("--stats=record")
            .arg("-p")
            .arg(self.cluster.dir().join("data/pg_wal"))
            .args(["-s", from, "-e", to, segments.0, segments.1])
            .output()
            .ok()?;
        if !output.status.success() {
            crate::progress(&format!(
                "pg_waldump failed: {}",
                String::from_utf8_lossy(&output.stderr).lines().next().unwrap_or("")
            ));
            return None;
        }
        Some(parse_waldump(&String::from_utf8_lossy(&output.stdout)))
    }
}

/// With `KOYO_BENCH_KEEP_LOG=<path>` set, server settings that log slow statements with their
/// plans and lock waits, and [`Cluster::keep_log`] copies the server's log to that path.
pub fn diagnostics() -> &'static [(&'static str, &'static str)] {
    if std::env::var_os("KOYO_BENCH_KEEP_LOG").is_some() {
        &[
            ("session_preload_libraries", "auto_explain"),
            ("auto_explain.log_min_duration", "50ms"),
            ("auto_explain.log_analyze", "on"),
            ("auto_explain.log_buffers", "on"),
            ("log_lock_waits", "on"),
            ("deadlock_timeout", "20ms"),
        ]
    } else {
        &[]
    }
}

impl Cluster {
    /// Copies the server's log to `KOYO_BENCH_KEEP_LOG`, if set.
    pub fn keep_log(&self) {
        if let Some(path) = std::env::var_os("KOYO_BENCH_KEEP_LOG") {
            let _ = std::fs::copy(self.cluster.dir().join("postgres.log"), path);
        }
    }
}

/// One line of `pg_waldump --stats=record`.
#[derive(Clone, Debug)]
pub struct WalRecord {
    /// `Heap/UPDATE`, `Btree/INSERT_LEAF`, …
    pub kind: String,
    pub count: u64,
    /// Bytes of the records themselves (headers and data).
    pub record_bytes: u64,
    /// Bytes of full-page images attached to them.
    pub fpi_bytes: u64,
}

fn parse_waldump(text: &str) -> Vec<WalRecord> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let Some(kind) = words.next() else { continue };
        if !kind.contains('/') {
            continue;
        }
        // The numbers, without the percentages in parentheses.
        let numbers: Vec<u64> = words
            .filter(|w| !w.starts_with('(') && !w.ends_with(')'))
            .filter_map(|w| w.parse().ok())
            .collect();
        if let [count, record_bytes, fpi_bytes, ..] = numbers[..] {
            out.push(WalRecord { kind: kind.to_owned(), count, record_bytes, fpi_bytes });
        }
    }
    out
}

/// `pg_waldump` beside the running server's `postgres` binary.
fn waldump_exe(postmaster: u32) -> Option<PathBuf> {
    let exe = std::fs::read_link(format!("/proc/{postmaster}/exe")).ok()?;
    let candidate = exe.parent()?.join("pg_waldump");
    candidate.is_file().then_some(candidate).or_else(|| which("pg_waldump"))
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(name)).find(|p| p.is_file())
}

/// Clock ticks per second of `/proc/<pid>/stat`'s times.
fn ticks_per_sec() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// `(ppid, utime + stime, cutime + cstime)` of a process, in ticks.
fn proc_times(pid: u32) -> Option<(u32, u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state): ppid is field 4, utime..cstime fields 14..17.
    let num = |i: usize| f.get(i - 3).and_then(|v| v.parse::<u64>().ok());
    Some((num(4)? as u32, num(14)? + num(15)?, num(16)? + num(17)?))
}

/// CPU seconds of a process and its children, living and exited (see [`Cluster::server_cpu`]).
pub fn server_cpu(postmaster: u32) -> Res<f64> {
    let (_, own, reaped) = proc_times(postmaster).ok_or("cannot read the postmaster's /proc/<pid>/stat")?;
    let mut ticks = own + reaped;
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if let Some((ppid, t, _)) = proc_times(pid)
            && ppid == postmaster
        {
            ticks += t;
        }
    }
    Ok(ticks as f64 / ticks_per_sec())
}

/// CPU seconds of this process so far (`utime + stime`).
pub fn own_cpu() -> f64 {
    proc_times(std::process::id()).map_or(f64::NAN, |(_, t, _)| t as f64 / ticks_per_sec())
}

/// The machine's busy and total CPU time so far, from `/proc/stat`'s first line, in ticks.
pub fn machine_cpu() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().next() else { return (0, 0) };
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|w| w.parse().ok()).collect();
    let total: u64 = v.iter().take(8).sum();
    // idle + iowait
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

/// Seconds of CPU as "cores busy" over a wall time.
pub fn cores(cpu_secs: f64, wall: Duration) -> f64 {
    cpu_secs / wall.as_secs_f64()
}
