//! `callsign resource …` and `callsign keys …`: resources and their access keys, changed on the
//! store directly (a data dir or a PostgreSQL database), also while servers run on it. Every
//! change moves the store's configuration generation; running servers poll it once a second and
//! reload, so a change is in force on every node within about a second.

use std::sync::Arc;

use anyhow::{Context as _, bail};
use callsign_client::api::connection_string;
use callsign_core::{AccessKey, HostName, ResourceName, SystemClock};
use callsign_store::{
    Actor, KeySlot, MAX_RESOURCES_PER_HOST, ResourceCreated, ResourceDeleted, ResourceRecord,
    Store, StoreLocation,
};
use serde_json::json;

use crate::config::{self, DataDirArgs, DatabaseArgs, ResolvedStore};

/// Where the store is, and the endpoint to print in connection strings.
#[derive(Debug, clap::Args)]
pub struct StoreArgs {
    #[command(flatten)]
    pub common: DataDirArgs,
    #[command(flatten)]
    pub db: DatabaseArgs,
    /// Endpoint URL to put in connection strings [default: the resource's host name, or the
    /// address the last `serve` on this data dir announced].
    #[arg(long, env = "CALLSIGN_ENDPOINT")]
    pub endpoint: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
pub enum ResourceCommand {
    /// Create a resource; prints its connection string (primary key) as the last line.
    Create {
        #[command(flatten)]
        store: StoreArgs,
        /// Its name: 1-63 of a-z, 0-9 and '-', unique in the deployment.
        #[arg(long)]
        name: String,
        /// A host name of its own: requests whose Host is this name reach it (point the name at
        /// the server). Without one it shares the server's address with at most three others.
        #[arg(long)]
        host: Option<String>,
        /// Print {"id", "name", "host", "connectionString"}.
        #[arg(long)]
        json: bool,
    },
    /// List the resources (no keys).
    List {
        #[command(flatten)]
        store: StoreArgs,
        /// Print a JSON array of {"id", "name", "host", "createdAt", "default", "verifyOnlyKey"}.
        #[arg(long)]
        json: bool,
    },
    /// Show one resource (no keys).
    Show {
        #[command(flatten)]
        store: StoreArgs,
        /// Its id or name.
        resource: String,
        /// Print a JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Delete a resource with all its identities and assignments (never the default one).
    Delete {
        #[command(flatten)]
        store: StoreArgs,
        /// Its id or name.
        resource: String,
        /// Confirm: everything of the resource is deleted and its tokens stop verifying.
        #[arg(long)]
        yes: bool,
    },
}

/// Which key `keys regenerate` replaces.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Slot {
    Primary,
    Secondary,
    VerifyOnly,
}

impl From<Slot> for KeySlot {
    fn from(s: Slot) -> Self {
        match s {
            Slot::Primary => KeySlot::Primary,
            Slot::Secondary => KeySlot::Secondary,
            Slot::VerifyOnly => KeySlot::VerifyOnly,
        }
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// Replace one access key (the others keep working); prints the resource's new connection
    /// string for that key as the last line. Servers refuse the old key within a second or so.
    Regenerate {
        #[command(flatten)]
        store: StoreArgs,
        /// The key to replace.
        #[arg(value_enum)]
        which: Slot,
        /// The resource (id or name) [default: the default resource].
        #[arg(long)]
        resource: Option<String>,
        /// Also revoke every token issued so far for the resource.
        #[arg(long)]
        revoke_tokens: bool,
    },
    /// Print the resource's verify-only connection string (introspection and the revocation
    /// feed only), making the key if it has none.
    VerifyOnly {
        #[command(flatten)]
        store: StoreArgs,
        /// The resource (id or name) [default: the default resource].
        #[arg(long)]
        resource: Option<String>,
    },
}

pub async fn resource(cmd: ResourceCommand) -> anyhow::Result<()> {
    match cmd {
        ResourceCommand::Create {
            store,
            name,
            host,
            json,
        } => create(store, name, host, json).await,
        ResourceCommand::List { store, json } => {
            let (store, _) = open(&store).await?;
            let (all, default) = resources_and_default(store.as_ref()).await;
            store.close().await;
            let (all, default) = (all?, default?);
            if json {
                let list: Vec<_> = all.iter().map(|r| summary(r, r.id == default)).collect();
                out!("{}", serde_json::Value::Array(list));
            } else {
                for r in &all {
                    out!("{}", line(r, r.id == default));
                }
            }
            Ok(())
        }
        ResourceCommand::Show {
            store,
            resource,
            json,
        } => {
            let (store, _) = open(&store).await?;
            let (all, default) = resources_and_default(store.as_ref()).await;
            store.close().await;
            let (all, default) = (all?, default?);
            let r = find(&all, Some(&resource), default)?;
            if json {
                out!("{}", summary(r, r.id == default));
            } else {
                out!("{}", line(r, r.id == default));
                out!("created:    {}", format_time(r.created_at));
                out!(
                    "verify-only key: {}",
                    if r.verify_key.is_some() {
                        "yes"
                    } else {
                        "none"
                    }
                );
            }
            Ok(())
        }
        ResourceCommand::Delete {
            store,
            resource,
            yes,
        } => delete(store, resource, yes).await,
    }
}

/// `resource create`: the default resource first (also on a store no server has started on
/// yet), then the new one; prints its connection string.
async fn create(
    store: StoreArgs,
    name: String,
    host: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let name = ResourceName::parse(&name).context("--name")?;
    let host = host
        .as_deref()
        .map(HostName::for_resource)
        .transpose()
        .context("--host")?;
    let (store, endpoint) = open(&store).await?;
    let record = ResourceRecord::generate(name, host, time::OffsetDateTime::now_utc());
    // The default resource comes first (and keeps its name), also on a store no server
    // has started on yet.
    let outcome = match callsign_store::ensure_default_resource(store.as_ref(), &SystemClock).await
    {
        Ok(_) => {
            store
                .create_resource(record.clone(), &Actor::operator())
                .await
        }
        Err(e) => Err(e),
    };
    store.close().await;
    match outcome? {
        ResourceCreated::Created => {}
        ResourceCreated::NameTaken => {
            bail!("a resource named {} exists already", record.name)
        }
        ResourceCreated::HostFull => bail!(
            "{MAX_RESOURCES_PER_HOST} resources share {} already (a request there is \
             tried against each one's keys, so their number is bounded): give this one a \
             host name of its own with --host",
            record
                .host
                .as_ref()
                .map_or("the server's address", |h| h.as_str())
        ),
    }
    let cs = connection_string_of(&record, KeySlot::Primary, &endpoint)?;
    if json {
        let mut out = summary(&record, false);
        out["connectionString"] = json!(cs);
        out!("{out}");
    } else {
        out!("callsign: created resource {} ({})", record.name, record.id);
        out!("{cs}");
    }
    Ok(())
}

async fn delete(store: StoreArgs, resource: String, yes: bool) -> anyhow::Result<()> {
    if !yes {
        bail!(
            "deleting a resource deletes all its identities and its tokens stop verifying: \
             add --yes to confirm"
        );
    }
    let (store, _) = open(&store).await?;
    let result = async {
        let (all, default) = resources_and_default(store.as_ref()).await;
        let (all, default) = (all?, default?);
        let r = find(&all, Some(&resource), default)?;
        Ok::<_, anyhow::Error>((
            r.clone(),
            store.delete_resource(r.id, &Actor::operator()).await?,
        ))
    }
    .await;
    store.close().await;
    let (r, outcome) = result?;
    match outcome {
        ResourceDeleted::Deleted { identities } => {
            out!(
                "callsign: deleted resource {} ({}) and its {identities} identities",
                r.name,
                r.id
            );
            Ok(())
        }
        ResourceDeleted::IsDefault => bail!("the default resource cannot be deleted"),
        ResourceDeleted::NotFound => bail!("no resource {resource} (deleted meanwhile?)"),
    }
}

pub async fn keys(cmd: KeysCommand) -> anyhow::Result<()> {
    let (args, which, resource, revoke) = match cmd {
        KeysCommand::Regenerate {
            store,
            which,
            resource,
            revoke_tokens,
        } => (store, KeySlot::from(which), resource, revoke_tokens),
        KeysCommand::VerifyOnly { store, resource } => {
            return verify_only(store, resource).await;
        }
    };
    let (store, endpoint) = open(&args).await?;
    let result = replace(store.as_ref(), resource.as_deref(), which, revoke).await;
    store.close().await;
    let (record, revoked) = result?;
    if revoke {
        eprintln!(
            "callsign: revoked every token of resource {} ({revoked} identities)",
            record.name
        );
    }
    out!("{}", connection_string_of(&record, which, &endpoint)?);
    Ok(())
}

/// Replaces the key in `slot` and returns the resource as it is now.
async fn replace(
    store: &dyn Store,
    resource: Option<&str>,
    slot: KeySlot,
    revoke: bool,
) -> anyhow::Result<(ResourceRecord, u64)> {
    let (all, default) = resources_and_default(store).await;
    let mut record = find(&all?, resource, default?)?.clone();
    let key = AccessKey::generate();
    let revoked = store
        .replace_access_key(record.id, slot, key.clone(), revoke, &Actor::operator())
        .await?
        .with_context(|| format!("resource {} was deleted meanwhile", record.id))?;
    match slot {
        KeySlot::Primary => record.primary_key = key,
        KeySlot::Secondary => record.secondary_key = key,
        KeySlot::VerifyOnly => record.verify_key = Some(key),
    }
    Ok((record, revoked))
}

async fn verify_only(args: StoreArgs, resource: Option<String>) -> anyhow::Result<()> {
    let (store, endpoint) = open(&args).await?;
    let result = async {
        let (all, default) = resources_and_default(store.as_ref()).await;
        let record = find(&all?, resource.as_deref(), default?)?.clone();
        if record.verify_key.is_some() {
            return Ok::<_, anyhow::Error>(record);
        }
        Ok(replace(
            store.as_ref(),
            Some(&record.id.to_string()),
            KeySlot::VerifyOnly,
            false,
        )
        .await?
        .0)
    }
    .await;
    store.close().await;
    let record = result?;
    out!(
        "{}",
        connection_string_of(&record, KeySlot::VerifyOnly, &endpoint)?
    );
    Ok(())
}

/// `callsign connection-string`: the connection string of a resource's primary or secondary key.
pub async fn print_connection_string(
    resolved: config::ResolvedConnectionString,
) -> anyhow::Result<()> {
    ensure_store_exists(&resolved.store)?;
    let store = resolved.store.open().await?;
    let result = async {
        // The default resource is made here if the store has none yet.
        callsign_store::ensure_default_resource(store.as_ref(), &SystemClock).await?;
        let (all, default) = resources_and_default(store.as_ref()).await;
        Ok::<_, anyhow::Error>(find(&all?, resolved.resource.as_deref(), default?)?.clone())
    }
    .await;
    store.close().await;
    let record = result?;
    let slot = if resolved.secondary {
        KeySlot::Secondary
    } else {
        KeySlot::Primary
    };
    let endpoint = if resolved.explicit_endpoint {
        resolved.endpoint
    } else {
        format!("default:{}", resolved.endpoint)
    };
    out!("{}", connection_string_of(&record, slot, &endpoint)?);
    Ok(())
}

/// A mistyped `--data-dir` must not quietly become a new deployment with new keys.
pub(crate) fn ensure_store_exists(store: &ResolvedStore) -> anyhow::Result<()> {
    if let StoreLocation::DataDir(dir) = &store.location
        && !callsign_store::database_path(dir).exists()
    {
        bail!(
            "there is no store in {}: start `callsign serve --data-dir {0}` first, or name the \
             right --data-dir / --database-url",
            dir.display()
        );
    }
    Ok(())
}

/// Opens an existing store; the endpoint its connection strings name.
async fn open(args: &StoreArgs) -> anyhow::Result<(Arc<dyn Store>, String)> {
    let (resolved, endpoint) =
        config::resolve_store_command(&args.common, &args.db, args.endpoint.clone())?;
    ensure_store_exists(&resolved)?;
    let store = resolved.open().await?;
    let explicit = args.endpoint.is_some();
    Ok((
        store,
        if explicit {
            endpoint
        } else {
            format!("default:{endpoint}")
        },
    ))
}

/// Every resource and the default one's id (read together, then the store is closed).
async fn resources_and_default(
    store: &dyn Store,
) -> (
    anyhow::Result<Vec<ResourceRecord>>,
    anyhow::Result<callsign_core::ResourceId>,
) {
    let all = store.resources().await.map_err(anyhow::Error::from);
    let default = store
        .default_resource()
        .await
        .map_err(anyhow::Error::from)
        .and_then(|d| {
            d.map(|r| r.id)
                .context("the store has no resource yet: run `callsign serve` on it once")
        });
    (all, default)
}

/// The resource named by id or name, or the default one.
fn find<'a>(
    all: &'a [ResourceRecord],
    wanted: Option<&str>,
    default: callsign_core::ResourceId,
) -> anyhow::Result<&'a ResourceRecord> {
    let found = match wanted {
        None => all.iter().find(|r| r.id == default),
        Some(w) => all
            .iter()
            .find(|r| r.id.to_string().eq_ignore_ascii_case(w) || r.name.as_str() == w),
    };
    found.with_context(|| match wanted {
        Some(w) => format!("no resource {w} (see `callsign resource list`)"),
        None => "the default resource is missing".to_owned(),
    })
}

