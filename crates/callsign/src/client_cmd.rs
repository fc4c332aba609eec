//! `callsign user …` and `callsign token …`: the identity API from a shell, through
//! `callsign-client`. Human output by default, `--json` for scripts; one-line errors and a
//! non-zero exit code on failure.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use callsign_client::{
    AccessToken, ApiVersion, CommunicationIdentityClient, CommunicationTokenScope,
    CommunicationUserDetails, CommunicationUserIdentifier, ConnectionString, ListUsersOptions,
};
use serde_json::json;

/// How to reach the service.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// Connection string `endpoint=…;accesskey=…`.
    #[arg(
        long,
        env = "COMMUNICATION_SERVICES_CONNECTION_STRING",
        hide_env_values = true
    )]
    pub connection_string: Option<String>,
    /// Extra CA certificate (PEM) to trust, e.g. `callsign ca-cert` output [default: SSL_CERT_FILE].
    #[arg(long, env = "SSL_CERT_FILE")]
    pub ca_cert: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// api-version to speak: 2021-03-07 or later [default: 2023-10-01; custom-id calls,
    /// `user get` and `user list`: 2025-03-02-preview unless this version has custom ids]
    #[arg(long, value_parser = client_version)]
    pub api_version: Option<ApiVersion>,
}

/// The versions the client speaks: all but the 2020 preview, whose paths differ.
fn client_version(s: &str) -> Result<ApiVersion, String> {
    let v: ApiVersion = s
        .parse()
        .map_err(|e: callsign_client::UnknownApiVersion| e.to_string())?;
    if v.is_legacy() {
        return Err(format!(
            "{v} has other paths and status codes; the CLI speaks 2021-03-07 and later"
        ));
    }
    Ok(v)
}

impl ClientArgs {
    fn version(&self) -> ApiVersion {
        self.api_version.unwrap_or(ApiVersion::CLIENT_DEFAULT)
    }

    /// Refuses `--expires-in` with a version that would silently ignore it.
    fn check_expiry(&self, expires: Option<Duration>) -> anyhow::Result<()> {
        let v = self.version();
        if expires.is_some() && !v.has_expiry() {
            bail!(
                "api-version {v} ignores --expires-in (tokens live 24 h): use 2022-10-01 or later"
            );
        }
        Ok(())
    }

