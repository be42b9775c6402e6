//! The benchmark's jobs: no-op bodies, so every figure is the queue's own cost.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Bodies of [`bench_noop`] run in this process.
pub static EXECUTED: AtomicU64 = AtomicU64::new(0);

/// When each [`bench_ping`] body started, by its sequence number.
pub static PING_STARTS: Mutex<Vec<Option<Instant>>> = Mutex::new(Vec::new());

/// Does nothing but count itself.
#[koyo_job::define_job]
async fn bench_noop() {
    EXECUTED.fetch_add(1, Ordering::Relaxed);
}

/// Short real work: sleeps 1 ms, then counts itself (the `fleet` workload's second half).
#[koyo_job::define_job]
async fn bench_sleep() {
    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    EXECUTED.fetch_add(1, Ordering::Relaxed);
}

/// Records when its body started (the latency workload).
#[koyo_job::define_job]
async fn bench_ping(seq: u32) {
    let now = Instant::now();
    let mut starts = PING_STARTS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(slot) = starts.get_mut(seq as usize) {
        slot.get_or_insert(now);
    }
}

/// The raw loop's ping in the latency workload: the same job on a queue no koyo-job worker
/// serves (its body never runs).
#[koyo_job::define_job(queue = "bench_raw")]
async fn bench_raw_ping(seq: u32) {
    let _ = seq;
}

pub fn raw_ping(seq: u32) -> koyo_job::Job<(u32,)> {
    bench_raw_ping(seq)
}

/// The stored name of the no-op job (the `job` column).
pub fn noop_name() -> &'static str {
    bench_noop().name()
}

/// The stored queue of the no-op job.
pub fn noop_queue() -> &'static str {
    bench_noop().queue()
}

/// The stored name of the 1 ms job.
pub fn sleep_name() -> &'static str {
    bench_sleep().name()
}

pub fn noop() -> koyo_job::Job<()> {
    bench_noop()
}

pub fn ping(seq: u32) -> koyo_job::Job<(u32,)> {
    bench_ping(seq)
}

pub fn executed() -> u64 {
    EXECUTED.load(Ordering::Relaxed)
}

/// Works 20 ms, on the queue the `limits` workload limits.
#[koyo_job::define_job(queue = "bench_limited")]
async fn bench_work20() {
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
}

/// Does nothing, on the queue the `limits` workload limits.
#[koyo_job::define_job(queue = "bench_limited")]
async fn bench_work0() {}

/// The queue of the `limits` workload's jobs.
pub fn work20_queue() -> &'static str {
    bench_work20().queue()
}

pub fn work20_name() -> &'static str {
    bench_work20().name()
}

pub fn work0_name() -> &'static str {
    bench_work0().name()
}
