use koyo_job::define_job;

#[define_job(cron = "0 3 * * *")]
async fn nightly() {}

#[define_job(cron = "*/10 * * * * *", time_zone = "America/New_York", missed = "skip")]
async fn every_ten_seconds() {}

#[define_job(cron = "@hourly", queue = "maintenance")]
async fn hourly() {}

#[define_job(every = "90s", missed = "run_latest")]
async fn every_ninety_seconds() -> Result<(), String> {
    Ok(())
}

fn main() {
    let _ = (nightly(), every_ten_seconds(), hourly(), every_ninety_seconds());
}
