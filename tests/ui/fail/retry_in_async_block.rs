use koyo_job::{define_job, retry};

#[define_job]
async fn later(ready: bool) {
    let task = async move {
        if !ready {
            retry!();
        }
    };
    task.await;
}

fn main() {}
