//! Developer mode (`serve --dev`): an ACS stand-in for local work and CI, as Azurite is for
//! Storage. An ephemeral store in a temporary directory (in memory where `/dev/shm` allows,
//! removed at exit), one well-known
//! resource and access key, and a dev CA that is the same on every run and machine, so test
//! suites can hard-code the connection string and pin the CA.
//!
//! Everything here is public on purpose: the key and the CA's private key are in this file and
//! in the README. The CA is name-constrained to localhost, 127.0.0.1 and ::1, so its key cannot
//! certify any other name; and `--dev` refuses a non-loopback address unless told
//! `--dev-allow-remote`.

use std::io::BufRead as _;
use std::path::Path;

use anyhow::{Context as _, bail};
use callsign_core::{AccessKey, CustomId, IdentityId, ResourceId, ResourceName};
use callsign_store::{Actor, NewIdentity, ResourceRecord, Store};

/// The dev resource's id.
pub const RESOURCE_ID: &str = "de7de7de-de7d-4e7d-8e7d-e7de7de7de7d";

/// The dev resource's primary access key (base64 of `callsign-dev-primary-key-public!`).
pub const PRIMARY_KEY: &str = "Y2FsbHNpZ24tZGV2LXByaW1hcnkta2V5LXB1YmxpYyE=";

/// The dev resource's secondary access key (base64 of `callsign-dev-second-key--public!`).
pub const SECONDARY_KEY: &str = "Y2FsbHNpZ24tZGV2LXNlY29uZC1rZXktLXB1YmxpYyE=";

/// Where `serve --dev` listens unless told otherwise.
pub const DEFAULT_ENDPOINT: &str = "https://127.0.0.1:8443/";

/// The dev CA's certificate (valid until 2036-12-02).
pub const CA_PEM: &str = include_str!("../dev/ca.pem");

/// The dev CA's private key: public, name-constrained to the loopback names.
const CA_KEY_PEM: &str = include_str!("../dev/ca-key.pem");

/// The most identities `--seed` preloads.
const MAX_SEED: usize = 1_000_000;

