use koyo_job::define_job;

#[define_job(unique = "arguments")]
async fn unknown_scope(n: i64) {}

#[define_job(unique = true)]
async fn not_a_string(n: i64) {}

#[define_job(unique_for = "1500ms")]
async fn part_of_a_second(n: i64) {}

#[define_job(unique_for = "0s")]
async fn zero(n: i64) {}

#[define_job(unique, unique)]
async fn twice(n: i64) {}

fn main() {}
