//! Chaos suite, hostile input and secrets: argument bytes written straight into the table,
//! hostile names and oversized arguments, and the database password. Scenarios 8, 9 and 13 of
//! the reliability issue.
//!
//! This test binary installs a process-wide `tracing` subscriber that keeps every log line
//! (`koyo_job_tests::chaos::LogCapture`), so the secrets test can read what was logged.

use std::time::Duration;

use koyo_job::testing::{ClusterOptions, PrivateCluster, ShutdownMode};
use koyo_job::{
    Broker, BrokerOptions, Error, JobId, MAX_ARGS_BYTES, MAX_ARGS_DEPTH, Registry, RenderError, Worker,
};
use koyo_job_tests::chaos::{
    Chain, ChaosDb, ChaosWorker, LogCapture, LogTo, WorkerArgs, bad_text_job, deep_job, ledger_job, noop_job,
    payload_job,
};

const WORKER: &str = env!("CARGO_BIN_EXE_chaos_worker");

/// Scenario 8: argument bytes written straight into the table (truncated, huge or absurd
/// length prefixes, trailing garbage, empty, a bad varint) fail their job with a clear error
/// on the row, at the first attempt; the worker process lives on, runs the next job, and its
/// peak memory does not grow past the decoder's limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_argument_bytes_fail_clearly_and_the_worker_process_lives_on() {
    let db = ChaosDb::create().await;
    let mut w = ChaosWorker::spawn(WORKER, db.url(), WorkerArgs::new("w")).await;
    // Warm up (connections, prepared statements), so that the memory measured next is the decoder's.
    let warm = payload_job(0, vec![1, 2, 3]).enqueue_on(&db.broker).await.unwrap();
    db.wait_for_status(warm, "done", Duration::from_secs(10)).await;
    let rss_before = w.peak_rss_kib().expect("/proc/<pid>/status");

    // `(n: i64, payload: Vec<u8>)` in bincode's standard encoding: zigzag varint 7 is 14, then
    // a varint length (251/252/253 announce a u16/u32/u64) and the bytes.
    let n = 14u8;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", vec![n, 5, b'a']),
        ("a length of 2^40", [vec![n, 253], (1u64 << 40).to_le_bytes().to_vec()].concat()),
        ("a length of u64::MAX", [vec![n, 253], u64::MAX.to_le_bytes().to_vec()].concat()),
        (
            "a length just under the limit, no bytes",
            [vec![n, 252], 1_000_000u32.to_le_bytes().to_vec()].concat(),
        ),
        ("trailing garbage", vec![n, 1, b'x', 0xFF, 0xFF]),
        ("empty", vec![]),
        ("the first argument only", vec![n]),
        ("a reserved varint tag", vec![255, 0, 0]),
    ];
    let name = payload_job(0, vec![]).name();
    let mut ids = Vec::new();
    for (_, bytes) in &cases {
        let row = &db
            .query(
                "INSERT INTO koyo_jobs (queue, job, args) VALUES ('chaos', $1, $2) RETURNING id",
                &[&name, bytes],
            )
            .await[0];
        ids.push(JobId(row.get(0)));
    }
    let mut errors = Vec::new();
    for (id, (what, _)) in ids.iter().zip(&cases) {
        let job = db.wait_for_status(*id, "failed", Duration::from_secs(10)).await;
        let error = job.last_error.unwrap_or_default();
        assert!(error.contains("job arguments"), "{what}: {error}");
        assert_eq!(job.attempts, 1, "{what}: a decoding error is final");
        errors.push(format!("{what}: {error}"));
    }
    assert!(w.try_exit().is_none(), "the worker died: {:#?}", w.lines());
    let ok = payload_job(1, vec![9; 100]).enqueue_on(&db.broker).await.unwrap();
    db.wait_for_status(ok, "done", Duration::from_secs(10)).await;
    let rss_after = w.peak_rss_kib().unwrap();
    assert_eq!(
        db.count("SELECT count(*) FROM chaos_ledger WHERE n IN (0, 1)").await,
        2,
        "only good rows ran"
    );

    // The table refuses what the decoder would: over 1 MiB of arguments.
    let oversized = vec![0u8; MAX_ARGS_BYTES + 1];
    let refused = db
        .try_query("INSERT INTO koyo_jobs (queue, job, args) VALUES ('chaos', $1, $2)", &[&name, &oversized])
        .await;
    assert!(refused.is_err_and(|e| e.contains("check constraint")));
    w.terminate(Duration::from_secs(10)).await;
    eprintln!(
        "chaos[8 corrupt args]: {} corrupt rows failed at attempt 1 with a clear error, worker alive, peak memory {} KiB -> {} KiB:\n  {}",
        cases.len(),
        rss_before,
        rss_after,
        errors.join("\n  ")
    );
    assert!(rss_after < rss_before + 16 * 1024, "peak memory grew from {rss_before} KiB to {rss_after} KiB");
}

