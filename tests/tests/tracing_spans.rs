//! Every job runs inside a `koyo_job.run` span, so whatever the job logs carries its id, queue,
//! name and attempt; claims and completion batches have spans of their own. (Its own test
//! binary: a subscriber is installed for the whole process.)

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use koyo_job::define_job;
use koyo_job_tests::env;
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// Records, for every event, its message and the spans it happened in (innermost first).
#[derive(Default)]
struct Spans {
    next: AtomicU64,
    spans: Mutex<HashMap<u64, String>>,
    events: Mutex<Vec<(String, Vec<String>)>>,
}

thread_local! {
    static ENTERED: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

struct Fields(String);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={value:?}", field.name());
    }
}

struct Collect(&'static Spans);

impl Subscriber for Collect {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let id = self.0.next.fetch_add(1, Ordering::SeqCst) + 1;
        let mut fields = Fields(span.metadata().name().to_owned());
        span.record(&mut fields);
        self.0.spans.lock().unwrap().insert(id, fields.0);
        Id::from_u64(id)
    }
    fn record(&self, id: &Id, values: &Record<'_>) {
        let mut fields = Fields(String::new());
        values.record(&mut fields);
        if let Some(span) = self.0.spans.lock().unwrap().get_mut(&id.into_u64()) {
            span.push_str(&fields.0);
        }
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut fields = Fields(String::new());
        event.record(&mut fields);
        let spans = self.0.spans.lock().unwrap();
        let within =
            ENTERED.with(|e| e.borrow().iter().rev().filter_map(|id| spans.get(id).cloned()).collect());
        self.0.events.lock().unwrap().push((fields.0, within));
    }
    fn enter(&self, id: &Id) {
        ENTERED.with(|e| e.borrow_mut().push(id.into_u64()));
    }
    fn exit(&self, id: &Id) {
        ENTERED.with(|e| {
            let mut e = e.borrow_mut();
            if let Some(at) = e.iter().rposition(|x| *x == id.into_u64()) {
                e.remove(at);
            }
        });
    }
}

fn spans() -> &'static Spans {
    static SPANS: OnceLock<&'static Spans> = OnceLock::new();
    SPANS.get_or_init(|| {
        let spans: &'static Spans = Box::leak(Box::default());
        tracing::subscriber::set_global_default(Collect(spans)).expect("the only subscriber of this binary");
        spans
    })
}

#[define_job(queue = "traced")]
async fn traced(order: i64) {
    tokio::task::yield_now().await;
    tracing::info!(order, "charging the card");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_job_logs_happens_inside_its_run_span() {
    let spans = spans();
    let env = env().await;
    let id = traced(42).enqueue_on(&env.broker).await.unwrap();
    let worker = env.worker().queue("traced").start().await.unwrap();
    env.wait_for_status(id, "done", Duration::from_secs(10)).await;
    worker.shutdown().await;

    let events = spans.events.lock().unwrap().clone();
    let (_, within) = events
        .iter()
        .find(|(fields, _)| fields.contains("charging the card"))
        .expect("the job's event was recorded");
    let expected =
        format!("koyo_job.run job.id={} job.queue=traced job.name=tracing_spans::traced job.attempt=1", id.0);
    assert_eq!(within.first(), Some(&expected), "{within:?}");
}

#[define_job(queue = "batched")]
async fn batched(n: i64) {
    let _ = n;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_and_completion_batches_have_spans() {
    let spans = spans();
    let env = env().await;
    let id = batched(7).enqueue_on(&env.broker).await.unwrap();
    let worker = env.worker().queue("batched").pool_size(4).start().await.unwrap();
    let worker_id = worker.id();
    env.wait_for_status(id, "done", Duration::from_secs(10)).await;
    worker.shutdown().await;

    let recorded: Vec<String> = spans.spans.lock().unwrap().values().cloned().collect();
    let claim = format!("koyo_job.claim worker_id={worker_id} limit=");
    assert!(
        recorded.iter().any(|s| s.starts_with(&claim) && s.ends_with(" claimed=1")),
        "no claim span of one job: {recorded:?}"
    );
    assert!(
        recorded.iter().any(|s| s.starts_with("koyo_job.complete jobs=") && s.contains(" written=")),
        "no completion span: {recorded:?}"
    );
}
