//! Adding a device: a short one-time code, a password-authenticated key
//! exchange (SPAKE2) through a one-use mailbox on the signalling server, and
//! messages authenticated with the exchanged key. The server learns nothing
//! that lets it pass the check and gets one guess per code: a wrong guess
//! fails the key confirmation and the inviter burns the mailbox.
//!
//! The code is `NNNN-word-word`: the mailbox number, then the password (two
//! words of 256, 16 bits, which never leave the two devices).

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use psync_base::codec;
use serde::{Deserialize, Serialize};
use spake2::{Ed25519Group, Identity, Password, Spake2};

use crate::identity::PublicKey;
use crate::relay::seal::{ContentKey, NONCE_BYTES};
use crate::roster::RosterEntry;

/// The words of invite codes.
pub const WORDS: [&str; 256] = [
    "acid", "acorn", "actor", "adobe", "agent", "alarm", "album", "alert", "alloy", "amber", "angle", "ankle", "apple",
    "april", "apron", "arena", "argon", "armor", "arrow", "aspen", "atlas", "atom", "attic", "audio", "autumn",
    "avenue", "award", "bacon", "badge", "bagel", "baker", "bamboo", "banana", "banjo", "barley", "basil", "basin",
    "batch", "beach", "beacon", "bean", "beard", "beaver", "bell", "berry", "bike", "birch", "bison", "blade",
    "blanket", "blaze", "blend", "bloom", "board", "bolt", "bonus", "book", "boot", "border", "bottle", "boulder",
    "bowl", "brain", "branch", "brass", "bread", "breeze", "brick", "bridge", "brook", "broom", "bubble", "bucket",
    "buffalo", "bugle", "bunny", "butter", "button", "cabin", "cable", "cactus", "camel", "camera", "candle", "canoe",
    "canyon", "carbon", "carpet", "carrot", "castle", "cedar", "cement", "cereal", "chalk", "cherry", "chess", "chili",
    "cider", "circle", "citrus", "clay", "cliff", "clock", "cloud", "clover", "coast", "cobalt", "cocoa", "comet",
    "coral", "cotton", "cousin", "crane", "crater", "crayon", "creek", "cricket", "crown", "crystal", "cube",
    "curtain", "cycle", "daisy", "dancer", "delta", "desert", "diamond", "dinner", "dolphin", "domain", "donkey",
    "dragon", "drum", "eagle", "earth", "echo", "elbow", "ember", "engine", "fabric", "falcon", "feather", "fennel",
    "fern", "ferry", "fiddle", "field", "finch", "flame", "flute", "fog", "forest", "fossil", "fox", "galaxy",
    "garden", "garlic", "gecko", "ginger", "glacier", "globe", "glove", "granite", "grape", "gravel", "guitar",
    "hammer", "harbor", "hazel", "heron", "hill", "honey", "horizon", "island", "ivory", "jacket", "jasmine", "jelly",
    "jungle", "kayak", "kettle", "kiwi", "ladder", "lagoon", "lake", "lantern", "laser", "lemon", "lentil", "lilac",
    "lily", "lime", "linen", "lizard", "lobster", "lotus", "magnet", "mango", "maple", "marble", "meadow", "melon",
    "meteor", "mint", "mirror", "monkey", "moss", "mountain", "muffin", "nectar", "needle", "nickel", "noodle", "oak",
    "oasis", "ocean", "olive", "onion", "orange", "orbit", "orchid", "otter", "owl", "oyster", "paddle", "palm",
    "panda", "paper", "parrot", "peach", "pebble", "pepper", "piano", "pillow", "pine", "planet", "plum", "pocket",
    "pony", "poppy", "prairie", "puzzle", "quartz", "quill", "rabbit", "radar", "radish", "rain", "raven", "reef",
    "ribbon", "river", "robin", "rocket", "rose", "ruby",
];

/// A parsed invite code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InviteCode {
    /// The mailbox on the server.
    pub mailbox: u32,
    /// The password (the two words).
    pub password: String,
}

