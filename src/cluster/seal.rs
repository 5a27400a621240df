//! Sealing what replicas share that would be a credential: token sets,
//! with AES-256-GCM under a key of `--session-key-file`, bound to the Redis
//! key they are stored under (as associated data: a sealed value moved to
//! another token's slot does not open). Without the key nothing in Redis is
//! a usable token.
//!
//! The file holds one key per line (64 hex digits or standard base64 of 32
//! bytes; blank lines and `#` comments ignored). The first seals; every one
//! opens, so keys rotate without a flag day: add the new key as the second
//! line everywhere, then move it first, then drop the old one.
//!
//! Sealed form: `v1.<key id>.<base64(nonce ‖ ciphertext)>`, the key id
//! being the first 4 bytes of SHA-256 of the key, in hex (not secret).

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sha2::{Digest, Sha256};
use std::fmt;

pub struct SessionKeys {
    /// `(id, cipher)`, the sealing key first.
    keys: Vec<(String, Aes256Gcm)>,
}

impl fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("SessionKeys").field("ids", &ids).finish()
    }
}

fn decode_key(line: &str) -> Option<[u8; 32]> {
    if line.len() == 64 {
        return super::hex::unhex(&line.to_ascii_lowercase());
    }
    STANDARD.decode(line).ok()?.try_into().ok()
}

impl SessionKeys {
    /// Parses the file's text; the error names the line, never its content.
    pub fn parse(text: &str) -> Result<SessionKeys, String> {
        let mut keys = Vec::new();
        for (n, line) in text.trim_start_matches('\u{feff}').lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some(raw) = decode_key(line) else {
                return Err(format!(
                    "line {}: expected a 32-byte key as 64 hex digits or base64 (e.g. `openssl rand -hex 32`)",
                    n + 1
                ));
            };
            let id: String = Sha256::digest(raw)[..4]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            keys.push((id, Aes256Gcm::new(&Key::<Aes256Gcm>::from(raw))));
        }
        if keys.is_empty() {
            return Err("no key in the file".into());
        }
        Ok(SessionKeys { keys })
    }

    pub fn seal(&self, plaintext: &[u8], bound_to: &str) -> String {
        let (id, cipher) = &self.keys[0];
        let nonce: [u8; 12] = rand::random();
        let sealed = cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: bound_to.as_bytes(),
                },
            )
            .expect("AES-GCM sealing of a small message cannot fail");
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&sealed);
        format!("v1.{id}.{}", STANDARD.encode(blob))
    }

    /// The plaintext, if `sealed` was sealed by one of the keys for
    /// `bound_to` and not altered.
    pub fn open(&self, sealed: &str, bound_to: &str) -> Option<Vec<u8>> {
        let mut parts = sealed.splitn(3, '.');
        if parts.next()? != "v1" {
            return None;
        }
        let id = parts.next()?;
        let blob = STANDARD.decode(parts.next()?).ok()?;
        if blob.len() < 12 + 16 {
            return None;
        }
        let (_, cipher) = self.keys.iter().find(|(k, _)| k == id)?;
        let nonce: [u8; 12] = blob[..12].try_into().ok()?;
        cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: &blob[12..],
                    aad: bound_to.as_bytes(),
                },
            )
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    #[test]
    fn seals_opens_and_refuses_what_was_moved_altered_or_foreign() {
        let keys = SessionKeys::parse(&format!("# current\n{A}\n")).unwrap();
        let sealed = keys.seal(b"tokens", "slot-1");
        assert!(!sealed.contains("tokens"));
        assert_eq!(
            keys.open(&sealed, "slot-1").as_deref(),
            Some(&b"tokens"[..])
        );
        assert_eq!(keys.open(&sealed, "slot-2"), None, "moved to another slot");
        let mut bytes = sealed.clone().into_bytes();
        let last = bytes.len() - 3;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            keys.open(&String::from_utf8(bytes).unwrap(), "slot-1"),
            None
        );
        let other = SessionKeys::parse(&STANDARD.encode([7u8; 32])).unwrap();
        assert_eq!(
            other.open(&sealed, "slot-1"),
            None,
            "another deployment's key"
        );
        assert_eq!(keys.open("v1.x.%%%", "slot-1"), None);
    }

    #[test]
    fn a_rotation_opens_with_the_old_key_and_seals_with_the_new() {
        let old = SessionKeys::parse(A).unwrap();
        let new_key = STANDARD.encode([9u8; 32]);
        let both = SessionKeys::parse(&format!("{new_key}\n{A}")).unwrap();
        let by_old = old.seal(b"x", "k");
        assert_eq!(both.open(&by_old, "k").as_deref(), Some(&b"x"[..]));
        assert_eq!(old.open(&both.seal(b"y", "k"), "k"), None);
    }

    #[test]
    fn bad_files_are_refused_without_echoing_them() {
        let e = SessionKeys::parse("tooshort-secret-value").unwrap_err();
        assert!(e.contains("line 1") && !e.contains("tooshort"));
        assert!(SessionKeys::parse("# only a comment\n").is_err());
    }
}
