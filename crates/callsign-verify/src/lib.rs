//! Verify callsign access tokens in your own backend.
//!
//! * [`Verifier`]: fetches and caches the server's JWKS ([`JwksCache`]: `max-age` honoured
//!   within 30 s–1 h, one refresh per 30 s cooldown on an unknown `kid`, one fetch in flight,
//!   cached keys served while the endpoint is down), verifies ES256, EdDSA and RS256 with the
//!   algorithm pinned by the key, checks `iss`, `exp`/`nbf` with leeway, the resource and
//!   required scopes, and returns the typed claims ([`VerifiedToken`]).
//! * [`RevocationFollower`]: follows the server's revocation feed so tokens of revoked or deleted
//!   identities are refused within a bound, applying the server's own rule
//!   ([`callsign_core::token::token_in_force`]); fails closed (or open, as configured) when
//!   the feed has been out of reach too long.
//! * [`middleware`]: a tower [`VerifyLayer`] and an axum [`Token`] extractor.
//!
//! Every refusal is a distinct [`VerifyError`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use callsign_verify::{Verifier, VerifyError};
//! use callsign_verify::callsign_core::ResourceId;
//!
//! let verifier = Verifier::builder(
//!     "https://127.0.0.1:8443/".parse()?,
//!     ResourceId::parse("1b6b3a30-7c2a-4f2e-9d55-3f0b3c3f1d20")?,
//! )
//! .build()?;
//! match verifier.verify("eyJ…").await {
//!     Ok(claims) => println!("{} may chat until {}", claims.identity, claims.expires_at),
//!     Err(VerifyError::Revoked) => println!("revoked"),
//!     Err(e) => println!("refused: {e}"),
//! }
//! # Ok(()) }
//! ```

mod body;
mod error;
pub mod follower;
pub mod jwks;
pub mod jws;
pub mod middleware;
mod verifier;

pub use body::read_bounded;
pub use callsign_api::Scope;
pub use callsign_core;
pub use callsign_core::token::VerifiedToken;
pub use error::VerifyError;
pub use follower::{FollowerConfig, RevocationFollower, StalePolicy};
pub use jwks::{JwksCache, JwksConfig};
pub use middleware::{Rejection, Token, VerifyLayer};
pub use verifier::{BuildError, Verifier, VerifierBuilder};