/// Why an invite failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InviteError {
    /// Not `NNNN-word-word`.
    #[error("an invite code looks like 1234-apple-river")]
    BadCode,
    /// The other side used another code (or is not who it claims).
    #[error("the code did not match; the invite is burned, run `psync invite` again")]
    WrongCode,
    /// A message did not decode.
    #[error("unexpected invite message")]
    Unexpected,
    /// A device name that is empty, too long or holds control characters.
    #[error("device name {0:?}: {1}")]
    BadName(String, &'static str),
}

/// The longest DTLS fingerprint text (bytes): `sha-256` and 32 hex pairs is 103.
const MAX_FINGERPRINT_BYTES: usize = 256;

/// The longest device name (bytes): names are shown in one line.
pub const MAX_DEVICE_NAME_BYTES: usize = 64;

/// A device name people can read: not empty, at most
/// [`MAX_DEVICE_NAME_BYTES`], no control characters (which a terminal
/// would obey when the name is shown).
pub fn check_device_name(name: &str) -> Result<(), InviteError> {
    if name.trim().is_empty() {
        return Err(InviteError::BadName(name.into(), "empty"));
    }
    if name.len() > MAX_DEVICE_NAME_BYTES {
        let shown: String = name.chars().take(16).collect();
        return Err(InviteError::BadName(shown, "longer than 64 bytes"));
    }
    if name.chars().any(char::is_control) {
        return Err(InviteError::BadName(name.into(), "holds control characters"));
    }
    Ok(())
}

impl InviteCode {
    /// A new code for `mailbox` with two random words.
    pub fn generate(mailbox: u32) -> InviteCode {
        let a = WORDS[rand::random::<u8>() as usize];
        let b = WORDS[rand::random::<u8>() as usize];
        InviteCode { mailbox, password: format!("{a}-{b}") }
    }

    /// Parses `1234-apple-river`.
    pub fn parse(text: &str) -> Result<InviteCode, InviteError> {
        let parts: Vec<&str> = text.trim().split('-').collect();
        let [number, a, b] = parts.as_slice() else { return Err(InviteError::BadCode) };
        let mailbox: u32 = number.parse().map_err(|_| InviteError::BadCode)?;
        let (a, b) = (a.to_ascii_lowercase(), b.to_ascii_lowercase());
        if !(1000..10_000).contains(&mailbox) || !WORDS.contains(&a.as_str()) || !WORDS.contains(&b.as_str()) {
            return Err(InviteError::BadCode);
        }
        Ok(InviteCode { mailbox, password: format!("{a}-{b}") })
    }
}

impl std::fmt::Display for InviteCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.mailbox, self.password)
    }
}

/// What the two devices send each other through the mailbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum InviteMessage {
    /// A SPAKE2 message.
    Pake(Vec<u8>),
    /// The new device introduces itself (authenticated by the shared key).
    Introduce {
        /// Its public key.
        key: PublicKey,
        /// Its name.
        name: String,
        /// Its DTLS fingerprint.
        dtls_fingerprint: String,
        /// MAC under the exchanged key.
        mac: [u8; 32],
    },
    /// The inviter answers with the group's roster, now including the new
    /// device, and the group's content key (encrypted under the exchanged
    /// key: the server relaying the mailbox never sees it).
    Welcome {
        /// The roster log.
        roster: Vec<RosterEntry>,
        /// The content key sealed under the exchanged key (empty: none).
        content_key: Vec<u8>,
        /// MAC under the exchanged key, over both.
        mac: [u8; 32],
    },
}

impl InviteMessage {
    /// Encodes for the mailbox.
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self).unwrap_or_default()
    }

    /// Decodes from the mailbox.
    pub fn decode(bytes: &[u8]) -> Result<InviteMessage, InviteError> {
        codec::decode(bytes).map_err(|_| InviteError::Unexpected)
    }
}

/// One side's half-finished exchange.
pub struct Pake {
    state: Spake2<Ed25519Group>,
}

impl std::fmt::Debug for Pake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pake(..)")
    }
}

