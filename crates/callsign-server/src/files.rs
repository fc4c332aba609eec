//! What callsign keeps on disk is readable by its own user only: the data dir and every
//! directory in it 0700, every file 0600 (database, WAL, SHM, TLS keys and certificates).
//!
//! The binary sets the umask to 077 at start ([`restrict_umask`]), so whichever command creates
//! a file first creates it private. [`secure_data_dir`] then checks what exists: anything that
//! others can read is tightened with a warning, or refused with an error naming the path when
//! it cannot be.

use std::path::Path;

use anyhow::{Context as _, bail};

/// Mode bits of group and others.
const SHARED_BITS: u32 = 0o077;

/// Makes every file and directory this process creates private to its user.
pub fn restrict_umask() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(SHARED_BITS));
}

/// Creates `dir` (and missing parents) with mode 0700.
pub fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .with_context(|| format!("cannot create the data dir {}", dir.display()))
}

/// Creates `file` empty with mode 0600 unless it exists (so that SQLite, which gives its WAL and
/// SHM files the database file's mode, keeps all three private).
pub fn create_private_file(file: &Path) -> anyhow::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(false);
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    opts.open(file)
        .map(drop)
        .with_context(|| format!("cannot create {}", file.display()))
}

/// Creates the data dir if needed, then makes it, every directory in it (0700) and every file
/// in them (0600) private: tightened with a warning where others could read, an error where
/// that fails. Symbolic links are left alone (never followed).
pub fn secure_data_dir(dir: &Path) -> anyhow::Result<()> {
    create_private_dir(dir)?;
    secure(dir, 0o700)?;
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read the data dir {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot read the data dir {}", dir.display()))?;
        let kind = entry.file_type()?;
        let path = entry.path();
        if kind.is_dir() {
            secure(&path, 0o700)?;
            for inner in std::fs::read_dir(&path)
                .with_context(|| format!("cannot read {}", path.display()))?
            {
                let inner = inner?;
                if inner.file_type()?.is_file() {
                    secure(&inner.path(), 0o600)?;
                }
            }
        } else if kind.is_file() {
            secure(&path, 0o600)?;
        }
    }
    Ok(())
}

/// Removes group and other bits from one path.
fn secure(path: &Path, private_mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::symlink_metadata(path)
        .with_context(|| format!("cannot read the permissions of {}", path.display()))?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & SHARED_BITS == 0 {
        return Ok(());
    }
    let wanted = (mode & !SHARED_BITS) | (private_mode & 0o700);
    match std::fs::set_permissions(path, std::fs::Permissions::from_mode(wanted)) {
        Ok(()) => {
            tracing::warn!(
                path = %path.display(),
                was = format!("{mode:04o}"),
                now = format!("{wanted:04o}"),
                "others could read this; its permissions were tightened"
            );
            Ok(())
        }
        Err(e) => bail!(
            "{} has mode {mode:04o}: others can read it, and it cannot be made private ({e}); \
             fix its owner or permissions (chmod {:o}) and start again",
            path.display(),
            private_mode
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).expect("stat").permissions().mode() & 0o777
    }

    #[test]
    fn readable_data_dirs_and_files_are_tightened() {
        let root = tempfile::tempdir().expect("dir");
        let dir = root.path().join("data");
        std::fs::create_dir_all(dir.join("tls")).expect("mkdir");
        std::fs::write(dir.join("callsign.db"), b"x").expect("write");
        std::fs::write(dir.join("tls/ca-key.pem"), b"k").expect("write");
        for (p, m) in [
            (dir.clone(), 0o755),
            (dir.join("tls"), 0o775),
            (dir.join("callsign.db"), 0o644),
            (dir.join("tls/ca-key.pem"), 0o666),
        ] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(m)).expect("chmod");
        }
        secure_data_dir(&dir).expect("tightened");
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("tls")), 0o700);
        assert_eq!(mode(&dir.join("callsign.db")), 0o600);
        assert_eq!(mode(&dir.join("tls/ca-key.pem")), 0o600);
    }

    #[test]
    fn a_new_data_dir_is_private() {
        let root = tempfile::tempdir().expect("dir");
        let dir = root.path().join("a/b");
        secure_data_dir(&dir).expect("created");
        assert_eq!(mode(&dir), 0o700);
        create_private_file(&dir.join("f")).expect("file");
        assert_eq!(mode(&dir.join("f")), 0o600);
    }
}
