//! `callsign signing-key rotate` and `callsign signing-key list`: store-side commands, safe while
//! servers run on the store (they pick a new key up within their refresh interval); and the
//! `serve` options of rotation.

use std::io::Write as _;
use std::time::Duration;

use anyhow::{Context as _, bail};
use callsign_core::token::Algorithm;
use callsign_server::{KeyState, Settings};
use callsign_store::StoredSigningKey;
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::config::{MigrateArgs, SigningAlg};

/// The shortest `--signing-key-rotation` period.
const MIN_ROTATION: Duration = Duration::from_secs(60 * 60);
/// The longest key refresh interval: [`callsign_server::ACTIVATION_LEAD`] counts on at most this.
const MAX_KEY_REFRESH_SECS: u64 = 60;

#[derive(Debug, clap::Subcommand)]
pub enum SigningKeyCommand {
    /// Add a new token signing key. It is published at once and starts signing 10 minutes later
    /// (once every node and every JWKS cache knows it); the key it replaces stays published until
    /// its last token has expired. Refused while a key of the algorithm is pending.
    Rotate(RotateArgs),
    /// List the signing keys: kid, algorithm, state (pending, active, previous, retired), when
    /// created, when it starts signing, when it is retired.
    List(ListArgs),
}

#[derive(Debug, clap::Args)]
pub struct RotateArgs {
    #[command(flatten)]
    pub store: MigrateArgs,
    /// Algorithm of the new key [default: the algorithm of the store's keys, if they have one].
    #[arg(long, value_enum, ignore_case = true)]
    pub alg: Option<SigningAlg>,
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub store: MigrateArgs,
    /// Print JSON: `{"keys": [{"kid", "alg", "state", "createdAt", "activatesAt", "retiresAt"}]}`.
    #[arg(long)]
    pub json: bool,
}

/// Applies `--signing-key-rotation` and `--key-refresh-secs` (flag, environment or file).
pub fn apply_serve_options(
    settings: &mut Settings,
    rotation: Option<&str>,
    refresh_secs: Option<u64>,
) -> anyhow::Result<()> {
    if let Some(text) = rotation {
        settings.signing_key_rotation = parse_rotation(text)?;
    }
    if let Some(secs) = refresh_secs {
        if !(1..=MAX_KEY_REFRESH_SECS).contains(&secs) {
            bail!("--key-refresh-secs must be between 1 and {MAX_KEY_REFRESH_SECS}");
        }
        settings.key_refresh = Duration::from_secs(secs);
    }
    Ok(())
}

/// The longest rotation period: ten years (the node adds it to the current time).
const MAX_ROTATION: Duration = Duration::from_secs(3650 * 86_400);

/// `30d`, `12h`, `2w` (at least an hour), or `off`.
fn parse_rotation(text: &str) -> anyhow::Result<Option<Duration>> {
    if text.trim().eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let period = humantime::parse_duration(text.trim()).with_context(|| {
        format!("--signing-key-rotation {text:?} is not a duration such as 30d or 12h")
    })?;
    if period < MIN_ROTATION {
        bail!("--signing-key-rotation must be at least 1h (or off)");
    }
    if period > MAX_ROTATION {
        bail!("--signing-key-rotation must be at most 3650d");
    }
    Ok(Some(period))
}

pub async fn run(cmd: SigningKeyCommand) -> anyhow::Result<()> {
    match cmd {
        SigningKeyCommand::Rotate(args) => rotate(args).await,
        SigningKeyCommand::List(args) => list(args).await,
    }
}

/// Opens the store `args` names; a data dir without a store is refused, not created.
async fn open(
    args: MigrateArgs,
) -> anyhow::Result<(
    std::sync::Arc<dyn callsign_store::Store>,
    callsign_store::KeyProtection,
)> {
    let resolved = crate::config::resolve_migrate(args)?;
    if let callsign_store::StoreLocation::DataDir(dir) = &resolved.location
        && !callsign_store::database_path(dir).exists()
    {
        bail!(
            "there is no store in {}: start `callsign serve --data-dir {0}` first, or name the \
             right --data-dir / --database-url",
            dir.display()
        );
    }
    Ok((resolved.open().await?, resolved.keys))
}

async fn rotate(args: RotateArgs) -> anyhow::Result<()> {
    let (store, protection) = open(args.store).await?;
    let result = async {
        let status = store.seal_status().await?;
        if status.sealed > 0 && !protection.is_sealed() {
            bail!(
                "the store's keys are sealed: pass its --master-key-file so that the new key is \
                 sealed too"
            );
        }
        let keys = store.signing_keys().await?;
        let alg = match args.alg {
            Some(alg) => alg.into(),
            None => default_alg(&keys)?,
        };
        let now = OffsetDateTime::now_utc();
        let key = callsign_server::rotate_signing_key(
            store.as_ref(),
            alg,
            now,
            callsign_store::Actor::operator(),
        )
        .await?;
        let replaces = keys.iter().any(|k| k.alg == alg && k.kid != key.kid);
        anyhow::Ok((alg, key, now, replaces))
    }
    .await;
    store.close().await;
    let (alg, key, now, replaces) = result?;
    if !key.added {
        bail!(
            "a signing key of {alg} is pending already: {} starts signing at {}; rotate again \
             after that",
            key.kid,
            rfc3339(key.activates_at)
        );
    }
    let minutes = (key.activates_at - now).whole_seconds().div_euclid(60)
        + i64::from((key.activates_at - now).whole_seconds().rem_euclid(60) > 0);
    let retirement = if replaces {
        format!(
            "; the keys it replaces are retired after {}",
            rfc3339(callsign_server::retirement_bound(key.activates_at))
        )
    } else {
        String::new()
    };
    out!(
        "callsign: added signing key {} ({alg}); running servers publish it at their next key \
         refresh, and it starts signing at {} (in {minutes} minutes){retirement}",
        key.kid,
        rfc3339(key.activates_at),
    );
    Ok(())
}

