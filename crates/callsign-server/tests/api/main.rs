//! Black-box tests of the server: a real instance on port 0 with a temp data dir, driven over
//! HTTPS with signed requests. Every test runs on each backend: embedded SQLite and PostgreSQL.

/// Runs each named `async fn(Backend)` of the calling module once per backend, as
/// `sqlite::<name>` and `postgres::<name>`.
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(callsign_testkit::Backend::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(callsign_testkit::Backend::Postgres).await;
                }
            )*
        }
    };
}

mod audit;
mod bad_input;
mod clock;
mod console;
mod limits;
mod listing;
mod metrics;
mod oidc;
mod operations;
mod resources;
mod revocations;
mod rotation;
mod tokens;
mod versions;
