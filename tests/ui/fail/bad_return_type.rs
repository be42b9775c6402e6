use koyo_job::define_job;

#[define_job]
async fn answer() -> i32 {
    42
}

fn main() {}
