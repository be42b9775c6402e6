use koyo_job::define_job;

#[define_job(queue = "mail", retries = 3)]
async fn send_welcome(user_id: i64) {
    let _ = user_id;
}

fn main() {}
