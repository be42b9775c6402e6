//! Chaos suite, worker processes: killed (`SIGKILL`), frozen (`SIGSTOP`), aborting, blocking
//! and stopped (`SIGTERM`) workers, and completions racing rescues. Scenarios 1, 2, 3, 6, 7,
//! 11 and 12 of the reliability issue.
//!
//! Every test starts real worker processes (`src/bin/chaos_worker.rs`) on a database of its
//! own; every job execution is written to a ledger (job, attempt, worker process, start, end),
//! and every change of a job's state to an audit table, so the tests can prove what ran where.

use std::collections::HashMap;
use std::time::Duration;

use koyo_job::JobId;
use koyo_job::testing::PrivateCluster;
use koyo_job_tests::chaos::{
    ChaosDb, ChaosWorker, Execution, WorkerArgs, abort_job, block_job, cancellable_job, gate_job, ledger_job,
    ms, overlaps, peak_concurrency, spin_job,
};
use time::OffsetDateTime;

const WORKER: &str = env!("CARGO_BIN_EXE_chaos_worker");

async fn enqueue_ledger(db: &ChaosDb, ns: impl IntoIterator<Item = i64>, work_ms: u64) -> Vec<JobId> {
    db.broker.enqueue_many(ns.into_iter().map(|n| ledger_job(n, work_ms))).await.unwrap()
}

/// How a worker that lost its lease dealt with its stale run of job `id`: it completed it late
/// and the fence discarded the result, or it stopped it.
fn stale_path(worker: &ChaosWorker, id: JobId) -> &'static str {
    let needle = format!("job_id={}", id.0);
    if worker.lines().iter().any(|l| l.contains("discarded a result") && l.contains(&needle)) {
        "late result discarded by the fence"
    } else {
        "stale run stopped before it wrote a result"
    }
}

/// Scenario 1: `SIGKILL` a worker mid-job. Its jobs run again on the other worker, within the
/// lease bound; nothing is lost, and no job ran twice at the same time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_s_jobs_run_again_elsewhere_within_the_lease() {
    let db = ChaosDb::create().await;
    let args = |label: &str| WorkerArgs::new(label).pool(4).lease_ms(1000).poll_ms(100);
    let mut a = ChaosWorker::spawn(WORKER, db.url(), args("a")).await;
    let long = enqueue_ledger(&db, 1..=4, 1500).await;
    db.expect_count(
        "a runs the four long jobs",
        "SELECT count(*) FROM chaos_ledger WHERE worker = 'a'",
        Duration::from_secs(10),
        |n| n == 4,
    )
    .await;
    let short = enqueue_ledger(&db, 100..120, 50).await;
    let mut b = ChaosWorker::spawn(WORKER, db.url(), args("b")).await;

    let killed_at = a.kill();
    let killed = HashMap::from([(a.pid() as i32, killed_at)]);
    db.expect_count(
        "every job done",
        "SELECT count(*) FROM koyo_jobs WHERE status = 'done'",
        Duration::from_secs(30),
        |n| n == 24,
    )
    .await;
    b.terminate(Duration::from_secs(10)).await;

    let executions = db.executions().await;
    let mut recovery = Vec::new();
    for id in &long {
        let job = db.job(*id).await;
        assert_eq!(
            (job.status.as_str(), job.attempts, job.worker_id),
            ("done", 2, Some(b.worker_id())),
            "{job:?}"
        );
        assert!(job.last_error.as_deref().unwrap_or("").contains("was lost during attempt 1"), "{job:?}");
        // Its timeline: the attempt lost with the killed worker (and that worker's host), then
        // the one that finished it.
        let client = db.broker.client().await.unwrap();
        let detail = koyo_job::admin::job(&client, id.0).await.unwrap().unwrap();
        let timeline: Vec<_> =
            detail.history.iter().map(|h| (h.attempt, h.outcome.as_str(), h.worker_id)).collect();
        assert_eq!(timeline, [(1, "lost", Some(a.worker_id())), (2, "done", Some(b.worker_id()))]);
        assert!(detail.history[0].hostname.is_some(), "{:?}", detail.history[0]);
        let runs: Vec<_> = executions.iter().filter(|e| e.job_id == id.0).collect();
        assert_eq!(runs.len(), 2, "{runs:#?}");
        assert_eq!((runs[0].worker.as_str(), runs[0].attempt, runs[0].ended_at), ("a", 1, None));
        assert_eq!((runs[1].worker.as_str(), runs[1].attempt), ("b", 2));
        recovery.push(ms(runs[1].started_at - killed_at));
    }
    for id in &short {
        assert_eq!(db.job(*id).await.attempts, 1);
    }
    let overlapping = overlaps(&executions, &killed);
    assert!(overlapping.is_empty(), "{overlapping:#?}");
    assert!(db.executions_over_attempts().await.is_empty());
    assert!(db.changes_after_done().await.is_empty());
    let worst = *recovery.iter().max().unwrap();
    eprintln!(
        "chaos[1 sigkill]: jobs=24 lost=0 reran={} (the 4 killed mid-run) overlapping=0 recovery_ms={recovery:?} (lease 1000, poll 100)",
        long.len()
    );
    // The lease bound: the other worker notices a silent worker one lease after its last
    // heartbeat (up to a poll before the kill), at its next poll; the rest is claiming and
    // scheduling on a busy machine.
    let best = *recovery.iter().min().unwrap();
    assert!(
        best >= 800,
        "jobs of the killed worker restarted {best} ms after the kill, before its lease ran out"
    );
    assert!(worst < 3200, "jobs of the killed worker restarted {worst} ms after the kill");
}