/// The key both sides derive when they used the same code.
#[derive(Clone)]
pub struct SharedKey([u8; 32]);

impl std::fmt::Debug for SharedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedKey(redacted)")
    }
}

impl Pake {
    /// Starts the exchange for `code`; returns the message to send.
    pub fn start(code: &InviteCode) -> (Pake, Vec<u8>) {
        let identity = Identity::new(format!("psync-invite-v1:{}", code.mailbox).as_bytes());
        let (state, message) =
            Spake2::<Ed25519Group>::start_symmetric(&Password::new(code.password.as_bytes()), &identity);
        (Pake { state }, message)
    }

    /// Finishes with the other side's message.
    pub fn finish(self, theirs: &[u8]) -> Result<SharedKey, InviteError> {
        let key = self.state.finish(theirs).map_err(|_| InviteError::WrongCode)?;
        Ok(SharedKey(blake3::derive_key("psync invite v1 mac key", &key)))
    }
}

impl SharedKey {
    fn mac(&self, label: &str, body: &[u8]) -> [u8; 32] {
        let mut data = label.as_bytes().to_vec();
        data.push(0);
        data.extend_from_slice(body);
        *blake3::keyed_hash(&self.0, &data).as_bytes()
    }

    /// The new device's introduction.
    pub fn introduce(&self, key: PublicKey, name: &str, dtls_fingerprint: &str) -> InviteMessage {
        let body = codec::encode(&(key, name, dtls_fingerprint)).unwrap_or_default();
        InviteMessage::Introduce {
            key,
            name: name.to_string(),
            dtls_fingerprint: dtls_fingerprint.to_string(),
            mac: self.mac("introduce", &body),
        }
    }

    /// Checks an introduction; a mismatch means another code was used.
    pub fn check_introduction(&self, message: &InviteMessage) -> Result<(PublicKey, String, String), InviteError> {
        let InviteMessage::Introduce { key, name, dtls_fingerprint, mac } = message else {
            return Err(InviteError::Unexpected);
        };
        let body = codec::encode(&(key, name, dtls_fingerprint)).unwrap_or_default();
        if !constant_time_eq(mac, &self.mac("introduce", &body)) {
            return Err(InviteError::WrongCode);
        }
        check_device_name(name)?;
        if dtls_fingerprint.len() > MAX_FINGERPRINT_BYTES || dtls_fingerprint.chars().any(char::is_control) {
            return Err(InviteError::Unexpected);
        }
        Ok((*key, name.clone(), dtls_fingerprint.clone()))
    }

