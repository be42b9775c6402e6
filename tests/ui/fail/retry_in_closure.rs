use koyo_job::{define_job, retry};

#[define_job]
async fn check_all(ids: Vec<i64>) {
    ids.iter().for_each(|id| {
        if *id < 0 {
            retry!();
        }
    });
}

fn main() {}
