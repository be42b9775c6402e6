#![deny(warnings)]

use koyo_job::define_job;

// A job body can enqueue jobs, including another run of itself.
#[define_job]
async fn countdown(n: u32) -> Result<(), koyo_job::Error> {
    if n > 0 {
        countdown(n - 1).await?;
        notify(format!("{n} left")).await?;
    }
    Ok(())
}

#[define_job]
async fn notify(message: String) {
    let _ = message;
}

struct Reports;

impl Reports {
    // An associated function (no `self`) works too.
    #[define_job(queue = "reports")]
    async fn build(report_id: i64) {
        let _ = report_id;
    }
}

fn main() {
    let _ = countdown(3);
    assert_eq!(Reports::build(1).queue(), "reports");
}
