#![deny(warnings)]

use koyo_job::define_job;

#[derive(Debug)]
struct MailError(String);

impl std::fmt::Display for MailError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn deliver(email: &str) -> Result<(), MailError> {
    if email.contains('@') { Ok(()) } else { Err(MailError(format!("bad address {email}"))) }
}

#[define_job]
async fn send(email: String) -> Result<(), MailError> {
    deliver(&email)?;
    Ok(())
}

#[define_job]
async fn read_config(path: String) -> std::io::Result<()> {
    let _ = std::fs::metadata(path)?;
    Ok(())
}

#[define_job]
async fn boxed(input: String) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let _: i64 = input.parse()?;
    Ok(())
}

fn main() {
    let _ = send("a@example.com".into());
    let _ = read_config("/etc/hosts".into());
    let _ = boxed("1".into());
}
