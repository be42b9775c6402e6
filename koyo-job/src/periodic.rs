//! Periodic jobs: a job enqueued on a schedule, exactly once per slot across every worker of
//! every host, with no coordinator but PostgreSQL.
//!
//! Each slot's job carries a unique key made of the schedule's name and the slot's time (see
//! [`crate::Unique`]), held in every state: however many workers see a slot due, the unique
//! index keeps one job for it. Slot times are computed from the database's clock. The workers
//! that know a schedule record it in `koyo_periodic` (schema version 6) with its last and next
//! slot, for the admin page and `koyo-job-admin periodic`.

use std::fmt;
use std::sync::Arc;

use crate::error::Error;
use crate::job::{IntoNewJob, JobDescriptor, NewJob, RunAt};
use crate::schedule::Schedule;
use crate::unique::{JobState, Unique};

/// What a schedule does about slots that passed while no worker ran it (the fleet was down,
/// or being deployed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Missed {
    /// Run the most recent missed slot once when a worker comes back (never a burst of every
    /// missed slot). The default.
    #[default]
    RunLatest,
    /// Skip missed slots: the next job is the next slot's.
    Skip,
}

impl Missed {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Missed::RunLatest => "run_latest",
            Missed::Skip => "skip",
        }
    }
}

type Build = dyn Fn() -> Result<NewJob, Error> + Send + Sync;

/// A job enqueued on a schedule, added to a worker with
/// [`WorkerBuilder::periodic`](crate::WorkerBuilder::periodic): for jobs with arguments, or
/// schedules read from configuration at start-up. (A job without arguments can carry its
/// schedule on its definition instead: `#[define_job(cron = "0 3 * * *")]`.)
///
/// ```no_run
/// use koyo_job::{Periodic, Schedule, Worker, define_job};
///
/// #[define_job(queue = "mail")]
/// async fn send_digest(team_id: i64) {}
///
/// # async fn demo(broker: koyo_job::Broker) -> Result<(), koyo_job::Error> {
/// let weekday_mornings = Schedule::parse("0 8 * * 1-5")?.in_time_zone("Europe/Berlin")?;
/// let worker = Worker::builder(broker)
///     .queue("mail")
///     .periodic(Periodic::new("team-7-digest", weekday_mornings, || send_digest(7)))
///     .start()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Periodic {
    name: String,
    schedule: Schedule,
    missed: Missed,
    build: Arc<Build>,
}

impl fmt::Debug for Periodic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Periodic")
            .field("name", &self.name)
            .field("schedule", &self.schedule)
            .field("missed", &self.missed)
            .finish_non_exhaustive()
    }
}

impl Periodic {
    /// The longest schedule name, in bytes.
    pub const MAX_NAME_BYTES: usize = 200;

    /// A schedule named `name` (unique among the schedules of the fleet: it is how workers
    /// agree on slots) whose every slot enqueues the job `build` returns.
    pub fn new<J, F>(name: impl Into<String>, schedule: Schedule, build: F) -> Periodic
    where
        J: IntoNewJob,
        F: Fn() -> J + Send + Sync + 'static,
    {
        Periodic {
            name: name.into(),
            schedule,
            missed: Missed::default(),
            build: Arc::new(move || build().into_new_job()),
        }
    }

    /// Skips slots that passed while no worker ran the schedule, instead of running the most
    /// recent one when a worker comes back.
    pub fn skip_missed(mut self) -> Periodic {
        self.missed = Missed::Skip;
        self
    }

    /// What to do about missed slots.
    pub fn missed(mut self, missed: Missed) -> Periodic {
        self.missed = missed;
        self
    }

    /// The schedule's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// When it runs.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// The schedule of a job defined with `cron = …` or `every = …`.
    pub(crate) fn from_descriptor(descriptor: &'static JobDescriptor) -> Option<Result<Periodic, Error>> {
        let spec = descriptor.periodic?;
        let schedule = Schedule::parse(spec.schedule).and_then(|s| s.in_time_zone(spec.time_zone));
        Some(match schedule {
            Ok(schedule) => Ok(Periodic {
                name: descriptor.name.to_owned(),
                schedule,
                missed: if spec.skip_missed { Missed::Skip } else { Missed::RunLatest },
                build: Arc::new(move || {
                    Ok(NewJob {
                        queue: descriptor.queue,
                        name: descriptor.name,
                        args: crate::codec::encode(&())?,
                        priority: descriptor.priority,
                        max_attempts: descriptor.max_attempts,
                        run_at: RunAt::Now,
                        unique: None,
                    })
                }),
            }),
            Err(error) => Err(Error::Schedule { name: descriptor.name.to_owned(), source: error }),
        })
    }

    /// Checks the name; the rest was checked when the schedule was built.
    pub(crate) fn check(&self) -> Result<(), Error> {
        let why = if self.name.is_empty() {
            "it is empty"
        } else if self.name.contains('\0') {
            "it holds a NUL character"
        } else if self.name.len() > Periodic::MAX_NAME_BYTES {
            "it is longer than 200 bytes"
        } else {
            return Ok(());
        };
        Err(Error::WorkerConfig(format!("invalid periodic schedule name {:?}: {why}", self.name)))
    }

    pub(crate) fn missed_policy(&self) -> Missed {
        self.missed
    }

    /// The job each slot enqueues, as built (not yet tied to a slot).
    pub(crate) fn job(&self) -> Result<NewJob, Error> {
        (self.build)()
    }

    /// The job for the slot at `slot`: due at the slot, unique to this schedule and slot in
    /// every state, so that one job stands for the slot however many workers enqueue it.
    pub(crate) fn job_for(&self, slot: time::OffsetDateTime) -> Result<NewJob, Error> {
        let mut job = self.job()?;
        let key = format!("periodic {} {}", self.name, slot.unix_timestamp_nanos());
        let every_state = Unique::by_key(key).while_finished(&JobState::ALL);
        job.unique = Some(every_state.to_row()?);
        job.run_at = RunAt::At(slot);
        Ok(job)
    }
}

/// A definition's schedule, as `#[define_job(cron = …)]` writes it into the job's descriptor.
#[doc(hidden)]
#[derive(Clone, Copy, Debug)]
pub struct PeriodicSpec {
    /// The schedule, checked by the macro.
    pub schedule: &'static str,
    /// The IANA time zone (`"UTC"` by default).
    pub time_zone: &'static str,
    /// `missed = "skip"`.
    pub skip_missed: bool,
}
