use koyo_job::define_job;

// Inside a job as elsewhere, `retry!` must be in scope.
#[define_job]
async fn flaky(ready: bool) {
    if !ready {
        retry!();
    }
}

fn main() {}
