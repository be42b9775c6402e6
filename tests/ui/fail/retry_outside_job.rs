use koyo_job::retry;

async fn not_a_job() {
    retry!();
}

fn main() {
    let _ = not_a_job();
}
