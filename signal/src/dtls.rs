//! Each device's DTLS certificate for WebRTC, made once and kept, so its
//! fingerprint is stable and the roster can pin it: a peer (or a signalling
//! server in the middle) presenting another certificate is refused.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::identity::IdentityError;

/// File name in the data dir (certificate and private key, mode 0600).
pub const DTLS_FILE: &str = "dtls.pem";

/// A self-signed ECDSA P-256 certificate and its key, in PEM.
pub struct DtlsCertificate {
    /// The certificate.
    pub cert_pem: String,
    /// The private key.
    key_pem: String,
    der: Vec<u8>,
}

impl std::fmt::Debug for DtlsCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DtlsCertificate({}, key redacted)", self.fingerprint())
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> IdentityError + '_ {
    move |e| IdentityError::Io(path.display().to_string(), e)
}

impl DtlsCertificate {
    /// A new certificate.
    pub fn generate() -> Result<Self, IdentityError> {
        let key = rcgen::KeyPair::generate().map_err(|_| IdentityError::Malformed("new DTLS key".into()))?;
        let params = rcgen::CertificateParams::new(vec!["psync".to_string()])
            .map_err(|_| IdentityError::Malformed("DTLS certificate parameters".into()))?;
        let cert = params.self_signed(&key).map_err(|_| IdentityError::Malformed("DTLS certificate".into()))?;
        Ok(Self { cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().to_vec() })
    }

    /// The private key in PEM (for the WebRTC stack).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The fingerprint as SDP writes it: `sha-256 AB:CD:...`.
    pub fn fingerprint(&self) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, &self.der);
        let hex: Vec<String> = digest.as_ref().iter().map(|b| format!("{b:02X}")).collect();
        format!("sha-256 {}", hex.join(":"))
    }

    /// Writes certificate and key to `dir`, readable by the owner only; never overwrites.
    pub fn save(&self, dir: &Path) -> Result<(), IdentityError> {
        let path = dir.join(DTLS_FILE);
        let mut file =
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).map_err(io(&path))?;
        file.write_all(self.key_pem.as_bytes()).map_err(io(&path))?;
        file.write_all(self.cert_pem.as_bytes()).map_err(io(&path))?;
        file.sync_all().map_err(io(&path))
    }

    /// Reads what [`DtlsCertificate::save`] wrote.
    pub fn load(dir: &Path) -> Result<Self, IdentityError> {
        use rustls_pki_types::pem::PemObject;
        let path = dir.join(DTLS_FILE);
        let name = path.display().to_string();
        let mode = std::fs::metadata(&path).map_err(io(&path))?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(IdentityError::TooOpen(name, mode));
        }
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        let cert = rustls_pki_types::CertificateDer::from_pem_slice(text.as_bytes())
            .map_err(|_| IdentityError::Malformed(name.clone()))?;
        let start = text.find("-----BEGIN CERTIFICATE-----").ok_or(IdentityError::Malformed(name))?;
        Ok(Self { key_pem: text[..start].to_string(), cert_pem: text[start..].to_string(), der: cert.to_vec() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_is_stable_and_sdp_shaped() {
        let dir = tempfile::tempdir().unwrap();
        let cert = DtlsCertificate::generate().unwrap();
        cert.save(dir.path()).unwrap();
        let loaded = DtlsCertificate::load(dir.path()).unwrap();
        assert_eq!(loaded.fingerprint(), cert.fingerprint());
        assert_eq!(loaded.key_pem(), cert.key_pem());
        let fp = cert.fingerprint();
        assert_eq!(fp.len(), "sha-256 ".len() + 32 * 3 - 1);
        let sdp = format!("v=0\r\na=fingerprint:{fp}\r\n");
        assert!(crate::envelope::sdp_matches_fingerprint(&sdp, &fp));
        assert_ne!(DtlsCertificate::generate().unwrap().fingerprint(), fp);
        assert!(cert.save(dir.path()).is_err(), "never overwrites");
        std::fs::set_permissions(dir.path().join(DTLS_FILE), std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(DtlsCertificate::load(dir.path()), Err(IdentityError::TooOpen(..))));
    }
}
