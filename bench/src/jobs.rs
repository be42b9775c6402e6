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

/// Records when its body started (the latency workload).
#[koyo_job::define_job]
async fn bench_ping(seq: u32) {
    let now = Instant::now();
    let mut starts = PING_STARTS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(slot) = starts.get_mut(seq as usize) {
        slot.get_or_insert(now);
    }
}

/// The stored name of the no-op job (the `job` column).
pub fn noop_name() -> &'static str {
    bench_noop().name()
}

/// The stored queue of the no-op job.
pub fn noop_queue() -> &'static str {
    bench_noop().queue()
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
