//! `callsign assignment …` and `callsign exchange`: workforce access (`/access/entra`,
//! api-version 2025-03-02-preview) from a shell, through `callsign-client`. Output and errors as
//! the other client commands: text by default, `--json` for scripts, one-line errors with the
//! service's code and message, and a non-zero exit code on failure.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use callsign_client::{
    ApiVersion, CommunicationIdentityClient, ConnectionString, EntraAssignment, PrincipalType,
};
use serde_json::json;

use crate::client_cmd::{ClientArgs, build_client, report_created, scopes};

/// The environment variable `exchange` reads the token from when no flag names one.
pub const TOKEN_ENV: &str = "CALLSIGN_EXCHANGE_TOKEN";

/// The longest token file read (a JWT is a few kilobytes).
const MAX_TOKEN_BYTES: u64 = 64 * 1024;

/// A well-formed access key for a client that only exchanges tokens: the exchange is not signed,
/// so this key is never used, and no real key is needed or sent.
const UNUSED_KEY: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

#[derive(Debug, clap::Subcommand)]
pub enum AssignmentCommand {
    /// Create or replace the access assignment of a principal (prints whether it was created).
    Put {
        #[command(flatten)]
        client: ClientArgs,
        /// The principal's object id: an Entra object id (GUID), or another provider's subject
        /// or group (e.g. auth0|5f7c8ec7c33c6c004bbafe82); for --type tenant, the tenant id.
        object_id: String,
        /// The principal's tenant id (a GUID).
        #[arg(long)]
        tenant: String,
        /// What the principal is: user, group, tenant or teamsResourceAccount.
        #[arg(long = "type", value_name = "TYPE", value_parser = principal_type)]
        principal_type: PrincipalType,
        /// Scopes of the tokens its exchanges get, repeated or comma-separated: chat, voip,
        /// chat.join, chat.join.limited, voip.join [default: the trusted issuer's scopes].
        #[arg(long, value_delimiter = ',')]
        scope: Vec<String>,
    },
    /// Show the access assignment of a principal.
    Get {
        #[command(flatten)]
        client: ClientArgs,
        /// The principal's object id.
        object_id: String,
    },
    /// List the access assignments of the resource, in object id order (every page).
    List {
        #[command(flatten)]
        client: ClientArgs,
        /// Assignments asked for per request (1 to 1000) [default: the server's, 100].
        #[arg(long)]
        page_size: Option<u32>,
    },
    /// Delete the access assignment of a principal.
    Delete {
        #[command(flatten)]
        client: ClientArgs,
        /// The principal's object id.
        object_id: String,
    },
}

/// `callsign exchange`: a user's token from a trusted identity provider for their
/// communication identity and token.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Prefer --token-file PATH, --token-file - (standard input) or \
    CALLSIGN_EXCHANGE_TOKEN to --token: every local user can read a process's arguments. \
    The exchange needs no access key: --endpoint is enough."
)]
pub struct ExchangeArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The server's endpoint, e.g. https://127.0.0.1:8443/ [default: the connection string's].
    /// The exchange is not signed: no access key is needed or sent.
    #[arg(long)]
    endpoint: Option<String>,
    /// The user's access token (a JWT). Visible to every local user on the command line: prefer
    /// --token-file or CALLSIGN_EXCHANGE_TOKEN.
    #[arg(long, conflicts_with = "token_file")]
    token: Option<String>,
    /// Read the user's access token from this file (`-`: standard input).
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,
}

fn principal_type(s: &str) -> Result<PrincipalType, String> {
    s.parse()
        .map_err(|e: callsign_client::UnknownPrincipalType| e.to_string())
}

/// Refuses an explicitly chosen api-version other than the one workforce access exists in.
fn check_version(client: &ClientArgs, what: &str) -> anyhow::Result<()> {
    if let Some(v) = client.api_version
        && v != ApiVersion::V2025_03_02Preview
    {
        bail!(
            "api-version {v} has no workforce access, so no {what}: it speaks {}; leave --api-version out",
            callsign_client::ACCESS_API_VERSION
        );
    }
    Ok(())
}

/// Runs an `assignment` subcommand.
pub async fn assignment(cmd: AssignmentCommand) -> anyhow::Result<()> {
    match cmd {
        AssignmentCommand::Put {
            client,
            object_id,
            tenant,
            principal_type,
            scope,
        } => {
            check_version(&client, "assignment put")?;
            let scopes = if scope.is_empty() {
                None
            } else {
                Some(scopes(&scope)?)
            };
            let c = build_client(&client)?;
            let (assignment, created) = c
                .put_access_assignment(&object_id, &tenant, principal_type, scopes.as_deref())
                .await?;
            if client.json {
                let mut v = assignment_json(&assignment);
                v["created"] = json!(created);
                out!("{v}");
            } else {
                let verb = if created { "created" } else { "replaced" };
                out!("{verb} {}", assignment.object_id);
                print_details(&assignment);
            }
            Ok(())
        }
        AssignmentCommand::Get { client, object_id } => {
            check_version(&client, "assignment get")?;
            let assignment = build_client(&client)?
                .get_access_assignment(&object_id)
                .await?;
            if client.json {
                out!("{}", assignment_json(&assignment));
            } else {
                out!("{}", assignment.object_id);
                print_details(&assignment);
            }
            Ok(())
        }
        AssignmentCommand::List { client, page_size } => list(&client, page_size).await,
        AssignmentCommand::Delete { client, object_id } => {
            check_version(&client, "assignment delete")?;
            build_client(&client)?
                .delete_access_assignment(&object_id)
                .await?;
            if client.json {
                out!("{}", json!({ "objectId": object_id, "deleted": true }));
            } else {
                out!("deleted {object_id}");
            }
            Ok(())
        }
    }
}

