//! Storing jobs: ids, rows, arguments, bulk and transactional enqueue, synchronous mode, the
//! current broker, and bad input.

use std::time::Duration;

use koyo_job::{Broker, BrokerOptions, Error, Job, JobId, define_job, run_jobs_inline, with_broker};
use koyo_job_tests::{env, record};
use serde::{Deserialize, Serialize};

#[define_job(queue = "mail", priority = 10)]
async fn send_welcome(user_id: i64, email: String) -> Result<(), std::io::Error> {
    let _ = (user_id, email);
    Ok(())
}

#[define_job]
async fn plain() {}

#[define_job(name = "tests.enqueue.fails_inline")]
async fn fails_inline(n: i32) -> Result<(), String> {
    if n < 0 { Err(format!("{n} is negative")) } else { Ok(()) }
}

#[define_job(name = "tests.enqueue.panics_inline")]
async fn panics_inline() {
    panic!("inline boom");
}

#[define_job(name = "tests.enqueue.retries_inline")]
async fn retries_inline() {
    koyo_job::retry!(Duration::from_secs(1), "not yet");
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Address {
    street: String,
    number: u32,
    tags: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Shape {
    Circle { radius: f64 },
    Square(u8),
    Empty,
}

#[define_job(queue = "args")]
#[allow(clippy::too_many_arguments)]
async fn many_args(
    key: String,
    text: String,
    address: Address,
    shapes: Vec<Shape>,
    maybe: Option<u64>,
    nothing: Option<String>,
    flag: bool,
    bytes: Vec<u8>,
) {
    record(&key, format!("{text}|{address:?}|{shapes:?}|{maybe:?}|{nothing:?}|{flag}|{bytes:?}")).await;
}

#[define_job(name = "tests.enqueue.big")]
async fn big(blob: Vec<u8>) {
    let _ = blob;
}

#[define_job(name = "tests.enqueue.untagged")]
async fn untagged(value: Untagged) {
    let _ = value;
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum Untagged {
    Number(i64),
    Text(String),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_increase_and_rows_carry_queue_priority_and_name() {
    let env = env().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(send_welcome(i, format!("u{i}@example.com")).enqueue_on(&env.broker).await.unwrap());
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids must increase: {ids:?}");
    let row = env.job(ids[0]).await;
    assert_eq!((row.queue.as_str(), row.priority, row.status.as_str()), ("mail", 10, "ready"));
    assert_eq!(row.name, "enqueue::send_welcome");
    assert_eq!((row.attempts, row.max_attempts), (0, 20));

    let default = plain().enqueue_on(&env.broker).await.unwrap();
    let row = env.job(default).await;
    assert_eq!((row.queue.as_str(), row.priority), ("default", 50));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awaiting_a_stub_uses_the_current_broker() {
    let env = env().await;
    let id = with_broker(env.broker.clone(), async { send_welcome(1, "a@b.c".into()).await }).await.unwrap();
    let id = id.expect("stored, so an id");
    assert_eq!(env.job(id).await.status, "ready");
}

#[tokio::test]
async fn awaiting_with_no_current_broker_is_a_clear_error() {
    // The process-wide broker is never set in this test binary.
    let err = plain().await.unwrap_err();
    assert!(matches!(err, Error::NoCurrentBroker));
    assert!(err.to_string().contains("set_current_broker"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arguments_round_trip_through_a_worker() {
    let env = env().await;
    let address =
        Address { street: "Große Straße ✓".into(), number: 7, tags: vec!["a".into(), "ü".into()] };
    let shapes = vec![Shape::Circle { radius: 1.5 }, Shape::Square(3), Shape::Empty];
    let id = many_args(
        env.key.clone(),
        "héllo, wörld 👋".into(),
        address.clone(),
        shapes.clone(),
        Some(u64::MAX),
        None,
        true,
        vec![0, 255, 10],
    )
    .enqueue_on(&env.broker)
    .await
    .unwrap();
    let worker = env.worker().queue("args").start().await.unwrap();
    env.wait_for_status(id, "done", Duration::from_secs(10)).await;
    worker.shutdown().await;
    let expected = format!(
        "héllo, wörld 👋|{address:?}|{shapes:?}|{:?}|{:?}|true|[0, 255, 10]",
        Some(u64::MAX),
        None::<String>
    );
    assert_eq!(env.ledger().await, vec![expected]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_enqueue_returns_ids_in_order_in_one_statement() {
    let env = env().await;
    let jobs: Vec<_> = (0..500).map(|i| send_welcome(i, format!("{i}@x"))).collect();
    let ids = env.broker.enqueue_many(jobs).await.unwrap();
    assert_eq!(ids.len(), 500);
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    let n: i64 = env.query("SELECT count(*) FROM koyo_jobs WHERE queue = 'mail'", &[]).await[0].get(0);
    assert_eq!(n, 500);
    // Mixed job types go through `encode`.
    let mixed = vec![plain().encode().unwrap(), send_welcome(1, "x".into()).encode().unwrap()];
    assert_eq!(env.broker.enqueue_many(mixed).await.unwrap().len(), 2);
    assert!(env.broker.enqueue_many(Vec::<Job<()>>::new()).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_transaction_leaves_no_job_and_a_committed_one_runs() {
    let env = env().await;
    let mut client = env.broker.client().await.unwrap();

    let tx = client.transaction().await.unwrap();
    let gone = many_args(env.key.clone(), "rolled back".into(), addr(), vec![], None, None, false, vec![])
        .enqueue_in(&tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let rows = env.query("SELECT 1 FROM koyo_jobs WHERE id = $1", &[&gone.0]).await;
    assert!(rows.is_empty(), "a rolled-back enqueue must leave no row");

    let tx = client.transaction().await.unwrap();
    let kept = many_args(env.key.clone(), "committed".into(), addr(), vec![], None, None, false, vec![])
        .enqueue_in(&tx)
        .await
        .unwrap();
    let also = koyo_job::enqueue_many_in(&tx, [plain()]).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(also.len(), 1);

    let worker = env.worker().queue("args").start().await.unwrap();
    env.wait_for_status(kept, "done", Duration::from_secs(10)).await;
    worker.shutdown().await;
    assert_eq!(env.ledger().await.len(), 1);
    assert!(env.ledger().await[0].starts_with("committed|"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_from_a_transaction_arrives_at_commit() {
    let env = env().await;
    // A worker polling only rarely: the job can start promptly only through the notification.
    let worker = env.listening_worker("args").await;
    let mut client = env.broker.client().await.unwrap();
    let tx = client.transaction().await.unwrap();
    let id = many_args(env.key.clone(), "notified".into(), addr(), vec![], None, None, false, vec![])
        .enqueue_in(&tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    env.wait_for_status(id, "done", Duration::from_secs(10)).await;
    worker.shutdown().await;
}

fn addr() -> Address {
    Address { street: String::new(), number: 0, tags: vec![] }
}

#[tokio::test]
async fn synchronous_mode_runs_the_body_in_place_without_a_database() {
    run_jobs_inline(async {
        assert_eq!(fails_inline(1).await.unwrap(), None);

        let err = fails_inline(-2).await.unwrap_err();
        assert!(matches!(err, Error::Inline { job: "tests.enqueue.fails_inline", .. }), "{err:?}");
        assert!(err.to_string().contains("-2 is negative"), "{err}");

        let err = panics_inline().await.unwrap_err();
        assert!(err.to_string().contains("panicked: inline boom"), "{err}");

        let err = retries_inline().await.unwrap_err();
        assert!(err.to_string().contains("not yet"), "{err}");

        // Scheduled jobs run at once too.
        let later = koyo_job::schedule_in(Duration::from_secs(3600), fails_inline(5));
        assert_eq!(later.await.unwrap(), None);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arguments_over_the_size_cap_are_refused_and_nothing_is_inserted() {
    let env = env().await;
    let err = big(vec![7; koyo_job::MAX_ARGS_BYTES]).enqueue_on(&env.broker).await.unwrap_err();
    assert!(matches!(err, Error::ArgsTooLarge { .. }), "{err:?}");
    let err = env
        .broker
        .enqueue_many([big(vec![1]), big(vec![7; koyo_job::MAX_ARGS_BYTES + 1])])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ArgsTooLarge { .. }), "{err:?}");
    let n: i64 = env.query("SELECT count(*) FROM koyo_jobs", &[]).await[0].get(0);
    assert_eq!(n, 0);
    // Just under the cap is fine.
    big(vec![7; koyo_job::MAX_ARGS_BYTES - 16]).enqueue_on(&env.broker).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arguments_that_cannot_be_read_back_are_refused_at_enqueue() {
    let env = env().await;
    let err = untagged(Untagged::Text("x".into())).enqueue_on(&env.broker).await.unwrap_err();
    assert!(matches!(err, Error::Unrepresentable(_)), "{err:?}");
    let _ = Untagged::Number(1);
    let n: i64 = env.query("SELECT count(*) FROM koyo_jobs", &[]).await[0].get(0);
    assert_eq!(n, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_negative_priority_override_is_refused() {
    let env = env().await;
    let err = plain().with_priority(-1).enqueue_on(&env.broker).await.unwrap_err();
    assert!(matches!(err, Error::InvalidPriority(-1)), "{err:?}");
    let id = plain().with_priority(0).enqueue_on(&env.broker).await.unwrap();
    assert_eq!(env.job(id).await.priority, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_queue_names_are_refused_before_any_sql() {
    let env = env().await;
    for bad in ["", "mail'; DROP TABLE koyo_jobs; --", "a\0b", "naïve", &"q".repeat(65)] {
        let err = env.worker().queue(bad).start().await.unwrap_err();
        assert!(matches!(err, Error::InvalidQueue { .. }), "{bad:?}: {err:?}");
    }
    let n: i64 = env.query("SELECT count(*) FROM koyo_workers", &[]).await[0].get(0);
    assert_eq!(n, 0, "no worker registered");
}

#[tokio::test]
async fn a_database_that_is_down_gives_an_error_not_a_hang() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("postgresql://postgres:s3cret-pw@127.0.0.1:{port}/nowhere");
    let started = std::time::Instant::now();
    let err = Broker::connect(&url).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(!err.to_string().contains("s3cret-pw"), "{err}");

    let config: koyo_job::tokio_postgres::Config = url.parse().unwrap();
    let broker = Broker::new(config, BrokerOptions::default()).unwrap();
    assert!(!format!("{broker:?}").contains("s3cret-pw"));
    let started = std::time::Instant::now();
    let err = plain().enqueue_on(&broker).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    assert!(!err.to_string().contains("s3cret-pw"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_jobs_start_in_the_scheduled_state() {
    let env = env().await;
    let later =
        koyo_job::schedule_in(Duration::from_secs(3600), plain()).enqueue_on(&env.broker).await.unwrap();
    let at = time::OffsetDateTime::now_utc() + time::Duration::hours(2);
    let absolute = koyo_job::schedule_at(at, plain()).enqueue_on(&env.broker).await.unwrap();
    let past =
        koyo_job::schedule_at(at - time::Duration::days(1), plain()).enqueue_on(&env.broker).await.unwrap();
    assert_eq!(env.job(later).await.status, "scheduled");
    let row = env.job(absolute).await;
    assert_eq!(row.status, "scheduled");
    assert_eq!(row.scheduled_at.unix_timestamp(), at.unix_timestamp());
    assert_eq!(env.job(past).await.status, "ready");
    let _: JobId = past;
}

/// A type without `Debug`: the admin page shows a placeholder for it.
#[derive(Serialize, Deserialize)]
struct Opaque(u8);

#[define_job(name = "tests.enqueue.with_opaque")]
async fn with_opaque(before: u8, secret: Opaque, r#type: String) {
    let _ = (before, secret, r#type);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_arguments_render_for_display_through_their_definition() {
    let env = env().await;
    let registry = koyo_job::Registry::global().unwrap();
    let args_of = |id: JobId| {
        let env = &env;
        async move {
            let rows = env.query("SELECT job, args FROM koyo_jobs WHERE id = $1", &[&id.0]).await;
            (rows[0].get::<_, String>(0), rows[0].get::<_, Vec<u8>>(1))
        }
    };

    let id = send_welcome(42, "a \"quoted\"\naddress".into()).enqueue_on(&env.broker).await.unwrap();
    let (job, args) = args_of(id).await;
    assert_eq!(registry.render_args(&job, &args).unwrap(), r#"user_id: 42, email: "a \"quoted\"\naddress""#);

    let id = with_opaque(7, Opaque(1), "t".into()).enqueue_on(&env.broker).await.unwrap();
    let (job, args) = args_of(id).await;
    assert_eq!(registry.render_args(&job, &args).unwrap(), r#"before: 7, secret: <no Debug>, type: "t""#);

    let id = plain().enqueue_on(&env.broker).await.unwrap();
    let (job, args) = args_of(id).await;
    assert_eq!(registry.render_args(&job, &args).unwrap(), "");

    assert_eq!(registry.render_args("no.such.job", &[]), Err(koyo_job::RenderError::UnknownJob));
    let garbage = registry.render_args("enqueue::send_welcome", &[0xff; 3]).unwrap_err();
    assert!(matches!(garbage, koyo_job::RenderError::Decode(_)), "{garbage:?}");
}

// ---------------------------------------------------------------------------------------------
// One notification for many concurrent enqueues (`Broker::enqueue`): every committed job still
// wakes a listening worker at once, never waiting for a poll.

#[define_job(name = "tests.enqueue.fanin", queue = "fanin")]
async fn fanin(n: i64) {
    let _ = n;
}

/// Blocked in its INSERT (by the trigger [`hold_inserts_of`] installs) for as long as the test
/// holds the advisory lock: an enqueue that stays in flight.
#[define_job(name = "tests.enqueue.held", queue = "fanin")]
async fn held() {}

/// Makes every INSERT of job `name` wait for advisory lock 4242, and records which backend
/// inserted each job (`inserted_by`).
async fn hold_inserts_of(env: &koyo_job_tests::Env, name: &str) {
    env.broker
        .client()
        .await
        .unwrap()
        .batch_execute(&format!(
            "CREATE TABLE inserted_by (id bigint PRIMARY KEY, pid int NOT NULL);
             CREATE FUNCTION hold_insert() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF NEW.job = '{name}' THEN PERFORM pg_advisory_xact_lock_shared(4242); END IF;
                 INSERT INTO inserted_by VALUES (NEW.id, pg_backend_pid());
                 RETURN NEW;
             END $$;
             CREATE TRIGGER hold_insert BEFORE INSERT ON koyo_jobs FOR EACH ROW EXECUTE FUNCTION hold_insert();"
        ))
        .await
        .unwrap();
}

/// A plain connection that LISTENs on both channels and forwards (channel, payload, pid).
async fn listener(
    env: &koyo_job_tests::Env,
) -> (koyo_job::tokio_postgres::Client, tokio::sync::mpsc::UnboundedReceiver<(String, String, i32)>) {
    use koyo_job::tokio_postgres::{AsyncMessage, NoTls};
    let (client, mut connection) = env.db.config().connect(NoTls).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(message)) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            if let AsyncMessage::Notification(n) = message {
                let _ = tx.send((n.channel().to_owned(), n.payload().to_owned(), n.process_id()));
            }
        }
    });
    client.batch_execute("LISTEN koyo_jobs; LISTEN koyo_jobs_scheduled").await.unwrap();
    (client, rx)
}

async fn next_notification(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<(String, String, i32)>,
) -> (String, String, i32) {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a notification within 10 s")
        .expect("the listener is alive")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_enqueues_from_16_tasks_all_start_without_waiting_for_a_poll() {
    let env = env().await;
    // Polls every 30 s: a job not announced would wait that long.
    let worker = env.listening_worker("fanin").await;
    let started = std::time::Instant::now();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (broker, next) = (env.broker.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if n >= 300 {
                        break;
                    }
                    fanin(n).enqueue_on(&broker).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    env.wait_for_count("SELECT count(*) FROM koyo_jobs WHERE status = 'done'", 300, Duration::from_secs(10))
        .await;
    assert!(started.elapsed() < Duration::from_secs(15), "took {:?}", started.elapsed());
    worker.shutdown().await;
    assert_eq!(env.query("SELECT count(*) FROM koyo_jobs", &[]).await[0].get::<_, i64>(0), 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_stored_while_another_enqueue_is_in_flight_is_announced_without_it() {
    let env = env().await;
    hold_inserts_of(&env, "tests.enqueue.held").await;
    let worker = env.listening_worker("fanin").await;

    // Enqueue A stays in flight (its INSERT waits for the lock) and would notify in its commit.
    let lock = env.broker.client().await.unwrap();
    lock.batch_execute("SELECT pg_advisory_lock(4242)").await.unwrap();
    let broker = env.broker.clone();
    let a = tokio::spawn(async move { held().enqueue_on(&broker).await.unwrap() });
    env.wait_for_count(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242 AND NOT granted",
        1,
        Duration::from_secs(10),
    )
    .await;

    // B, on the same queue and broker, is stored without a notification of its own: only the
    // broker's trailing notification can wake the worker (it polls every 30 s).
    let b = fanin(1).enqueue_on(&env.broker).await.unwrap();
    env.wait_for_status(b, "done", Duration::from_secs(10)).await;
    assert!(!a.is_finished(), "A must still be in flight: B's wake-up came from its own notification");

    lock.batch_execute("SELECT pg_advisory_unlock(4242)").await.unwrap();
    let a = a.await.unwrap();
    env.wait_for_status(a, "done", Duration::from_secs(10)).await;
    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_enqueue_notifies_in_its_own_commit() {
    let env = env().await;
    hold_inserts_of(&env, "none").await;
    let (_listen, mut rx) = listener(&env).await;
    for n in 0..5 {
        let id = fanin(n).enqueue_on(&env.broker).await.unwrap();
        let (channel, payload, pid) = next_notification(&mut rx).await;
        assert_eq!((channel.as_str(), payload.as_str()), ("koyo_jobs", "fanin"));
        let inserted_by: i32 =
            env.query("SELECT pid FROM inserted_by WHERE id = $1", &[&id.0]).await[0].get(0);
        assert_eq!(
            pid, inserted_by,
            "the notification of job {id} must come from the backend that inserted it"
        );
    }
    // A scheduled job, alone, is announced the same way on the scheduled channel.
    let id = fanin(9).after(Duration::from_secs(3600)).enqueue_on(&env.broker).await.unwrap();
    let (channel, payload, pid) = next_notification(&mut rx).await;
    assert_eq!((channel.as_str(), payload.as_str()), ("koyo_jobs_scheduled", "fanin"));
    let inserted_by: i32 = env.query("SELECT pid FROM inserted_by WHERE id = $1", &[&id.0]).await[0].get(0);
    assert_eq!(pid, inserted_by);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_dropped_right_after_concurrent_enqueues_still_announces_them_and_closes() {
    let env = env().await;
    let worker = env.listening_worker("fanin").await;
    let mut config = env.db.config().clone();
    config.application_name("koyo-job-dropped");
    let broker = Broker::new(config, BrokerOptions::default()).unwrap();
    let tasks: Vec<_> = (0..16)
        .map(|t| {
            let broker = broker.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in 0..4 {
                    ids.push(fanin(t * 10 + i).enqueue_on(&broker).await.unwrap());
                }
                ids
            })
        })
        .collect();
    let mut ids = Vec::new();
    for task in tasks {
        ids.extend(task.await.unwrap());
    }
    drop(broker);
    assert_eq!(ids.len(), 64);
    // Every job still runs at once (the worker polls every 30 s) ...
    env.wait_for_count("SELECT count(*) FROM koyo_jobs WHERE status = 'done'", 64, Duration::from_secs(10))
        .await;
    // ... and the dropped broker's connections close: nothing keeps its pool alive.
    env.wait_for_count(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'koyo-job-dropped'",
        0,
        Duration::from_secs(10),
    )
    .await;
    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_in_a_transaction_notifies_only_at_commit_even_among_concurrent_enqueues() {
    let env = env().await;
    let (_listen, mut rx) = listener(&env).await;
    // Concurrent enqueues on the broker, on the same queue, keep its notifier busy meanwhile.
    let broker = env.broker.clone();
    let noise = tokio::spawn(async move {
        let tasks: Vec<_> = (0..8)
            .map(|t| {
                let broker = broker.clone();
                tokio::spawn(async move {
                    for i in 0..10 {
                        fanin(1000 + t * 10 + i).enqueue_on(&broker).await.unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    });
    noise.await.unwrap();

    let mut client = env.broker.client().await.unwrap();
    let tx_pid: i32 = client.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    // This pooled connection may have carried the broker's trailing notifications before we
    // took it: let everything it sent arrive first.
    client.batch_execute("NOTIFY koyo_jobs, 'flushed'").await.unwrap();
    while next_notification(&mut rx).await.1 != "flushed" {}

    let tx = client.transaction().await.unwrap();
    let id = fanin(1).with_priority(7).enqueue_in(&tx).await.unwrap();
    // A marker sent after the transactional enqueue, from another connection: notifications
    // arrive in commit order, so anything the open transaction had sent would come before it.
    env.query("SELECT pg_notify('koyo_jobs', 'marker')", &[]).await;
    let mut seen_before_marker = Vec::new();
    loop {
        let (channel, payload, pid) = next_notification(&mut rx).await;
        if payload == "marker" {
            break;
        }
        seen_before_marker.push((channel, payload, pid));
    }
    assert!(
        seen_before_marker.iter().all(|(_, _, pid)| *pid != tx_pid),
        "the open transaction notified before its commit: {seen_before_marker:?}"
    );
    assert!(env.query("SELECT 1 FROM koyo_jobs WHERE id = $1", &[&id.0]).await.is_empty());
    tx.commit().await.unwrap();
    loop {
        let (channel, payload, pid) = next_notification(&mut rx).await;
        if pid == tx_pid {
            assert_eq!((channel.as_str(), payload.as_str()), ("koyo_jobs", "fanin"));
            break;
        }
    }
}
