use koyo_job::define_job;

#[define_job]
async fn send_welcome(user_id: i64, email: &str) {
    let _ = (user_id, email);
}

#[define_job]
async fn store(data: &'static [u8], paths: Vec<&std::path::Path>) {
    let _ = (data, paths);
}

fn main() {}
