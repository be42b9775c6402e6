//! The attribute's options, `#[define_job(queue = "mail", priority = 10, …)]`, read into a typed
//! configuration. Values are checked here, at compile time, with the same rules the runtime applies
//! when it stores a job, so a bad queue name never gets as far as a worker.

use proc_macro2::TokenStream;
use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream, Parser};
use syn::punctuated::Punctuated;
use syn::{Expr, ExprLit, ExprUnary, Ident, Lit, LitStr, Token, UnOp};

use crate::errors::Errors;

const OPTIONS: &str = "`queue`, `priority`, `name`, `max_attempts`, `timeout`, `unique`, `unique_for`, `cron`, `every`, `time_zone`, `missed`, `crate`";

/// Longest queue name the runtime accepts (`koyo_job::MAX_QUEUE_LEN`).
const MAX_QUEUE_LEN: usize = 64;
/// Longest job name the runtime accepts (`koyo_job::MAX_JOB_NAME_LEN`).
pub(crate) const MAX_JOB_NAME_LEN: usize = 200;

/// The options of one `#[define_job(…)]`, defaults filled in.
pub(crate) struct JobArgs {
    pub(crate) queue: String,
    pub(crate) priority: i16,
    /// `None`: named after the function's path, `module_path!()::fn_name`.
    pub(crate) name: Option<String>,
    pub(crate) max_attempts: i32,
    pub(crate) timeout_millis: Option<u64>,
    /// `unique` (by arguments, `"args"`) or `unique = "queue"`; also set by `unique_for`.
    pub(crate) unique: Option<String>,
    /// `unique_for = "1h"`, in seconds.
    pub(crate) unique_for_secs: Option<u64>,
    /// `cron = "…"` (as written, whitespace normalised) or `every = "30s"` (as `@every 30s`).
    pub(crate) schedule: Option<String>,
    /// `time_zone = "Europe/Berlin"`.
    pub(crate) time_zone: Option<String>,
    /// `missed = "skip"`.
    pub(crate) skip_missed: bool,
    /// Where generated code finds the runtime: `::koyo_job` unless re-exported elsewhere.
    pub(crate) krate: syn::Path,
}

impl Default for JobArgs {
    fn default() -> Self {
        JobArgs {
            queue: "default".to_owned(),
            priority: 50,
            name: None,
            max_attempts: 20,
            timeout_millis: None,
            unique: None,
            unique_for_secs: None,
            schedule: None,
            time_zone: None,
            skip_missed: false,
            krate: syn::parse_quote!(::koyo_job),
        }
    }
}

/// `key = value`, or a bare `key` (reported as a missing value rather than as a syntax error).
struct RawOption {
    key: Ident,
    value: Option<Expr>,
}

impl Parse for RawOption {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        // `parse_any` so that the keyword `crate` is accepted as a key.
        let key = input.call(Ident::parse_any).map_err(|e| {
            syn::Error::new(
                e.span(),
                format!("expected an option such as `queue = \"mail\"`; options: {OPTIONS}"),
            )
        })?;
        let value = match input.parse::<Option<Token![=]>>()? {
            Some(_) => Some(input.parse()?),
            None => None,
        };
        Ok(RawOption { key, value })
    }
}

impl JobArgs {
    /// Reads the attribute's tokens. Every problem is recorded in `errors`; an option that is
    /// wrong keeps its default so the rest of the definition can still be checked.
    pub(crate) fn parse(tokens: TokenStream, errors: &mut Errors) -> JobArgs {
        let mut args = JobArgs::default();
        let options = match Punctuated::<RawOption, Token![,]>::parse_terminated.parse2(tokens) {
            Ok(options) => options,
            Err(error) => {
                errors.push(error);
                return args;
            }
        };
        let mut seen: Vec<String> = Vec::new();
        for RawOption { key, value } in options {
            let name = key.unraw().to_string();
            if !matches!(
                name.as_str(),
                "queue"
                    | "priority"
                    | "name"
                    | "max_attempts"
                    | "timeout"
                    | "unique"
                    | "unique_for"
                    | "cron"
                    | "every"
                    | "time_zone"
                    | "missed"
                    | "crate"
            ) {
                errors.spanned(&key, format!("unknown option `{name}`; expected one of: {OPTIONS}"));
                continue;
            }
            if seen.contains(&name) {
                errors.spanned(&key, format!("`{name}` given twice"));
                continue;
            }
            seen.push(name.clone());
            // A bare `unique` is unique by arguments.
            if name == "unique" && value.is_none() {
                args.unique = Some("args".to_owned());
                continue;
            }
            let Some(value) = value else {
                errors.spanned(&key, format!("`{name}` needs a value, e.g. {}", example(&name)));
                continue;
            };
            if let Err(error) = args.set(&name, &value) {
                errors.push(error);
            }
        }
        args
    }

