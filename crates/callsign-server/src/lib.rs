//! The callsign server: the ACS Identity API over HTTPS, HMAC request authentication, token
//! issuance, the JWKS endpoint, configuration and startup.
//!
//! Entry point: [`Application::build`] binds a listener (port 0 allowed) and bootstraps the
//! resource, keys and TLS material; [`Application::serve`] runs until its shutdown future fires.
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! use callsign_server::{Application, Settings};
//!
//! let mut settings = Settings::new("./callsign-data");
//! settings.listen = "127.0.0.1:0".parse()?;
//! let app = Application::build(settings).await?;
//! println!("{}", app.connection_string());
//! app.serve(async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```

mod audit;
mod auth;
mod bearer;
mod connection;
mod console;
mod entra;
mod error;
mod feed;
mod http;
mod identities;
mod keys;
mod listing;
mod meta;
mod metrics;
pub mod oidc;
mod openapi;
#[cfg(test)]
mod properties;
mod resources;
mod serve;
mod settings;
mod startup;
mod state;
mod teams;
mod throttle;
pub mod tls;
mod version;

pub use connection::{ClientAddr, ConnectionLimits, derive_cap};
pub use error::ApiError;
pub use feed::FeedSettings;
pub use keys::{
    ACTIVATION_LEAD, DEFAULT_KEY_REFRESH, JWKS_MAX_AGE, KeyState, MAX_TOKEN_LIFETIME, PendingKey,
    RETIRE_MARGIN, key_states, retirement_bound, rotate_signing_key, signing_key_for,
};
pub use openapi::OPENAPI_DOCUMENT;
pub use settings::{DEFAULT_AUDIT_RETENTION, Settings};
pub use startup::Application;
pub use throttle::{OperationClass, Rate, ThrottleConfig};
pub use tls::{LocalCaPaths, TlsMode};
