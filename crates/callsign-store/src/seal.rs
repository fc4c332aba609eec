//! Sealed key material: access keys and signing private keys encrypted in the store under a
//! master key (a key-encryption key kept outside the store), so that a copy of the database
//! mints nothing without it.
//!
//! A sealed value is `sealed:v1:<master key id>:<base64(nonce ‖ ciphertext ‖ tag)>`, AES-256-GCM
//! with a random nonce, its additional data naming the slot it belongs in (`access-key:<resource>:
//! primary`, `signing-key:<kid>`), so a sealed value cannot be moved to another slot. The master
//! key id (the first 8 bytes of SHA-256 of the key, in hex) says which master key sealed a value,
//! so a store can be re-sealed under a new master key while the old one is still known
//! ([`Sealer::with_previous`]).

use std::fmt;
use std::path::Path;

use aws_lc_rs::aead::{AES_256_GCM, Aad, NONCE_LEN, Nonce, RandomizedNonceKey};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use zeroize::Zeroizing;

use crate::StoreError;

const PREFIX: &str = "sealed:v1:";

/// Why a master key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum MasterKeyError {
    /// The file cannot be read or written.
    #[error("cannot use the master key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The file does not hold 32 bytes of base64.
    #[error("the master key file {0} must hold 32 random bytes in base64 (44 characters)")]
    Format(String),
    /// Others can read the file, or it belongs to another user.
    #[error(
        "the master key file {0} is readable by other users or belongs to another user; it must be the \
         running user's, mode 0600"
    )]
    Readable(String),
}

/// The effective user id: the owner of a file this process creates.
fn rustix_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// One master key: 32 bytes, and its id.
pub struct MasterKey {
    id: String,
    key: RandomizedNonceKey,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl MasterKey {
    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
        let id = digest.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        // AES-256-GCM accepts any 32-byte key.
        let key = RandomizedNonceKey::new(&AES_256_GCM, bytes)
            .unwrap_or_else(|_| unreachable!("a 32-byte AES-256 key"));
        Self { id, key }
    }

    /// Reads a key file: 32 bytes in base64, readable by its owner only.
    pub fn read_file(path: &Path) -> Result<Self, MasterKeyError> {
        use std::os::unix::fs::PermissionsExt as _;
        let shown = path.display().to_string();
        let io = |source| MasterKeyError::Io {
            path: shown.clone(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        if !meta.is_file() {
            return Err(MasterKeyError::Format(shown));
        }
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(MasterKeyError::Readable(shown));
        }
        if std::os::unix::fs::MetadataExt::uid(&meta) != rustix_uid() {
            return Err(MasterKeyError::Readable(shown));
        }
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(io)?);
        let bytes = Zeroizing::new(
            STANDARD
                .decode(text.trim())
                .map_err(|_| MasterKeyError::Format(shown.clone()))?,
        );
        let array: &[u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| MasterKeyError::Format(shown.clone()))?;
        Ok(Self::from_bytes(array))
    }

    /// Writes a new random key to `path` (mode 0600, refusing to overwrite) and returns it. The
    /// file appears whole or not at all (written to a temporary file, synced, linked into place,
    /// the directory synced), so a crash never leaves an empty key file, nor loses one that a
    /// seal then used.
    pub fn generate_file(path: &Path) -> Result<Self, MasterKeyError> {
        use std::io::Write as _;
        let mut bytes = Zeroizing::new([0u8; 32]);
        aws_lc_rs::rand::fill(bytes.as_mut()).unwrap_or_else(|_| panic!("the system RNG failed"));
        let text = Zeroizing::new(STANDARD.encode(bytes.as_ref()));
        let shown = path.display().to_string();
        let io = |source| MasterKeyError::Io {
            path: shown.clone(),
            source,
        };
        if path.exists() {
            return Err(io(std::io::Error::from(std::io::ErrorKind::AlreadyExists)));
        }
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => std::path::PathBuf::from("."),
        };
        let tmp = dir.join(format!(
            ".{}.tmp-{}",
            path.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("master-key"),
            std::process::id()
        ));
        let _ = std::fs::remove_file(&tmp);
        let written = (|| -> std::io::Result<()> {
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut f = opts.open(&tmp)?;
            f.write_all(format!("{}\n", text.as_str()).as_bytes())?;
            f.sync_all()?;
            // A hard link refuses to replace an existing file, unlike a rename.
            std::fs::hard_link(&tmp, path)?;
            std::fs::File::open(&dir)?.sync_all()
        })();
        let _ = std::fs::remove_file(&tmp);
        written.map_err(io)?;
        Ok(Self::from_bytes(&bytes))
    }

    /// The key's id, as recorded in every value it seals.
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// Seals with the current master key; opens with it or any previous one.
#[derive(Debug)]
pub struct Sealer {
    current: MasterKey,
    previous: Vec<MasterKey>,
}

