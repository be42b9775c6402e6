use koyo_job::define_job;

#[define_job]
struct SendWelcome {
    user_id: i64,
}

fn main() {}