/// The assignment as the wire has it (`objectId`, `tenantId`, `principalType`, `scopes`).
fn assignment_json(a: &EntraAssignment) -> serde_json::Value {
    json!({
        "objectId": a.object_id,
        "tenantId": a.tenant_id,
        "principalType": a.principal_type,
        "scopes": a.scopes,
    })
}

fn print_details(a: &EntraAssignment) {
    out!("tenant: {}", a.tenant_id);
    out!("type: {}", a.principal_type);
    match &a.scopes {
        Some(s) => out!("scopes: {}", s.join(", ")),
        None => out!("scopes: the trusted issuer's"),
    }
}

/// `assignment list`: every page, printed as it arrives. Text: one assignment a line (object
/// id, tenant id, type, comma-separated scopes or `-`, tab-separated); `--json`: one array, an
/// object a line.
async fn list(client: &ClientArgs, page_size: Option<u32>) -> anyhow::Result<()> {
    check_version(client, "assignment list")?;
    let c = build_client(client)?;
    let mut next_link: Option<String> = None;
    let mut first = true;
    if client.json {
        out!("[");
    }
    loop {
        let page = c
            .list_access_assignments_page(page_size, next_link.as_deref())
            .await?;
        for a in &page.assignments {
            if client.json {
                let comma = if first { "" } else { "," };
                out!("{comma}{}", assignment_json(a));
            } else {
                let scopes = a
                    .scopes
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), |s| s.join(","));
                out!(
                    "{}\t{}\t{}\t{scopes}",
                    a.object_id,
                    a.tenant_id,
                    a.principal_type
                );
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

/// Runs `exchange`: prints the identity, then the token and its expiry (or one JSON object).
pub async fn exchange(args: ExchangeArgs) -> anyhow::Result<()> {
    check_version(&args.client, "exchange")?;
    let token = bearer_token(&args)?;
    let c = exchange_client(&args)?;
    let (user, access) = c.exchange_access_token(&token).await?;
    report_created(&args.client, &user, None, Some(&access))
}

/// The token from --token, --token-file (`-`: standard input) or CALLSIGN_EXCHANGE_TOKEN,
/// without surrounding white space. Errors never quote it.
fn bearer_token(args: &ExchangeArgs) -> anyhow::Result<String> {
    let token = match (&args.token, &args.token_file) {
        (Some(t), _) => t.clone(),
        (None, Some(path)) => read_token(path)?,
        (None, None) => match std::env::var(TOKEN_ENV) {
            Ok(t) => t,
            Err(_) => bail!(
                "no token to exchange: pass --token-file PATH (or - for standard input), set \
                 {TOKEN_ENV}, or pass --token"
            ),
        },
    };
    let token = token.trim();
    if token.is_empty() {
        bail!("the token to exchange is empty");
    }
    Ok(token.to_owned())
}

fn read_token(path: &Path) -> anyhow::Result<String> {
    let mut text = String::new();
    let read = if path == Path::new("-") {
        std::io::stdin()
            .lock()
            .take(MAX_TOKEN_BYTES + 1)
            .read_to_string(&mut text)
            .context("cannot read the token from standard input")?
    } else {
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_TOKEN_BYTES + 1).read_to_string(&mut text))
            .with_context(|| format!("cannot read the token file {}", path.display()))?
    };
    if u64::try_from(read).unwrap_or(u64::MAX) > MAX_TOKEN_BYTES {
        bail!("the token is longer than {MAX_TOKEN_BYTES} bytes: is that the right file?");
    }
    Ok(text)
}

/// A client of --endpoint (with a key that is never used: the exchange is not signed), or of
/// the connection string.
fn exchange_client(args: &ExchangeArgs) -> anyhow::Result<CommunicationIdentityClient> {
    let Some(endpoint) = &args.endpoint else {
        return build_client(&args.client);
    };
    let credentials = ConnectionString::from_parts(endpoint, UNUSED_KEY)
        .map_err(|e| anyhow::anyhow!("--endpoint: {e}"))?;
    let mut builder = CommunicationIdentityClient::builder(credentials);
    if let Some(ca) = &args.client.ca_cert {
        let pem = std::fs::read(ca)
            .with_context(|| format!("cannot read the CA certificate {}", ca.display()))?;
        builder = builder.add_trusted_ca_pem(pem);
    }
    Ok(builder.build()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principal_types_are_the_wire_names() {
        assert_eq!(principal_type("user"), Ok(PrincipalType::User));
        assert_eq!(
            principal_type("teamsResourceAccount"),
            Ok(PrincipalType::TeamsResourceAccount)
        );
        assert!(
            principal_type("everyone").is_err_and(|e| e.contains("group")),
            "the error lists the names"
        );
    }

    #[test]
    fn the_unused_key_is_a_well_formed_access_key() {
        assert!(ConnectionString::from_parts("https://127.0.0.1:8443/", UNUSED_KEY).is_ok());
    }

    #[test]
    fn a_token_file_is_read_trimmed_and_bounded() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("token");
        std::fs::write(&file, "eyJ.a.b\n").expect("write");
        let args = ExchangeArgs {
            client: ClientArgs {
                connection_string: None,
                ca_cert: None,
                json: false,
                api_version: None,
            },
            endpoint: None,
            token: None,
            token_file: Some(file.clone()),
        };
        assert_eq!(bearer_token(&args).ok().as_deref(), Some("eyJ.a.b"));
        std::fs::write(&file, "x".repeat(64 * 1024 + 1)).expect("write");
        assert!(bearer_token(&args).is_err());
        std::fs::write(&file, " \n").expect("write");
        assert!(bearer_token(&args).is_err());
    }
}