/// Scenario 1 with prefetched jobs: `SIGKILL` a worker whose slots are busy while it holds jobs
/// it claimed ahead and never started. They are rescued with its running jobs after the lease,
/// run once, on the other worker; their claim counts as the lost attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_s_prefetched_jobs_run_elsewhere_after_the_lease() {
    let db = ChaosDb::create().await;
    let args = |label: &str| WorkerArgs::new(label).pool(2).prefetch(4).lease_ms(1000).poll_ms(100);
    // Short jobs first (a backlog, whose pace the worker learns), then two long ones that take
    // both slots, then short ones for it to claim ahead.
    enqueue_ledger(&db, 1..=30, 0).await;
    let long = enqueue_ledger(&db, 100..=101, 4000).await;
    let behind = enqueue_ledger(&db, 200..=215, 0).await;
    let mut a = ChaosWorker::spawn(WORKER, db.url(), args("a")).await;
    let a_id = a.worker_id();

    let long_ids: Vec<i64> = long.iter().map(|id| id.0).collect();
    let prefetched: Vec<i64> = koyo_job_tests::poll_until(Duration::from_secs(15), || async {
        let busy = db
            .count(&format!(
                "SELECT count(*) FROM chaos_ledger WHERE worker = 'a' AND ended_at IS NULL AND job_id IN ({}, {})",
                long_ids[0], long_ids[1]
            ))
            .await;
        let waiting: Vec<i64> = db
            .query(
                "SELECT coalesce(array_agg(j.id ORDER BY j.id), '{}') FROM koyo_jobs AS j
                 WHERE j.status = 'running' AND j.worker_id = $1
                   AND NOT EXISTS (SELECT 1 FROM chaos_ledger AS l WHERE l.job_id = j.id)",
                &[&a_id],
            )
            .await[0]
            .get(0);
        (busy == 2 && !waiting.is_empty()).then_some(waiting)
    })
    .await
    .expect("a claims jobs ahead while both its slots run the long jobs");
    let killed_at = a.kill();
    let killed = HashMap::from([(a.pid() as i32, killed_at)]);
    assert!(prefetched.len() <= 4, "at most `prefetch` jobs ahead: {prefetched:?}");
    assert!(prefetched.iter().all(|id| behind.iter().any(|b| b.0 == *id)), "{prefetched:?}");

    let mut b = ChaosWorker::spawn(WORKER, db.url(), args("b")).await;
    db.expect_count(
        "every job done",
        "SELECT count(*) FROM koyo_jobs WHERE status = 'done'",
        Duration::from_secs(30),
        |n| n == 48,
    )
    .await;
    b.terminate(Duration::from_secs(10)).await;

    let executions = db.executions().await;
    let mut recovery = Vec::new();
    for id in &prefetched {
        let job = db.job(JobId(*id)).await;
        assert_eq!(
            (job.status.as_str(), job.attempts, job.worker_id),
            ("done", 2, Some(b.worker_id())),
            "{job:?}"
        );
        assert!(job.last_error.as_deref().unwrap_or("").contains("was lost during attempt 1"), "{job:?}");
        let runs: Vec<_> = executions.iter().filter(|e| e.job_id == *id).collect();
        assert_eq!(runs.len(), 1, "a prefetched job never started on the killed worker: {runs:#?}");
        assert_eq!((runs[0].worker.as_str(), runs[0].attempt), ("b", 2));
        recovery.push(ms(runs[0].started_at - killed_at));
    }
    for id in behind.iter().filter(|id| !prefetched.contains(&id.0)) {
        assert_eq!(db.job(*id).await.attempts, 1, "job {id} was not held by the killed worker");
    }
    let overlapping = overlaps(&executions, &killed);
    assert!(overlapping.is_empty(), "{overlapping:#?}");
    assert!(db.executions_over_attempts().await.is_empty());
    assert!(db.changes_after_done().await.is_empty());
    eprintln!(
        "chaos[1 sigkill, prefetched]: prefetched={} lost=0 recovery_ms={recovery:?} (lease 1000, poll 100)",
        prefetched.len()
    );
    // Rescued with the killed worker's running jobs: not before its lease ran out.
    let best = *recovery.iter().min().unwrap();
    assert!(
        best >= 800,
        "prefetched jobs of the killed worker ran {best} ms after the kill, before its lease ran out"
    );
}

/// Scenario 2: `SIGSTOP` a worker past its lease; another worker runs the job and completes
/// it; `SIGCONT`: the frozen worker's late completion is discarded by the fence and changes
/// nothing, and the thawed worker carries on under a new identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_worker_s_late_completion_changes_nothing() {
    let db = ChaosDb::create().await;
    let (mut a, id) = one_job_running_on(&db, "a", 1500).await;

    a.signal("STOP");
    let frozen_at = OffsetDateTime::now_utc();
    let mut b = ChaosWorker::spawn(WORKER, db.url(), WorkerArgs::new("b").pool(2)).await;
    let done = db.wait_for_status(id, "done", Duration::from_secs(20)).await;
    assert_eq!((done.attempts, done.worker_id), (2, Some(b.worker_id())), "{done:?}");
    // Frozen past the end of its own run of the job, so that it completes as soon as it thaws.
    let thawed_at = OffsetDateTime::now_utc();
    a.signal("CONT");

    assert!(a.wait_for_line("registered again", Duration::from_secs(10)).await.is_some(), "{:#?}", a.lines());
    // The thawed worker still works: with b gone, it runs a new job. Its results are written in
    // order, so once this one is done, whatever a had to say about the old job has been said.
    b.terminate(Duration::from_secs(10)).await;
    let next = enqueue_ledger(&db, [2], 10).await[0];
    db.wait_for_status(next, "done", Duration::from_secs(10)).await;
    assert_eq!(db.executions().await.last().unwrap().worker, "a");
    assert_eq!(db.job(id).await, done, "the late completion changed the row");
    assert!(db.changes_after_done().await.is_empty(), "{:?}", db.changes_after_done().await);

    let runs = db.executions().await;
    assert_eq!(runs.len(), 3, "{runs:#?}");
    assert_eq!((runs[0].worker.as_str(), runs[0].attempt), ("a", 1));
    assert_eq!((runs[1].worker.as_str(), runs[1].attempt), ("b", 2));
    let a_end = runs[0].ended_at.expect("a's run is over");
    assert!(a_end >= thawed_at, "a's run ended while it was frozen?");
    eprintln!(
        "chaos[2 sigstop]: lost=0 stale_writes_applied=0 ({}) frozen_ms={} rescued_after_ms={} overlap_ms={} (documented: a frozen worker's run overlaps the rescuer's)",
        stale_path(&a, id),
        ms(thawed_at - frozen_at),
        ms(runs[1].started_at - frozen_at),
        ms(a_end - runs[1].started_at),
    );
}

