//! Results: the markdown tables, one JSON line per workload, and the SVG chart.

use std::fmt::Write as _;
use std::time::Duration;

/// A measured figure.
#[derive(Clone, Debug)]
pub enum Value {
    /// Jobs per second over `seconds`.
    Rate { jobs: u64, seconds: f64 },
    /// Milliseconds from one event to another, per job.
    Latency { jobs: u64, p50: f64, p90: f64, p99: f64, max: f64 },
    /// Statements (or transactions) per second.
    PerSecond { count: f64, seconds: f64, what: &'static str },
    /// Resident memory, MiB.
    Memory { jobs: u64, peak_mib: f64, end_mib: f64 },
}

impl Value {
    pub fn rate(jobs: u64, elapsed: Duration) -> Value {
        Value::Rate { jobs, seconds: elapsed.as_secs_f64() }
    }

    pub fn latency(samples_ms: &mut [f64]) -> Value {
        samples_ms.sort_by(f64::total_cmp);
        Value::Latency {
            jobs: samples_ms.len() as u64,
            p50: percentile(samples_ms, 0.50),
            p90: percentile(samples_ms, 0.90),
            p99: percentile(samples_ms, 0.99),
            max: samples_ms.last().copied().unwrap_or(f64::NAN),
        }
    }

    /// Jobs per second, if a throughput.
    pub fn per_sec(&self) -> Option<f64> {
        match self {
            Value::Rate { jobs, seconds } => Some(*jobs as f64 / seconds),
            _ => None,
        }
    }

    /// For markdown.
    pub fn show(&self) -> String {
        match self {
            Value::Rate { jobs, seconds } => {
                format!(
                    "{} jobs/s ({} in {seconds:.2} s)",
                    group(*jobs as f64 / seconds),
                    group(*jobs as f64)
                )
            }
            Value::Latency { p50, p90, p99, max, .. } => {
                format!("p50 {p50:.2} / p90 {p90:.2} / p99 {p99:.2} / max {max:.2} ms")
            }
            Value::PerSecond { count, seconds, what } => {
                format!("{:.2} {what}/s ({count:.0} in {seconds:.0} s)", count / seconds)
            }
            Value::Memory { peak_mib, end_mib, .. } => {
                format!("peak {peak_mib:.1} MiB (end {end_mib:.1} MiB)")
            }
        }
    }

    /// For JSON: the fields after `name`.
    fn json_fields(&self, out: &mut String) {
        match self {
            Value::Rate { jobs, seconds } => {
                let _ = write!(
                    out,
                    r#""jobs":{jobs},"seconds":{},"jobs_per_sec":{}"#,
                    num(*seconds),
                    num(*jobs as f64 / seconds)
                );
            }
            Value::Latency { jobs, p50, p90, p99, max } => {
                let _ = write!(
                    out,
                    r#""jobs":{jobs},"p50_ms":{},"p90_ms":{},"p99_ms":{},"max_ms":{}"#,
                    num(*p50),
                    num(*p90),
                    num(*p99),
                    num(*max)
                );
            }
            Value::PerSecond { count, seconds, what } => {
                let _ = write!(
                    out,
                    r#""seconds":{},"count":{},"unit":{},"per_sec":{}"#,
                    num(*seconds),
                    num(*count),
                    string(what),
                    num(count / seconds)
                );
            }
            Value::Memory { jobs, peak_mib, end_mib } => {
                let _ = write!(
                    out,
                    r#""jobs":{jobs},"peak_rss_mib":{},"end_rss_mib":{}"#,
                    num(*peak_mib),
                    num(*end_mib)
                );
            }
        }
    }
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A measurement with its name and its correctness check.
#[derive(Clone, Debug)]
pub struct Measured {
    pub name: String,
    pub value: Value,
    pub check: Check,
}

/// Whether a run did what it should (all jobs done, counts match).
#[derive(Clone, Debug)]
pub struct Check {
    pub ok: bool,
    pub detail: String,
}

impl Check {
    pub fn new(ok: bool, detail: impl Into<String>) -> Check {
        Check { ok, detail: detail.into() }
    }
}

/// One line of the result table: koyo-job against its baseline.
#[derive(Clone, Debug)]
pub struct Row {
    pub workload: &'static str,
    pub variant: String,
    pub koyo: Measured,
    pub baseline: Option<Measured>,
    /// koyo-job as a fraction of the baseline (1.0 = as fast as raw SQL); for latency, koyo-job's
    /// p50 over the baseline's (lower is better).
    pub ratio: Option<f64>,
    /// Ratios to other baselines, for the JSON and the second table.
    pub other_ratios: Vec<(String, f64)>,
    /// The issue's target for this row, and whether it was met.
    pub target: Option<(String, bool)>,
}

/// Everything a run produced.
#[derive(Default)]
pub struct Report {
    pub rows: Vec<Row>,
    /// Every raw baseline measured, for the second table.
    pub baselines: Vec<(String, Measured)>,
}

impl Report {
    pub fn all_ok(&self) -> bool {
        self.rows.iter().all(|r| r.koyo.check.ok && r.baseline.as_ref().is_none_or(|b| b.check.ok))
            && self.baselines.iter().all(|(_, m)| m.check.ok)
    }

