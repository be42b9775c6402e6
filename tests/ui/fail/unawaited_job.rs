#![deny(unused_must_use)]

use koyo_job::define_job;

#[define_job]
async fn send_welcome(user_id: i64) {
    let _ = user_id;
}

fn main() {
    // Forgetting `.await` stores nothing: the compiler says so.
    send_welcome(42);
}
