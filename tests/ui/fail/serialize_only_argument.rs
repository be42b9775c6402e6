use koyo_job::define_job;
use serde::Serialize;

// Stored, but a worker could not read it back.
#[derive(Serialize)]
struct Receipt {
    total: i64,
}

#[define_job]
async fn file_receipt(customer: String, receipt: Receipt) {
    let _ = (customer, receipt.total);
}

fn main() {}