/// Scenario 2, continued: a worker that thaws and learns that it lost its lease must stop the
/// jobs it lost, so that a frozen worker's run overlaps the rescuer's for no longer than it was
/// frozen (plus one poll), as `docs/guarantees.md` promises, rather than until the job's body
/// happens to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thawed_worker_stops_running_the_jobs_it_lost() {
    let db = ChaosDb::create().await;
    let (mut a, id) = one_job_running_on(&db, "a", 8000).await;
    a.signal("STOP");
    let frozen_at = OffsetDateTime::now_utc();
    let b = ChaosWorker::spawn(WORKER, db.url(), WorkerArgs::new("b").pool(2)).await;
    db.expect_count(
        "b takes the job over",
        "SELECT count(*) FROM chaos_ledger WHERE worker = 'b'",
        Duration::from_secs(10),
        |n| n == 1,
    )
    .await;
    let thawed_at = OffsetDateTime::now_utc();
    a.signal("CONT");

    // a learns at its next heartbeat that it lost its lease.
    assert!(a.wait_for_line("registered again", Duration::from_secs(10)).await.is_some(), "{:#?}", a.lines());
    let stopped = db
        .wait_count(
            "SELECT count(*) FROM chaos_ledger WHERE worker = 'a' AND ended_at IS NOT NULL",
            Duration::from_secs(12),
            |n| n == 1,
        )
        .await;
    let runs = db.executions().await;
    let a_end = runs[0].ended_at;
    eprintln!(
        "chaos[2 thaw]: frozen_ms={} a_run_went_on_after_thaw_ms={:?} b_started_after_freeze_ms={} (b's job {})",
        ms(thawed_at - frozen_at),
        a_end.map(|end| ms(end - thawed_at)),
        ms(runs[1].started_at - frozen_at),
        b.worker_id(),
    );
    assert!(stopped.1, "a's run never ended: {runs:#?}");
    let after_thaw = a_end.unwrap() - thawed_at;
    assert!(
        after_thaw < time::Duration::milliseconds(1500),
        "the thawed worker ran a job it had lost for {after_thaw} after thawing (outcome {:?}), overlapping b's run of job {id}",
        runs[0].outcome
    );
    db.wait_for_status(id, "done", Duration::from_secs(15)).await;
}

/// Which statement reaches the job's row first in [`race`].
#[derive(Clone, Copy, Debug, PartialEq)]
enum First {
    Completion,
    Rescue,
}

/// Makes a worker's completion of a job and another worker's rescue of it wait on the job's row
/// at the same time (the test holds the row lock), in the order given, then lets them go.
async fn race(first: First) -> (ChaosDb, JobId, ChaosWorker, ChaosWorker) {
    let db = ChaosDb::create().await;
    // a runs the gated job and rarely heartbeats; b serves another queue and has a short lease.
    let a_args = WorkerArgs::new("a").queues(&["gated"]).poll_ms(5000).lease_ms(15_000);
    let mut a = ChaosWorker::spawn(WORKER, db.url(), a_args).await;
    let id = gate_job(1).enqueue_on(&db.broker).await.unwrap();
    db.expect_count("a starts the job", "SELECT count(*) FROM chaos_ledger", Duration::from_secs(10), |n| {
        n == 1
    })
    .await;

    let mut locker = db.broker.client().await.unwrap();
    let lock = locker.transaction().await.unwrap();
    lock.query("SELECT 1 FROM koyo_jobs WHERE id = $1 FOR UPDATE", &[&id.0]).await.unwrap();
    let waiting = |app: &'static str, statement: &'static str| {
        format!(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
             AND application_name = 'chaos-{app}' AND wait_event_type = 'Lock' AND query LIKE '%{statement}%'"
        )
    };
    let completion_waits = waiting("a", "SET status = ''done''");
    let rescue_waits = waiting("b", "WITH beat AS");
    let complete = async {
        db.query("INSERT INTO chaos_gates (n) VALUES (1)", &[]).await;
        db.expect_count(
            "a's completion waits for the row",
            &completion_waits,
            Duration::from_secs(10),
            |n| n == 1,
        )
        .await;
    };
    let start_rescuer = async {
        // a looks dead to b, whose lease is 300 ms.
        db.query("UPDATE koyo_workers SET heartbeat_at = now() - interval '1 hour'", &[]).await;
        let b_args = WorkerArgs::new("b").queues(&["chaos"]).poll_ms(100).lease_ms(300);
        let b = ChaosWorker::spawn(WORKER, db.url(), b_args).await;
        db.expect_count("b's rescue waits for the row", &rescue_waits, Duration::from_secs(10), |n| n == 1)
            .await;
        b
    };
    let b = match first {
        First::Completion => {
            complete.await;
            start_rescuer.await
        }
        First::Rescue => {
            let b = start_rescuer.await;
            complete.await;
            b
        }
    };
    lock.rollback().await.unwrap();
    drop(locker);
    // Both have gone through once a has heard that it was declared dead.
    assert!(a.wait_for_line("registered again", Duration::from_secs(20)).await.is_some(), "{:#?}", a.lines());
    (db, id, a, b)
}

/// Scenario 3: a completion racing a rescue, the completion first: the job stays completed,
/// whatever the rescue does after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_racing_a_rescue_stays_completed() {
    let (db, id, a, b) = race(First::Completion).await;
    let job = db.job(id).await;
    assert_eq!(
        (job.status.as_str(), job.attempts, job.worker_id),
        ("done", 1, Some(a.worker_id())),
        "{job:?}"
    );
    assert!(job.last_error.is_none(), "{job:?}");
    assert!(db.changes_after_done().await.is_empty(), "{:?}", db.changes_after_done().await);
    assert_eq!(db.executions().await.len(), 1);
    assert!(!a.lines().iter().any(|l| l.contains("discarded a result")), "{:#?}", a.lines());
    assert!(!b.lines().iter().any(|l| l.contains("gave back jobs")), "{:#?}", b.lines());
    eprintln!(
        "chaos[3 completion first]: job done at attempt 1, rescue found nothing to take, changes_after_done=0"
    );
}

/// Scenario 3, the other order: the rescue wins, so the completion is fenced out (discarded,
/// logged) and the job runs again and is completed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rescue_racing_a_completion_fences_the_completion_out() {
    let (db, id, mut a, _b) = race(First::Rescue).await;
    let discarded = a.wait_for_line("discarded a result", Duration::from_secs(10)).await;
    assert!(discarded.is_some_and(|l| l.contains("attempt=1")), "{:#?}", a.lines());
    let job = db.wait_for_status(id, "done", Duration::from_secs(20)).await;
    let transitions: Vec<String> = db
        .query(
            "SELECT format('%s->%s@%s', old_status, new_status, new_attempts) FROM chaos_transitions ORDER BY seq",
            &[],
        )
        .await
        .iter()
        .map(|r| r.get(0))
        .collect();
    let runs = db.executions().await;
    eprintln!(
        "chaos[3 rescue first]: transitions={transitions:?} executions={} final attempts={}",
        runs.len(),
        job.attempts
    );
    assert_eq!(transitions[..2], ["ready->running@1", "running->ready@1"], "{transitions:?}");
    assert!(job.last_error.as_deref().unwrap_or("").contains("was lost during attempt"), "{job:?}");
    assert_eq!(transitions.iter().filter(|t| t.contains("->done")).count(), 1, "{transitions:?}");
    assert!(db.changes_after_done().await.is_empty());
    let overlapping = overlaps(&runs, &HashMap::new());
    assert!(overlapping.is_empty(), "{overlapping:#?}");
}

