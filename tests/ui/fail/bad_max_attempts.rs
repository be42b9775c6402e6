use koyo_job::define_job;

#[define_job(max_attempts = 0)]
async fn never_runs() {}

fn main() {}