    fn set(&mut self, key: &str, value: &Expr) -> syn::Result<()> {
        match key {
            "queue" => {
                let lit = string(key, value)?;
                check_name(&lit.value(), "queue", MAX_QUEUE_LEN)
                    .map_err(|m| syn::Error::new(lit.span(), m))?;
                self.queue = lit.value();
            }
            "name" => {
                let lit = string(key, value)?;
                check_name(&lit.value(), "job", MAX_JOB_NAME_LEN)
                    .map_err(|m| syn::Error::new(lit.span(), m))?;
                self.name = Some(lit.value());
            }
            "priority" => {
                let n = integer(key, value, 0, i16::MAX.into(), "0 runs first")?;
                self.priority = i16::try_from(n).expect("range checked");
            }
            "max_attempts" => {
                let n = integer(key, value, 1, i32::MAX.into(), "1 means never retried")?;
                self.max_attempts = i32::try_from(n).expect("range checked");
            }
            "timeout" => {
                let lit = string(key, value)?;
                let millis = parse_duration(key, &lit.value()).map_err(|m| syn::Error::new(lit.span(), m))?;
                self.timeout_millis = Some(millis);
            }
            "unique" => {
                let lit = string(key, value)?;
                let scope = lit.value();
                if !matches!(scope.as_str(), "args" | "queue") {
                    return Err(syn::Error::new(
                        lit.span(),
                        "`unique` takes \"args\" (jobs with equal arguments are the same job; also what a \
                         bare `unique` means) or \"queue\" (at most one of this job waits or runs on its \
                         queue); for a key of your own, use `.unique(Unique::by_key(..))` when enqueuing",
                    ));
                }
                self.unique = Some(scope);
            }
            "unique_for" => {
                let lit = string(key, value)?;
                let millis = parse_duration(key, &lit.value()).map_err(|m| syn::Error::new(lit.span(), m))?;
                if millis % 1000 != 0 {
                    return Err(syn::Error::new(lit.span(), "`unique_for` takes whole seconds, e.g. \"1h\""));
                }
                self.unique_for_secs = Some(millis / 1000);
                self.unique.get_or_insert_with(|| "args".to_owned());
            }
            "cron" | "every" => {
                let lit = string(key, value)?;
                if self.schedule.is_some() {
                    return Err(syn::Error::new(lit.span(), "give a job `cron` or `every`, not both"));
                }
                let schedule = if key == "cron" {
                    check_cron(&lit.value())
                } else {
                    parse_duration(key, &lit.value()).and_then(|millis| match millis % 1000 {
                        0 => Ok(format!("@every {}s", millis / 1000)),
                        _ => Err("`every` takes whole seconds, e.g. \"30s\"".to_owned()),
                    })
                };
                self.schedule = Some(schedule.map_err(|m| syn::Error::new(lit.span(), m))?);
            }
            "time_zone" => {
                let lit = string(key, value)?;
                let zone = lit.value();
                let plausible =
                    !zone.is_empty() && zone.chars().all(|c| c.is_ascii_alphanumeric() || "/_-+".contains(c));
                if !plausible {
                    return Err(syn::Error::new(
                        lit.span(),
                        "`time_zone` takes an IANA time zone name, e.g. \"Europe/Berlin\" or \"UTC\"",
                    ));
                }
                self.time_zone = Some(zone);
            }
            "missed" => {
                let lit = string(key, value)?;
                self.skip_missed = match lit.value().as_str() {
                    "skip" => true,
                    "run_latest" => false,
                    _ => {
                        return Err(syn::Error::new(
                            lit.span(),
                            "`missed` takes \"run_latest\" (run the most recent missed slot once when a worker \
                             comes back; the default) or \"skip\"",
                        ));
                    }
                };
            }
            "crate" => {
                let lit = string(key, value)?;
                self.krate = lit.parse::<syn::Path>().map_err(|_| {
                    syn::Error::new(
                        lit.span(),
                        "`crate` takes the path koyo-job is re-exported at, e.g. `crate = \"my_app::jobs\"`",
                    )
                })?;
            }
            _ => unreachable!("keys are checked by the caller"),
        }
        Ok(())
    }
}

fn example(key: &str) -> &'static str {
    match key {
        "queue" => "`queue = \"mail\"`",
        "priority" => "`priority = 10`",
        "name" => "`name = \"billing.send_invoice\"`",
        "max_attempts" => "`max_attempts = 5`",
        "timeout" => "`timeout = \"30s\"`",
        "unique" => "`unique` or `unique = \"queue\"`",
        "unique_for" => "`unique_for = \"1h\"`",
        "cron" => "`cron = \"0 3 * * *\"`",
        "every" => "`every = \"30s\"`",
        "time_zone" => "`time_zone = \"Europe/Berlin\"`",
        "missed" => "`missed = \"skip\"`",
        _ => "`crate = \"my_app::jobs\"`",
    }
}

fn string(key: &str, value: &Expr) -> syn::Result<LitStr> {
    match value {
        Expr::Lit(ExprLit { lit: Lit::Str(lit), .. }) => Ok(lit.clone()),
        _ => Err(syn::Error::new_spanned(
            value,
            format!("`{key}` takes a string literal, e.g. {}", example(key)),
        )),
    }
}

