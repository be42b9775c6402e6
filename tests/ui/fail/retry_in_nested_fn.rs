use koyo_job::{define_job, retry};

#[define_job]
async fn outer(ready: bool) {
    fn check(ready: bool) {
        if !ready {
            retry!();
        }
    }
    check(ready);
}

fn main() {}
