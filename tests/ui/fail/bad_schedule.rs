use koyo_job::define_job;

#[define_job(cron = "61 * * * *")]
async fn minute_out_of_range() {}

#[define_job(cron = "* * * *")]
async fn four_fields() {}

#[define_job(cron = "@fortnightly")]
async fn unknown_shorthand() {}

#[define_job(every = "1500ms")]
async fn part_of_a_second() {}

#[define_job(cron = "@hourly", every = "1h")]
async fn both() {}

#[define_job(every = "1m")]
async fn with_arguments(team: String) {
    let _ = team;
}

#[define_job(time_zone = "Europe/Berlin")]
async fn zone_without_schedule() {}

#[define_job(every = "1m", missed = "sometimes")]
async fn unknown_policy() {}

#[define_job(every = "1m", time_zone = "Europe Berlin")]
async fn not_a_zone_name() {}

fn main() {}