    pub fn markdown(&self) -> String {
        let mut out = String::new();
        out.push_str("| workload | koyo-job | baseline (raw SQL, same run) | ratio | target | met |\n");
        out.push_str("|---|---|---|---|---|---|\n");
        for row in &self.rows {
            let baseline = match &row.baseline {
                Some(b) => format!("{}: {}", b.name, b.value.show()),
                None => "—".to_owned(),
            };
            let ratio = row.ratio.map_or("—".to_owned(), |r| format!("{r:.2}"));
            let (target, met) = match &row.target {
                Some((text, met)) => (text.clone(), if *met { "yes" } else { "**no**" }.to_owned()),
                None => ("—".to_owned(), "—".to_owned()),
            };
            let _ = writeln!(
                out,
                "| {} {} | {} | {} | {} | {} | {} |",
                row.workload,
                row.variant,
                row.koyo.value.show(),
                baseline,
                ratio,
                target,
                met
            );
        }
        let others: Vec<&Row> = self.rows.iter().filter(|r| !r.other_ratios.is_empty()).collect();
        if !others.is_empty() {
            out.push_str("\nThe same rows against other raw bounds:\n\n");
            out.push_str("| workload | ratio |\n|---|---|\n");
            for row in others {
                for (name, ratio) in &row.other_ratios {
                    let _ = writeln!(out, "| {} {} vs {} | {ratio:.2} |", row.workload, row.variant, name);
                }
            }
        }
        if !self.baselines.is_empty() {
            out.push_str("\nRaw baselines measured in this run:\n\n| baseline | result |\n|---|---|\n");
            for (_, m) in &self.baselines {
                let _ = writeln!(out, "| {} | {} |", m.name, m.value.show());
            }
        }
        out.push_str("\nCorrectness of every run:\n\n");
        for row in &self.rows {
            let _ = writeln!(out, "- {} {}: {}", row.workload, row.variant, verdict(&row.koyo.check));
            if let Some(b) = &row.baseline {
                let _ = writeln!(out, "  - baseline {}: {}", b.name, verdict(&b.check));
            }
        }
        for (_, m) in &self.baselines {
            let _ = writeln!(out, "- baseline {}: {}", m.name, verdict(&m.check));
        }
        out
    }