/// Where the ephemeral store goes: `$TMPDIR` when set, else `/dev/shm` when it is a writable
/// directory (memory: no disk flushes, which a store thrown away at exit does not need, and a
/// faster start), else the system's temporary directory.
pub fn store_parent() -> std::path::PathBuf {
    let shm = Path::new("/dev/shm");
    let writable = |p: &Path| {
        tempfile::Builder::new()
            .prefix(".callsign-probe-")
            .tempfile_in(p)
            .is_ok()
    };
    if std::env::var_os("TMPDIR").is_none() && shm.is_dir() && writable(shm) {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// The file naming the process that owns a dev store.
const OWNER_FILE: &str = "owner.pid";

/// Marks `store` as this process's, so that a later `--dev` can tell it from a live one.
pub fn claim(store: &Path) -> anyhow::Result<()> {
    std::fs::write(store.join(OWNER_FILE), std::process::id().to_string())
        .context("cannot mark the dev store as this process's")
}

/// Removes the dev stores under `parent` whose server is gone (ended by `kill -9`): those with
/// an owner file naming a process that no longer runs. Returns how many.
pub fn sweep_stale(parent: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        let is_dev = entry
            .file_name()
            .to_string_lossy()
            .starts_with("callsign-dev-");
        let owner = std::fs::read_to_string(path.join(OWNER_FILE))
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok());
        let gone = owner.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
        if is_dev && gone && std::fs::remove_dir_all(&path).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// The connection string of the dev resource at `endpoint`.
pub fn connection_string(endpoint: &str) -> String {
    let endpoint = if endpoint.ends_with('/') {
        endpoint.to_owned()
    } else {
        format!("{endpoint}/")
    };
    format!("endpoint={endpoint};accesskey={PRIMARY_KEY}")
}

/// The dev resource, as an empty store starts with it.
pub fn resource() -> anyhow::Result<ResourceRecord> {
    Ok(ResourceRecord {
        id: ResourceId::parse(RESOURCE_ID).context("the dev resource id")?,
        name: ResourceName::default_name(),
        host: None,
        primary_key: AccessKey::parse(PRIMARY_KEY).context("the dev primary key")?,
        secondary_key: AccessKey::parse(SECONDARY_KEY).context("the dev secondary key")?,
        verify_key: None,
        created_at: time::OffsetDateTime::now_utc(),
    })
}

/// Puts the dev CA where the local CA of `data_dir` lives, so the server certifies its
/// loopback names with it.
pub fn install_ca(data_dir: &Path) -> anyhow::Result<()> {
    callsign_server::LocalCaPaths::new(data_dir).install_ca(CA_PEM, CA_KEY_PEM)
}

/// Refuses a non-loopback listen address unless `allow_remote`.
pub fn check_listen(listen: std::net::SocketAddr, allow_remote: bool) -> anyhow::Result<()> {
    if listen.ip().to_canonical().is_loopback() || allow_remote {
        return Ok(());
    }
    bail!(
        "--dev listens on loopback addresses only ({listen} is not one): its key and CA are public. \
         Add --dev-allow-remote to listen there anyway"
    )
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SeedLine {
    custom_id: Option<String>,
}

/// Creates the identities of a JSON-lines `file` (`{"customId": "…"}` or `{}` per line; blank
/// lines skipped) in the dev resource. Returns how many were created (a repeated custom id
/// names the identity created before).
pub async fn seed(store: &dyn Store, file: &Path) -> anyhow::Result<usize> {
    let resource = ResourceId::parse(RESOURCE_ID).context("the dev resource id")?;
    let reader = std::io::BufReader::new(
        std::fs::File::open(file).with_context(|| format!("cannot read {}", file.display()))?,
    );
    let (mut created, mut lines) = (0, 0);
    for (n, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("{} line {}", file.display(), n + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        lines += 1;
        if lines > MAX_SEED {
            bail!("{}: at most {MAX_SEED} identities", file.display());
        }
        let parsed: SeedLine = serde_json::from_str(&line).map_err(|e| {
            anyhow::anyhow!(
                "{} line {}: not {{\"customId\": …}}: {e}",
                file.display(),
                n + 1
            )
        })?;
        let custom_id = parsed
            .custom_id
            .map(|c| CustomId::parse(&c))
            .transpose()
            .map_err(|e| anyhow::anyhow!("{} line {}: {e}", file.display(), n + 1))?;
        let new = NewIdentity {
            id: IdentityId::new_random(resource),
            custom_id,
            created_at: time::OffsetDateTime::now_utc(),
        };
        if store
            .create_identity(new, &Actor::operator())
            .await?
            .created
        {
            created += 1;
        }
    }
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_well_known_values_are_valid_and_as_documented() {
        let r = resource().expect("valid");
        assert_eq!(r.id.to_string(), RESOURCE_ID);
        assert_eq!(
            connection_string("https://127.0.0.1:8443"),
            "endpoint=https://127.0.0.1:8443/;accesskey=Y2FsbHNpZ24tZGV2LXByaW1hcnkta2V5LXB1YmxpYyE="
        );
        let readme = include_str!("../../../README.md");
        assert!(
            readme.contains(&connection_string(DEFAULT_ENDPOINT)),
            "README prints the string"
        );
        assert!(readme.contains(RESOURCE_ID));
        assert!(CA_PEM.starts_with("-----BEGIN CERTIFICATE-----"));
    }

    #[test]
    fn only_loopback_unless_allowed() {
        assert!(check_listen("127.0.0.1:0".parse().expect("addr"), false).is_ok());
        assert!(check_listen("[::1]:0".parse().expect("addr"), false).is_ok());
        assert!(check_listen("[::ffff:127.0.0.1]:0".parse().expect("addr"), false).is_ok());
        assert!(check_listen("[::ffff:10.0.0.1]:0".parse().expect("addr"), false).is_err());
        assert!(check_listen("0.0.0.0:8443".parse().expect("addr"), false).is_err());
        assert!(check_listen("0.0.0.0:8443".parse().expect("addr"), true).is_ok());
    }
}
