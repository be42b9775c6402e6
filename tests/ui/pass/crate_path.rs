#![deny(warnings)]

// An application that re-exports koyo-job under its own path.
mod jobs_rt {
    pub use koyo_job::*;
}

mod app {
    use crate::jobs_rt::{define_job, retry};

    #[define_job(crate = "crate::jobs_rt", queue = "app")]
    pub async fn sync_account(account_id: i64) -> Result<(), std::io::Error> {
        if account_id == 0 {
            retry!(std::time::Duration::from_secs(1));
        }
        Ok(())
    }
}

fn main() {
    let job: jobs_rt::Job<(i64,)> = app::sync_account(1);
    assert_eq!(job.queue(), "app");
}
