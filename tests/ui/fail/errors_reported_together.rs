use koyo_job::{define_job, retry};

// Every problem in a definition is reported in one build, including those in its body.
#[define_job(queue = "no spaces", retries = 3)]
fn send_welcome(user_id: i64, email: &str) {
    let _ = user_id;
    let _: i32 = email;
    retry!(1, 2, 3);
}

fn main() {}
