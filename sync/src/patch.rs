//! Sending an object as the bytes that differ from one the receiver has:
//! a 1-byte edit of a large file costs a few bytes on the wire, not the
//! 64 KiB block and the 8 KiB page of hashes that name it.
//!
//! A patch keeps the first `prefix` and the last `suffix` bytes of the base
//! and puts `middle` between them: one changed range per object, which is
//! what an edit in place (or a changed entry of a page) produces. The
//! receiver checks the result against the hash it asked for, as any object.

/// An object as a change of a base object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Patch {
    /// Bytes kept from the start of the base.
    pub prefix: u32,
    /// Bytes kept from the end of the base.
    pub suffix: u32,
    /// The bytes between them.
    pub middle: Vec<u8>,
}

/// A patch is sent only when it is at most this fraction of the object
/// (numerator over [`WORTH_IT_DENOMINATOR`]); otherwise the object goes whole.
const WORTH_IT_NUMERATOR: usize = 1;
const WORTH_IT_DENOMINATOR: usize = 2;

/// Bytes a patch adds to its middle on the wire (two lengths, the base hash).
const PATCH_OVERHEAD_BYTES: usize = 48;

/// Why a patch cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    /// It keeps more bytes of the base than the base has.
    #[error("the patch keeps {kept} bytes of a {base}-byte base")]
    OutOfRange {
        /// Bytes kept (prefix plus suffix).
        kept: u64,
        /// Bytes in the base.
        base: usize,
    },
    /// The result would be larger than any object.
    #[error("the patched object would be {0} bytes, more than any object")]
    TooLarge(u64),
}

/// The patch that turns `base` into `new`, if it is much smaller than `new`.
pub fn diff(base: &[u8], new: &[u8]) -> Option<Patch> {
    let prefix = base.iter().zip(new).take_while(|(a, b)| a == b).count();
    let room = base.len().min(new.len()) - prefix;
    let suffix = base.iter().rev().zip(new.iter().rev()).take(room).take_while(|(a, b)| a == b).count();
    let middle = &new[prefix..new.len() - suffix];
    let worth_it = (middle.len() + PATCH_OVERHEAD_BYTES) * WORTH_IT_DENOMINATOR <= new.len() * WORTH_IT_NUMERATOR;
    let (Ok(prefix), Ok(suffix)) = (u32::try_from(prefix), u32::try_from(suffix)) else { return None };
    worth_it.then(|| Patch { prefix, suffix, middle: middle.to_vec() })
}

/// Applies a patch from a peer to `base`; the result is at most `max` bytes.
/// Hostile lengths are errors, never a panic or a large allocation.
pub fn apply(base: &[u8], patch: &Patch, max: usize) -> Result<Vec<u8>, PatchError> {
    let kept = u64::from(patch.prefix) + u64::from(patch.suffix);
    if kept > base.len() as u64 {
        return Err(PatchError::OutOfRange { kept, base: base.len() });
    }
    let len = kept + patch.middle.len() as u64;
    if len > max as u64 {
        return Err(PatchError::TooLarge(len));
    }
    let (prefix, suffix) = (patch.prefix as usize, patch.suffix as usize);
    let mut out = Vec::with_capacity(len as usize);
    out.extend_from_slice(&base[..prefix]);
    out.extend_from_slice(&patch.middle);
    out.extend_from_slice(&base[base.len() - suffix..]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(base: &[u8], new: &[u8]) -> Option<Patch> {
        let patch = diff(base, new)?;
        assert_eq!(apply(base, &patch, 1 << 20).unwrap(), new);
        Some(patch)
    }

    #[test]
    fn a_one_byte_edit_is_a_one_byte_patch() {
        let base: Vec<u8> = (0..65_536u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut new = base.clone();
        new[40_000] ^= 0xff;
        let patch = round_trip(&base, &new).unwrap();
        assert_eq!((patch.prefix, patch.suffix, patch.middle.len()), (40_000, 25_535, 1));
    }

    #[test]
    fn growing_shrinking_and_repeated_bytes_round_trip() {
        let base = vec![b'a'; 1000];
        // The common prefix and suffix may overlap in a run of equal bytes:
        // neither may take bytes the other took.
        let mut longer = base.clone();
        longer.insert(500, b'a');
        assert_eq!(round_trip(&base, &longer).unwrap().middle, b"a");
        assert_eq!(round_trip(&longer, &base).unwrap().middle.len(), 0);
        let mut appended = base.clone();
        appended.extend_from_slice(b"more");
        assert_eq!(round_trip(&base, &appended).unwrap().middle, b"more");
        assert_eq!(round_trip(&appended, &base).unwrap().middle, b"");
        assert_eq!(round_trip(&base, &base).unwrap().middle, b"");
    }

    #[test]
    fn unrelated_objects_go_whole() {
        let base = vec![1u8; 4096];
        let new = vec![2u8; 4096];
        assert_eq!(diff(&base, &new), None);
        assert_eq!(diff(&[], &new), None);
        assert_eq!(diff(&base, &[]), None, "an empty object is smaller than any patch");
    }

    #[test]
    fn hostile_patches_are_errors() {
        let base = vec![0u8; 100];
        let over = Patch { prefix: 60, suffix: 41, middle: vec![] };
        assert_eq!(apply(&base, &over, 1000), Err(PatchError::OutOfRange { kept: 101, base: 100 }));
        let huge = Patch { prefix: u32::MAX, suffix: u32::MAX, middle: vec![] };
        assert!(matches!(apply(&base, &huge, 1000), Err(PatchError::OutOfRange { .. })));
        let big = Patch { prefix: 50, suffix: 50, middle: vec![0; 2000] };
        assert_eq!(apply(&base, &big, 1000), Err(PatchError::TooLarge(2100)));
    }
}
