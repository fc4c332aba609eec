//! The Azure Communication Services "User Access Tokens" quickstart, step for step, printing
//! what the Python quickstart prints. The `issue_tokens` example runs it; being a function, it
//! can also be tested against a live server.
//!
//! ```text
//! Azure Communication Services - User Access Tokens Quickstart
//!
//! Created a user with ID: 8:acs:…:
//!
//! Issued a token with 'voip' scope that expires at 02/01/24 09:15 07 PM:
//! eyJ…
//!
//! Successfully revoked all tokens for user with ID: 8:acs:…
//!
//! Deleted the user with ID: 8:acs:…
//! ```
//!
//! On failure it prints `Exception:` and the error, as the Python `except` block does.

use std::io::{self, Write};

use time::OffsetDateTime;
use time::format_description::FormatItem;
use time::macros::format_description;

use crate::client::error_chain;
use crate::{CommunicationIdentityClient, CommunicationTokenScope, ConnectionString, Error};

/// The first line printed.
pub const TITLE: &str = "Azure Communication Services - User Access Tokens Quickstart";
/// The environment variable holding the connection string.
pub const CONNECTION_STRING_VAR: &str = "COMMUNICATION_SERVICES_CONNECTION_STRING";
/// The standard environment variable naming a CA bundle to trust (e.g. callsign's
/// `<data-dir>/tls/ca.pem`), in addition to the platform's roots.
pub const CA_FILE_VAR: &str = "SSL_CERT_FILE";

/// Python's `strftime('%d/%m/%y %I:%M %S %p')`.
const EXPIRY_FORMAT: &[FormatItem<'static>] = format_description!(
    "[day]/[month]/[year repr:last_two] [hour repr:12]:[minute] [second] [period]"
);

/// Why the quickstart stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QuickstartError {
    /// A required environment variable is not set (or not Unicode).
    #[error("the environment variable {0} is not set")]
    MissingVariable(&'static str),
    /// The CA file named by `SSL_CERT_FILE` cannot be read.
    #[error("cannot read the CA certificate file {path} (from SSL_CERT_FILE): {source}")]
    CaFile {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A client call failed.
    #[error(transparent)]
    Client(#[from] Error),
    /// The output could not be written.
    #[error("cannot write the output: {0}")]
    Output(#[from] io::Error),
}

/// Formats an expiry the way the quickstart prints it: `dd/mm/yy hh:MM SS AM`.
pub fn format_expiry(t: OffsetDateTime) -> String {
    t.format(EXPIRY_FORMAT)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// Builds the client from `COMMUNICATION_SERVICES_CONNECTION_STRING`, trusting the CA bundle in
/// `SSL_CERT_FILE` too when that is set. `var` looks a variable up (use
/// `|name| std::env::var(name).ok()`).
///
/// # Errors
///
/// [`QuickstartError::MissingVariable`], [`QuickstartError::CaFile`], or the client's own
/// errors.
pub fn client_from_env(
    var: impl Fn(&str) -> Option<String>,
) -> Result<CommunicationIdentityClient, QuickstartError> {
    let cs = var(CONNECTION_STRING_VAR)
        .ok_or(QuickstartError::MissingVariable(CONNECTION_STRING_VAR))?;
    let mut builder = CommunicationIdentityClient::builder(ConnectionString::parse(&cs)?);
    if let Some(path) = var(CA_FILE_VAR).filter(|p| !p.is_empty()) {
        let pem = std::fs::read(&path).map_err(|source| QuickstartError::CaFile {
            path: path.clone(),
            source,
        })?;
        builder = builder.add_trusted_ca_pem(pem);
    }
    Ok(builder.build()?)
}

/// The quickstart: prints the title, gets a client from `connect`, then creates a user, issues
/// it a `voip` token, revokes its tokens and deletes it, printing a line for each step.
///
/// # Errors
///
/// The first failure; what was printed up to it stays printed.
pub async fn run<W, F>(out: &mut W, connect: F) -> Result<(), QuickstartError>
where
    W: Write,
    F: FnOnce() -> Result<CommunicationIdentityClient, QuickstartError>,
{
    writeln!(out, "{TITLE}")?;
    let client = connect()?;

    let user = client.create_user().await?;
    writeln!(out, "\nCreated a user with ID: {user}:")?;

    let token = client
        .get_token(&user, &[CommunicationTokenScope::Voip], None)
        .await?;
    writeln!(
        out,
        "\nIssued a token with 'voip' scope that expires at {}:",
        format_expiry(token.expires_on)
    )?;
    writeln!(out, "{}", token.token)?;

    client.revoke_tokens(&user).await?;
    writeln!(
        out,
        "\nSuccessfully revoked all tokens for user with ID: {user}"
    )?;

    client.delete_user(&user).await?;
    writeln!(out, "\nDeleted the user with ID: {user}")?;
    Ok(())
}

/// What the example's `main` does: [`run`] with [`client_from_env`], and on failure
/// `Exception:` and the error (with its causes) on `out`. Returns whether it succeeded.
pub async fn main_with<W: Write>(out: &mut W, var: impl Fn(&str) -> Option<String>) -> bool {
    match run(out, || client_from_env(var)).await {
        Ok(()) => true,
        Err(e) => {
            // If even this cannot be written there is nowhere left to report it; the result
            // still says it failed.
            let _ = writeln!(out, "Exception:\n{}", error_chain(&e));
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn expiry_is_printed_like_python_strftime() {
        assert_eq!(
            format_expiry(datetime!(2024-01-02 21:15:07.5 UTC)),
            "02/01/24 09:15 07 PM"
        );
        assert_eq!(
            format_expiry(datetime!(2031-12-31 00:05:00 UTC)),
            "31/12/31 12:05 00 AM"
        );
    }

    #[tokio::test]
    async fn a_missing_connection_string_is_reported_after_the_title() {
        let mut out = Vec::new();
        assert!(!main_with(&mut out, |_| None).await);
        assert_eq!(
            String::from_utf8_lossy(&out),
            format!(
                "{TITLE}\nException:\nthe environment variable {CONNECTION_STRING_VAR} is not set\n"
            )
        );
    }
}
