//! What the callsign test suites share, so that each is written once:
//!
//! - [`TestApp`]: the real server, in process, on port 0 over a chosen [`Backend`] (SQLite in a
//!   temp data dir, or PostgreSQL on a fresh database), with a settings hook and an injectable
//!   clock; stopped as SIGTERM would stop it.
//! - [`TestDatabase`]: a fresh PostgreSQL database on the test server
//!   (`CALLSIGN_TEST_DATABASE_URL`, by default `postgres://postgres@127.0.0.1:5432/postgres`),
//!   dropped when the value is.
//! - [`connect_postgres`]: a plain connection to any PostgreSQL URL, for checks in SQL.
//! - [`OidcProvider`]: a real OpenID Connect provider on loopback that mints user tokens.
//! - [`Relay`]: a TCP relay on loopback that a test cuts, restores or points at another port.
//! - [`SigningClient`] and [`Reply`]: requests signed as the ACS SDKs sign them, and their
//!   answers parsed; [`access_key`] reads the key out of a connection string, [`issue_path`]
//!   names the token-issuing request-target.
//!
//! Everything is per value: no global state, unique database names, so tests run in parallel.
//! A missing PostgreSQL server is a failure, never a skip.

mod app;
mod database;
mod oidc;
mod relay;
mod signing;

pub use app::{AppBuilder, Backend, TestApp, spawn_app};
pub use database::{TestDatabase, admin_url, connect_postgres};
pub use oidc::OidcProvider;
pub use relay::Relay;
pub use signing::{Reply, SendExt, SigningClient, access_key, claims, enc, issue_path};
