use std::fmt;

/// A BLAKE3 hash of some content (a block, a page of block hashes).
/// Encoded as a 32-byte string (as a 32-tuple, decoding took 14% of a write).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContentHash(pub [u8; 32]);

/// Serde for a newtype over `[u8; 32]` as a 32-byte string (serde would
/// otherwise treat the array as a 32-tuple and decode it element by element).
/// The using crate needs `serde` as a dependency.
#[macro_export]
macro_rules! bytes32_serde {
    ($ty:ident) => {
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_bytes(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct Visitor;
                impl serde::de::Visitor<'_> for Visitor {
                    type Value = $ty;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str("32 bytes")
                    }
                    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<$ty, E> {
                        let bytes: [u8; 32] = v.try_into().map_err(|_| E::invalid_length(v.len(), &self))?;
                        Ok($ty(bytes))
                    }
                    fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<$ty, E> {
                        self.visit_bytes(&v)
                    }
                }
                deserializer.deserialize_bytes(Visitor)
            }
        }
    };
}

bytes32_serde!(ContentHash);

impl ContentHash {
    /// Hashes `data`.
    pub fn of(data: &[u8]) -> Self {
        Self(*blake3::hash(data).as_bytes())
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lower-case hex, 64 characters.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses 64 hex characters.
    pub fn from_hex(s: &str) -> Result<Self, HashParseError> {
        let bytes = s.as_bytes();
        if bytes.len() != 64 {
            return Err(HashParseError);
        }
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks(2).enumerate() {
            let text = std::str::from_utf8(pair).map_err(|_| HashParseError)?;
            out[i] = u8::from_str_radix(text, 16).map_err(|_| HashParseError)?;
        }
        Ok(Self(out))
    }
}

impl fmt::Debug for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", &self.to_hex()[..12])
    }
}

impl fmt::Display for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// A string that is not 64 hex characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a 64-character hex hash")]
pub struct HashParseError;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_as_a_byte_string() {
        let h = ContentHash([7; 32]);
        let bytes = crate::codec::encode(&h).unwrap();
        assert_eq!(bytes.len(), 33);
        assert_eq!(bytes[0], 32);
        assert_eq!(crate::codec::decode::<ContentHash>(&bytes).unwrap(), h);
        assert!(crate::codec::decode::<ContentHash>(&[3, 1, 2, 3]).is_err(), "wrong length is rejected");
    }

    #[test]
    fn hex_round_trip() {
        let h = ContentHash::of(b"psync");
        assert_eq!(ContentHash::from_hex(&h.to_hex()), Ok(h));
        assert_eq!(ContentHash::from_hex("zz"), Err(HashParseError));
    }
}
