use koyo_job::define_job;

#[define_job(priority = -1)]
async fn negative() {}

#[define_job(priority = 40000)]
async fn too_large() {}

#[define_job(priority = "high")]
async fn not_a_number() {}

fn main() {}
