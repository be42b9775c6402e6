//! What the examples share: a scratch database and a broker on it.
//!
//! `TestDatabase` finds PostgreSQL the way the tests do (`DATABASE_URL`, else a server on
//! localhost:5432, else a throwaway cluster), creates a fresh database and drops it at exit.
//! In an application you would call `Broker::connect(&your_database_url)` instead.

use koyo_job::testing::TestDatabase;
use koyo_job::{Broker, BrokerOptions};

/// A fresh database with koyo-job's tables, and a broker on it. Keep the database alive as
/// long as the broker is used.
pub async fn scratch_broker() -> Result<(TestDatabase, Broker), Box<dyn std::error::Error>> {
    let db = TestDatabase::create().await?;
    let broker = Broker::new(db.config().clone(), BrokerOptions::default())?;
    koyo_job::migrate(&broker).await?;
    Ok((db, broker))
}
