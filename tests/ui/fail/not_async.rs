use koyo_job::define_job;

#[define_job]
fn send_welcome(user_id: i64) {
    let _ = user_id;
}

fn main() {
    // The name still resolves to a job stub: no second error here.
    let _ = send_welcome(1);
}
