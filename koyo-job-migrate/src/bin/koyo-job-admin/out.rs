//! Output helpers: aligned plain-text tables for people and hand-written JSON for scripts.

/// A JSON string literal: quotes, backslashes and every control character escaped.
pub fn string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A JSON string, or `null`.
pub fn opt_string(text: Option<&str>) -> String {
    text.map_or_else(|| "null".to_owned(), string)
}

/// A JSON number of seconds (millisecond precision), or `null`.
pub fn opt_secs(secs: Option<f64>) -> String {
    match secs {
        Some(secs) if secs.is_finite() => format!("{secs:.3}"),
        _ => "null".to_owned(),
    }
}

/// A JSON object from already-encoded values.
pub fn object(fields: &[(&str, String)]) -> String {
    let fields: Vec<String> = fields.iter().map(|(key, value)| format!("{}:{value}", string(key))).collect();
    format!("{{{}}}", fields.join(","))
}

/// A JSON array from already-encoded values.
pub fn array(items: &[String]) -> String {
    format!("[{}]", items.join(","))
}

/// Text safe to show in a terminal cell: control characters (a newline in an error, an escape
/// sequence) are shown escaped instead of acting on the terminal.
pub fn cell(text: &str) -> String {
    if text.chars().any(char::is_control) { text.escape_debug().to_string() } else { text.to_owned() }
}

/// A human age: `850ms`, `12.3s`, `4m05s`, `3h02m`, `2d04h`.
pub fn age(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "-".to_owned();
    }
    if secs < 1.0 {
        return format!("{}ms", (secs * 1000.0) as u64);
    }
    if secs < 60.0 {
        return format!("{secs:.1}s");
    }
    let whole = secs as u64;
    if whole < 3600 {
        format!("{}m{:02}s", whole / 60, whole % 60)
    } else if whole < 86400 {
        format!("{}h{:02}m", whole / 3600, whole % 3600 / 60)
    } else {
        format!("{}d{:02}h", whole / 86400, whole % 86400 / 3600)
    }
}

/// An aligned table: a header row, then one row per entry; columns whose `right` flag is set
/// (numbers) are right-aligned. Cells must already be [`cell`]-safe.
pub fn table(headers: &[&str], right: &[bool], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, value) in widths.iter_mut().zip(row) {
            *width = (*width).max(value.chars().count());
        }
    }
    let mut out = String::new();
    let header_row: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header_row).chain(rows) {
        let mut line = String::new();
        for (index, value) in row.iter().enumerate() {
            if index > 0 {
                line.push_str("  ");
            }
            let pad = widths[index].saturating_sub(value.chars().count());
            if right.get(index).copied().unwrap_or(false) {
                line.push_str(&" ".repeat(pad));
                line.push_str(value);
            } else {
                line.push_str(value);
                line.push_str(&" ".repeat(pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_escape_quotes_backslashes_and_control_characters() {
        assert_eq!(string("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(string("l1\nl2\r\t\u{8}\u{c}"), r#""l1\nl2\r\t\b\f""#);
        assert_eq!(string("\u{0}\u{1b}[31m\u{7f}"), r#""\u0000\u001b[31m\u007f""#);
        assert_eq!(string("héllo ☃"), "\"héllo ☃\"");
    }

    #[test]
    fn json_values_and_containers() {
        assert_eq!(opt_string(None), "null");
        assert_eq!(opt_secs(Some(1.5)), "1.500");
        assert_eq!(opt_secs(None), "null");
        assert_eq!(
            object(&[("a", "1".into()), ("b", array(&["2".into(), "3".into()]))]),
            r#"{"a":1,"b":[2,3]}"#
        );
        assert_eq!(array(&[]), "[]");
    }

    #[test]
    fn tables_align_columns_and_numbers_go_right() {
        let text = table(
            &["ID", "NAME"],
            &[true, false],
            &[vec!["7".into(), "x".into()], vec!["123".into(), "long".into()]],
        );
        assert_eq!(text, " ID  NAME\n  7  x\n123  long\n");
    }

    #[test]
    fn cells_never_carry_control_characters() {
        assert_eq!(cell("plain"), "plain");
        assert_eq!(cell("a\nb\u{1b}"), "a\\nb\\u{1b}");
    }

    #[test]
    fn ages_read_naturally() {
        assert_eq!(age(0.25), "250ms");
        assert_eq!(age(12.34), "12.3s");
        assert_eq!(age(245.0), "4m05s");
        assert_eq!(age(3.0 * 3600.0 + 120.0), "3h02m");
        assert_eq!(age(2.0 * 86400.0 + 4.0 * 3600.0), "2d04h");
        assert_eq!(age(-1.0), "-");
    }
}
