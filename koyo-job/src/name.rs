//! The naming rule for queues and job names, checked before any SQL runs.
//!
//! Names are stored as values (never formatted into SQL), but a narrow rule keeps them
//! printable, greppable and safe in NOTIFY payloads. The table enforces the same rule.

use crate::error::Error;

/// The longest queue name, in bytes.
pub const MAX_QUEUE_LEN: usize = 64;
/// The longest job name, in bytes.
pub const MAX_JOB_NAME_LEN: usize = 200;

fn check(name: &str, max: usize) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("it is empty");
    }
    if name.len() > max {
        return Err("it is too long");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-')) {
        return Err("only ASCII letters, digits and `_ . : -` are allowed");
    }
    Ok(())
}

/// Checks a queue name: 1 to 64 of ASCII letters, digits and `_ . : -`.
pub(crate) fn check_queue(name: &str) -> Result<(), Error> {
    check(name, MAX_QUEUE_LEN).map_err(|why| Error::InvalidQueue { name: name.to_owned(), why })
}

/// Checks a job name: 1 to 200 of ASCII letters, digits and `_ . : -`.
pub(crate) fn check_job_name(name: &str) -> Result<(), Error> {
    check(name, MAX_JOB_NAME_LEN).map_err(|why| Error::InvalidJobName { name: name.to_owned(), why })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_module_paths_and_dotted_names() {
        assert!(check_job_name("my_app::mail::send_welcome").is_ok());
        assert!(check_queue("mail.high-priority").is_ok());
    }

    #[test]
    fn rejects_empty_long_and_hostile_names() {
        for bad in ["", "a'b", "a;b", "a\0b", "naïve", "a b", "a\"b", &"q".repeat(65)] {
            assert!(check_queue(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(check_job_name(&"j".repeat(201)).is_err());
        assert!(check_job_name(&"j".repeat(200)).is_ok());
    }
}
