use koyo_job::{define_job, retry};

#[define_job]
async fn flaky(ready: bool) {
    if !ready {
        retry!(5, "not ready");
    }
}

fn main() {}
