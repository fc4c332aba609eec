//! `callsign audit`: the audit log of a store, read directly (no server needed; servers may run
//! meanwhile), as a readable table or as JSON lines; with `--token-counts`, the tokens issued
//! per resource.

use std::io::Write as _;
use std::time::Duration;

use anyhow::{Context as _, bail};
use callsign_core::ResourceId;
use callsign_store::{AuditQuery, AuditRecord, TokenCount};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::config::MigrateArgs;

/// Records read from the store at a time.
const PAGE: usize = 1000;

#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    #[command(flatten)]
    pub store: MigrateArgs,
    /// Only records from this time on: a duration back from now (90d, 12h, 30m, 1h 30m) or an
    /// RFC 3339 time (2025-01-31T12:00:00Z).
    #[arg(long)]
    pub since: Option<String>,
    /// Only records of this resource (its GUID).
    #[arg(long)]
    pub resource: Option<String>,
    /// JSON lines: one record per line.
    #[arg(long)]
    pub json: bool,
    /// Print the tokens issued per resource instead of the records.
    #[arg(long)]
    pub token_counts: bool,
}

/// A duration as `--since` and `--audit-retention` take it: `90d`, `12h`, `1h 30m`, `45s`.
pub fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let d = humantime::parse_duration(text.trim())
        .map_err(|e| anyhow::anyhow!("{text:?} is not a duration such as 90d, 12h or 30m: {e}"))?;
    // Longer spans would overflow the times they are added to or taken from.
    if d > MAX_DURATION {
        bail!("{text:?} is longer than 100 years");
    }
    Ok(d)
}

/// The longest duration read: a hundred years.
const MAX_DURATION: Duration = Duration::from_secs(36_500 * 86_400);

/// `--audit-retention`: a duration, or `0`/`off` to keep records for ever (`None`).
pub fn parse_retention(text: &str) -> anyhow::Result<Option<Duration>> {
    match text.trim() {
        "0" | "off" => Ok(None),
        t => {
            let d = parse_duration(t).context("--audit-retention")?;
            if d < Duration::from_secs(60) {
                bail!("--audit-retention must be at least one minute (or 0/off to keep records)");
            }
            Ok(Some(d))
        }
    }
}

/// `--since`: an RFC 3339 time, or a duration back from `now`.
fn parse_since(text: &str, now: OffsetDateTime) -> anyhow::Result<OffsetDateTime> {
    if let Ok(t) = OffsetDateTime::parse(text.trim(), &Rfc3339) {
        return Ok(t);
    }
    let back = parse_duration(text).with_context(|| {
        format!(
            "--since {text:?} is neither an RFC 3339 time (2026-12-04T00:00:00Z) nor a duration"
        )
    })?;
    time::Duration::try_from(back)
        .ok()
        .and_then(|back| now.checked_sub(back))
        .with_context(|| format!("--since {text:?} reaches before the calendar"))
}

pub async fn run(args: AuditArgs) -> anyhow::Result<()> {
    let since = args
        .since
        .as_deref()
        .map(|s| parse_since(s, OffsetDateTime::now_utc()))
        .transpose()?;
    let resource = args
        .resource
        .as_deref()
        .map(|r| {
            ResourceId::parse(r).map_err(|_| anyhow::anyhow!("--resource {r:?} is not a GUID"))
        })
        .transpose()?;
    let resolved = crate::config::resolve_migrate(args.store)?;
    // A mistyped --data-dir must not read as an empty log (nor make a store).
    crate::resource_cmd::ensure_store_exists(&resolved)?;
    let store = resolved.open().await?;
    let result = if args.token_counts {
        match store.token_counts().await {
            Ok(counts) => print_counts(counts, resource, args.json),
            Err(e) => Err(e.into()),
        }
    } else {
        print_records(store.as_ref(), since, resource, args.json).await
    };
    store.close().await;
    // A reader that stopped early (`| head`) is not an error.
    match result {
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            Ok(())
        }
        other => other,
    }
}

async fn print_records(
    store: &dyn callsign_store::AuditLog,
    since: Option<OffsetDateTime>,
    resource: Option<ResourceId>,
    json: bool,
) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if !json {
        writeln!(
            out,
            "{:>8}  {:<24}  {:<16}  {:<8}  {:<10}  {:<15}  {:<36}  {:<36}  IDENTITY / DETAIL",
            "SEQ", "TIME", "OPERATION", "OUTCOME", "CREDENTIAL", "CLIENT", "REQUEST", "RESOURCE"
        )?;
    }
    let mut query = AuditQuery {
        since,
        resource,
        limit: PAGE,
        ..AuditQuery::default()
    };
    loop {
        let page = store.audit_records(&query).await?;
        for r in &page {
            if json {
                writeln!(out, "{}", record_json(r))?;
            } else {
                writeln!(out, "{}", record_line(r))?;
            }
        }
        match page.last() {
            Some(last) if page.len() == PAGE => query.after = Some(last.seq),
            _ => break,
        }
    }
    out.flush()?;
    Ok(())
}

