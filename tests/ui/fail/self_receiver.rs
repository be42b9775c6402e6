use koyo_job::define_job;

struct Mailer;

impl Mailer {
    #[define_job]
    async fn send_welcome(&self, user_id: i64) {
        let _ = user_id;
    }
}

fn main() {}
