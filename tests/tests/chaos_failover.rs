//! Chaos suite, failover: a primary and a streaming standby (both private clusters), workers
//! and a broker on a multi-host URL (`host=…,… target_session_attrs=read-write`), and the
//! primary lost mid-run — stopped at once, or hung (`SIGSTOP`: it accepts TCP connections and
//! answers nothing) — while the standby is promoted. Issue #13, item 1.
//!
//! Replication is synchronous (`synchronous_standby_names = '*'` on the primary), so every
//! commit acknowledged to a client is on the standby when the primary goes: an acknowledged
//! enqueue that is not done at the end is a lost job, whatever PostgreSQL itself would lose
//! with asynchronous replication.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use koyo_job::testing::{ClusterOptions, PrivateCluster, ShutdownMode};
use koyo_job::{Broker, BrokerOptions};
use koyo_job_tests::chaos::{ChaosDb, ChaosWorker, WorkerArgs, ledger_job, ms, overlaps};
use koyo_job_tests::poll_until;
use time::OffsetDateTime;
use tokio::sync::watch;

const WORKER: &str = env!("CARGO_BIN_EXE_chaos_worker");

/// Each host's connection start-up bound, for the worker and the enqueuing broker.
const CONNECT_MS: u64 = 1000;
/// The worker's poll interval.
const POLL_MS: u64 = 250;
/// What the resume bound allows on top of `CONNECT_MS + 2 * POLL_MS`: the first job after the
/// failover still has to be claimed, run (20 ms of work between two ledger writes) and written
/// done, each a round trip or two; and the machine running the suite is a shared 2-core box, on
/// which a process may wait a few hundred milliseconds for a core.
const TOLERANCE_MS: u64 = 750;

#[derive(Clone, Copy, Debug)]
enum Fault {
    /// An immediate shutdown of the primary (its port then refuses connections).
    Stop,
    /// `SIGSTOP` on every process of the primary: connections hang.
    Hang,
}

/// Every enqueue the test's broker got an answer for.
#[derive(Default)]
struct Enqueues {
    /// (job id, when the enqueue returned).
    acknowledged: Vec<(i64, OffsetDateTime)>,
    /// Enqueues that returned an error (the job may or may not exist).
    failed: usize,
    last_error: Option<String>,
}

