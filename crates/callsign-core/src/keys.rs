//! Access keys.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// A resource's access key, as it appears in a connection string: 64 random bytes, padded base64
/// (88 characters). `Debug` never shows it; the text is zeroed when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessKey(String);

impl Drop for AccessKey {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

/// The stored key is not valid base64 of at least 32 bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an access key must be base64 of at least 32 bytes")]
pub struct AccessKeyError;

impl AccessKey {
    /// A fresh key from the operating system's CSPRNG.
    pub fn generate() -> Self {
        let mut bytes = zeroize::Zeroizing::new([0u8; 64]);
        aws_lc_rs::rand::fill(bytes.as_mut()).unwrap_or_else(|_| panic!("the system RNG failed"));
        Self(STANDARD.encode(bytes.as_ref()))
    }

    /// Takes a key from storage or configuration.
    pub fn parse(s: &str) -> Result<Self, AccessKeyError> {
        match STANDARD.decode(s).map(zeroize::Zeroizing::new) {
            Ok(bytes) if bytes.len() >= 32 => Ok(Self(s.to_owned())),
            _ => Err(AccessKeyError),
        }
    }

    /// The base64 text. Handle with care: this is the secret.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AccessKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_padded_base64_of_64_bytes_and_differ() {
        let a = AccessKey::generate();
        let b = AccessKey::generate();
        assert_eq!(a.expose().len(), 88);
        assert_eq!(STANDARD.decode(a.expose()).map(|v| v.len()), Ok(64));
        assert_ne!(a, b);
        assert_eq!(AccessKey::parse(a.expose()), Ok(a.clone()));
        assert_eq!(format!("{a:?}"), "AccessKey(<redacted>)");
    }

    #[test]
    fn short_or_garbled_keys_are_refused() {
        assert_eq!(AccessKey::parse("pw=="), Err(AccessKeyError));
        assert_eq!(AccessKey::parse("***"), Err(AccessKeyError));
    }
}
