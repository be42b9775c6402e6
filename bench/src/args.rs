//! Command-line flags.

use std::path::PathBuf;

pub const WORKLOADS: [&str; 11] = [
    "enqueue",
    "enqueue16",
    "bulk",
    "drain",
    "latency",
    "history",
    "idle",
    "memory",
    "fleet",
    "wal",
    "limits",
];

pub const USAGE: &str = "\
koyo-job-bench: koyo-job next to raw-SQL baselines measured in the same run

usage: cargo run --release -p koyo-job-bench -- [flags]

  --jobs N            jobs per drain, history drain, bulk enqueue and memory run (default 100000)
  --enqueue-jobs N    single awaited enqueues, one client and again from --clients (default jobs/10)
  --clients C         concurrent enqueuers sharing one broker for `enqueue16` (default 16)
  --pool1-jobs N      jobs for the pool_size 1 drain and its per-job baseline (default jobs/10)
  --history-rows N    finished rows, and again future-scheduled rows, for `history` (default 1000000)
  --latency-jobs N    jobs enqueued 10 ms apart per measurement of `latency` (default 2000)
  --latency-rounds R  rounds of `latency`, each koyo-job and the raw loop, idle and loaded (default 3)
  --load-threads T    busy threads that load the CPUs in the loaded half of `latency`; 0 skips it
                      (default: one per CPU)
  --idle-secs S       length of the idle window (default 30)
  --pools P[,P…]      worker pool sizes for `drain` (default 1,16,64)
  --prefetch F[,F…]   run each in-process drain (and the zero-retention one) once
                      per value of the worker's prefetch setting (a number, or `default`), runs
                      alternating, side by side (default: the worker's default only)
  --processes P       worker processes (pool_size 16 each) for `drain`; 0 skips it (default 2)
  --fleet P[,P…]      worker processes (pool_size 16 each) per step of `fleet`, which drains
                      --jobs no-op jobs, then --jobs 1 ms jobs, on a private durable cluster
                      (default 1,2,4,8)
  --wal-jobs N        jobs per measurement of `wal`: WAL bytes and server CPU per job of each
                      step of a job's life, koyo-job and raw SQL, on a private cluster (default 20000)
  --fillfactor F      an experiment: ALTER TABLE koyo_jobs SET (fillfactor = F) after migrating,
                      in the benchmark's database and in the private clusters of `fleet` and `wal`
  --no-raw            skip the raw drain bounds (rows then have no ratio; for quick comparisons)
  --repeat R          run each throughput measurement R times and keep the median (default 1)
  --only W[,W…]       run only these workloads: enqueue, enqueue16, bulk, drain, latency, history,
                      idle, memory, fleet, wal, limits
  --quick             a smoke run: jobs 10000, history 100000, idle 5 s, latency 300 jobs × 1 round
  --svg PATH          also write a bar chart of the ratios as SVG
  -h, --help          this text

PostgreSQL is found as koyo-job's tests find it (DATABASE_URL, else localhost:5432, else a
throwaway cluster); the benchmark creates a fresh database and drops it at the end.";

#[derive(Clone, Debug)]
pub struct Args {
    pub jobs: u64,
    pub enqueue_jobs: u64,
    /// Concurrent enqueuers for `enqueue16`.
    pub clients: usize,
    pub pool1_jobs: u64,
    pub history_rows: u64,
    pub latency_jobs: u64,
    pub latency_rounds: usize,
    /// Busy threads for the loaded half of `latency` (0: idle only).
    pub load_threads: usize,
    pub idle_secs: f64,
    pub repeat: usize,
    pub pools: Vec<usize>,
    /// Prefetch settings to compare; `None` is the worker's default.
    pub prefetch: Vec<Option<usize>>,
    pub processes: usize,
    /// Worker processes per step of `fleet`.
    pub fleet: Vec<usize>,
    pub wal_jobs: u64,
    /// An experiment: `ALTER TABLE koyo_jobs SET (fillfactor = N)` after migrating, in every
    /// database the benchmark creates.
    pub fillfactor: Option<u64>,
    pub no_raw: bool,
    pub only: Vec<String>,
    pub quick: bool,
    pub svg: Option<PathBuf>,
}

impl Args {
    pub fn wants(&self, workload: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|w| w == workload)
    }
}

/// What the process was asked to do.
pub enum Command {
    Bench(Box<Args>),
    /// The hidden mode the benchmark re-executes itself in to run a worker process.
    WorkerProcess {
        pool_size: usize,
    },
    Help,
}

