//! Three-way merge of text: two concurrent versions of a note against the
//! version both started from (the `diffy` crate's line merge). Pure and
//! deterministic: the same three inputs, in the same roles, give the same
//! bytes on every device; the caller puts the winner of the total order
//! first so that every device gives the roles alike.

use crate::limits::{MAX_MERGE_BYTES, MAX_MERGE_LINES};

/// Whether `bytes` is text a line merge may touch: UTF-8 without NUL, at
/// most [`MAX_MERGE_BYTES`] in at most [`MAX_MERGE_LINES`] lines.
pub fn is_mergeable_text(bytes: &[u8]) -> bool {
    bytes.len() as u64 <= MAX_MERGE_BYTES
        && !bytes.contains(&0)
        && bytes.iter().filter(|b| **b == b'\n').count() < MAX_MERGE_LINES
        && std::str::from_utf8(bytes).is_ok()
}

/// `ours` and `theirs` merged against `ancestor`, or `None` when their
/// changes overlap (or any of the three is not mergeable text): the caller
/// then keeps both versions.
pub fn merge_text(ancestor: &[u8], ours: &[u8], theirs: &[u8]) -> Option<Vec<u8>> {
    if ![ancestor, ours, theirs].iter().all(|b| is_mergeable_text(b)) {
        return None;
    }
    let (ancestor, ours, theirs) =
        (std::str::from_utf8(ancestor).ok()?, std::str::from_utf8(ours).ok()?, std::str::from_utf8(theirs).ok()?);
    diffy::merge(ancestor, ours, theirs).ok().map(String::into_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_of_different_lines_merge_and_the_same_line_does_not() {
        let base = b"# Plan\none\ntwo\nthree\nfour\n";
        let ours = b"# Plan\nONE\ntwo\nthree\nfour\n";
        let theirs = b"# Plan\none\ntwo\nthree\nFOUR\nfive\n";
        assert_eq!(merge_text(base, ours, theirs).unwrap(), b"# Plan\nONE\ntwo\nthree\nFOUR\nfive\n");
        assert_eq!(merge_text(base, theirs, ours), merge_text(base, ours, theirs), "clean merges commute");
        assert_eq!(merge_text(base, b"# Plan\nuno\ntwo\nthree\nfour\n", ours), None, "the same line");
    }

    #[test]
    fn binary_or_oversized_content_is_not_merged() {
        assert_eq!(merge_text(b"a\n", b"a\0\n", b"b\n"), None);
        assert_eq!(merge_text(b"a\n", &[0xff, b'\n'], b"b\n"), None);
        let big = vec![b'x'; MAX_MERGE_BYTES as usize + 1];
        assert_eq!(merge_text(b"", &big, b"y"), None);
        let many_lines = "x\n".repeat(MAX_MERGE_LINES);
        assert_eq!(merge_text(b"", many_lines.as_bytes(), b"y"), None);
    }
}