/// Text the database cannot store as it is — NUL characters in an error, a panic message or a
/// `retry!` reason, and a 1 MiB error — is stored made safe, and wedges nothing: every job after
/// it is recorded done, and the worker process shuts down promptly. (Before, one NUL failed the
/// whole completion batch for ever: later jobs ran but stayed `running`, and SIGTERM hung.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_texts_the_database_cannot_store_wedge_nothing() {
    let db = ChaosDb::create().await;
    let mut w = ChaosWorker::spawn(WORKER, db.url(), WorkerArgs::new("w").pool(4)).await;
    let mut bad = Vec::new();
    for (n, how) in [(1, "error"), (2, "panic"), (3, "retry"), (4, "huge")] {
        bad.push((how, bad_text_job(n, how.to_owned()).enqueue_on(&db.broker).await.unwrap()));
    }
    let mut good = Vec::new();
    for n in 100..130 {
        good.push(ledger_job(n, 0).enqueue_on(&db.broker).await.unwrap());
    }
    for id in &good {
        db.wait_for_status(*id, "done", Duration::from_secs(20)).await;
    }
    for (how, id) in &bad {
        // Two attempts each (`max_attempts = 2`), both recorded, the second final.
        let job = db.wait_for_status(*id, "failed", Duration::from_secs(20)).await;
        assert_eq!(job.attempts, 2, "{how}");
        let error = job.last_error.unwrap_or_default();
        if *how == "huge" {
            assert!(error.len() < 17 * 1024, "{how}: {} bytes stored", error.len());
            assert!(error.contains("more bytes cut"), "{how}: {}", &error[error.len() - 100..]);
        } else {
            assert!(error.contains('\u{FFFD}') && !error.contains('\0'), "{how}: {error:?}");
        }
    }
    assert!(w.try_exit().is_none(), "the worker died: {:#?}", w.lines());
    let started = tokio::time::Instant::now();
    w.terminate(Duration::from_secs(10)).await;
    assert!(w.lines().iter().any(|l| l.contains("worker-stopped")), "{:#?}", w.lines());
    eprintln!(
        "chaos[bad text]: 4 unstorable error texts stored safely, 30 later jobs done, shutdown in {:?}",
        started.elapsed()
    );
}

