//! The metrics a worker and a broker report through the `metrics` facade. (Its own test
//! binary: a recorder is installed for the whole process.)

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use koyo_job::define_job;
use koyo_job_tests::env;
use metrics::{Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder};

/// Remembers every counter total, gauge value and histogram sample count, by name and labels.
#[derive(Default)]
struct Memory {
    values: Mutex<HashMap<String, Arc<Value>>>,
}

#[derive(Default)]
struct Value {
    count: AtomicU64,
    last: Mutex<f64>,
}

impl CounterFn for Value {
    fn increment(&self, n: u64) {
        self.count.fetch_add(n, Ordering::SeqCst);
    }
    fn absolute(&self, n: u64) {
        self.count.store(n, Ordering::SeqCst);
    }
}

impl GaugeFn for Value {
    fn increment(&self, v: f64) {
        *self.last.lock().unwrap() += v;
    }
    fn decrement(&self, v: f64) {
        *self.last.lock().unwrap() -= v;
    }
    fn set(&self, v: f64) {
        *self.last.lock().unwrap() = v;
        self.count.fetch_add(1, Ordering::SeqCst);
    }
}

impl HistogramFn for Value {
    fn record(&self, v: f64) {
        *self.last.lock().unwrap() = v;
        self.count.fetch_add(1, Ordering::SeqCst);
    }
}

impl Memory {
    fn value(&self, key: &Key) -> Arc<Value> {
        let mut labels: Vec<String> = key.labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
        labels.sort();
        let name = format!("{}{{{}}}", key.name(), labels.join(","));
        self.values.lock().unwrap().entry(name).or_default().clone()
    }

    fn count(&self, name: &str) -> u64 {
        self.values.lock().unwrap().get(name).map_or(0, |v| v.count.load(Ordering::SeqCst))
    }

    fn last(&self, name: &str) -> Option<f64> {
        self.values.lock().unwrap().get(name).map(|v| *v.last.lock().unwrap())
    }
}

struct Shared(&'static Memory);

impl Recorder for Shared {
    fn describe_counter(&self, _: KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.0.value(key))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.0.value(key))
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.0.value(key))
    }
}

fn memory() -> &'static Memory {
    static MEMORY: OnceLock<&'static Memory> = OnceLock::new();
    MEMORY.get_or_init(|| {
        let memory: &'static Memory = Box::leak(Box::default());
        metrics::set_global_recorder(Shared(memory)).expect("the only recorder of this test binary");
        memory
    })
}

#[define_job(queue = "metered", max_attempts = 2)]
async fn metered(fail: bool) -> Result<(), String> {
    if fail { Err("no".into()) } else { Ok(()) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_and_brokers_report_counters_histograms_and_queue_gauges() {
    let memory = memory();
    let env = env().await;
    let labels = "{job=metrics::metered,queue=metered}";
    env.broker.enqueue_many([metered(false), metered(false), metered(false)]).await.unwrap();
    let failing = metered(true).enqueue_on(&env.broker).await.unwrap();
    assert_eq!(memory.count(&format!("koyo_job_enqueued_total{labels}")), 4);

    let worker = env.worker().queue("metered").start().await.unwrap();
    env.wait_for_status(failing, "failed", Duration::from_secs(10)).await;
    env.wait_for_count("SELECT count(*) FROM koyo_jobs WHERE status = 'done'", 3, Duration::from_secs(10))
        .await;
    // The first tick sampled the gauges: four jobs were ready then, or fewer if the claim came first.
    assert!(memory.count("koyo_job_queue_ready{queue=metered}") >= 1);
    assert!(memory.last("koyo_job_queue_lag_seconds{queue=metered}").is_some());
    worker.shutdown().await;

    assert_eq!(memory.count(&format!("koyo_job_started_total{labels}")), 5, "3 + 2 attempts");
    assert_eq!(memory.count(&format!("koyo_job_completed_total{labels}")), 3);
    assert_eq!(memory.count(&format!("koyo_job_retried_total{labels}")), 1);
    assert_eq!(memory.count(&format!("koyo_job_failed_total{labels}")), 1);
    assert_eq!(memory.count(&format!("koyo_job_run_seconds{labels}")), 5, "one sample per attempt");
    assert_eq!(memory.count(&format!("koyo_job_wait_seconds{labels}")), 5);
}