/// The one algorithm the store's keys have (none yet: ES256, as `serve`).
fn default_alg(keys: &[StoredSigningKey]) -> anyhow::Result<Algorithm> {
    let mut algs: Vec<Algorithm> = keys.iter().map(|k| k.alg).collect();
    algs.sort_by_key(|a| a.jose_name());
    algs.dedup();
    match algs.as_slice() {
        [] => Ok(Algorithm::Es256),
        [one] => Ok(*one),
        several => bail!(
            "the store holds keys of several algorithms ({}): name one with --alg",
            several
                .iter()
                .map(|a| a.jose_name())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// One key as `signing-key list --json` prints it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ListedKey {
    kid: String,
    alg: &'static str,
    state: &'static str,
    created_at: String,
    activates_at: String,
    retires_at: Option<String>,
}

async fn list(args: ListArgs) -> anyhow::Result<()> {
    let (store, _) = open(args.store).await?;
    let keys = store.signing_keys().await;
    store.close().await;
    let keys = keys?;
    let now = OffsetDateTime::now_utc();
    let listed: Vec<ListedKey> = keys
        .iter()
        .zip(callsign_server::key_states(&keys, now))
        .map(|(k, state)| listed(k, state))
        .collect();
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &serde_json::json!({ "keys": listed }))?;
        writeln!(out)?;
    } else {
        writeln!(
            out,
            "{:<44} {:<6} {:<9} {:<21} {:<21} RETIRES",
            "KID", "ALG", "STATE", "CREATED", "ACTIVATES"
        )?;
        for k in &listed {
            writeln!(
                out,
                "{:<44} {:<6} {:<9} {:<21} {:<21} {}",
                k.kid,
                k.alg,
                k.state,
                k.created_at,
                k.activates_at,
                k.retires_at.as_deref().unwrap_or("-")
            )?;
        }
    }
    Ok(out.flush()?)
}

fn listed(k: &StoredSigningKey, state: KeyState) -> ListedKey {
    ListedKey {
        kid: k.kid.clone(),
        alg: k.alg.jose_name(),
        state: state.as_str(),
        created_at: rfc3339(k.created_at),
        activates_at: rfc3339(k.activates_at),
        retires_at: k.retire_after.map(rfc3339),
    }
}

/// An instant to the second, UTC (`2025-01-31T12:00:00Z`).
fn rfc3339(t: OffsetDateTime) -> String {
    let t = t.replace_nanosecond(0).unwrap_or(t);
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_periods_read_as_durations_of_at_least_an_hour() {
        let day = Duration::from_secs(86_400);
        assert_eq!(parse_rotation("30d").expect("30d"), Some(day * 30));
        assert_eq!(
            parse_rotation("12h").expect("12h"),
            Some(Duration::from_secs(12 * 3600))
        );
        assert_eq!(parse_rotation("off").expect("off"), None);
        assert!(parse_rotation("10m").is_err());
        assert!(parse_rotation("soon").is_err());
    }

    fn serve(argv: &[&str]) -> anyhow::Result<Settings> {
        use clap::Parser as _;
        let mut full = vec!["callsign", "serve"];
        full.extend_from_slice(argv);
        match crate::config::Cli::try_parse_from(full)?.command {
            crate::config::Command::Serve(a) => Ok(crate::config::resolve_serve(*a)?.settings),
            _ => unreachable!(),
        }
    }

    #[test]
    fn serve_takes_the_rotation_period_and_refresh_from_flags_or_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("callsign.toml");
        std::fs::write(
            &file,
            "signing_key_rotation = \"30d\"\nkey_refresh_secs = 5\n",
        )
        .expect("write");
        let cfg = file.to_str().expect("utf-8");
        let s = serve(&["--config", cfg]).expect("resolves");
        assert_eq!(
            s.signing_key_rotation,
            Some(Duration::from_secs(30 * 86_400))
        );
        assert_eq!(s.key_refresh, Duration::from_secs(5));
        let s = serve(&["--config", cfg, "--signing-key-rotation", "off"]).expect("resolves");
        assert_eq!(s.signing_key_rotation, None);
        let d = serve(&[]).expect("resolves");
        assert_eq!(d.signing_key_rotation, None);
        assert_eq!(d.key_refresh, callsign_server::DEFAULT_KEY_REFRESH);
        assert!(serve(&["--key-refresh-secs", "61"]).is_err());
        assert!(serve(&["--signing-key-rotation", "5m"]).is_err());
    }
}
