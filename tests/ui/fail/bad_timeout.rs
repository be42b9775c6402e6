use koyo_job::define_job;

#[define_job(timeout = "30 seconds")]
async fn words() {}

#[define_job(timeout = "1.5s")]
async fn fraction() {}

#[define_job(timeout = "0s")]
async fn zero() {}

#[define_job(timeout = 30)]
async fn not_a_string() {}

fn main() {}