/// Enqueues ledger jobs one after another (a 10 ms pause between them) until `stop` turns true.
fn enqueue_continuously(
    broker: Broker,
    stop: watch::Receiver<bool>,
) -> (Arc<Mutex<Enqueues>>, tokio::task::JoinHandle<()>) {
    let log: Arc<Mutex<Enqueues>> = Arc::default();
    let task = tokio::spawn({
        let log = log.clone();
        async move {
            let mut n = 1_000_000;
            while !*stop.borrow() {
                n += 1;
                match ledger_job(n, 20).enqueue_on(&broker).await {
                    Ok(id) => log.lock().unwrap().acknowledged.push((id.0, OffsetDateTime::now_utc())),
                    Err(error) => {
                        let mut log = log.lock().unwrap();
                        log.failed += 1;
                        log.last_error = Some(error.to_string());
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });
    (log, task)
}

/// The two scenarios run one after the other: each starts two servers and measures latencies,
/// on a machine with few cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn failover(fault: Fault) {
    let _alone = ONE_AT_A_TIME.lock().await;
    // Sync replication on the primary; the standby, once promoted, commits on its own.
    let mut primary =
        PrivateCluster::start_with(ClusterOptions::default().setting("synchronous_standby_names", "*"))
            .await
            .expect("a private primary");
    let standby = primary
        .start_standby(ClusterOptions::default().setting("synchronous_standby_names", ""))
        .await
        .expect("a streaming standby");
    let mut db = ChaosDb::on_cluster(&primary, true).await;
    let url = format!(
        "host=127.0.0.1,127.0.0.1 port={},{} user=postgres dbname=chaos target_session_attrs=read-write",
        primary.port(),
        standby.port()
    );
    let options = BrokerOptions {
        connect_timeout: Duration::from_millis(CONNECT_MS),
        statement_timeout: Duration::from_secs(10),
        ..BrokerOptions::default()
    };
    let args = WorkerArgs::new("w")
        .pool(4)
        .poll_ms(POLL_MS)
        .lease_ms(10_000)
        .connect_timeout_ms(CONNECT_MS)
        .statement_timeout_ms(10_000);
    // A job body whose ledger write hung on the old primary is dropped after 3 s and retried.
    let args = WorkerArgs { job_timeout_ms: Some(3000), ..args };
    let mut worker = ChaosWorker::spawn(WORKER, &url, args).await;

    let (stop_tx, stop_rx) = watch::channel(false);
    let enqueuer = Broker::new(url.parse().unwrap(), options).unwrap();
    let (enqueues, enqueuing) = enqueue_continuously(enqueuer, stop_rx);
    let done_sql = "SELECT count(*) FROM koyo_jobs WHERE status = 'done'";
    db.expect_count("progress before the fault", done_sql, Duration::from_secs(20), |n| n >= 40).await;

    let fault_at = OffsetDateTime::now_utc();
    match fault {
        Fault::Stop => primary.stop(ShutdownMode::Immediate).await.expect("stop the primary"),
        Fault::Hang => primary.pause().expect("SIGSTOP the primary"),
    }
    standby.promote().await.expect("promote the standby");
    let promoted_at = OffsetDateTime::now_utc();
    // The test itself reads the new primary directly from now on. (Its reads go through a plain
    // pooled connection, which koyo-job does not bound: on a hung server they would hang.)
    let mut new_primary = standby.config().clone();
    new_primary.dbname("chaos");
    db.broker = Broker::new(new_primary, BrokerOptions::default()).unwrap();

    // Work goes on on the new primary: 40 more jobs done after the promotion.
    let after_sql = format!(
        "SELECT count(*) FROM koyo_jobs WHERE status = 'done' AND finished_at > to_timestamp({:.6})",
        promoted_at.unix_timestamp_nanos() as f64 / 1e9
    );
    let (after, ok) = db.wait_count(&after_sql, Duration::from_secs(30), |n| n >= 40).await;
    assert!(ok, "{after} jobs done in 30 s after the promotion; the worker said {:#?}", worker.lines());
    stop_tx.send_replace(true);
    enqueuing.await.unwrap();
    let enqueues = std::mem::take(&mut *enqueues.lock().unwrap());
    let acknowledged: Vec<i64> = enqueues.acknowledged.iter().map(|(id, _)| *id).collect();
    // Every acknowledged job is done; the lease (10 s) bounds any that waits for a rescue.
    let not_done_sql = format!(
        "SELECT count(*) FROM unnest(ARRAY[{}]::int8[]) a(id) LEFT JOIN koyo_jobs j USING (id)
         WHERE j.status IS DISTINCT FROM 'done'",
        acknowledged.iter().map(i64::to_string).collect::<Vec<_>>().join(",")
    );
    let (lost, _) = db.wait_count(&not_done_sql, Duration::from_secs(30), |n| n == 0).await;

    // When work resumed on the new primary: the first job done there, and the first enqueue
    // acknowledged by it.
    let first_done: Option<OffsetDateTime> =
        db.query("SELECT min(finished_at) FROM koyo_jobs WHERE finished_at > $1", &[&promoted_at]).await[0]
            .get(0);
    let worker_resumed = ms(first_done.expect("a job done after the promotion") - promoted_at);
    let first_enqueue = enqueues.acknowledged.iter().map(|(_, at)| *at).filter(|at| *at > promoted_at).min();
    let broker_resumed =
        ms(first_enqueue.expect("an enqueue acknowledged after the promotion") - promoted_at);
    let last_done_before: Option<OffsetDateTime> =
        db.query("SELECT max(finished_at) FROM koyo_jobs WHERE finished_at <= $1", &[&promoted_at]).await[0]
            .get(0);

    let executions = db.executions().await;
    let overlapping = overlaps(&executions, &HashMap::new());
    let over_attempts = db.executions_over_attempts().await;
    let changed_after_done = db.changes_after_done().await;
    let done = db.count(done_sql).await;
    assert!(worker.try_exit().is_none(), "the worker died: {:#?}", worker.lines());
    worker.terminate(Duration::from_secs(10)).await;
    eprintln!(
        "chaos[failover {fault:?}]: promotion {} ms after the fault; completions resumed {worker_resumed} ms and \
         enqueues {broker_resumed} ms after the promotion (bound {} ms: connect_timeout {CONNECT_MS} + 2 polls of \
         {POLL_MS} + {TOLERANCE_MS}); last completion before it {} ms after the fault; acknowledged enqueues {}, \
         failed {} (last error: {:?}); done {done}; lost {lost}; executions {}; overlapping {}; over attempts {}",
        ms(promoted_at - fault_at),
        CONNECT_MS + 2 * POLL_MS + TOLERANCE_MS,
        last_done_before.map_or(-1, |at| ms(at - fault_at)),
        acknowledged.len(),
        enqueues.failed,
        enqueues.last_error,
        executions.len(),
        overlapping.len(),
        over_attempts.len(),
    );
    assert_eq!(lost, 0, "acknowledged jobs not done");
    assert!(overlapping.is_empty(), "overlapping runs: {overlapping:#?}");
    assert!(over_attempts.is_empty(), "more runs than attempts: {over_attempts:#?}");
    assert!(changed_after_done.is_empty(), "{changed_after_done:#?}");
    let bound = (CONNECT_MS + 2 * POLL_MS + TOLERANCE_MS) as i64;
    assert!(
        worker_resumed <= bound,
        "completions resumed {worker_resumed} ms after the promotion (bound {bound} ms)"
    );
    assert!(
        broker_resumed <= bound,
        "enqueues resumed {broker_resumed} ms after the promotion (bound {bound} ms)"
    );
    // The hung server is resumed and stopped, and both clusters deleted, when they are dropped
    // (here, or while unwinding from a failed assertion).
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_fails_over_to_a_promoted_standby_when_the_primary_stops() {
    failover(Fault::Stop).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_fails_over_to_a_promoted_standby_when_the_primary_hangs() {
    failover(Fault::Hang).await;
}

/// A switchover: the primary turns read-only (`default_transaction_read_only`, as a primary
/// being demoted does) and the standby is promoted. The next enqueue meets SQLSTATE 25006 on its
/// pooled connection to the old primary; the broker drops the connections opened before, and
/// sends the statement again on a connection that passes the read-write check: the caller sees
/// no error, and the job is stored on the new primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enqueue_that_meets_a_read_only_primary_goes_to_the_new_one() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let primary = PrivateCluster::start().await.expect("a private primary");
    let standby = primary.start_standby(ClusterOptions::default()).await.expect("a streaming standby");
    let db = ChaosDb::on_cluster(&primary, false).await;
    let on = |cluster: &PrivateCluster| {
        let mut config = cluster.config().clone();
        config.dbname("chaos");
        Broker::new(config, BrokerOptions::default()).unwrap()
    };
    let (old, new) = (on(&primary), on(&standby));
    let url = format!(
        "host=127.0.0.1,127.0.0.1 port={},{} user=postgres dbname=chaos target_session_attrs=read-write",
        primary.port(),
        standby.port()
    );
    let options =
        BrokerOptions { connect_timeout: Duration::from_millis(CONNECT_MS), ..BrokerOptions::default() };
    let broker = Broker::new(url.parse().unwrap(), options).unwrap();
    let before = ledger_job(1, 0).enqueue_on(&broker).await.expect("an enqueue on the primary");

    // The standby has replayed everything (the schema, the first job) before it is promoted.
    let primary_lsn: String = db.query("SELECT pg_current_wal_lsn()::text", &[]).await[0].get(0);
    let replayed = format!("SELECT pg_last_wal_replay_lsn() >= '{primary_lsn}'::pg_lsn");
    poll_until(Duration::from_secs(20), || async {
        let row = new.client().await.ok()?.query_one(&replayed, &[]).await.ok()?;
        row.get::<_, bool>(0).then_some(())
    })
    .await
    .expect("the standby caught up");

    let admin = old.client().await.unwrap();
    admin.batch_execute("ALTER SYSTEM SET default_transaction_read_only = on").await.unwrap();
    admin.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    drop(admin);
    // A new session sees the setting once the postmaster has reloaded, which is when it has
    // signalled the existing sessions (the broker's pooled one among them) to reload too.
    let read_only = "SELECT current_setting('default_transaction_read_only') = 'on'";
    let fresh = on(&primary);
    poll_until(Duration::from_secs(10), || async {
        let row = fresh.client().await.ok()?.query_one(read_only, &[]).await.ok()?;
        row.get::<_, bool>(0).then_some(())
    })
    .await
    .expect("the primary turned read-only");
    standby.promote().await.expect("promote the standby");

    let after = ledger_job(2, 0).enqueue_on(&broker).await.expect("no error reaches the caller");
    let stored_on = |broker: &Broker, id: i64| {
        let broker = broker.clone();
        async move {
            let client = broker.client().await.unwrap();
            client
                .query_one("SELECT count(*) FROM koyo_jobs WHERE id = $1", &[&id])
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    let (on_new, on_old) = (stored_on(&new, after.0).await, stored_on(&old, after.0).await);
    eprintln!(
        "chaos[failover read-only]: job {before} stored on the primary; after it turned read-only and the standby \
         was promoted, job {after} stored on the new primary ({on_new}) and not on the old one ({on_old})"
    );
    assert_eq!((on_new, on_old), (1, 0));
}
