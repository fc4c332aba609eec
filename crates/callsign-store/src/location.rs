//! Which store to open: the embedded one of a data dir, or a PostgreSQL database.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::files::{DataDirError, create_private_file, secure_data_dir};
use crate::{BulkStore, KeyProtection, PostgresOptions, PostgresStore, SqliteStore, StoreError};

/// Where identities, resources and keys are kept.
#[derive(Clone)]
pub enum Database {
    /// SQLite in the data dir (the default).
    Embedded,
    /// A PostgreSQL database shared by any number of nodes.
    Postgres {
        /// `postgres://user[:password]@host[:port]/database`
        url: String,
        /// Pool and timeouts.
        options: PostgresOptions,
    },
}

/// A store named on the command line: a data dir or a `postgres://` URL.
#[derive(Clone)]
pub enum StoreLocation {
    /// The embedded store of this data dir.
    DataDir(PathBuf),
    /// A PostgreSQL database.
    Postgres(String),
}

// Debug shows database URLs with their password masked.
impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Database::Embedded => f.write_str("Embedded"),
            Database::Postgres { url, options } => f
                .debug_struct("Postgres")
                .field("url", &crate::mask_database_url(url))
                .field("options", options)
                .finish(),
        }
    }
}

impl std::fmt::Debug for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreLocation::DataDir(dir) => f.debug_tuple("DataDir").field(dir).finish(),
            StoreLocation::Postgres(url) => f
                .debug_tuple("Postgres")
                .field(&crate::mask_database_url(url))
                .finish(),
        }
    }
}

/// A store location shaped like a URL whose scheme is not `postgres`. Only the scheme is
/// quoted: the rest may hold a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown scheme '{scheme}' in '{scheme}://…' (a data dir path or postgres://…)")]
pub struct UnknownScheme {
    /// The scheme given.
    pub scheme: String,
}

/// Why a store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The data dir cannot be created or made private.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// The embedded database cannot be opened or migrated.
    #[error("cannot open the database {}", path.display())]
    Embedded {
        /// The database file.
        path: PathBuf,
        /// What the store said.
        #[source]
        source: StoreError,
    },
    /// The PostgreSQL database cannot be reached or migrated.
    #[error("cannot open the PostgreSQL database")]
    Postgres(#[source] StoreError),
}

impl StoreLocation {
    /// `postgres://…` or `postgresql://…` is a database; anything else shaped like a URL
    /// (`<scheme>://…`, the scheme made of letters, digits, `+`, `-` and `.`) is an error, so
    /// that a mistyped scheme is not taken for a data dir; anything else is a data dir.
    pub fn parse(s: &str) -> Result<Self, UnknownScheme> {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            return Ok(StoreLocation::Postgres(s.to_owned()));
        }
        if let Some((scheme, _)) = s.split_once("://")
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        {
            return Err(UnknownScheme {
                scheme: scheme.to_owned(),
            });
        }
        Ok(StoreLocation::DataDir(PathBuf::from(s)))
    }

    /// Opens (creating and migrating as needed) the store, its key material protected as
    /// `keys` says.
    pub async fn open(
        &self,
        options: &PostgresOptions,
        keys: KeyProtection,
    ) -> Result<Arc<dyn BulkStore>, OpenError> {
        Ok(match self {
            StoreLocation::DataDir(dir) => Arc::new(open_embedded_store_with(dir, keys)?),
            StoreLocation::Postgres(url) => {
                let options = PostgresOptions {
                    keys,
                    ..options.clone()
                };
                Arc::new(
                    PostgresStore::connect(url, &options)
                        .await
                        .map_err(OpenError::Postgres)?,
                )
            }
        })
    }
}

/// Where the embedded database lives in a data dir.
pub fn database_path(data_dir: &Path) -> PathBuf {
    data_dir.join("callsign.db")
}

/// Opens the embedded store of a data dir (creating it if needed), keys in plain text.
pub fn open_embedded_store(data_dir: &Path) -> Result<SqliteStore, OpenError> {
    open_embedded_store_with(data_dir, KeyProtection::plain())
}

/// Opens the embedded store of a data dir (creating it if needed), keys protected as `keys`
/// says.
pub fn open_embedded_store_with(
    data_dir: &Path,
    keys: KeyProtection,
) -> Result<SqliteStore, OpenError> {
    secure_data_dir(data_dir)?;
    let path = database_path(data_dir);
    create_private_file(&path)?;
    let store = SqliteStore::open_with(&path, keys).map_err(|source| OpenError::Embedded {
        path: path.clone(),
        source,
    })?;
    // The WAL and SHM files exist now; an older deployment may have left them readable.
    secure_data_dir(data_dir)?;
    Ok(store)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_are_masked_in_debug_output() {
        let url = "postgres://callsign:hunter2@db.internal/callsign?sslmode=require";
        let shown = format!(
            "{:?} {:?}",
            StoreLocation::Postgres(url.into()),
            Database::Postgres {
                url: url.into(),
                options: PostgresOptions::default()
            }
        );
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("db.internal"), "{shown}");
    }

    #[test]
    fn a_mistyped_scheme_is_an_error_not_a_data_dir() {
        let err = StoreLocation::parse("postgress://u:secret@h/db").expect_err("refused");
        assert_eq!(err.scheme, "postgress");
        assert!(!err.to_string().contains("secret"));
        assert!(matches!(
            StoreLocation::parse("./data"),
            Ok(StoreLocation::DataDir(_))
        ));
        assert!(matches!(
            StoreLocation::parse("postgresql://h/db"),
            Ok(StoreLocation::Postgres(_))
        ));
    }
}
