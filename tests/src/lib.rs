//! Helpers shared by PSync's end-to-end tests and the helper programs they
//! start as separate processes.

/// The exact bytes the crash writer stores as generation `gen` of file `k`:
/// a header naming both, then a pseudo-random body of pseudo-random length
/// (0 to ~200 KiB, so files span several blocks). Deterministic, so the
/// checker can recompute it.
pub fn crash_content(k: u32, gen: u64) -> Vec<u8> {
    let mut state = (u64::from(k) << 40) ^ gen ^ 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        // xorshift64*
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let len = (next() % 200_000) as usize;
    let mut out = format!("{k}:{gen}\n").into_bytes();
    out.extend((0..len).map(|_| next() as u8));
    out
}

/// Parses the header of [`crash_content`]: `(k, gen)`.
pub fn crash_header(content: &[u8]) -> Option<(u32, u64)> {
    let line_end = content.iter().position(|&b| b == b'\n')?;
    let text = std::str::from_utf8(&content[..line_end]).ok()?;
    let (k, gen) = text.split_once(':')?;
    Some((k.parse().ok()?, gen.parse().ok()?))
}

/// Files the crash writer uses.
pub const CRASH_FILES: u32 = 12;
