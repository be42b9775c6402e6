//! koyo's say-hello, in Rust: define a job, enqueue it, and let a worker run it.
//!
//! ```text
//! cargo run --example quickstart
//! ```

use std::sync::LazyLock;

use koyo_job::{Worker, define_job};
use tokio::sync::Notify;

static EXECUTED: LazyLock<Notify> = LazyLock::new(Notify::new);

// Define a job: calling `say_hello(..)` now stores a job instead of running the body.
#[define_job]
async fn say_hello(name: String) {
    println!("hi {name}!");
    EXECUTED.notify_one();
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (_db, broker) = koyo_job_examples::scratch_broker().await?;
    koyo_job::set_current_broker(broker.clone());
    let worker = Worker::builder(broker).start().await?;

    // Enqueue a job: awaiting the call stores it and returns its id.
    let id = say_hello("Bogdan".into()).await?;
    println!("enqueued job {}", id.expect("stored, so it has an id"));

    // Wait for the worker to pick it up and run it...
    EXECUTED.notified().await;
    worker.shutdown().await;
    Ok(())
}