impl Sealer {
    /// A sealer with one master key.
    pub fn new(current: MasterKey) -> Self {
        Self {
            current,
            previous: Vec::new(),
        }
    }

    /// Also opens values sealed under `old` (for re-sealing after a rotation).
    pub fn with_previous(mut self, old: MasterKey) -> Self {
        if old.id != self.current.id {
            self.previous.push(old);
        }
        self
    }

    /// The id of the key new values are sealed with.
    pub fn current_id(&self) -> &str {
        &self.current.id
    }

    /// Seals `plain` for `slot`.
    pub fn seal(&self, plain: &[u8], slot: &str) -> String {
        let mut buf = Zeroizing::new(plain.to_vec());
        let nonce = self
            .current
            .key
            .seal_in_place_append_tag(Aad::from(slot.as_bytes()), &mut *buf)
            .unwrap_or_else(|_| panic!("AES-GCM sealing failed"));
        let mut out = Vec::with_capacity(NONCE_LEN + buf.len());
        out.extend_from_slice(nonce.as_ref());
        out.extend_from_slice(&buf);
        format!("{PREFIX}{}:{}", self.current.id, STANDARD.encode(out))
    }

    /// Opens a sealed value of `slot`.
    pub fn open(&self, sealed: &str, slot: &str) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        let (id, body) = parse(sealed)?;
        let key = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.id == id)
            .ok_or_else(|| {
                let given: Vec<&str> = std::iter::once(&self.current)
                    .chain(&self.previous)
                    .map(|k| k.id.as_str())
                    .collect();
                StoreError::sealed(format!(
                    "{slot} is sealed under master key {id}, not under the one(s) given ({})",
                    given.join(", ")
                ))
            })?;
        let raw = STANDARD
            .decode(body)
            .map_err(|_| StoreError::corrupt(format!("sealed {slot} is not base64")))?;
        if raw.len() < NONCE_LEN {
            return Err(StoreError::corrupt(format!("sealed {slot} is truncated")));
        }
        let nonce = Nonce::try_assume_unique_for_key(&raw[..NONCE_LEN])
            .map_err(|_| StoreError::corrupt(format!("sealed {slot} has a bad nonce")))?;
        let mut buf = Zeroizing::new(raw[NONCE_LEN..].to_vec());
        let plain_len = key
            .key
            .open_in_place(nonce, Aad::from(slot.as_bytes()), &mut buf)
            .map_err(|_| {
                StoreError::corrupt(format!(
                    "sealed {slot} does not open: tampered, or moved from another slot"
                ))
            })?
            .len();
        buf.truncate(plain_len);
        Ok(buf)
    }
}

fn parse(sealed: &str) -> Result<(&str, &str), StoreError> {
    sealed
        .strip_prefix(PREFIX)
        .and_then(|rest| rest.split_once(':'))
        .ok_or_else(|| StoreError::corrupt("a sealed value is malformed"))
}

/// Whether a stored text is sealed.
pub fn is_sealed(stored: &str) -> bool {
    stored.starts_with(PREFIX)
}

/// Whether stored bytes (a signing key column) are sealed.
pub fn is_sealed_bytes(stored: &[u8]) -> bool {
    stored.starts_with(PREFIX.as_bytes())
}

/// The id of the master key a sealed value names.
pub fn sealed_by(stored: &str) -> Option<&str> {
    parse(stored).ok().map(|(id, _)| id)
}

/// The slot name of a resource's access key.
pub fn access_key_slot(resource: &str, which: &str) -> String {
    format!("access-key:{resource}:{which}")
}

/// The slot name of a signing key.
pub fn signing_key_slot(kid: &str) -> String {
    format!("signing-key:{kid}")
}

/// How a store treats key material: sealed under a master key, or in plain text (protected by
/// file permissions or the database's access control only).
#[derive(Debug, Clone, Default)]
pub struct KeyProtection {
    sealer: Option<std::sync::Arc<Sealer>>,
}

impl KeyProtection {
    /// Plain text.
    pub fn plain() -> Self {
        Self { sealer: None }
    }

    /// Sealed with `sealer`.
    pub fn sealed(sealer: Sealer) -> Self {
        Self {
            sealer: Some(std::sync::Arc::new(sealer)),
        }
    }

    /// Whether new values are sealed.
    pub fn is_sealed(&self) -> bool {
        self.sealer.is_some()
    }

    /// The text to store for a secret text (an access key).
    pub fn store_text(&self, plain: &str, slot: &str) -> String {
        match &self.sealer {
            Some(s) => s.seal(plain.as_bytes(), slot),
            None => plain.to_owned(),
        }
    }

