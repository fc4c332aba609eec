//! What callsign keeps on disk is readable by its own user only: the data dir and every
//! directory in it 0700, every file 0600 (database, WAL, SHM, TLS keys and certificates).
//!
//! The binary sets the umask to 077 at start ([`restrict_umask`]), so whichever command creates
//! a file first creates it private. [`secure_data_dir`] then checks what exists: anything that
//! others can read is tightened with a warning, or refused with an error naming the path when
//! it cannot be.

use std::path::{Path, PathBuf};

/// Mode bits of group and others.
const SHARED_BITS: u32 = 0o077;

/// Why a data dir cannot be used: the message names the path and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// A file system call on `path` failed.
    #[error("cannot {action} {}", path.display())]
    Io {
        /// What was being done, e.g. `create the data dir`.
        action: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// The file system's error.
        #[source]
        source: std::io::Error,
    },
    /// A file system call failed before a path could be named.
    #[error(transparent)]
    Unnamed(#[from] std::io::Error),
    /// A path is a link, belongs to another user or cannot be made private.
    #[error("{0}")]
    Refused(String),
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DataDirError {
    move |source| DataDirError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Makes every file and directory this process creates private to its user.
pub fn restrict_umask() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(SHARED_BITS));
}

/// Creates `dir` (and missing parents) with mode 0700.
pub fn create_private_dir(dir: &Path) -> Result<(), DataDirError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .map_err(io_error("create the data dir", dir))
}

/// Creates `file` empty with mode 0600 unless it exists (so that SQLite, which gives its WAL and
/// SHM files the database file's mode, keeps all three private).
pub fn create_private_file(file: &Path) -> Result<(), DataDirError> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(false);
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    opts.open(file).map(drop).map_err(io_error("create", file))
}

/// Creates the data dir if needed, then checks it, every directory in it and every file in
/// them: each must belong to this process's user (another user could swap or read them) and
/// must not be a symbolic link (writing through one would reach a file elsewhere, with its
/// owner's permissions); each is made private (0700 / 0600), tightened with a warning where
/// others could read, an error where that fails.
pub fn secure_data_dir(dir: &Path) -> Result<(), DataDirError> {
    create_private_dir(dir)?;
    // The data dir itself may be reached through a link (`/var/lib/callsign -> /data/…`);
    // what it points to is checked.
    check_owner(dir, &std::fs::metadata(dir)?)?;
    secure(dir, 0o700)?;
    let entries = std::fs::read_dir(dir).map_err(io_error("read the data dir", dir))?;
    for entry in entries {
        let entry = entry.map_err(io_error("read the data dir", dir))?;
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path)?;
        refuse_link(&path, &meta)?;
        check_owner(&path, &meta)?;
        if meta.is_dir() {
            secure(&path, 0o700)?;
            for inner in std::fs::read_dir(&path).map_err(io_error("read", &path))? {
                let inner = inner?.path();
                let meta = std::fs::symlink_metadata(&inner)?;
                refuse_link(&inner, &meta)?;
                check_owner(&inner, &meta)?;
                if meta.is_file() {
                    secure(&inner, 0o600)?;
                }
            }
        } else if meta.is_file() {
            secure(&path, 0o600)?;
        }
    }
    Ok(())
}

fn refuse_link(path: &Path, meta: &std::fs::Metadata) -> Result<(), DataDirError> {
    if meta.file_type().is_symlink() {
        return Err(DataDirError::Refused(format!(
            "{} is a symbolic link: callsign does not follow links inside its data dir (replace \
             it with the file itself, or point --data-dir at the directory it is in)",
            path.display()
        )));
    }
    Ok(())
}

/// Everything callsign keeps must belong to the user it runs as.
fn check_owner(path: &Path, meta: &std::fs::Metadata) -> Result<(), DataDirError> {
    use std::os::unix::fs::MetadataExt as _;
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(DataDirError::Refused(format!(
            "{} belongs to user id {}, not to the user callsign runs as ({me}): another user could \
             read or replace the keys in it; chown it or use another --data-dir",
            path.display(),
            meta.uid()
        )));
    }
    Ok(())
}

/// Removes group and other bits from one path.
fn secure(path: &Path, private_mode: u32) -> Result<(), DataDirError> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta =
        std::fs::symlink_metadata(path).map_err(io_error("read the permissions of", path))?;
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
        Err(e) => Err(DataDirError::Refused(format!(
            "{} has mode {mode:04o}: others can read it, and it cannot be made private ({e}); \
             fix its owner or permissions (chmod {:o}) and start again",
            path.display(),
            private_mode
        ))),
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
    fn links_inside_the_data_dir_are_refused() {
        let root = tempfile::tempdir().expect("dir");
        let dir = root.path().join("data");
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(root.path().join("elsewhere"), b"x").expect("write");
        std::os::unix::fs::symlink(root.path().join("elsewhere"), dir.join("endpoint"))
            .expect("link");
        let err = secure_data_dir(&dir).expect_err("a link");
        assert!(format!("{err:#}").contains("symbolic link"), "{err:#}");
        // A linked data dir itself is fine.
        std::fs::remove_file(dir.join("endpoint")).expect("rm");
        let link = root.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).expect("link");
        secure_data_dir(&link).expect("the dir behind a link");
    }

    #[test]
    fn files_of_another_user_are_refused() {
        let root = tempfile::tempdir().expect("dir");
        let dir = root.path().join("data");
        std::fs::create_dir_all(&dir).expect("mkdir");
        let db = dir.join("callsign.db");
        std::fs::write(&db, b"x").expect("write");
        let me = rustix::process::geteuid().as_raw();
        // Only root can give a file away; elsewhere there is nothing to check here.
        if me == 0 {
            std::os::unix::fs::chown(&db, Some(65534), None).expect("chown");
            let err = secure_data_dir(&dir).expect_err("not ours");
            assert!(
                format!("{err:#}").contains("belongs to user id 65534"),
                "{err:#}"
            );
            std::os::unix::fs::chown(&dir, Some(65534), None).expect("chown");
            let err = secure_data_dir(&dir).expect_err("not ours");
            assert!(format!("{err:#}").contains("belongs to user id"), "{err:#}");
        } else {
            assert!(std::os::unix::fs::chown(&db, Some(me.wrapping_add(1)), None).is_err());
        }
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
