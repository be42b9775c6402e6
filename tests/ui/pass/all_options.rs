#![deny(warnings)]

use koyo_job::define_job;

/// Sends the welcome mail.
#[define_job(
    crate = "koyo_job",
    timeout = "1500ms",
    max_attempts = 5,
    name = "mail.send_welcome:v2",
    priority = 10,
    queue = "mail"
)]
pub async fn send_welcome(user_id: i64, email: String) {
    let _ = (user_id, email);
}

fn main() {
    let job = send_welcome(42, "a@example.com".into());
    assert_eq!(job.name(), "mail.send_welcome:v2");
    assert_eq!(job.queue(), "mail");
    assert_eq!(job.priority(), 10);
}