    /// Refuses a custom-id call on an explicitly chosen version that has no custom ids.
    fn check_custom_ids(&self, what: &str) -> anyhow::Result<()> {
        if let Some(v) = self.api_version
            && !v.has_custom_id()
        {
            bail!(
                "api-version {v} has no custom ids, so no {what}: use 2025-03-02-preview or 2025-04-01-preview, or leave --api-version out"
            );
        }
        Ok(())
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum UserCommand {
    /// Create an identity (optionally with a custom id and/or a token).
    Create {
        #[command(flatten)]
        client: ClientArgs,
        /// Your key for the identity; creating again with it returns the same identity.
        #[arg(long)]
        custom_id: Option<String>,
        /// Also issue a token (needs --scope).
        #[arg(long, requires = "scope")]
        with_token: bool,
        /// Scopes of the token, comma-separated: chat, voip, chat.join, chat.join.limited, voip.join.
        #[arg(long, value_delimiter = ',')]
        scope: Vec<String>,
        /// Token lifetime, e.g. 1h, 90m, 24h (60 minutes to 24 hours) [default: 24h].
        #[arg(long)]
        expires_in: Option<String>,
    },
    /// Show an identity.
    Get {
        #[command(flatten)]
        client: ClientArgs,
        /// The identity id (8:acs:…).
        id: String,
    },
    /// List the identities of the resource, in id order (every page).
    List {
        #[command(flatten)]
        client: ClientArgs,
        /// Only identities whose custom id starts with this.
        #[arg(long)]
        custom_id_prefix: Option<String>,
        /// Only identities whose last token was issued before this RFC 3339 time, or never.
        #[arg(long, value_parser = rfc3339_arg)]
        last_token_issued_before: Option<time::OffsetDateTime>,
    },
    /// Delete an identity and revoke its tokens.
    Delete {
        #[command(flatten)]
        client: ClientArgs,
        /// The identity id (8:acs:…).
        id: String,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Issue an access token.
    Issue {
        #[command(flatten)]
        client: ClientArgs,
        /// The identity id (8:acs:…).
        id: String,
        /// Scopes, comma-separated: chat, voip, chat.join, chat.join.limited, voip.join.
        #[arg(long, value_delimiter = ',', required = true)]
        scope: Vec<String>,
        /// Token lifetime, e.g. 1h, 90m, 24h (60 minutes to 24 hours) [default: 24h].
        #[arg(long)]
        expires_in: Option<String>,
    },
    /// Revoke every token issued so far to an identity.
    Revoke {
        #[command(flatten)]
        client: ClientArgs,
        /// The identity id (8:acs:…).
        id: String,
    },
}

pub(crate) fn build_client(args: &ClientArgs) -> anyhow::Result<CommunicationIdentityClient> {
    let Some(cs) = args.connection_string.as_deref() else {
        bail!(
            "no connection string: pass --connection-string or set COMMUNICATION_SERVICES_CONNECTION_STRING"
        );
    };
    let credentials = ConnectionString::parse(cs)?;
    let mut builder = CommunicationIdentityClient::builder(credentials).api_version(args.version());
    if let Some(ca) = &args.ca_cert {
        let pem = std::fs::read(ca)
            .with_context(|| format!("cannot read the CA certificate {}", ca.display()))?;
        builder = builder.add_trusted_ca_pem(pem);
    }
    Ok(builder.build()?)
}

pub(crate) fn scopes(names: &[String]) -> anyhow::Result<Vec<CommunicationTokenScope>> {
    names
        .iter()
        .map(|s| {
            s.trim().parse::<CommunicationTokenScope>().map_err(|_| {
                anyhow::anyhow!(
                    "unknown scope {s:?}: use chat, voip, chat.join, chat.join.limited or voip.join"
                )
            })
        })
        .collect()
}

/// `1h`, `90m`, `1h30m`, or a bare number of minutes.
fn expiry(s: Option<&str>) -> anyhow::Result<Option<Duration>> {
    let Some(s) = s else { return Ok(None) };
    let s = s.trim();
    if let Ok(minutes) = s.parse::<u64>() {
        return Ok(Some(Duration::from_secs(minutes * 60)));
    }
    humantime::parse_duration(s)
        .map(Some)
        .map_err(|e| anyhow::anyhow!("invalid --expires-in {s:?} ({e}): use e.g. 1h, 90m, 24h"))
}

fn rfc3339_arg(s: &str) -> Result<time::OffsetDateTime, String> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("not an RFC 3339 time, e.g. 2026-01-31T00:00:00Z ({e})"))
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

fn token_json(t: &AccessToken) -> serde_json::Value {
    json!({ "token": t.token, "expiresOn": rfc3339(t.expires_on) })
}

fn print_token(t: &AccessToken) {
    out!("token expires {}", rfc3339(t.expires_on));
    out!("{}", t.token);
}

/// Runs a `user` subcommand.
pub async fn user(cmd: UserCommand) -> anyhow::Result<()> {
    match cmd {
        UserCommand::Create {
            client,
            custom_id,
            with_token,
            scope,
            expires_in,
        } => {
            let c = build_client(&client)?;
            let scopes = scopes(&scope)?;
            let expires = expiry(expires_in.as_deref())?;
            client.check_expiry(expires)?;
            if custom_id.is_some() {
                client.check_custom_ids("--custom-id")?;
            }
            if with_token && custom_id.is_some() {
                // Two calls: the custom-id create, then a token for whatever identity it names.
                let user = c
                    .create_user_with_custom_id(custom_id.as_deref().unwrap_or_default())
                    .await?;
                let token = c.get_token(&user, &scopes, expires).await?;
                return report_created(&client, &user, custom_id.as_deref(), Some(&token));
            }
            if with_token {
                let (user, token) = c.create_user_and_token(&scopes, expires).await?;
                return report_created(&client, &user, None, Some(&token));
            }
            let user = match custom_id.as_deref() {
                Some(custom) => c.create_user_with_custom_id(custom).await?,
                None => c.create_user().await?,
            };
            report_created(&client, &user, custom_id.as_deref(), None)
        }
        UserCommand::Get { client, id } => {
            client.check_custom_ids("user get")?;
            let c = build_client(&client)?;
            let details = c.get_user(&CommunicationUserIdentifier::new(id)).await?;
            if client.json {
                out!("{}", details_json(&details));
            } else {
                out!("{}", details.user.raw_id());
                if let Some(c) = &details.custom_id {
                    out!("custom id: {c}");
                }
                match details.last_token_issued_at {
                    Some(t) => out!("last token issued: {}", rfc3339(t)),
                    None => out!("last token issued: never"),
                }
            }
            Ok(())
        }
        UserCommand::List {
            client,
            custom_id_prefix,
            last_token_issued_before,
        } => {
            let options = ListUsersOptions {
                custom_id_prefix,
                last_token_issued_before,
                max_page_size: None,
            };
            list_users(&client, &options).await
        }
        UserCommand::Delete { client, id } => {
            let c = build_client(&client)?;
            c.delete_user(&CommunicationUserIdentifier::new(id.clone()))
                .await?;
            if client.json {
                out!("{}", json!({ "id": id, "deleted": true }));
            } else {
                out!("deleted {id}");
            }
            Ok(())
        }
    }
}

fn details_json(details: &CommunicationUserDetails) -> serde_json::Value {
    json!({
        "id": details.user.raw_id(),
        "customId": details.custom_id,
        "lastTokenIssuedAt": details.last_token_issued_at.map(rfc3339),
    })
}

/// `user list`: every page, printed as it arrives. Text: one identity a line (id, custom id or
/// `-`, last token time or `never`, tab-separated); `--json`: one array, an object a line.
async fn list_users(client: &ClientArgs, options: &ListUsersOptions) -> anyhow::Result<()> {
    client.check_custom_ids("user list")?;
    let c = build_client(client)?;
    let mut next_link: Option<String> = None;
    let mut first = true;
    if client.json {
        out!("[");
    }
    loop {
        let page = c.list_users_page(options, next_link.as_deref()).await?;
        for details in &page.users {
            if client.json {
                let comma = if first { "" } else { "," };
                out!("{comma}{}", details_json(details));
            } else {
                let custom = details.custom_id.as_deref().unwrap_or("-");
                let last = details
                    .last_token_issued_at
                    .map_or_else(|| "never".to_owned(), rfc3339);
                out!("{}\t{custom}\t{last}", details.user.raw_id());
            }
            first = false;
        }
        match page.next_link {
            Some(link) => next_link = Some(link),
            None => break,
        }
    }
    if client.json {
        out!("]");
    }
    Ok(())
}

pub(crate) fn report_created(
    client: &ClientArgs,
    user: &CommunicationUserIdentifier,
    custom_id: Option<&str>,
    token: Option<&AccessToken>,
) -> anyhow::Result<()> {
    if client.json {
        let mut v = json!({ "id": user.raw_id() });
        if let Some(c) = custom_id {
            v["customId"] = json!(c);
        }
        if let Some(t) = token {
            v["accessToken"] = token_json(t);
        }
        out!("{v}");
    } else {
        out!("{}", user.raw_id());
        if let Some(t) = token {
            print_token(t);
        }
    }
    Ok(())
}

/// Runs a `token` subcommand.
pub async fn token(cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Issue {
            client,
            id,
            scope,
            expires_in,
        } => {
            let c = build_client(&client)?;
            let scopes = scopes(&scope)?;
            let expires = expiry(expires_in.as_deref())?;
            client.check_expiry(expires)?;
            let t = c
                .get_token(&CommunicationUserIdentifier::new(id), &scopes, expires)
                .await?;
            if client.json {
                out!("{}", token_json(&t));
            } else {
                print_token(&t);
            }
            Ok(())
        }
        TokenCommand::Revoke { client, id } => {
            let c = build_client(&client)?;
            c.revoke_tokens(&CommunicationUserIdentifier::new(id.clone()))
                .await?;
            if client.json {
                out!("{}", json!({ "id": id, "revoked": true }));
            } else {
                out!("revoked every token of {id}");
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_parse_in_several_spellings() {
        assert_eq!(
            expiry(Some("1h")).ok().flatten(),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(
            expiry(Some("90m")).ok().flatten(),
            Some(Duration::from_secs(5400))
        );
        assert_eq!(
            expiry(Some("1h30m")).ok().flatten(),
            Some(Duration::from_secs(5400))
        );
        assert_eq!(
            expiry(Some("60")).ok().flatten(),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(expiry(None).ok().flatten(), None);
        assert!(expiry(Some("soon")).is_err());
    }

    #[test]
    fn scopes_are_checked_before_any_request() {
        assert_eq!(
            scopes(&["chat".into(), "voip".into()]).ok(),
            Some(vec![
                CommunicationTokenScope::Chat,
                CommunicationTokenScope::Voip
            ])
        );
        assert!(scopes(&["pstn".into()]).is_err());
    }
}