/// A row whose arguments nest 200,000 levels deep (about 200 kB, well under the size limit)
/// fails its job at once with a readable error; the worker process lives on and runs the next
/// job, and rendering the same arguments (as the admin page does) is an error, not a crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arguments_nested_too_deeply_fail_their_job_and_kill_no_process() {
    let db = ChaosDb::create().await;
    let mut w = ChaosWorker::spawn(WORKER, db.url(), WorkerArgs::new("w")).await;
    // `(n: i64, chain: Chain)`: zigzag varint 7, then variant 1 (`Link`) 200,000 times and
    // variant 0 (`End`).
    let mut crafted = vec![14_u8];
    crafted.extend(std::iter::repeat_n(1_u8, 200_000));
    crafted.push(0);
    let name = deep_job(0, Chain::End).name();
    let row = &db
        .query(
            "INSERT INTO koyo_jobs (queue, job, args) VALUES ('chaos', $1, $2) RETURNING id",
            &[&name, &crafted],
        )
        .await[0];
    let id = JobId(row.get(0));
    let job = db.wait_for_status(id, "failed", Duration::from_secs(20)).await;
    let error = job.last_error.unwrap_or_default();
    assert!(error.contains(&format!("more than {MAX_ARGS_DEPTH} levels")), "{error}");
    assert_eq!(job.attempts, 1, "a decoding error is final");
    assert!(w.try_exit().is_none(), "the worker died: {:#?}", w.lines());
    let next = deep_job(1, Chain::Link(Box::new(Chain::End))).enqueue_on(&db.broker).await.unwrap();
    db.wait_for_status(next, "done", Duration::from_secs(20)).await;

    // The admin page renders stored arguments through the same decoding, in its own process:
    // this one.
    let rendered = Registry::global().unwrap().render_args(name, &crafted);
    assert!(
        matches!(
            rendered,
            Err(RenderError::Decode(koyo_job::DecodeError::TooDeep { limit: MAX_ARGS_DEPTH }))
        ),
        "{rendered:?}"
    );
    // And a value too deep for workers is refused when enqueued, not stored.
    let too_deep = (0..MAX_ARGS_DEPTH).fold(Chain::End, |inner, _| Chain::Link(Box::new(inner)));
    let refused = deep_job(2, too_deep).enqueue_on(&db.broker).await;
    assert!(matches!(refused, Err(Error::ArgsTooDeep { limit: MAX_ARGS_DEPTH })), "{refused:?}");
    w.terminate(Duration::from_secs(10)).await;
}

/// A broker whose server does not exist: any SQL sent through it fails with a connection
/// error, so a typed error from it proves that nothing was sent.
fn broker_without_a_server() -> Broker {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("postgresql://app@127.0.0.1:{port}/nowhere");
    let options = BrokerOptions { connect_timeout: Duration::from_secs(1), ..BrokerOptions::default() };
    Broker::new(url.parse().unwrap(), options).unwrap()
}

/// Scenario 9: hostile queue names (the names chosen at run time; job names and job queues are
/// checked at compile time by `#[define_job]`, see `tests/ui/fail`) and oversized arguments
/// are typed errors before any SQL, and nothing is inserted; the table refuses the same names
/// written by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_names_and_oversized_arguments_are_refused_before_any_sql() {
    let nowhere = broker_without_a_server();
    let db = ChaosDb::create().await;
    let hostile = [
        String::new(),
        "mail'; DROP TABLE koyo_jobs; --".into(),
        "a\0b".into(),
        "naïve".into(),
        "q".repeat(65),
        "two words".into(),
        "new\nline".into(),
        "$1".into(),
        "koyo_jobs\"".into(),
        "\u{202e}txt".into(),
    ];
    for broker in [&nowhere, &db.broker] {
        for bad in &hostile {
            let err = Worker::builder(broker.clone()).queue(bad.clone()).start().await.unwrap_err();
            assert!(matches!(err, Error::InvalidQueue { .. }), "{bad:?}: {err:?}");
        }
        let err = Worker::builder(broker.clone()).pool_size(0).start().await.unwrap_err();
        assert!(matches!(err, Error::WorkerConfig(_)), "{err:?}");

        let huge = payload_job(1, vec![7; MAX_ARGS_BYTES]);
        assert!(matches!(huge.enqueue_on(broker).await, Err(Error::ArgsTooLarge { .. })));
        let sixteen_mib = payload_job(2, vec![7; 16 << 20]);
        assert!(matches!(sixteen_mib.enqueue_on(broker).await, Err(Error::ArgsTooLarge { .. })));
        let batch =
            broker.enqueue_many([payload_job(3, vec![1]), payload_job(4, vec![7; MAX_ARGS_BYTES + 1])]).await;
        assert!(matches!(batch, Err(Error::ArgsTooLarge { .. })), "{batch:?}");
        let negative = ledger_job(5, 0).with_priority(-1).enqueue_on(broker).await;
        assert!(matches!(negative, Err(Error::InvalidPriority(-1))), "{negative:?}");
    }
    // The control: the broker without a server does fail once SQL is sent.
    let sent = ledger_job(6, 0).enqueue_on(&nowhere).await.unwrap_err();
    assert!(matches!(sent, Error::Database(_) | Error::Pool(_) | Error::Timeout(_)), "{sent:?}");

    assert_eq!(db.count("SELECT count(*) FROM koyo_jobs").await, 0, "nothing was inserted");
    assert_eq!(db.count("SELECT count(*) FROM koyo_workers").await, 0, "no worker registered");
    // PostgreSQL text cannot hold NUL at all; the rest are refused by the table's CHECKs.
    let long_job_name = "j".repeat(201);
    for bad in hostile.iter().filter(|b| !b.contains('\0')) {
        let refused =
            db.try_query("INSERT INTO koyo_jobs (queue, job, args) VALUES ($1, 'x', '')", &[bad]).await;
        assert!(refused.is_err_and(|e| e.contains("check constraint")), "{bad:?}");
        let job_name = if bad.len() == 65 { &long_job_name } else { bad };
        let refused =
            db.try_query("INSERT INTO koyo_jobs (queue, job, args) VALUES ('q', $1, '')", &[job_name]).await;
        assert!(refused.is_err_and(|e| e.contains("check constraint")), "{job_name:?}");
    }
    eprintln!(
        "chaos[9 hostile input]: {} hostile queue names, a zero pool, 1 MiB/16 MiB/batched oversized arguments and a \
         negative priority refused with typed errors, also on a broker with no server (so before any SQL); 0 rows inserted",
        hostile.len()
    );
}

