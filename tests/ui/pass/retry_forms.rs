#![deny(warnings)]

use std::time::Duration;

use koyo_job::{define_job, retry};

#[define_job]
async fn backoff(attempt: u32) {
    if attempt < 3 {
        retry!();
    }
}

#[define_job]
async fn fixed_delay(attempt: u32) -> Result<(), std::io::Error> {
    if attempt < 3 {
        retry!(Duration::from_secs(30));
    }
    if attempt < 4 {
        retry!(time::Duration::minutes(1),);
    }
    Ok(())
}

#[define_job]
async fn with_reason(attempt: u32, host: String) -> Result<(), std::io::Error> {
    if attempt < 3 {
        retry!(Duration::from_millis(250), format!("{host} is not up yet"));
    }
    if attempt < 4 {
        koyo_job::retry!(time::Duration::seconds(5), "still starting");
    }
    ::koyo_job::retry!(Duration::ZERO, attempt)
}

fn main() {
    let _ = backoff(1);
    let _ = fixed_delay(1);
    let _ = with_reason(1, "db".into());
}
