use koyo_job::define_job;

#[define_job]
async fn add((a, b): (i64, i64)) {
    let _ = a + b;
}

fn main() {}