/// A small deterministic random sequence (xorshift), so a failing run can be replayed.
struct Dice(u64);

impl Dice {
    fn roll(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

/// Scenario 6: three worker processes, 3,000 jobs, and every half second or so one worker is
/// killed (`SIGKILL`: the first three times, then two times in three) or stopped (`SIGTERM`)
/// and replaced by a new process. Every job ends done; no job ever ran twice at the same time; no job ran more often
/// than its attempts count; a job ran again only after its worker was killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_kills_and_restarts_of_several_workers_lose_nothing_and_never_overlap() {
    const N: i64 = 3000;
    let cluster = PrivateCluster::start().await.expect("a private cluster");
    let db = ChaosDb::on_cluster(&cluster, true).await;
    db.broker.enqueue_many((0..N).map(|n| ledger_job(n, (n % 5) as u64 * 20))).await.unwrap();
    let args = |label: &str| WorkerArgs::new(label).pool(8).lease_ms(1000).poll_ms(100);
    let mut workers = Vec::new();
    for label in ["w1", "w2", "w3"] {
        workers.push(ChaosWorker::spawn(WORKER, db.url(), args(label)).await);
    }
    let started = OffsetDateTime::now_utc();
    let mut dice = Dice(0x9E37_79B9_7F4A_7C15);
    let mut killed: HashMap<i32, OffsetDateTime> = HashMap::new();
    let (mut kills, mut stops, mut spawned) = (0, 0, 3);
    while kills + stops < 10 {
        tokio::time::sleep(Duration::from_millis(300 + dice.roll(500))).await;
        if db.count("SELECT count(*) FROM koyo_jobs WHERE status = 'done'").await > N * 9 / 10 {
            break;
        }
        let victim = dice.roll(workers.len() as u64) as usize;
        if kills >= 3 && dice.roll(3) == 0 {
            workers[victim].terminate(Duration::from_secs(10)).await;
            stops += 1;
        } else {
            let pid = workers[victim].pid() as i32;
            killed.insert(pid, workers[victim].kill());
            kills += 1;
        }
        spawned += 1;
        workers[victim] = ChaosWorker::spawn(WORKER, db.url(), args(&format!("w{spawned}"))).await;
    }
    db.expect_count(
        "every job done",
        "SELECT count(*) FROM koyo_jobs WHERE status = 'done'",
        Duration::from_secs(90),
        |n| n == N,
    )
    .await;
    let elapsed = OffsetDateTime::now_utc() - started;
    for worker in &mut workers {
        worker.terminate(Duration::from_secs(10)).await;
    }

    let executions = db.executions().await;
    let overlapping = overlaps(&executions, &killed);
    assert!(overlapping.is_empty(), "{} overlapping runs, e.g. {:#?}", overlapping.len(), &overlapping[..1]);
    let over = db.executions_over_attempts().await;
    assert!(over.is_empty(), "{over:?}");
    assert!(db.changes_after_done().await.is_empty());
    assert!(executions.iter().all(|e| e.outcome.as_deref() != Some("dropped")), "nothing was released");
    let failed = db.count("SELECT count(*) FROM koyo_jobs WHERE status <> 'done'").await;
    assert_eq!(failed, 0);

    // A job ran again only because the worker running it was killed; and how long it took.
    let mut by_job: HashMap<i64, Vec<&Execution>> = HashMap::new();
    for e in &executions {
        by_job.entry(e.job_id).or_default().push(e);
    }
    let mut reran = 0;
    let mut recovery_ms = Vec::new();
    for runs in by_job.values() {
        for pair in runs.windows(2) {
            let kill = killed.get(&pair[0].pid);
            assert!(
                kill.is_some(),
                "job {} ran again though its worker was not killed: {pair:#?}",
                pair[0].job_id
            );
            if pair[0].ended_at.is_none() {
                recovery_ms.push(ms(pair[1].started_at - *kill.unwrap()));
            }
        }
        reran += usize::from(runs.len() > 1);
    }
    assert_eq!(by_job.len() as i64, N, "every job ran");
    let worst = recovery_ms.iter().copied().max().unwrap_or(0);
    eprintln!(
        "chaos[6 random kills]: jobs={N} done={N} lost=0 sigkills={kills} sigterms={stops} processes={spawned} \
         executions={} jobs_run_again={reran} (all after a kill) overlapping=0 executions_over_attempts=0 \
         worst_restart_after_kill_ms={worst} elapsed_s={:.1}",
        executions.len(),
        elapsed.as_seconds_f64()
    );
    assert!(kills >= 3, "the run was too short to kill much ({kills} kills)");
    assert!(worst < 5000, "a killed worker's job restarted {worst} ms after the kill");
}

/// Scenario 7: a job that calls `std::process::abort()` kills its worker every time; a
/// supervisor restarts workers (as systemd would). The job ends `failed` after `max_attempts`
/// (3), and the other jobs all complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_aborts_its_worker_fails_after_max_attempts_and_others_run_on() {
    use std::os::unix::process::ExitStatusExt as _;
    let db = ChaosDb::create().await;
    let args = |label: &str| WorkerArgs::new(label).pool(4).lease_ms(1000).poll_ms(100);
    let mut workers = vec![
        ChaosWorker::spawn(WORKER, db.url(), args("a")).await,
        ChaosWorker::spawn(WORKER, db.url(), args("b")).await,
    ];
    let others = enqueue_ledger(&db, 1..=40, 100).await;
    let poison = abort_job(0).enqueue_on(&db.broker).await.unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(45);
    let mut deaths = Vec::new();
    let mut killed: HashMap<i32, OffsetDateTime> = HashMap::new();
    while db.job(poison).await.status != "failed" {
        assert!(tokio::time::Instant::now() < deadline, "the poison job is {:?}", db.job(poison).await);
        for worker in &mut workers {
            if let Some(status) = worker.try_exit() {
                killed.insert(worker.pid() as i32, OffsetDateTime::now_utc());
                deaths.push((worker.label().to_owned(), status.signal()));
                assert!(deaths.len() <= 5, "too many deaths: {deaths:?}");
                let label = format!("r{}", deaths.len());
                *worker = ChaosWorker::spawn(WORKER, db.url(), args(&label)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for id in &others {
        db.wait_for_status(*id, "done", Duration::from_secs(20)).await;
    }
    // The third abort may still be on its way to the supervisor.
    for worker in &mut workers {
        if let Some(status) = worker.wait_exit(Duration::from_millis(100)).await {
            killed.insert(worker.pid() as i32, OffsetDateTime::now_utc());
            deaths.push((worker.label().to_owned(), status.signal()));
        } else {
            worker.terminate(Duration::from_secs(10)).await;
        }
    }

    let job = db.job(poison).await;
    assert_eq!((job.attempts, job.max_attempts), (3, 3), "{job:?}");
    assert!(job.last_error.as_deref().unwrap_or("").contains("was lost during attempt 3"), "{job:?}");
    let executions = db.executions().await;
    let poison_runs: Vec<_> = executions.iter().filter(|e| e.job == "abort").collect();
    assert_eq!(poison_runs.len(), 3, "{poison_runs:#?}");
    assert_eq!(deaths.len(), 3, "{deaths:?}");
    assert!(deaths.iter().all(|(_, signal)| *signal == Some(6)), "killed by SIGABRT: {deaths:?}");
    assert!(overlaps(&executions, &killed).is_empty());
    assert!(db.executions_over_attempts().await.is_empty());
    let reran = executions.iter().filter(|e| e.job == "ledger").count() - others.len();
    eprintln!(
        "chaos[7 abort]: poison failed after {} attempts (workers killed: {deaths:?}); other jobs: {} done, lost=0, \
         run again because their worker died: {reran}",
        job.attempts,
        others.len()
    );
}

/// Scenario 11, timeouts: a job that spins with awaits past its 1 s timeout is dropped at the
/// deadline, and one that blocks its thread for 2 s ends at its next await after that; each holds its
/// slot exactly as long as it runs, no worker ever runs more jobs than it has slots, and both
/// slots are free afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_that_overrun_their_timeout_free_their_slot_exactly_when_they_stop() {
    let db = ChaosDb::create().await;
    let mut w = ChaosWorker::spawn(WORKER, db.url(), WorkerArgs::new("w").pool(2)).await;
    // The spinning job, with other jobs beside it.
    let spin = spin_job(1, 10_000).enqueue_on(&db.broker).await.unwrap();
    let others = enqueue_ledger(&db, 10..30, 50).await;
    let spun = db.wait_for_status(spin, "failed", Duration::from_secs(20)).await;
    assert_eq!(spun.attempts, 2);
    assert!(spun.last_error.as_deref().unwrap_or("").contains("timed out after 1s"), "{spun:?}");
    for id in &others {
        db.wait_for_status(*id, "done", Duration::from_secs(20)).await;
    }
    // Then the blocking one (alone: while it blocks a thread, tokio may run none of the worker's
    // other tasks, timers included, which would blur what is measured here).
    let block = block_job(2, 2000, 1, String::new()).enqueue_on(&db.broker).await.unwrap();
    let blocked = db.wait_for_status(block, "done", Duration::from_secs(20)).await;
    assert_eq!(blocked.attempts, 2, "{blocked:?}");
    assert!(blocked.last_error.as_deref().unwrap_or("").contains("timed out after 1s"), "{blocked:?}");

    let executions = db.executions().await;
    let duration = |e: &Execution| ms(e.ended_at.expect("closed") - e.started_at);
    let spins: Vec<_> = executions.iter().filter(|e| e.job == "spin").collect();
    assert_eq!(spins.len(), 2);
    for run in &spins {
        assert_eq!(run.outcome.as_deref(), Some("dropped"));
        assert!((950..2500).contains(&duration(run)), "spun for {} ms", duration(run));
    }
    let blocks: Vec<_> = executions.iter().filter(|e| e.job == "block").collect();
    assert_eq!((blocks[0].outcome.as_deref(), blocks[1].outcome.as_deref()), (Some("dropped"), Some("ok")));
    assert!(duration(blocks[0]) >= 2000, "the blocking run ended after {} ms", duration(blocks[0]));
    let peak = peak_concurrency(&executions, w.pid() as i32, None);
    assert_eq!(peak, 2, "never more jobs than slots, and both slots used");

    // Both slots are free: two jobs run side by side.
    let pair = enqueue_ledger(&db, [100, 101], 700).await;
    for id in &pair {
        db.wait_for_status(*id, "done", Duration::from_secs(10)).await;
    }
    let runs = db.executions().await;
    let (x, y) = (&runs[runs.len() - 2], &runs[runs.len() - 1]);
    assert!(x.started_at < y.ended_at.unwrap() && y.started_at < x.ended_at.unwrap(), "{x:#?} {y:#?}");
    w.terminate(Duration::from_secs(10)).await;
    eprintln!(
        "chaos[11 timeouts]: spin job dropped at {} ms and {} ms (timeout 1000 ms), failed after 2 attempts; \
         blocking job held its slot {} ms then timed out at its next await; peak jobs at once = {peak} of 2; lost=0",
        duration(spins[0]),
        duration(spins[1]),
        duration(blocks[0]),
    );
}

/// Scenario 11, blocking: a job that blocks the only runtime thread of its worker stops the
/// worker's heartbeat; after the lease another worker runs the job, and the blocked worker's
/// result, when it finally comes, is fenced out. The blocked worker then works normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_blocking_its_worker_past_the_lease_is_run_elsewhere_and_its_result_fenced_out() {
    let db = ChaosDb::create().await;
    let mut w1 = ChaosWorker::spawn(WORKER, db.url(), WorkerArgs::new("w1").pool(2).threads(1)).await;
    let id = block_job(1, 3000, 0, "w1".into()).enqueue_on(&db.broker).await.unwrap();
    db.expect_count("w1 starts the job", "SELECT count(*) FROM chaos_ledger", Duration::from_secs(10), |n| {
        n == 1
    })
    .await;
    let mut w2 = ChaosWorker::spawn(WORKER, db.url(), WorkerArgs::new("w2").pool(2)).await;

    let done = db.wait_for_status(id, "done", Duration::from_secs(20)).await;
    assert_eq!((done.attempts, done.worker_id), (2, Some(w2.worker_id())), "{done:?}");
    assert!(
        w1.wait_for_line("registered again", Duration::from_secs(10)).await.is_some(),
        "{:#?}",
        w1.lines()
    );

    // w1 is whole again: with w2 gone, two jobs run side by side on it (and once they are done,
    // w1's stale result, written in order before theirs, has been dealt with).
    w2.terminate(Duration::from_secs(10)).await;
    let pair = enqueue_ledger(&db, [100, 101], 500).await;
    for id in &pair {
        db.wait_for_status(*id, "done", Duration::from_secs(10)).await;
    }
    assert_eq!(db.job(id).await, done, "w1's stale result changed the row");
    assert!(db.changes_after_done().await.is_empty());
    let runs = db.executions().await;
    let (x, y) = (&runs[runs.len() - 2], &runs[runs.len() - 1]);
    assert_eq!((x.worker.as_str(), y.worker.as_str()), ("w1", "w1"));
    assert!(x.started_at < y.ended_at.unwrap() && y.started_at < x.ended_at.unwrap(), "{x:#?} {y:#?}");
    let blocked = &runs[0];
    eprintln!(
        "chaos[11 blocking]: job rescued {} ms after w1 blocked, done on w2 at attempt 2; w1: {}; \
         overlap of the blocked run with the rescuer's = {} ms (documented frozen-worker window)",
        ms(runs[1].started_at - blocked.started_at),
        stale_path(&w1, id),
        ms(blocked.ended_at.unwrap() - runs[1].started_at),
    );
    w1.terminate(Duration::from_secs(10)).await;
}

/// Scenario 12: `SIGTERM` with jobs longer than the grace. The worker claims nothing more,
/// waits the grace, gives the unfinished jobs back with their attempt uncounted, and exits;
/// another worker then completes them, never while the first still ran them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_long_jobs_gives_them_back_uncounted_and_claims_nothing_more() {
    let db = ChaosDb::create().await;
    let args = WorkerArgs::new("w").queues(&["chaos", "gated"]).pool(4).grace_ms(1000);
    let mut w = ChaosWorker::spawn(WORKER, db.url(), args).await;
    let long = vec![
        gate_job(1).enqueue_on(&db.broker).await.unwrap(),
        gate_job(2).enqueue_on(&db.broker).await.unwrap(),
    ];
    let short = enqueue_ledger(&db, [3, 4], 400).await;
    db.expect_count("all four run", "SELECT count(*) FROM chaos_ledger", Duration::from_secs(10), |n| n == 4)
        .await;
    let waiting = enqueue_ledger(&db, 10..15, 10).await;

    let term_at = OffsetDateTime::now_utc();
    let status = w.terminate(Duration::from_secs(10)).await;
    let exited_at = OffsetDateTime::now_utc();
    assert!(status.success(), "{status}: {:#?}", w.lines());
    assert!(w.lines().iter().any(|l| l == "worker-stopped"));
    for id in &long {
        let job = db.job(*id).await;
        assert_eq!((job.status.as_str(), job.attempts), ("ready", 0), "{job:?}");
        assert!(job.last_error.as_deref().unwrap_or("").contains("released at worker shutdown"), "{job:?}");
    }
    for id in &short {
        assert_eq!(db.job(*id).await.status, "done", "finished within the grace");
    }
    for id in &waiting {
        let job = db.job(*id).await;
        assert_eq!((job.status.as_str(), job.attempts), ("ready", 0), "claimed after SIGTERM: {job:?}");
    }
    let executions = db.executions().await;
    assert!(executions.iter().all(|e| e.started_at < term_at), "nothing started after SIGTERM");
    for run in executions.iter().filter(|e| e.job == "gate") {
        assert_eq!(run.outcome.as_deref(), Some("dropped"), "the body was stopped: {run:?}");
    }
    assert_eq!(db.count("SELECT count(*) FROM koyo_workers").await, 0);

    db.query("INSERT INTO chaos_gates SELECT generate_series(1, 2)", &[]).await;
    let args = WorkerArgs::new("b").queues(&["chaos", "gated"]).pool(4);
    let mut b = ChaosWorker::spawn(WORKER, db.url(), args).await;
    for id in long.iter().chain(&waiting) {
        db.wait_for_status(*id, "done", Duration::from_secs(20)).await;
    }
    for id in &long {
        assert_eq!(db.job(*id).await.attempts, 1, "the released attempt was not counted");
    }
    b.terminate(Duration::from_secs(10)).await;
    let executions = db.executions().await;
    assert!(overlaps(&executions, &HashMap::new()).is_empty());
    let stopped_ms = ms(exited_at - term_at);
    eprintln!(
        "chaos[12 shutdown]: SIGTERM to exit {stopped_ms} ms (grace 1000 ms); 2 long jobs released with attempts 0, \
         2 short ones done, 5 waiting ones never claimed; all 9 done afterwards, lost=0, overlapping=0"
    );
    assert!(stopped_ms < 5000);
}

/// Scenario 12, blocking: a job that blocks its thread past the shutdown grace cannot be
/// stopped, and (tokio does not run a worker's other tasks reliably while one of its threads is
/// blocked, however many threads it has) it freezes its whole worker: no heartbeat, no grace
/// timer. So it is the frozen-worker case of `docs/guarantees.md`: after the lease another
/// worker runs the job; the blocked worker's late result is fenced out; it exits once the
/// blocking call returns; the two runs overlap for at most the rest of the blocking call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_a_job_blocking_past_the_grace_fences_its_late_result() {
    let db = ChaosDb::create().await;
    let mut w = ChaosWorker::spawn(WORKER, db.url(), WorkerArgs::new("w").pool(2).grace_ms(500)).await;
    let id = block_job(1, 3000, 0, "w".into()).enqueue_on(&db.broker).await.unwrap();
    db.expect_count("w starts the job", "SELECT count(*) FROM chaos_ledger", Duration::from_secs(10), |n| {
        n == 1
    })
    .await;
    let mut b = ChaosWorker::spawn(WORKER, db.url(), WorkerArgs::new("b").pool(2)).await;
    let term_at = OffsetDateTime::now_utc();
    w.signal("TERM");
    let status = w.wait_exit(Duration::from_secs(20)).await.expect("w exits once the blocking call returns");
    let exited_at = OffsetDateTime::now_utc();
    assert!(status.success(), "{status}: {:#?}", w.lines());
    let done = db.wait_for_status(id, "done", Duration::from_secs(20)).await;
    assert_eq!(done.worker_id, Some(b.worker_id()), "{done:?}");
    b.terminate(Duration::from_secs(10)).await;
    // w flushed its results before it exited.
    assert_eq!(db.job(id).await, done, "w's stale result changed the row");

