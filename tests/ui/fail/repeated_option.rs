use koyo_job::define_job;

#[define_job(queue = "mail", priority = 1, queue = "billing")]
async fn send_welcome(user_id: i64) {
    let _ = user_id;
}

fn main() {}
