#![deny(warnings)]

use std::collections::HashMap;

use koyo_job::define_job;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
pub struct Address {
    pub street: String,
    pub city: String,
}

#[derive(Serialize, Deserialize)]
pub enum Plan {
    Free,
    Paid { seats: u32 },
}

#[define_job]
async fn one(value: u8) {
    let _ = value;
}

#[define_job]
#[allow(clippy::too_many_arguments)]
async fn onboard(
    user_id: i64,
    name: String,
    tags: Vec<String>,
    referrer: Option<i64>,
    address: Address,
    plan: Plan,
    settings: HashMap<String, bool>,
    joined: (u16, u8, u8),
    score: f64,
    active: bool,
) {
    let _ = (user_id, name, tags, referrer, address.street, address.city, settings, joined, score, active);
    if let Plan::Paid { seats } = plan {
        let _ = seats;
    }
}

#[define_job]
async fn sixteen(
    a: u8,
    b: u8,
    c: u8,
    d: u8,
    e: u8,
    f: u8,
    g: u8,
    h: u8,
    i: u8,
    j: u8,
    k: u8,
    l: u8,
    m: u8,
    n: u8,
    o: u8,
    p: u8,
) {
    let _ = (a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p);
}

fn main() {
    let _: koyo_job::Job<(u8,)> = one(1);
    let job = onboard(
        1,
        "Ada".into(),
        vec!["early".into()],
        None,
        Address { street: "1 Main St".into(), city: "Springfield".into() },
        Plan::Paid { seats: 3 },
        HashMap::new(),
        (2024, 1, 31),
        0.5,
        true,
    );
    assert!(job.name().ends_with("::onboard"));
    let _ = sixteen(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    let _ = Plan::Free;
}
