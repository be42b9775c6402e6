use koyo_job::define_job;

#[define_job(queue)]
async fn send_welcome() {}

fn main() {}