/// RFC 3339, UTC, milliseconds.
fn timestamp(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// One record as a JSON object (every field present; `null` when it does not apply).
pub fn record_json(r: &AuditRecord) -> serde_json::Value {
    serde_json::json!({
        "seq": r.seq,
        "time": timestamp(r.at),
        "resourceId": r.resource.map(|x| x.to_string()),
        "operation": r.operation.as_str(),
        "identityId": r.identity.map(|x| x.to_string()),
        "outcome": r.outcome.as_str(),
        "credential": r.credential.as_str(),
        "clientAddress": r.client.map(|x| x.to_string()),
        "requestId": r.request_id,
        "subject": r.subject,
        "detail": r.detail,
    })
}

fn record_line(r: &AuditRecord) -> String {
    let dash = || "-".to_owned();
    let mut tail = r.identity.map(|i| i.to_string()).unwrap_or_default();
    // Quoted and escaped: a subject is the issuer's to choose and may hold spaces, quotes or
    // direction overrides that would otherwise forge the line.
    let subject = r.subject.as_ref().map(|s| format!("by {s:?}"));
    for part in [r.detail.as_ref(), subject.as_ref()].into_iter().flatten() {
        if !tail.is_empty() {
            tail.push(' ');
        }
        tail.push_str(part);
    }
    format!(
        "{:>8}  {:<24}  {:<16}  {:<8}  {:<10}  {:<15}  {:<36}  {:<36}  {}",
        r.seq,
        timestamp(r.at),
        r.operation.as_str(),
        r.outcome.as_str(),
        r.credential.as_str(),
        r.client.map_or_else(dash, |c| c.to_string()),
        r.request_id.clone().unwrap_or_else(dash),
        r.resource.map_or_else(dash, |x| x.to_string()),
        tail
    )
}

fn print_counts(
    counts: Vec<TokenCount>,
    resource: Option<ResourceId>,
    json: bool,
) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if !json {
        writeln!(out, "{:<36}  {:>12}  LAST ISSUED", "RESOURCE", "TOKENS")?;
    }
    for c in counts
        .iter()
        .filter(|c| resource.is_none_or(|r| r == c.resource))
    {
        let last = c.last_issued_at.map(timestamp);
        if json {
            let line = serde_json::json!({
                "resourceId": c.resource.to_string(),
                "tokensIssued": c.count,
                "lastIssuedAt": last,
            });
            writeln!(out, "{line}")?;
        } else {
            let last = last.unwrap_or_else(|| "-".to_owned());
            writeln!(
                out,
                "{:<36}  {:>12}  {last}",
                c.resource.to_string(),
                c.count
            )?;
        }
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_times_are_read() {
        assert_eq!(
            parse_duration("90d").expect("90d"),
            Duration::from_secs(90 * 86_400)
        );
        assert_eq!(parse_retention("off").expect("off"), None);
        assert_eq!(parse_retention("0").expect("0"), None);
        assert!(parse_retention("1s").is_err());
        assert!(parse_retention("ninety").is_err());
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("now");
        assert_eq!(
            parse_since("1h", now).expect("1h").unix_timestamp(),
            1_800_000_000 - 3600
        );
        assert_eq!(
            parse_since("2025-01-31T12:00:00Z", now)
                .expect("time")
                .unix_timestamp(),
            1_738_324_800
        );
        assert!(parse_since("yesterday", now).is_err());
    }

    #[test]
    fn a_bearer_subject_is_shown_in_both_forms() {
        let record = |subject: Option<&str>| AuditRecord {
            seq: 7,
            at: OffsetDateTime::from_unix_timestamp(1_738_324_800).expect("t"),
            resource: Some(ResourceId::new_random()),
            operation: callsign_store::AuditOperation::PutAccessAssignment,
            identity: None,
            outcome: callsign_store::AuditOutcome::Success,
            credential: callsign_store::Credential::Bearer,
            client: None,
            request_id: None,
            subject: subject.map(str::to_owned),
            detail: Some("object admins (group)".to_owned()),
        };
        let with = record(Some("https://login.example/t/v2.0#alice"));
        assert_eq!(
            record_json(&with)["subject"],
            "https://login.example/t/v2.0#alice"
        );
        assert_eq!(record_json(&with)["credential"], "bearer");
        assert!(
            record_line(&with)
                .ends_with("object admins (group) by \"https://login.example/t/v2.0#alice\""),
            "{}",
            record_line(&with)
        );
        let without = record(None);
        assert!(record_json(&without)["subject"].is_null());
        assert!(record_line(&without).ends_with("object admins (group)"));
    }

    #[test]
    fn timestamps_are_utc_with_milliseconds() {
        let t = OffsetDateTime::from_unix_timestamp_nanos(1_738_324_800_123_000_000).expect("t");
        assert_eq!(timestamp(t), "2025-01-31T12:00:00.123Z");
    }
}