    let runs = db.executions().await;
    assert_eq!(runs.len(), 2, "{runs:#?}");
    let (blocked, rerun) = (&runs[0], &runs[1]);
    assert_eq!((blocked.worker.as_str(), rerun.worker.as_str()), ("w", "b"));
    let blocked_end = blocked.ended_at.unwrap_or(exited_at);
    assert!(blocked_end - blocked.started_at < time::Duration::milliseconds(4500), "{blocked:#?}");
    assert!(db.changes_after_done().await.is_empty());
    let done_transitions = db.count("SELECT count(*) FROM chaos_transitions WHERE new_status = 'done'").await;
    assert_eq!(done_transitions, 1);
    eprintln!(
        "chaos[12 blocking shutdown]: w exited {} ms after SIGTERM (grace 500 ms, job blocked 3000 ms, timeout 1000 ms); job {} at attempt {} \
         by b, {} ms after w started it; w: {}; overlap {} ms (frozen-worker window)",
        ms(exited_at - term_at),
        done.status,
        done.attempts,
        ms(rerun.started_at - blocked.started_at),
        stale_path(&w, id),
        ms(blocked_end - rerun.started_at),
    );
}

/// Starts worker `label` (pool_size 2) and one ledger job working for `work_ms`, and waits until
/// the job runs there.
async fn one_job_running_on(db: &ChaosDb, label: &str, work_ms: u64) -> (ChaosWorker, JobId) {
    let worker = ChaosWorker::spawn(WORKER, db.url(), WorkerArgs::new(label).pool(2)).await;
    let id = enqueue_ledger(db, [1], work_ms).await[0];
    db.expect_count(
        &format!("{label} starts the job"),
        &format!("SELECT count(*) FROM chaos_ledger WHERE worker = '{label}'"),
        Duration::from_secs(10),
        |n| n == 1,
    )
    .await;
    (worker, id)
}

