//! Worker processes: the benchmark re-executes itself with `--worker-process` to run a worker
//! in a process of its own (for the two-process drain, the idle count and the memory peak).
//!
//! Protocol on stdin/stdout, one line each: the child connects and prints `ready`; on `go` it
//! starts its worker and prints `started`; on `stop` (or end of input) it shuts the worker down
//! and prints one result line, `result executed=N cpu_ms=N hwm_kb=N rss_kb=N peak_sampled_kb=N
//! samples_kb=a,b,c`, then exits.

use std::process::Stdio;
use std::time::Duration;

use koyo_job::{Broker, BrokerOptions, Worker};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use crate::{Error, Res, jobs};

/// The environment variable that carries the database URL to a child (it may hold a password,
/// so it is not put on the command line).
const URL_VAR: &str = "KOYO_BENCH_DATABASE_URL";
/// The application name children connect with, so the parent can tell their sessions apart.
pub const APPLICATION_NAME: &str = "koyo-job-bench-worker";

/// Runs in the child.
pub async fn run(pool_size: usize) -> Res<()> {
    let url = std::env::var(URL_VAR).map_err(|_| format!("{URL_VAR} is not set"))?;
    let mut config: koyo_job::tokio_postgres::Config = url.parse()?;
    config.application_name(APPLICATION_NAME);
    let broker = Broker::new(config, BrokerOptions::default())?;
    drop(broker.client().await?);

    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let mut stdout = tokio::io::stdout();
    stdout.write_all(b"ready\n").await?;
    stdout.flush().await?;

    match stdin.next_line().await?.as_deref() {
        Some("go") => {}
        _ => return Ok(()),
    }
    let worker = Worker::builder(broker).pool_size(pool_size).start().await?;
    stdout.write_all(b"started\n").await?;
    stdout.flush().await?;

    // Resident memory, sampled while the worker runs.
    let samples = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sampler = tokio::spawn({
        let samples = samples.clone();
        async move {
            loop {
                let rss = status_kb("VmRSS:").unwrap_or(0);
                samples.lock().unwrap_or_else(|p| p.into_inner()).push(rss);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    });
    while let Some(line) = stdin.next_line().await? {
        if line == "stop" {
            break;
        }
    }
    worker.shutdown().await;
    sampler.abort();
    let samples = std::mem::take(&mut *samples.lock().unwrap_or_else(|p| p.into_inner()));
    let line = format!(
        "result executed={} cpu_ms={} hwm_kb={} rss_kb={} peak_sampled_kb={} samples_kb={}\n",
        jobs::executed(),
        (crate::cluster::own_cpu() * 1000.0) as u64,
        status_kb("VmHWM:").unwrap_or(0),
        status_kb("VmRSS:").unwrap_or(0),
        samples.iter().max().copied().unwrap_or(0),
        samples.iter().map(u64::to_string).collect::<Vec<_>>().join(","),
    );
    stdout.write_all(line.as_bytes()).await?;
    stdout.flush().await?;
    Ok(())
}

/// A `kB` field of `/proc/self/status`.
pub fn status_kb(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line[field.len()..].trim().trim_end_matches("kB").trim().parse().ok()
}

/// A child worker process, seen from the parent.
pub struct WorkerProcess {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

/// What a child reported when it stopped.
#[derive(Clone, Debug, Default)]
pub struct ChildReport {
    pub executed: u64,
    /// CPU time of the whole process (`utime + stime`), milliseconds.
    pub cpu_ms: u64,
    pub hwm_kb: u64,
    pub rss_kb: u64,
    pub samples_kb: Vec<u64>,
}

impl WorkerProcess {
    /// Starts a child and waits until it has connected.
    pub async fn spawn(url: &str, pool_size: usize) -> Res<WorkerProcess> {
        let exe = std::env::current_exe()?;
        let mut child = tokio::process::Command::new(exe)
            .args(["--worker-process", "--pool-size", &pool_size.to_string()])
            .env(URL_VAR, url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
        let mut process = WorkerProcess { child, stdin, stdout };
        process.expect("ready").await?;
        Ok(process)
    }

    async fn expect(&mut self, what: &str) -> Res<()> {
        let line = tokio::time::timeout(Duration::from_secs(30), self.stdout.next_line()).await??;
        match line {
            Some(line) if line == what => Ok(()),
            other => Err(format!("worker process said {other:?}, expected {what:?}").into()),
        }
    }

    /// Sends `go` (without waiting for the worker to be up).
    pub async fn go(&mut self) -> Res<()> {
        self.stdin.write_all(b"go\n").await?;
        self.stdin.flush().await?;
        Ok(())
    }

    /// Waits for the child's `started`.
    pub async fn started(&mut self) -> Res<()> {
        self.expect("started").await
    }

    /// Stops the worker gracefully and collects its report; waits for the process to exit.
    pub async fn stop(mut self) -> Res<ChildReport> {
        self.stdin.write_all(b"stop\n").await?;
        self.stdin.flush().await?;
        let line = tokio::time::timeout(Duration::from_secs(120), self.stdout.next_line())
            .await??
            .ok_or("worker process ended without a report")?;
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await??;
        if !status.success() {
            return Err(format!("worker process exited with {status}").into());
        }
        parse_report(&line)
    }
}

fn parse_report(line: &str) -> Res<ChildReport> {
    let rest = line.strip_prefix("result ").ok_or_else(|| format!("unexpected report {line:?}"))?;
    let mut report = ChildReport::default();
    for field in rest.split(' ') {
        let (key, value) = field.split_once('=').ok_or_else(|| format!("bad field {field:?}"))?;
        let number = |v: &str| v.parse::<u64>().map_err(|e| Error::from(format!("{key}: {e}")));
        match key {
            "executed" => report.executed = number(value)?,
            "cpu_ms" => report.cpu_ms = number(value)?,
            "hwm_kb" => report.hwm_kb = number(value)?,
            "rss_kb" => report.rss_kb = number(value)?,
            "samples_kb" => {
                report.samples_kb =
                    value.split(',').filter(|s| !s.is_empty()).map(number).collect::<Res<Vec<u64>>>()?
            }
            _ => {}
        }
    }
    Ok(report)
}
