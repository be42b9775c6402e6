//! A koyo-job worker *process* for the chaos tests (`tests/tests/chaos_*.rs`): it runs the
//! chaos jobs of `koyo_job_tests::chaos` so that tests can kill, freeze and stop it for real.
//!
//! Usage: `KOYO_CHAOS_URL=postgresql://… chaos_worker [--key=value …]` (the URL comes from the
//! environment so that a password never shows in `ps`). Settings, with their defaults:
//!
//! | setting | default | meaning |
//! |---|---|---|
//! | `--label=…` | `worker` | names the process in the ledger and in its output |
//! | `--queues=a,b` | `chaos` | queues served |
//! | `--pool=N` | 4 | jobs at once |
//! | `--poll-ms=N` | 100 | poll interval (heartbeat, rescue) |
//! | `--lease-ms=N` | 1000 | lease |
//! | `--grace-ms=N` | 2000 | shutdown grace |
//! | `--listen=true/false` | true | LISTEN for notifications, or poll only |
//! | `--prepared=true/false` | true | named prepared statements (false: PgBouncer mode) |
//! | `--threads=N` | 2 | runtime worker threads (1: a blocking job stalls the whole worker) |
//! | `--job-timeout-ms=N` | none | the worker's default job timeout |
//! | `--max-connections=N` | pool + 4 | the broker's pool size |
//! | `--statement-timeout-ms=N` | 10000 | the broker's statement timeout |
//! | `--connect-timeout-ms=N` | the broker's default | the broker's connect timeout (per host) |
//! | `--prefetch=N` | the worker's default | jobs claimed ahead of free slots |
//! | `--flush-ms=N` | the worker's default | how long shutdown may write results after the grace |
//!
//! Its connections carry `application_name` `chaos-<label>`. It prints `worker-ready id=<worker
//! id> pid=<pid>` once its worker runs, every `tracing` event as a line starting with `log `,
//! `shutdown-started` when `SIGTERM` arrives, and `worker-stopped` after a graceful shutdown.
//! It exits at once (status 3) when its stdin closes, so that it never outlives the test that
//! started it.

use std::collections::HashMap;
use std::io::Read as _;
use std::time::Duration;

use koyo_job::{Backoff, Broker, BrokerOptions, Registry, Worker};
use koyo_job_tests::chaos;

fn main() {
    let settings: HashMap<String, String> = std::env::args()
        .skip(1)
        .map(|arg| {
            let (key, value) = arg
                .strip_prefix("--")
                .and_then(|arg| arg.split_once('='))
                .unwrap_or_else(|| panic!("arguments are --key=value, not {arg:?}"));
            (key.to_owned(), value.to_owned())
        })
        .collect();
    let get = |key: &str, default: &str| settings.get(key).cloned().unwrap_or_else(|| default.to_owned());
    let number = |key: &str, default: u64| -> u64 {
        get(key, &default.to_string()).parse().unwrap_or_else(|_| panic!("--{key} takes a number"))
    };
    let flag = |key: &str| -> bool {
        get(key, "true").parse().unwrap_or_else(|_| panic!("--{key} is true or false"))
    };

    // Never outlive the test: it holds our stdin open, and closes it by exiting.
    std::thread::spawn(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        // Not `eprintln!`: with the test gone, stderr may be a broken pipe, and a panic here
        // would leave the process running.
        let _ = std::io::Write::write_all(&mut std::io::stderr(), b"chaos_worker: stdin closed; exiting\n");
        std::process::exit(3);
    });

    let label = get("label", "worker");
    let threads = number("threads", 2).max(1) as usize;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("a runtime");

    let pool = number("pool", 4) as usize;
    let url = std::env::var("KOYO_CHAOS_URL").expect("KOYO_CHAOS_URL names the database");
    let mut config: koyo_job::tokio_postgres::Config =
        url.parse().expect("KOYO_CHAOS_URL is a PostgreSQL URL");
    // Tests find this process's connections in pg_stat_activity by it.
    config.application_name(format!("chaos-{label}"));
    let options = BrokerOptions {
        max_connections: number("max-connections", pool as u64 + 4) as usize,
        prepared_statements: flag("prepared"),
        statement_timeout: Duration::from_millis(number("statement-timeout-ms", 10_000)),
        connect_timeout: settings
            .get("connect-timeout-ms")
            .map_or(BrokerOptions::default().connect_timeout, |ms| {
                Duration::from_millis(ms.parse().expect("--connect-timeout-ms takes a number"))
            }),
        ..BrokerOptions::default()
    };
    let queues: Vec<String> = get("queues", "chaos").split(',').map(str::to_owned).collect();
    let poll = Duration::from_millis(number("poll-ms", 100));
    let lease = Duration::from_millis(number("lease-ms", 1000));
    let grace = Duration::from_millis(number("grace-ms", 2000));
    let listen = flag("listen");
    let job_timeout = settings.get("job-timeout-ms").map(|ms| Duration::from_millis(ms.parse().unwrap()));
    let prefetch = settings.get("prefetch").map(|n| n.parse::<usize>().expect("--prefetch takes a number"));
    let flush = settings
        .get("flush-ms")
        .map(|ms| Duration::from_millis(ms.parse().expect("--flush-ms takes a number")));

    runtime.block_on(async move {
        chaos::LogCapture::install(chaos::LogTo::Stdout);
        chaos::set_label(&label);
        let registry = Registry::global().expect("a consistent registry");
        for name in chaos::job_names() {
            assert!(registry.names().any(|n| n == name), "chaos job {name} is not linked into the worker");
        }

        let broker = Broker::new(config, options).expect("a broker");
        koyo_job::set_current_broker(broker.clone());
        let mut builder = Worker::builder(broker)
            .queues(queues)
            .pool_size(pool)
            .poll_interval(poll)
            .lease(lease)
            .shutdown_grace(grace)
            .backoff(Backoff::exponential(Duration::from_millis(50), Duration::from_millis(500)))
            .listen(listen);
        if let Some(timeout) = job_timeout {
            builder = builder.job_timeout(timeout);
        }
        if let Some(prefetch) = prefetch {
            builder = builder.prefetch(prefetch);
        }
        if let Some(flush) = flush {
            builder = builder.flush_timeout(flush);
        }
        let worker = builder.start().await.expect("the worker starts");

        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a SIGTERM handler");
        println!("worker-ready id={} pid={}", worker.id(), std::process::id());
        terminate.recv().await;
        println!("shutdown-started");
        worker.shutdown().await;
        chaos::wait_for_pending_writes(Duration::from_secs(5)).await;
        println!("{}", chaos::noop_report());
        println!("worker-stopped");
    });
}