/// Workers configured differently (a rolling deploy changes settings): a worker with a short
/// lease leaves alone a healthy worker with a longer one, although that worker heartbeats less
/// often than the short lease. Each worker's own registered lease decides when it is dead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_lease_worker_does_not_rescue_a_healthy_long_lease_worker_s_jobs() {
    let db = ChaosDb::create().await;
    let mut a =
        ChaosWorker::spawn(WORKER, db.url(), WorkerArgs::new("a").pool(2).lease_ms(12_000).poll_ms(4000))
            .await;
    let id = enqueue_ledger(&db, [1], 9000).await[0];
    db.expect_count(
        "a starts the job",
        "SELECT count(*) FROM chaos_ledger WHERE worker = 'a'",
        Duration::from_secs(10),
        |n| n == 1,
    )
    .await;
    // b rescues every second, and a's heartbeat is up to 4 s old: older than b's lease.
    let mut b =
        ChaosWorker::spawn(WORKER, db.url(), WorkerArgs::new("b").pool(2).lease_ms(3000).poll_ms(1000)).await;
    let done = db.wait_for_status(id, "done", Duration::from_secs(30)).await;
    b.terminate(Duration::from_secs(10)).await;
    a.terminate(Duration::from_secs(10)).await;
    let runs = db.executions().await;
    assert_eq!(runs.len(), 1, "the job ran more than once: {runs:#?}");
    assert_eq!((runs[0].worker.as_str(), done.attempts, done.worker_id), ("a", 1, Some(a.worker_id())));
    assert!(!b.lines().iter().any(|l| l.contains("gave back jobs of workers")), "{:#?}", b.lines());
    assert!(!a.lines().iter().any(|l| l.contains("lost its lease")), "{:#?}", a.lines());
}

