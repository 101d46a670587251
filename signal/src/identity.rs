//! A device's long-term identity: an Ed25519 key pair. The device id is the
//! BLAKE3 hash of the public key, shown in readable groups.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use curve25519_dalek::MontgomeryPoint;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use psync_base::DeviceId;
use serde::{Deserialize, Serialize};

/// Why an identity could not be loaded or a signature was refused.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Reading or writing the key file failed.
    #[error("key file {0}: {1}")]
    Io(String, std::io::Error),
    /// The key file is readable by others.
    #[error("key file {0} is readable by other users (mode {1:o}); run `chmod 600 {0}`")]
    TooOpen(String, u32),
    /// The key file does not hold a key.
    #[error("key file {0} is not a PSync device key")]
    Malformed(String),
    /// A signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// A public key is not a valid Ed25519 point.
    #[error("invalid public key")]
    BadKey,
}

/// A device's public key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublicKey(pub [u8; 32]);

psync_base::bytes32_serde!(PublicKey);

impl PublicKey {
    /// The device id this key stands for.
    pub fn device_id(&self) -> DeviceId {
        DeviceId::from_key_bytes(&self.0)
    }

    /// The key in Montgomery form, for X25519 (`None`: not a valid key).
    pub fn x25519_point(&self) -> Option<[u8; 32]> {
        VerifyingKey::from_bytes(&self.0).ok().map(|k| k.to_montgomery().to_bytes())
    }

    /// Checks `signature` over `domain` and `message` (strict verification:
    /// no malleable or small-order signatures).
    pub fn verify(&self, domain: &str, message: &[u8], signature: &SignatureBytes) -> Result<(), IdentityError> {
        let key = VerifyingKey::from_bytes(&self.0).map_err(|_| IdentityError::BadKey)?;
        let sig = Signature::from_bytes(&signature.0);
        key.verify_strict(&signed_bytes(domain, message), &sig).map_err(|_| IdentityError::BadSignature)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key:{}", readable_id(&self.device_id()))
    }
}

/// An Ed25519 signature (64 bytes).
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignatureBytes(#[serde(with = "sig_bytes")] pub [u8; 64]);

impl fmt::Debug for SignatureBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sig:{:02x}{:02x}..", self.0[0], self.0[1])
    }
}

mod sig_bytes {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8; 64], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 64], D::Error> {
        let bytes: Vec<u8> = serde::de::Deserialize::deserialize(d)?;
        bytes.try_into().map_err(|_| serde::de::Error::custom("a signature is 64 bytes"))
    }
}

/// Domain separation: a signature made for one purpose never verifies for another.
fn signed_bytes(domain: &str, message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(domain.len() + 1 + message.len());
    out.extend_from_slice(domain.as_bytes());
    out.push(0);
    out.extend_from_slice(message);
    out
}

/// A device's secret key. Zeroized when dropped; never printed.
pub struct DeviceKey {
    key: SigningKey,
}

impl fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceKey({:?}, secret redacted)", self.public())
    }
}

impl DeviceKey {
    /// A new random key.
    pub fn generate() -> Self {
        Self { key: SigningKey::from_bytes(&rand::random::<[u8; 32]>()) }
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.key.verifying_key().to_bytes())
    }

    /// Signs `message` for `domain`.
    pub fn sign(&self, domain: &str, message: &[u8]) -> SignatureBytes {
        SignatureBytes(self.key.sign(&signed_bytes(domain, message)).to_bytes())
    }

    /// X25519 with this device's key in Montgomery form (RFC 7748 over the
    /// same scalar as its Ed25519 key): for wrapping the group's content
    /// key to this device, nothing else. `None` for a low-order point.
    pub(crate) fn x25519(&self, their_point: &[u8; 32]) -> Option<[u8; 32]> {
        let shared = MontgomeryPoint(*their_point).mul_clamped(self.key.to_scalar_bytes()).to_bytes();
        (shared != [0; 32]).then_some(shared)
    }

    /// Writes the key to `path`, readable by the owner only.
    pub fn save(&self, path: &Path) -> Result<(), IdentityError> {
        let name = path.display().to_string();
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| IdentityError::Io(name.clone(), e))?;
        file.write_all(b"psync-device-key-v1\n").map_err(|e| IdentityError::Io(name.clone(), e))?;
        file.write_all(&self.key.to_bytes()).map_err(|e| IdentityError::Io(name.clone(), e))?;
        file.sync_all().map_err(|e| IdentityError::Io(name, e))
    }

    /// Reads a key written by [`DeviceKey::save`]; refuses a file others can read.
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        let name = path.display().to_string();
        let meta = std::fs::metadata(path).map_err(|e| IdentityError::Io(name.clone(), e))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(IdentityError::TooOpen(name, mode));
        }
        let bytes = std::fs::read(path).map_err(|e| IdentityError::Io(name.clone(), e))?;
        let secret: [u8; 32] = bytes
            .strip_prefix(b"psync-device-key-v1\n")
            .and_then(|rest| rest.try_into().ok())
            .ok_or(IdentityError::Malformed(name))?;
        Ok(Self { key: SigningKey::from_bytes(&secret) })
    }
}

/// A device id as people read it: 8 groups of 4 base32 characters.
pub fn readable_id(id: &DeviceId) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut bits: u64 = 0;
    let mut nbits = 0;
    let mut out = String::new();
    for byte in &id.0[..20] {
        bits = (bits << 8) | u64::from(*byte);
        nbits += 8;
        while nbits >= 5 {
            nbits -= 5;
            out.push(ALPHABET[((bits >> nbits) & 31) as usize] as char);
        }
    }
    out.as_bytes().chunks(4).map(|c| String::from_utf8_lossy(c).into_owned()).collect::<Vec<_>>().join("-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_bound_to_their_domain() {
        let key = DeviceKey::generate();
        let sig = key.sign("psync/test/v1", b"hello");
        key.public().verify("psync/test/v1", b"hello", &sig).unwrap();
        assert!(key.public().verify("psync/other/v1", b"hello", &sig).is_err());
        assert!(key.public().verify("psync/test/v1", b"hellO", &sig).is_err());
        assert!(DeviceKey::generate().public().verify("psync/test/v1", b"hello", &sig).is_err());
    }

    #[test]
    fn keys_are_saved_private_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("device.key");
        let key = DeviceKey::generate();
        key.save(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(DeviceKey::load(&path).unwrap().public(), key.public());
        assert!(key.save(&path).is_err(), "never overwrites a key");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(DeviceKey::load(&path), Err(IdentityError::TooOpen(..))));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, b"garbage").unwrap();
        assert!(matches!(DeviceKey::load(&path), Err(IdentityError::Malformed(_))));
        assert!(!format!("{key:?}").contains(&format!("{:?}", key.key.to_bytes())), "secret never printed");
    }

    #[test]
    fn readable_ids() {
        let id = readable_id(&DeviceKey::generate().public().device_id());
        assert_eq!(id.len(), 8 * 4 + 7);
        assert!(id.chars().all(|c| c == '-' || c.is_ascii_uppercase() || ('2'..='7').contains(&c)));
    }
}
