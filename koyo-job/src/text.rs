//! Making text storable: every string koyo-job writes into a `text` column (errors, retry
//! reasons, panic messages, hostnames) passes through [`storable`] first.
//!
//! PostgreSQL's `text` cannot hold the NUL character, and a statement carrying one fails as a
//! whole (SQLSTATE 22021), so in a batched write one bad string would fail every row beside it.
//! Rust strings are valid UTF-8 otherwise; bytes from outside (a hostname file) are decoded
//! lossily first ([`storable_bytes`]). Lengths are bounded so that one job's enormous error
//! message cannot bloat the table or a completion batch.

use std::borrow::Cow;

/// The longest error text stored with a job, in bytes (before the truncation marker).
pub(crate) const MAX_ERROR_BYTES: usize = 16 * 1024;

/// The longest hostname stored for a worker, in bytes.
pub(crate) const MAX_HOSTNAME_BYTES: usize = 255;

/// What stands in for a NUL character.
const NUL_REPLACEMENT: char = '\u{FFFD}';

/// `text` with every NUL replaced by U+FFFD and, if it is longer than `max_bytes`, cut at a
/// character boundary with a marker saying how many bytes were left out. Borrows when there is
/// nothing to change, which is nearly always.
pub(crate) fn storable(text: &str, max_bytes: usize) -> Cow<'_, str> {
    let has_nul = text.contains('\0');
    if !has_nul && text.len() <= max_bytes {
        return Cow::Borrowed(text);
    }
    let mut cut = text.len().min(max_bytes);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut out: String = text[..cut].replace('\0', &NUL_REPLACEMENT.to_string());
    if cut < text.len() {
        out.push_str(&format!(" … [{} more bytes cut]", text.len() - cut));
    }
    Cow::Owned(out)
}

/// Bytes from outside the program, as storable text: invalid UTF-8 sequences replaced, then as
/// [`storable`].
pub(crate) fn storable_bytes(bytes: &[u8], max_bytes: usize) -> String {
    storable(&String::from_utf8_lossy(bytes), max_bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_text_is_borrowed_unchanged() {
        assert!(matches!(storable("smtp is down", 100), Cow::Borrowed("smtp is down")));
    }

    #[test]
    fn nul_characters_are_replaced() {
        assert_eq!(storable("a\0b\0", 100), "a\u{FFFD}b\u{FFFD}");
    }

    #[test]
    fn long_text_is_cut_at_a_character_boundary_with_a_marker() {
        // "é" is two bytes: a cut at byte 3 would split the second one.
        let text = "ééé";
        assert_eq!(storable(text, 3), "é … [4 more bytes cut]");
        let long = "x".repeat(MAX_ERROR_BYTES + 10);
        let stored = storable(&long, MAX_ERROR_BYTES);
        assert!(stored.starts_with(&"x".repeat(MAX_ERROR_BYTES)));
        assert!(stored.ends_with("[10 more bytes cut]"), "{}", &stored[MAX_ERROR_BYTES..]);
    }

    #[test]
    fn invalid_utf8_and_nul_bytes_become_replacement_characters() {
        assert_eq!(storable_bytes(b"host\xff\0name", 100), "host\u{FFFD}\u{FFFD}name");
    }
}