/// The other side: when the long-lease worker really dies, the short-lease worker rescues its
/// jobs one of *its* leases after its last heartbeat (not one of the rescuer's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_worker_s_jobs_are_rescued_after_its_own_lease_whoever_rescues_them() {
    let db = ChaosDb::create().await;
    let mut a =
        ChaosWorker::spawn(WORKER, db.url(), WorkerArgs::new("a").pool(2).lease_ms(6000).poll_ms(2000)).await;
    let mut b =
        ChaosWorker::spawn(WORKER, db.url(), WorkerArgs::new("b").pool(2).lease_ms(1500).poll_ms(500)).await;
    // Both serve the queue; keep enqueuing until a has one (b may take some first).
    let mut n = 0;
    let (deadline, mut on_a) = (tokio::time::Instant::now() + Duration::from_secs(20), None);
    while on_a.is_none() {
        assert!(tokio::time::Instant::now() < deadline, "a never ran a job");
        n += 1;
        let id = enqueue_ledger(&db, [n], 4000).await[0];
        tokio::time::sleep(Duration::from_millis(100)).await;
        let rows =
            db.query("SELECT count(*) FROM chaos_ledger WHERE job_id = $1 AND worker = 'a'", &[&id.0]).await;
        if rows[0].get::<_, i64>(0) == 1 {
            on_a = Some(id);
        }
    }
    let id = on_a.unwrap();
    a.kill();
    let heartbeat: OffsetDateTime =
        db.query("SELECT heartbeat_at FROM koyo_workers WHERE id = $1", &[&a.worker_id()]).await[0].get(0);
    let done = db.wait_for_status(id, "done", Duration::from_secs(30)).await;
    b.terminate(Duration::from_secs(10)).await;
    assert_eq!((done.attempts, done.worker_id), (2, Some(b.worker_id())), "{done:?}");
    let rerun =
        db.executions().await.into_iter().find(|e| e.job_id == id.0 && e.worker == "b").expect("b reran it");
    let after = ms(rerun.started_at - heartbeat);
    eprintln!(
        "chaos[mixed leases]: a (lease 6 s) killed; b (lease 1.5 s) reran its job {after} ms after a's last heartbeat"
    );
    assert!(after >= 6000, "b reran a's job {after} ms after a's last heartbeat, inside a's 6 s lease");
    assert!(after < 9000, "b reran a's job {after} ms after a's last heartbeat");
}

