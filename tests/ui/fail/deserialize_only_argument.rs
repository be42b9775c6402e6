use koyo_job::define_job;
use serde::Deserialize;

// Could be read back, but not stored in the first place.
#[derive(Deserialize)]
struct Refund {
    amount: i64,
}

#[define_job]
async fn issue_refund(customer: String, refund: Refund) {
    let _ = (customer, refund.amount);
}

fn main() {}