/// An integer literal, possibly negated, within `min..=max`.
fn integer(key: &str, value: &Expr, min: i64, max: i64, hint: &str) -> syn::Result<i64> {
    let out_of_range =
        || syn::Error::new_spanned(value, format!("`{key}` must be an integer from {min} to {max} ({hint})"));
    let (negative, lit) = match value {
        Expr::Lit(ExprLit { lit: Lit::Int(lit), .. }) => (false, lit),
        Expr::Unary(ExprUnary { op: UnOp::Neg(_), expr, .. }) => match &**expr {
            Expr::Lit(ExprLit { lit: Lit::Int(lit), .. }) => (true, lit),
            _ => return Err(out_of_range()),
        },
        _ => return Err(out_of_range()),
    };
    let n = lit.base10_parse::<i64>().map_err(|_| out_of_range())?;
    let n = if negative { -n } else { n };
    if (min..=max).contains(&n) { Ok(n) } else { Err(out_of_range()) }
}

/// The rule the runtime applies to queue and job names (`koyo_job`'s `name` module): 1 to `max`
/// characters, each an ASCII letter or digit, `_`, `.`, `:` or `-`.
pub(crate) fn check_name(value: &str, kind: &str, max: usize) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("a {kind} name cannot be empty"));
    }
    if let Some(bad) = value.chars().find(|&c| !is_name_char(c)) {
        return Err(format!(
            "{bad:?} cannot appear in a {kind} name: use ASCII letters, digits, `_`, `.`, `:` and `-`"
        ));
    }
    let len = value.len();
    if len > max {
        return Err(format!("a {kind} name is at most {max} characters long; this one has {len}"));
    }
    Ok(())
}

pub(crate) fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-')
}

/// Checks a `cron = "…"` literal: 5 fields, or 6 with seconds first, or a shorthand
/// (`@hourly`, `@daily`, …; `@every 30s`); returns it with its whitespace normalised. The runtime
/// checks it again, with more words for some mistakes, when a worker starts.
fn check_cron(text: &str) -> Result<String, String> {
    use croner::parser::{CronParser, Seconds, Year};
    let expression = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let usage = "a cron expression has 5 fields (minute hour day-of-month month day-of-week) or 6 (seconds \
                 first), or is one of @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly, \
                 @every <interval>";
    if let Some(shorthand) = expression.strip_prefix('@') {
        let (word, rest) = shorthand.split_once(' ').unwrap_or((shorthand, ""));
        return match (word.to_ascii_lowercase().as_str(), rest) {
            ("yearly" | "annually" | "monthly" | "weekly" | "daily" | "midnight" | "hourly", "") => {
                Ok(expression)
            }
            ("every", interval) if !interval.is_empty() => Ok(expression),
            _ => Err(format!("`{expression}` is not a schedule: {usage}")),
        };
    }
    let fields = expression.split(' ').filter(|f| !f.is_empty()).count();
    if !(5..=6).contains(&fields) {
        return Err(format!("`{expression}` has {fields} fields: {usage}"));
    }
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
        .parse(&expression)
        .map(|_| expression.clone())
        .map_err(|error| format!("`{expression}` is not a valid cron expression ({error}): {usage}"))
}

/// `"30s"` → 30 000: a whole number followed by `ms`, `s`, `m`, `h` or `d`, for option `key`.
fn parse_duration(key: &str, text: &str) -> Result<u64, String> {
    let usage = || {
        format!(
            "`{key}` takes a whole number and a unit (`ms`, `s`, `m`, `h` or `d`), e.g. \"30s\"; not {text:?}"
        )
    };
    let digits = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let scale: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(usage()),
    };
    let number: u64 = number.parse().map_err(|_| usage())?;
    let millis = number.checked_mul(scale).ok_or_else(|| format!("`{key}` of {text:?} is too long"))?;
    if millis == 0 {
        return Err(format!("`{key}` must be longer than zero; leave it out for none"));
    }
    Ok(millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("timeout", "250ms"), Ok(250));
        assert_eq!(parse_duration("timeout", "30s"), Ok(30_000));
        assert_eq!(parse_duration("timeout", "5m"), Ok(300_000));
        assert_eq!(parse_duration("timeout", "2h"), Ok(7_200_000));
        assert_eq!(parse_duration("unique_for", "1d"), Ok(86_400_000));
        for bad in ["", "s", "30", "30 s", "1.5s", "-1s", "30sec", "0s"] {
            assert!(parse_duration("timeout", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names() {
        assert!(check_name("mail", "queue", 64).is_ok());
        assert!(check_name("billing.v2:send-invoice_now", "job", 200).is_ok());
        assert!(check_name("", "queue", 64).is_err());
        assert!(check_name("a;b", "queue", 64).is_err());
        assert!(check_name("mäil", "queue", 64).is_err());
        assert!(check_name(&"q".repeat(65), "queue", 64).is_err());
        assert!(check_name(&"q".repeat(64), "queue", 64).is_ok());
    }
}
