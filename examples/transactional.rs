//! Enqueueing inside your own transaction: the job exists only if the transaction commits,
//! and workers hear about it at commit.
//!
//! ```text
//! cargo run --example transactional
//! ```

use std::sync::LazyLock;

use koyo_job::{Worker, define_job};
use tokio::sync::Notify;

static SENT: LazyLock<Notify> = LazyLock::new(Notify::new);

#[define_job(queue = "mail")]
async fn send_receipt(order_id: i64) {
    println!("receipt sent for order {order_id}");
    SENT.notify_one();
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (_db, broker) = koyo_job_examples::scratch_broker().await?;
    let mut client = broker.client().await?;
    client.batch_execute("CREATE TABLE orders (id bigint PRIMARY KEY, total_cents bigint NOT NULL)").await?;
    let worker = Worker::builder(broker.clone()).queue("mail").start().await?;

    // An order that fails validation: its receipt job is rolled back with it.
    let tx = client.transaction().await?;
    tx.execute("INSERT INTO orders VALUES (1, -5)", &[]).await?;
    let id = send_receipt(1).enqueue_in(&tx).await?;
    tx.rollback().await?;
    println!("order 1 rolled back; job {id} was never stored");

    // An order that commits: the order row and its receipt job appear together.
    let tx = client.transaction().await?;
    tx.execute("INSERT INTO orders VALUES (2, 1999)", &[]).await?;
    let id = send_receipt(2).enqueue_in(&tx).await?;
    tx.commit().await?;
    println!("order 2 committed with job {id}");

    SENT.notified().await;
    let stored: i64 = client.query_one("SELECT count(*) FROM koyo_jobs", &[]).await?.get(0);
    println!("jobs in the table: {stored}");
    worker.shutdown().await;
    Ok(())
}