/// Shutdown ends within the grace plus the flush time whatever the database does: here the
/// job's row is locked by another transaction, so the completion write hangs (the statement
/// timeout is a minute). The worker exits on time, names the job it could not write, and the
/// job, still `running` under a worker that is gone, is rescued and run by the next worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_on_time_when_a_result_cannot_be_written() {
    let db = ChaosDb::create().await;
    let args = WorkerArgs::new("w")
        .queues(&["chaos", "gated"])
        .pool(2)
        .grace_ms(500)
        .flush_ms(1500)
        .statement_timeout_ms(60_000);
    let mut w = ChaosWorker::spawn(WORKER, db.url(), args).await;
    let id = gate_job(1).enqueue_on(&db.broker).await.unwrap();
    db.expect_count("w starts the job", "SELECT count(*) FROM chaos_ledger", Duration::from_secs(10), |n| {
        n == 1
    })
    .await;
    let mut locker = db.broker.client().await.unwrap();
    let tx = locker.transaction().await.unwrap();
    tx.query("SELECT 1 FROM koyo_jobs WHERE id = $1 FOR UPDATE", &[&id.0]).await.unwrap();
    db.query("INSERT INTO chaos_gates (n) VALUES (1)", &[]).await;
    db.expect_count(
        "the body ends",
        "SELECT count(*) FROM chaos_ledger WHERE outcome = 'ok'",
        Duration::from_secs(10),
        |n| n == 1,
    )
    .await;
    let asked = tokio::time::Instant::now();
    w.signal("TERM");
    let status = w.wait_exit(Duration::from_secs(8)).await;
    let took = asked.elapsed();
    assert!(
        status.is_some_and(|s| s.success()),
        "w did not stop within 8 s of SIGTERM (grace 0.5 s, flush 1.5 s): {:#?}",
        w.lines()
    );
    let named = w.lines().into_iter().find(|l| l.contains("could not write these job results"));
    assert!(named.as_ref().is_some_and(|l| l.contains(&id.0.to_string())), "{:#?}", w.lines());
    // w's abandoned UPDATE still waits on the lock in its server backend, and would commit
    // once the lock goes: end that backend first, as the server would once it noticed.
    db.query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'chaos-w'",
        &[],
    )
    .await;
    db.expect_count(
        "w's backends are gone",
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'chaos-w'",
        Duration::from_secs(10),
        |n| n == 0,
    )
    .await;
    tx.rollback().await.unwrap();
    assert_eq!(db.job(id).await.status, "running");
    let mut b = ChaosWorker::spawn(WORKER, db.url(), WorkerArgs::new("b").queues(&["chaos", "gated"])).await;
    let done = db.wait_for_status(id, "done", Duration::from_secs(20)).await;
    b.terminate(Duration::from_secs(10)).await;
    assert_eq!(done.worker_id, Some(b.worker_id()));
    eprintln!(
        "chaos[hung write at shutdown]: w exited {took:?} after SIGTERM (grace 0.5 s, flush 1.5 s); the job was rescued and done by b"
    );
}

/// Cancels, from the operator's side, job `id` that a live worker runs; returns when the cancel
/// was recorded (the row is still `running`).
async fn cancel_running(db: &ChaosDb, id: JobId) {
    let client = db.broker.client().await.unwrap();
    let applied = koyo_job::admin::apply_as(&client, id.0, koyo_job::admin::Action::Cancel, "the chaos test")
        .await
        .unwrap();
    assert_eq!(applied.status.as_deref(), Some("running"));
}

/// The seconds from the cancel request to the job's end, by the database's clock.
async fn cancel_took(db: &ChaosDb, id: JobId) -> f64 {
    db.query(
        "SELECT EXTRACT(EPOCH FROM finished_at - cancel_requested_at)::float8 FROM koyo_jobs WHERE id = $1",
        &[&id.0],
    )
    .await[0]
        .get(0)
}

/// An operator cancels running jobs: the owning worker stops a body that ignores it about a
/// second later, lets one that notices it clean up, and writes both `cancelled` with who asked
/// (fenced, like every result); a worker that polls instead of listening finds the request at
/// its next tick; a cancel that comes after the job finished changes nothing; and the worker
/// goes on running jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_cancels_running_jobs_and_their_workers_stop_them() {
    let db = ChaosDb::create().await;
    let mut w =
        ChaosWorker::spawn(WORKER, db.url(), WorkerArgs::new("w").pool(4).lease_ms(5000).poll_ms(500)).await;
    let ignores = enqueue_ledger(&db, [1], 60_000).await[0];
    let notices = cancellable_job(2, 60_000).enqueue_on(&db.broker).await.unwrap();
    db.expect_count("both run", "SELECT count(*) FROM chaos_ledger", Duration::from_secs(10), |n| n == 2)
        .await;

    cancel_running(&db, ignores).await;
    let job = db.wait_for_status(ignores, "cancelled", Duration::from_secs(10)).await;
    assert_eq!(job.last_error.as_deref(), Some("cancelled while running, by the chaos test"), "{job:?}");
    let ignored_took = cancel_took(&db, ignores).await;
    cancel_running(&db, notices).await;
    db.wait_for_status(notices, "cancelled", Duration::from_secs(10)).await;
    let noticed_took = cancel_took(&db, notices).await;
    let outcomes: Vec<(i64, Option<String>)> =
        db.executions().await.into_iter().map(|e| (e.n, e.outcome)).collect();
    assert!(outcomes.contains(&(1, Some("dropped".to_owned()))), "{outcomes:?}");
    assert!(outcomes.contains(&(2, Some("cleaned-up".to_owned()))), "{outcomes:?}");
    assert!(
        (0.9..3.0).contains(&ignored_took),
        "a body ignoring the cancel was stopped {ignored_took:.2} s after it"
    );
    assert!(noticed_took < 1.0, "a body noticing the cancel ended {noticed_took:.2} s after it");

    // A cancel after the job ended changes nothing.
    let short = enqueue_ledger(&db, [3], 10).await[0];
    db.wait_for_status(short, "done", Duration::from_secs(10)).await;
    let client = db.broker.client().await.unwrap();
    let late = koyo_job::admin::apply_as(&client, short.0, koyo_job::admin::Action::Cancel, "late").await;
    assert!(matches!(late, Err(koyo_job::admin::AdminError::Refused(_))), "{late:?}");
    assert_eq!(db.job(short).await.status, "done");
    assert!(db.changes_after_done().await.is_empty());
    w.terminate(Duration::from_secs(10)).await;

    // A worker that does not listen finds the request at its next tick (every 500 ms here).
    let mut polling = ChaosWorker::spawn(
        WORKER,
        db.url(),
        WorkerArgs::new("p").pool(2).listen(false).lease_ms(5000).poll_ms(500),
    )
    .await;
    let polled = enqueue_ledger(&db, [4], 60_000).await[0];
    db.expect_count(
        "p runs it",
        "SELECT count(*) FROM chaos_ledger WHERE n = 4",
        Duration::from_secs(10),
        |n| n == 1,
    )
    .await;
    cancel_running(&db, polled).await;
    db.wait_for_status(polled, "cancelled", Duration::from_secs(10)).await;
    let polled_took = cancel_took(&db, polled).await;
    let after = enqueue_ledger(&db, [5], 10).await[0];
    db.wait_for_status(after, "done", Duration::from_secs(10)).await;
    polling.terminate(Duration::from_secs(10)).await;
    assert!(polled_took < 3.0, "a polling worker stopped the job {polled_took:.2} s after the cancel");
    eprintln!(
        "chaos[cancel running]: stopped {ignored_took:.2} s after the request (body ignoring it; grace 1 s), \
         {noticed_took:.2} s (body noticing it), {polled_took:.2} s (worker polling every 0.5 s)"
    );
}
