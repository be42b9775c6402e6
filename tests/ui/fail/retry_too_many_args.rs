use std::time::Duration;

use koyo_job::{define_job, retry};

#[define_job]
async fn flaky(ready: bool) {
    if !ready {
        retry!(Duration::from_secs(5), "not ready", 3);
    }
}

fn main() {}
