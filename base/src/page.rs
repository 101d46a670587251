//! Pages of block hashes: how a large file's block list is stored (the
//! store keeps every file's list this way) and sent (a record of a file
//! with more than a page of blocks names its pages, fetched like blocks).
//! One format for both, so a page's hash means the same on every device.
//!
//! A page holds up to [`BLOCKS_PER_PAGE`] entries, `None` for a hole, with
//! no trailing hole (a page of holes is no page at all: `None` in the list
//! of pages). Encoded with [`crate::codec`], hashed with BLAKE3.

use crate::codec::{self, CodecError};
use crate::ContentHash;

/// Block hashes per page (a page covers 16 MiB of a file).
pub const BLOCKS_PER_PAGE: usize = 256;

/// Encoded bytes of the largest page: a length prefix and 256 entries of a
/// tag and a 32-byte string each.
pub const MAX_PAGE_BYTES: usize = 3 + BLOCKS_PER_PAGE * 34;

/// Why bytes are not a page.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    /// Not a list of hashes.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// Empty, longer than a page, or ending in a hole.
    #[error("not a canonical page of block hashes ({0} entries)")]
    NotCanonical(usize),
}

/// The bytes of a page (`blocks` canonical: 1-256 entries, last one `Some`).
pub fn encode_page(blocks: &[Option<ContentHash>]) -> Result<Vec<u8>, CodecError> {
    codec::encode(blocks)
}

/// A page's entries, checked to be canonical.
pub fn decode_page(bytes: &[u8]) -> Result<Vec<Option<ContentHash>>, PageError> {
    if bytes.len() > MAX_PAGE_BYTES {
        return Err(CodecError::TooLarge(bytes.len()).into());
    }
    let blocks: Vec<Option<ContentHash>> = codec::decode(bytes)?;
    if blocks.is_empty() || blocks.len() > BLOCKS_PER_PAGE || blocks.last() == Some(&None) {
        return Err(PageError::NotCanonical(blocks.len()));
    }
    Ok(blocks)
}

/// Splits a block list into canonical pages (`None`: a page of holes) with
/// no trailing `None`.
pub fn paginate(blocks: &[Option<ContentHash>]) -> Vec<Option<Vec<Option<ContentHash>>>> {
    let mut pages: Vec<Option<Vec<Option<ContentHash>>>> = blocks
        .chunks(BLOCKS_PER_PAGE)
        .map(|chunk| {
            let used = chunk.iter().rposition(Option::is_some).map_or(0, |last| last + 1);
            (used > 0).then(|| chunk[..used].to_vec())
        })
        .collect();
    while pages.last() == Some(&None) {
        pages.pop();
    }
    pages
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_canonical_and_round_trip() {
        let h = |n: u8| Some(ContentHash([n; 32]));
        let mut blocks = vec![None; 600];
        blocks[1] = h(1);
        blocks[300] = h(2);
        let pages = paginate(&blocks);
        assert_eq!(pages.len(), 2, "the third page is all holes and trailing: dropped");
        assert_eq!(pages[0].as_deref(), Some(&[None, h(1)][..]), "trailing holes trimmed");
        let bytes = encode_page(pages[1].as_deref().unwrap()).unwrap();
        assert!(bytes.len() <= MAX_PAGE_BYTES);
        assert_eq!(decode_page(&bytes).unwrap(), pages[1].clone().unwrap());
        let full = encode_page(&vec![h(9); BLOCKS_PER_PAGE]).unwrap();
        assert!(full.len() <= MAX_PAGE_BYTES, "{} bytes", full.len());
        for bad in [vec![], vec![h(1), None], vec![h(1); BLOCKS_PER_PAGE + 1]] {
            assert!(decode_page(&codec::encode(&bad).unwrap()).is_err(), "{} entries", bad.len());
        }
        assert!(decode_page(b"\xff\xff").is_err());
    }
}
