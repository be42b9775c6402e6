#![deny(warnings)]

use std::time::Duration;

use koyo_job::{define_job, retry};

macro_rules! first_or {
    ($items:expr, $otherwise:expr) => {
        match $items.first() {
            Some(item) => *item,
            None => $otherwise,
        }
    };
}

#[define_job]
async fn poll(ids: Vec<i64>, mode: Option<String>) -> Result<(), std::io::Error> {
    // Expression position.
    let first = match ids.first() {
        Some(id) => *id,
        None => retry!(Duration::from_secs(1), "nothing to poll"),
    };
    let mode = mode.unwrap_or_else(String::new);
    let Some(last) = ids.last() else { retry!() };
    if first > *last {
        retry!();
    } else if mode == "wait" {
        retry!(Duration::from_secs(10))
    }
    for id in &ids {
        if *id < 0 {
            retry!(Duration::from_secs(5), format!("negative id {id}"));
        }
    }
    let mut n = 0;
    while n < 3 {
        n += 1;
        if n == 10 {
            retry!();
        }
    }
    let value = loop {
        if n > 2 {
            break n;
        }
        retry!();
    };
    {
        if value == 0 {
            retry!();
        }
    }
    // Inside other macros' input.
    let doubled = vec![if first == 0 { retry!() } else { first * 2 }];
    let picked: i64 = first_or!(doubled, retry!(Duration::from_secs(2)));
    assert!(picked != 1, "{}", if picked == 2 { retry!() } else { picked });
    tokio::select! {
        _ = tokio::task::yield_now() => {
            if picked == 3 {
                retry!(Duration::from_secs(3), "select");
            }
        }
    }
    Ok(())
}

fn main() {
    let _ = poll(vec![1, 2], None);
}