    pub fn json_lines(&self) -> String {
        let mut out = String::new();
        for row in &self.rows {
            let _ = write!(
                out,
                r#"{{"kind":"workload","name":{},"workload":{},"variant":{},"#,
                string(&format!("{} {}", row.workload, row.variant)),
                string(row.workload),
                string(&row.variant)
            );
            row.koyo.value.json_fields(&mut out);
            out.push_str(r#","baseline":"#);
            match &row.baseline {
                Some(b) => {
                    let _ = write!(out, r#"{{"name":{},"#, string(&b.name));
                    b.value.json_fields(&mut out);
                    out.push('}');
                }
                None => out.push_str("null"),
            }
            let _ = write!(out, r#","ratio":{}"#, row.ratio.map_or("null".to_owned(), num));
            if !row.other_ratios.is_empty() {
                out.push_str(r#","other_ratios":{"#);
                for (i, (name, ratio)) in row.other_ratios.iter().enumerate() {
                    let _ = write!(out, "{}{}:{}", if i > 0 { "," } else { "" }, string(name), num(*ratio));
                }
                out.push('}');
            }
            match &row.target {
                Some((text, met)) => {
                    let _ = write!(out, r#","target":{},"met":{met}"#, string(text));
                }
                None => out.push_str(r#","target":null,"met":null"#),
            }
            let ok = row.koyo.check.ok && row.baseline.as_ref().is_none_or(|b| b.check.ok);
            let _ = writeln!(out, r#","verified":{ok},"check":{}}}"#, string(&row.koyo.check.detail));
        }
        for (key, m) in &self.baselines {
            let _ = write!(out, r#"{{"kind":"baseline","key":{},"name":{},"#, string(key), string(&m.name));
            m.value.json_fields(&mut out);
            let _ = writeln!(out, r#","verified":{},"check":{}}}"#, m.check.ok, string(&m.check.detail));
        }
        out
    }

    /// A horizontal bar chart of every row's ratio, with the 1.0 line (as fast as raw SQL) and
    /// the issue's target marked on each bar.
    pub fn svg(&self, title: &str) -> String {
        let bars: Vec<(&Row, f64, Option<f64>)> = self
            .rows
            .iter()
            // Latency ratios are koyo-job over raw (lower is better): not on this chart.
            .filter(|row| row.workload != "latency")
            .filter_map(|row| row.ratio.map(|ratio| (row, ratio, target_ratio(row))))
            .collect();
        let label_w = 300.0;
        let plot_w = 400.0;
        let right = 440.0;
        let bar_h = 22.0;
        let gap = 12.0;
        let top = 58.0;
        let bottom = 70.0;
        let height = top + bars.len() as f64 * (bar_h + gap) + bottom;
        let width = label_w + plot_w + right;
        let max_ratio = bars.iter().map(|(_, r, _)| *r).fold(1.0f64, f64::max).clamp(1.25, 2.0);
        let x = |r: f64| label_w + plot_w * (r.min(max_ratio) / max_ratio);

        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="Helvetica, Arial, sans-serif" font-size="13">"#
        );
        let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ =
            writeln!(s, r#"<text x="16" y="24" font-size="16" font-weight="bold">{}</text>"#, escape(title));
        let _ = writeln!(
            s,
            r##"<text x="16" y="44" fill="#555">koyo-job as a fraction of the raw-SQL baseline measured in the same run (1.0 = as fast as raw SQL; higher is better)</text>"##
        );
        // Grid: 0, 0.25, … up to the maximum.
        let mut tick = 0.0;
        while tick <= max_ratio + 1e-9 {
            let tx = x(tick);
            let stroke = if (tick - 1.0).abs() < 1e-9 {
                r##"stroke="#333" stroke-width="1.5""##
            } else {
                r##"stroke="#ddd""##
            };
            let _ = writeln!(
                s,
                r#"<line x1="{tx:.1}" y1="{top:.1}" x2="{tx:.1}" y2="{:.1}" {stroke}/>"#,
                height - bottom + 4.0
            );
            let _ = writeln!(
                s,
                r##"<text x="{tx:.1}" y="{:.1}" text-anchor="middle" fill="#555">{tick:.2}</text>"##,
                height - bottom + 20.0
            );
            tick += 0.25;
        }
        for (i, (row, ratio, target)) in bars.iter().enumerate() {
            let y = top + i as f64 * (bar_h + gap);
            let met = row.target.as_ref().is_none_or(|(_, met)| *met);
            let fill = if met { "#3b7dd8" } else { "#e07b39" };
            let label = compact(&format!("{} {}", row.workload, row.variant));
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                label_w - 8.0,
                y + bar_h * 0.7,
                escape(label.trim())
            );
            let _ = writeln!(
                s,
                r#"<rect x="{label_w:.1}" y="{y:.1}" width="{:.1}" height="{bar_h:.1}" fill="{fill}"/>"#,
                (x(*ratio) - label_w).max(1.0)
            );
            if let Some((_, other)) =
                row.other_ratios.first().filter(|(_, r)| row.workload == "drain" && r.is_finite())
            {
                let _ = writeln!(
                    s,
                    r##"<rect x="{label_w:.1}" y="{:.1}" width="{:.1}" height="4" fill="#1c3f73"/>"##,
                    y + bar_h - 4.0,
                    (x(*other) - label_w).max(1.0)
                );
            }
            if let Some(t) = target {
                let tx = x(*t);
                let _ = writeln!(
                    s,
                    r##"<line x1="{tx:.1}" y1="{:.1}" x2="{tx:.1}" y2="{:.1}" stroke="#c00" stroke-width="3"/>"##,
                    y - 3.0,
                    y + bar_h + 3.0
                );
            }
            let past = if *ratio > max_ratio { " »" } else { "" };
            let base = format!("{past} vs {}", chart_baseline(row));
            let _ = writeln!(
                s,
                r##"<text x="{:.1}" y="{:.1}" fill="#222">{ratio:.2}{}</text>"##,
                x(*ratio) + 6.0,
                y + bar_h * 0.7,
                escape(&base)
            );
        }
        let ly = height - 24.0;
        let _ = writeln!(
            s,
            r##"<rect x="16" y="{:.1}" width="14" height="14" fill="#3b7dd8"/><text x="36" y="{ly:.1}">target met (or none)</text>"##,
            ly - 11.0
        );
        let _ = writeln!(
            s,
            r##"<rect x="196" y="{:.1}" width="14" height="14" fill="#e07b39"/><text x="216" y="{ly:.1}">target not met</text>"##,
            ly - 11.0
        );
        let _ = writeln!(
            s,
            r##"<line x1="346" y1="{:.1}" x2="346" y2="{:.1}" stroke="#c00" stroke-width="3"/><text x="356" y="{ly:.1}">the issue's target</text><rect x="500" y="{:.1}" width="14" height="4" fill="#1c3f73"/><text x="520" y="{ly:.1}">drains: vs the DELETE bound (a)</text>"##,
            ly - 13.0,
            ly + 3.0,
            ly - 6.0
        );
        s.push_str("</svg>\n");
        s
    }
}

/// The target as a ratio, where it is one (drawn on the bar).
fn target_ratio(row: &Row) -> Option<f64> {
    match (row.workload, row.variant.as_str()) {
        ("enqueue", _) => Some(0.8),
        ("bulk", _) => Some(0.7),
        ("drain", "pool_size 16") => Some(0.5),
        ("drain", "pool_size 1") => Some(1.0),
        ("history", _) => Some(0.9),
        _ => None,
    }
}

/// Long numbers in a chart label shortened: 1000000 → 1M, 100000 → 100k.
fn compact(label: &str) -> String {
    label
        .split(' ')
        .map(|word| match word.parse::<u64>() {
            Ok(n) if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
            Ok(n) if n >= 10_000 && n % 1000 == 0 => format!("{}k", n / 1000),
            _ => word.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// What a row's bar is measured against, in a few words.
fn chart_baseline(row: &Row) -> String {
    let delete =
        row.other_ratios.first().map(|(_, r)| format!("; {r:.2} vs DELETE bound")).unwrap_or_default();
    match (row.workload, row.variant.as_str()) {
        ("enqueue", _) => "raw INSERT + NOTIFY".to_owned(),
        ("enqueue16", _) => "raw INSERT + NOTIFY, as many connections".to_owned(),
        ("bulk", _) => "raw unnest INSERT".to_owned(),
        ("drain", "pool_size 1") => format!("raw per-job loop (UPDATE){delete}"),
        ("drain", _) => format!("(a) UPDATE bound{delete}"),
        ("history", _) => "the empty-table drain".to_owned(),
        _ => row.baseline.as_ref().map_or(String::new(), |b| b.name.clone()),
    }
}

fn verdict(check: &Check) -> String {
    format!("{} — {}", if check.ok { "ok" } else { "FAILED" }, check.detail)
}

/// 12345.6 → "12,346".
pub fn group(value: f64) -> String {
    if !value.is_finite() {
        return "—".to_owned();
    }
    let digits = format!("{:.0}", value.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if value < 0.0 { format!("-{out}") } else { out }
}

fn num(value: f64) -> String {
    if value.is_finite() { format!("{}", (value * 1000.0).round() / 1000.0) } else { "null".to_owned() }
}

fn string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}