    /// The secret text from a stored text.
    pub fn load_text(&self, stored: &str, slot: &str) -> Result<Zeroizing<String>, StoreError> {
        if !is_sealed(stored) {
            return Ok(Zeroizing::new(stored.to_owned()));
        }
        let sealer = self
            .sealer
            .as_ref()
            .ok_or_else(|| no_master_key(stored, slot))?;
        let bytes = sealer.open(stored, slot)?;
        String::from_utf8(bytes.to_vec())
            .map(Zeroizing::new)
            .map_err(|_| StoreError::corrupt(format!("sealed {slot} is not text")))
    }

    /// The bytes to store for secret bytes (a signing key).
    pub fn store_bytes(&self, plain: &[u8], slot: &str) -> Vec<u8> {
        match &self.sealer {
            Some(s) => s.seal(plain, slot).into_bytes(),
            None => plain.to_vec(),
        }
    }

    /// The secret bytes from stored bytes.
    pub fn load_bytes(&self, stored: &[u8], slot: &str) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        if !is_sealed_bytes(stored) {
            return Ok(Zeroizing::new(stored.to_vec()));
        }
        let text = std::str::from_utf8(stored)
            .map_err(|_| StoreError::corrupt(format!("sealed {slot} is not text")))?;
        let sealer = self
            .sealer
            .as_ref()
            .ok_or_else(|| no_master_key(text, slot))?;
        sealer.open(text, slot)
    }
}

fn no_master_key(stored: &str, slot: &str) -> StoreError {
    StoreError::sealed(format!(
        "{slot} is sealed under master key {}; start with --master-key-file naming that key",
        sealed_by(stored).unwrap_or("?")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> MasterKey {
        MasterKey::from_bytes(&[byte; 32])
    }

    #[test]
    fn sealed_values_open_only_in_their_slot_and_under_their_key() {
        let s = Sealer::new(key(1));
        let sealed = s.seal(b"secret", "access-key:r:primary");
        assert!(is_sealed(&sealed));
        assert!(!sealed.contains("secret"));
        assert_eq!(
            s.open(&sealed, "access-key:r:primary")
                .expect("opens")
                .as_slice(),
            b"secret"
        );
        assert!(matches!(
            s.open(&sealed, "access-key:r:secondary"),
            Err(StoreError::Corrupt { .. })
        ));
        let other = Sealer::new(key(2));
        assert!(matches!(
            other.open(&sealed, "access-key:r:primary"),
            Err(StoreError::Sealed { .. })
        ));
        let rotated = Sealer::new(key(2)).with_previous(key(1));
        assert_eq!(
            rotated
                .open(&sealed, "access-key:r:primary")
                .expect("old key still opens")
                .as_slice(),
            b"secret"
        );
        assert_eq!(sealed_by(&rotated.seal(b"x", "s")), Some(key(2).id()));
        // Tampering is detected.
        let mut tampered = sealed.clone();
        tampered.pop();
        tampered.push(if sealed.ends_with('A') { 'B' } else { 'A' });
        assert!(s.open(&tampered, "access-key:r:primary").is_err());
    }

    #[test]
    fn plain_stores_read_plain_values_and_refuse_sealed_ones() {
        let plain = KeyProtection::plain();
        assert_eq!(plain.store_text("k", "slot"), "k");
        assert_eq!(plain.load_text("k", "slot").expect("plain").as_str(), "k");
        let sealed = KeyProtection::sealed(Sealer::new(key(3)));
        let stored = sealed.store_bytes(b"\x30\x82pkcs8", "signing-key:a");
        assert!(is_sealed_bytes(&stored));
        assert!(matches!(
            plain.load_bytes(&stored, "signing-key:a"),
            Err(StoreError::Sealed { .. })
        ));
        assert_eq!(
            sealed
                .load_bytes(&stored, "signing-key:a")
                .expect("opens")
                .as_slice(),
            b"\x30\x82pkcs8"
        );
    }

    #[test]
    fn key_files_are_private_and_well_formed() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("master.key");
        let made = MasterKey::generate_file(&path).expect("generated");
        let read = MasterKey::read_file(&path).expect("read");
        assert_eq!(made.id(), read.id());
        assert!(MasterKey::generate_file(&path).is_err(), "never overwrites");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(matches!(
            MasterKey::read_file(&path),
            Err(MasterKeyError::Readable(_))
        ));
        std::fs::write(dir.path().join("bad"), "short").expect("write");
        std::fs::set_permissions(
            dir.path().join("bad"),
            std::fs::Permissions::from_mode(0o600),
        )
        .expect("chmod");
        assert!(matches!(
            MasterKey::read_file(&dir.path().join("bad")),
            Err(MasterKeyError::Format(_))
        ));
    }
}
