//! The one place PSync turns values into bytes and back.
//!
//! Everything persisted or sent on the wire goes through [`encode`] and
//! [`decode`]: bincode 2 (serde mode, fixed-width-free varint encoding, little
//! endian) with a hard byte limit, so a hostile or corrupt length prefix can
//! never make the decoder allocate more than [`MAX_MESSAGE_BYTES`].

use serde::{de::DeserializeOwned, Serialize};

/// Upper bound for any single encoded value (a record, a frame).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Why a value could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The value does not fit the byte limit or the encoder failed.
    #[error("cannot encode value: {0}")]
    Encode(String),
    /// The bytes are not a valid encoding of the expected type.
    #[error("malformed data: {0}")]
    Decode(String),
    /// The bytes decoded but were followed by garbage.
    #[error("malformed data: {0} trailing bytes after the value")]
    TrailingBytes(usize),
    /// The input is longer than the limit.
    #[error("data of {0} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit")]
    TooLarge(usize),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_MESSAGE_BYTES>()
}

/// Encodes `value`, failing if the result would exceed [`MAX_MESSAGE_BYTES`].
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    let bytes = bincode::serde::encode_to_vec(value, config()).map_err(|e| CodecError::Encode(e.to_string()))?;
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(CodecError::TooLarge(bytes.len()));
    }
    Ok(bytes)
}

/// Decodes exactly one `T` from `bytes`; trailing bytes are an error.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(CodecError::TooLarge(bytes.len()));
    }
    let (value, used) =
        bincode::serde::decode_from_slice(bytes, config()).map_err(|e| CodecError::Decode(e.to_string()))?;
    if used != bytes.len() {
        return Err(CodecError::TrailingBytes(bytes.len() - used));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let v: Vec<u64> = vec![1, 2, 300];
        let bytes = encode(&v).unwrap();
        assert_eq!(decode::<Vec<u64>>(&bytes).unwrap(), v);
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(matches!(decode::<Vec<u64>>(&extra), Err(CodecError::TrailingBytes(1))));
        assert!(matches!(decode::<Vec<u64>>(&bytes[..2]), Err(CodecError::Decode(_))));
    }

    #[test]
    fn hostile_length_prefix_does_not_allocate() {
        // A Vec<u8> claiming u64::MAX elements: varint 0xFF + 8 bytes.
        let mut bytes = vec![0xFF];
        bytes.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode::<Vec<u8>>(&bytes).is_err());
    }

    #[test]
    fn pins_the_encoding() {
        // The byte layout is part of the on-disk and wire format.
        assert_eq!(encode(&(7u8, 300u64, "a")).unwrap(), vec![7, 251, 44, 1, 1, b'a']);
    }
}