/// The connection string of `record`'s key in `slot`. `endpoint` is the one given with
/// `--endpoint`, or `default:<url>` for the server's own: a resource with a host name of its
/// own is then reached at that name, on the same scheme and port.
fn connection_string_of(
    record: &ResourceRecord,
    slot: KeySlot,
    endpoint: &str,
) -> anyhow::Result<String> {
    let key = record
        .key(slot)
        .with_context(|| format!("resource {} has no {} key", record.name, slot.as_str()))?;
    let endpoint = match (endpoint.strip_prefix("default:"), &record.host) {
        (Some(own), Some(host)) => with_host(own, host.as_str()),
        (Some(own), None) => own.to_owned(),
        (None, _) => endpoint.to_owned(),
    };
    Ok(connection_string::format(&endpoint, key.expose()))
}

/// `scheme://HOST[:port]/` from the server's endpoint `scheme://addr[:port]/`.
fn with_host(endpoint: &str, host: &str) -> String {
    let (scheme, rest) = endpoint.split_once("://").unwrap_or(("https", endpoint));
    let authority = rest.trim_end_matches('/');
    let port = authority
        .rsplit_once(':')
        .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
        .map(|(_, p)| format!(":{p}"))
        .unwrap_or_default();
    format!("{scheme}://{host}{port}/")
}

fn summary(r: &ResourceRecord, is_default: bool) -> serde_json::Value {
    json!({
        "id": r.id.to_string(),
        "name": r.name.as_str(),
        "host": r.host.as_ref().map(HostName::as_str),
        "createdAt": format_time(r.created_at),
        "default": is_default,
        "verifyOnlyKey": r.verify_key.is_some(),
    })
}

fn line(r: &ResourceRecord, is_default: bool) -> String {
    let host = r.host.as_ref().map_or("-", HostName::as_str);
    let mark = if is_default { "  (default)" } else { "" };
    format!("{}  {:<20}  {host}{mark}", r.id, r.name.as_str())
}

fn format_time(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_name_takes_the_servers_scheme_and_port() {
        assert_eq!(
            with_host("https://127.0.0.1:8443/", "chat.example"),
            "https://chat.example:8443/"
        );
        assert_eq!(
            with_host("http://[::1]:80/", "a.example"),
            "http://a.example:80/"
        );
        assert_eq!(
            with_host("https://10.0.0.1/", "a.example"),
            "https://a.example/"
        );
    }
}