/// Percent-encodes as `koyo_job::testing` writes URLs.
fn url_encoded(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Scenario 13: the database password appears in no log line (of this process's workers and of
/// a worker process, through a server restart), no error message and no `Debug` output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_password_appears_in_no_log_error_or_debug_output() {
    const PASSWORD: &str = "Koyo-pw-S3cr3t!x7";
    let logs = LogCapture::install(LogTo::Memory);
    let mut cluster = PrivateCluster::start_with(ClusterOptions::default().password(PASSWORD)).await.unwrap();
    let url = cluster.url();
    assert!(url.contains(&url_encoded(PASSWORD)), "the cluster's URL carries the password");
    let wrong_url = url.replace(&url_encoded(PASSWORD), "wrong-password");
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let closed_url = url.replace(&format!(":{}/", cluster.port()), &format!(":{closed_port}/"));
    let mut seen: Vec<(String, String)> = Vec::new();
    let note =
        |seen: &mut Vec<(String, String)>, what: &str, text: String| seen.push((what.to_owned(), text));

    // Errors: every way of failing to connect, or to parse a URL, that carries the password.
    let mut failures = vec![
        ("wrong password", Broker::connect(&wrong_url).await.unwrap_err()),
        ("closed port", Broker::connect(&closed_url).await.unwrap_err()),
    ];
    for (what, bad) in [
        ("bad port", url.replace(&format!(":{}/", cluster.port()), ":port/")),
        ("bad option", format!("{url}&sslmode=sometimes")),
        ("unknown option", format!("{url}&frobnicate={PASSWORD}")),
        ("bad scheme", url.replace("postgresql://", "postgresq://")),
        ("bad escape", url.replace("@", "%zz@")),
        ("bad host", url.replace("127.0.0.1", "[127.0.0.1")),
    ] {
        failures.push((what, Broker::connect(&bad).await.unwrap_err()));
    }
    let config: koyo_job::tokio_postgres::Config = wrong_url.parse().unwrap();
    let wrong = Broker::new(config, BrokerOptions::default()).unwrap();
    failures.push(("enqueue with a wrong password", ledger_job(1, 0).enqueue_on(&wrong).await.unwrap_err()));
    failures
        .push(("worker with a wrong password", Worker::builder(wrong.clone()).start().await.unwrap_err()));
    for (what, error) in &failures {
        let mut text = format!("{error} / {error:?}");
        let mut source = std::error::Error::source(error);
        while let Some(cause) = source {
            text.push_str(&format!(" / {cause} / {cause:?}"));
            source = cause.source();
        }
        note(&mut seen, what, text);
    }
    let authentication = &seen[0].1;
    assert!(authentication.contains("password authentication failed"), "{authentication}");

    // Debug output of everything that holds the password.
    let broker = Broker::connect(&url).await.unwrap();
    koyo_job::migrate(&broker).await.unwrap();
    note(&mut seen, "cluster", format!("{cluster:?}"));
    note(&mut seen, "cluster config", format!("{:?}", cluster.config()));
    note(&mut seen, "cluster options", format!("{:?}", ClusterOptions::default().password(PASSWORD)));
    note(&mut seen, "broker", format!("{broker:?} {:?} {:?}", broker.config(), broker.options()));
    note(&mut seen, "wrong broker", format!("{wrong:?}"));
    let builder = Worker::builder(broker.clone()).queues(["chaos", "burst"]);
    note(&mut seen, "worker builder", format!("{builder:?}"));

    // Logs: a worker in this process and a worker process, both through a server restart.
    let worker = builder
        .poll_interval(Duration::from_millis(100))
        .lease(Duration::from_secs(2))
        .start()
        .await
        .unwrap();
    note(&mut seen, "worker handle", format!("{worker:?}"));
    // One job run in this process, for its span and events.
    let id = noop_job(1).enqueue_on(&broker).await.unwrap();
    let done = "SELECT count(*) FROM koyo_jobs WHERE status = 'done'";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while broker.client().await.unwrap().query_one(done, &[]).await.unwrap().get::<_, i64>(0) < 1 {
        assert!(tokio::time::Instant::now() < deadline, "job {id} did not run");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut process = ChaosWorker::spawn(WORKER, &url, WorkerArgs::new("p")).await;
    cluster.restart(ShutdownMode::Fast).await.unwrap();
    let err = cluster.start_again().await.unwrap_err();
    note(&mut seen, "cluster error", format!("{err} {err:?}"));
    // Both workers are back: the in-process one heartbeats, the process writes no more errors.
    let back = "SELECT count(*) FROM koyo_workers WHERE heartbeat_at > now() - interval '300 milliseconds'";
    let db_check = Broker::connect(&url).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let client = db_check.client().await;
        if let Ok(client) = client
            && let Ok(row) = client.query_one(back, &[]).await
            && row.get::<_, i64>(0) == 2
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the workers did not come back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    worker.shutdown().await;
    process.terminate(Duration::from_secs(10)).await;

    let log_lines = logs.lines();
    let process_lines = process.lines();
    assert!(
        log_lines.iter().any(|l| l.contains("retrying"))
            && process_lines.iter().any(|l| l.contains("retrying")),
        "the restart made the workers log their errors: {log_lines:#?} {process_lines:#?}"
    );
    for line in log_lines.iter().chain(&process_lines) {
        note(&mut seen, "log", line.clone());
    }
    let secrets = [PASSWORD.to_owned(), url_encoded(PASSWORD)];
    let leaks: Vec<_> =
        seen.iter().filter(|(_, text)| secrets.iter().any(|s| text.contains(s.as_str()))).collect();
    eprintln!(
        "chaos[13 secrets]: checked {} error messages, {} Debug outputs and {} log lines ({} in this process, {} from a worker process) \
         through a restart: {} contain the password",
        failures.len(),
        seen.iter().filter(|(what, _)| *what != "log").count() - failures.len(),
        log_lines.len() + process_lines.len(),
        log_lines.len(),
        process_lines.len(),
        leaks.len()
    );
    for (what, text) in seen.iter().filter(|(what, _)| *what != "log").take(failures.len()) {
        eprintln!("  {what}: {text}");
    }
    assert!(leaks.is_empty(), "the password leaked: {leaks:#?}");
}