pub fn parse(argv: impl IntoIterator<Item = String>) -> Result<Command, String> {
    let mut jobs = None;
    let mut enqueue_jobs = None;
    let mut clients = 16;
    let mut pool1_jobs = None;
    let mut history_rows = None;
    let mut latency_jobs = None;
    let mut latency_rounds = None;
    let mut load_threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut idle_secs = None;
    let mut repeat = 1;
    let mut pools = vec![1, 16, 64];
    let mut prefetch = vec![None];
    let mut processes = 2;
    let mut fleet = vec![1, 2, 4, 8];
    let mut wal_jobs = None;
    let mut fillfactor = None;
    let mut no_raw = false;
    let mut only = Vec::new();
    let mut quick = false;
    let mut svg = None;
    let mut worker_process = false;
    let mut pool_size = 16;

    let mut argv = argv.into_iter();
    while let Some(flag) = argv.next() {
        let (flag, inline) = match flag.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (flag, None),
        };
        let mut value = |name: &str| {
            inline.clone().or_else(|| argv.next()).ok_or_else(|| format!("{name} needs a value"))
        };
        let number = |name: &str, text: String| -> Result<u64, String> {
            text.replace('_', "")
                .parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{name} takes a positive whole number, not {text:?}"))
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--jobs" => jobs = Some(number("--jobs", value("--jobs")?)?),
            "--enqueue-jobs" => enqueue_jobs = Some(number("--enqueue-jobs", value("--enqueue-jobs")?)?),
            "--clients" => clients = number("--clients", value("--clients")?)? as usize,
            "--pool1-jobs" => pool1_jobs = Some(number("--pool1-jobs", value("--pool1-jobs")?)?),
            "--history-rows" => history_rows = Some(number("--history-rows", value("--history-rows")?)?),
            "--latency-jobs" => latency_jobs = Some(number("--latency-jobs", value("--latency-jobs")?)?),
            "--latency-rounds" => {
                latency_rounds = Some(number("--latency-rounds", value("--latency-rounds")?)? as usize)
            }
            "--load-threads" => {
                let text = value("--load-threads")?;
                load_threads =
                    text.parse().map_err(|_| format!("--load-threads takes a whole number, not {text:?}"))?;
            }
            "--idle-secs" => {
                let text = value("--idle-secs")?;
                idle_secs = Some(
                    text.parse::<f64>()
                        .ok()
                        .filter(|s| *s > 0.0 && s.is_finite())
                        .ok_or_else(|| format!("--idle-secs takes a positive number, not {text:?}"))?,
                );
            }
            "--repeat" => repeat = number("--repeat", value("--repeat")?)? as usize,
            "--only" => {
                for w in value("--only")?.split(',').map(str::trim).filter(|w| !w.is_empty()) {
                    if !WORKLOADS.contains(&w) {
                        return Err(format!(
                            "unknown workload {w:?}; expected some of {}",
                            WORKLOADS.join(", ")
                        ));
                    }
                    only.push(w.to_owned());
                }
            }
            "--pools" => {
                pools = value("--pools")?
                    .split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(|p| number("--pools", p.to_owned()).map(|n| n as usize))
                    .collect::<Result<_, _>>()?;
            }
            "--prefetch" => {
                prefetch = value("--prefetch")?
                    .split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(|p| match p {
                        "default" => Ok(None),
                        _ => p
                            .parse::<usize>()
                            .map(Some)
                            .map_err(|_| format!("--prefetch takes whole numbers or `default`, not {p:?}")),
                    })
                    .collect::<Result<_, _>>()?;
                if prefetch.is_empty() {
                    prefetch = vec![None];
                }
            }
            "--processes" => {
                let text = value("--processes")?;
                processes =
                    text.parse().map_err(|_| format!("--processes takes a whole number, not {text:?}"))?;
            }
            "--fleet" => {
                fleet = value("--fleet")?
                    .split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(|p| number("--fleet", p.to_owned()).map(|n| n as usize))
                    .collect::<Result<_, _>>()?;
            }
            "--wal-jobs" => wal_jobs = Some(number("--wal-jobs", value("--wal-jobs")?)?),
            "--fillfactor" => fillfactor = Some(number("--fillfactor", value("--fillfactor")?)?),
            "--no-raw" => no_raw = true,
            "--quick" => quick = true,
            "--svg" => svg = Some(PathBuf::from(value("--svg")?)),
            "--worker-process" => worker_process = true,
            "--pool-size" => pool_size = number("--pool-size", value("--pool-size")?)? as usize,
            other => return Err(format!("unknown flag {other:?} (see --help)")),
        }
    }
    if worker_process {
        return Ok(Command::WorkerProcess { pool_size });
    }
    let jobs = jobs.unwrap_or(if quick { 10_000 } else { 100_000 });
    Ok(Command::Bench(Box::new(Args {
        jobs,
        enqueue_jobs: enqueue_jobs.unwrap_or((jobs / 10).max(100)),
        clients,
        pool1_jobs: pool1_jobs.unwrap_or((jobs / 10).max(100)),
        history_rows: history_rows.unwrap_or(if quick { 100_000 } else { 1_000_000 }),
        latency_jobs: latency_jobs.unwrap_or(if quick { 300 } else { 2000 }),
        latency_rounds: latency_rounds.unwrap_or(if quick { 1 } else { 3 }),
        load_threads,
        idle_secs: idle_secs.unwrap_or(if quick { 5.0 } else { 30.0 }),
        repeat,
        pools,
        prefetch,
        processes,
        fleet,
        wal_jobs: wal_jobs.unwrap_or(if quick { 5_000 } else { 20_000 }),
        fillfactor,
        no_raw,
        only,
        quick,
        svg,
    })))
}