    fn key_cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(&blake3::derive_key("psync invite v1 content key", &self.0).into())
    }

    /// The inviter's answer.
    pub fn welcome(&self, roster: Vec<RosterEntry>, content_key: Option<&ContentKey>) -> InviteMessage {
        let content_key = content_key.map_or_else(Vec::new, |key| {
            let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
            let mut plain = zeroize::Zeroizing::new(key.epoch().to_le_bytes().to_vec());
            plain.extend_from_slice(key.bytes());
            let sealed = self.key_cipher().encrypt(&nonce, plain.as_slice()).unwrap_or_default();
            [nonce.as_slice(), &sealed].concat()
        });
        let body = codec::encode(&(&roster, &content_key)).unwrap_or_default();
        InviteMessage::Welcome { mac: self.mac("welcome", &body), roster, content_key }
    }

    /// Checks the answer and returns the roster log and the content key.
    pub fn check_welcome(&self, message: InviteMessage) -> Result<(Vec<RosterEntry>, Option<ContentKey>), InviteError> {
        let InviteMessage::Welcome { roster, content_key, mac } = message else { return Err(InviteError::Unexpected) };
        let body = codec::encode(&(&roster, &content_key)).unwrap_or_default();
        if !constant_time_eq(&mac, &self.mac("welcome", &body)) {
            return Err(InviteError::WrongCode);
        }
        if content_key.is_empty() {
            return Ok((roster, None));
        }
        let (nonce, sealed) = content_key.split_at_checked(NONCE_BYTES).ok_or(InviteError::Unexpected)?;
        let plain = zeroize::Zeroizing::new(
            self.key_cipher().decrypt(XNonce::from_slice(nonce), sealed).map_err(|_| InviteError::WrongCode)?,
        );
        let (epoch, key) = plain.split_at_checked(4).ok_or(InviteError::Unexpected)?;
        let epoch = u32::from_le_bytes(epoch.try_into().map_err(|_| InviteError::Unexpected)?);
        let key: [u8; 32] = key.try_into().map_err(|_| InviteError::Unexpected)?;
        Ok((roster, Some(ContentKey::from_bytes(epoch, key))))
    }
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::DeviceKey;

    #[test]
    fn codes_parse_and_print() {
        let code = InviteCode::generate(4321);
        assert_eq!(InviteCode::parse(&code.to_string()).unwrap(), code);
        assert_eq!(InviteCode::parse("1234-Apple-RIVER").unwrap().password, "apple-river");
        for bad in ["", "1234", "abcd-apple-river", "1234-apple-notaword", "99-apple-river", "1234-apple-river-x"] {
            assert_eq!(InviteCode::parse(bad), Err(InviteError::BadCode), "{bad:?}");
        }
        assert_eq!(WORDS.iter().collect::<std::collections::BTreeSet<_>>().len(), 256, "words are distinct");
    }

    #[test]
    fn the_same_code_agrees_and_a_wrong_one_is_caught() {
        let code = InviteCode::parse("2048-apple-river").unwrap();
        let (inviter, msg_i) = Pake::start(&code);
        let (joiner, msg_j) = Pake::start(&code);
        let (ki, kj) = (inviter.finish(&msg_j).unwrap(), joiner.finish(&msg_i).unwrap());
        let device = DeviceKey::generate();
        let intro = kj.introduce(device.public(), "laptop", "sha-256 AA");
        assert_eq!(ki.check_introduction(&intro).unwrap().0, device.public());
        // A name the inviter's terminal would obey, or one too long to show, is refused.
        for bad in ["evil\u{1b}]52;c;aGk=\u{7}", "", &"n".repeat(MAX_DEVICE_NAME_BYTES + 1)] {
            let intro = kj.introduce(device.public(), bad, "sha-256 AA");
            assert!(matches!(ki.check_introduction(&intro), Err(InviteError::BadName(..))), "{bad:?}");
        }
        assert!(check_device_name("Anna's laptop (2)").is_ok());
        let content = ContentKey::generate(3);
        let welcome = ki.welcome(vec![], Some(&content));
        let (roster, got) = kj.check_welcome(welcome.clone()).unwrap();
        assert_eq!(roster, vec![]);
        let got = got.expect("the content key arrived");
        assert_eq!((got.epoch(), got.bytes()), (3, content.bytes()));
        // The key is encrypted, not only authenticated: its bytes are not in the message.
        let encoded = welcome.encode();
        assert!(!encoded.windows(32).any(|w| w == content.bytes()));
        let InviteMessage::Welcome { roster, mut content_key, mac } = welcome else { unreachable!() };
        content_key[30] ^= 1;
        assert!(kj.check_welcome(InviteMessage::Welcome { roster, content_key, mac }).is_err());
        assert!(kj.check_welcome(ki.welcome(vec![], None)).unwrap().1.is_none());

        let wrong = InviteCode::parse("2048-apple-robin").unwrap();
        let (inviter, msg_i) = Pake::start(&code);
        let (attacker, msg_a) = Pake::start(&wrong);
        let (ki, ka) = (inviter.finish(&msg_a).unwrap(), attacker.finish(&msg_i).unwrap());
        let intro = ka.introduce(device.public(), "evil", "");
        assert_eq!(ki.check_introduction(&intro), Err(InviteError::WrongCode));
        // Whoever guessed wrong cannot open a welcome either.
        assert!(ka.check_welcome(ki.welcome(vec![], Some(&content))).is_err());
    }
}
