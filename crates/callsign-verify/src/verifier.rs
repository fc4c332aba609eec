//! [`Verifier`]: the JWKS cache, the policy and, optionally, the revocation follower, together.

use std::sync::Arc;
use std::time::Duration;

use callsign_api::Scope;
use callsign_client::ConnectionString;
use callsign_core::token::VerifiedToken;
use callsign_core::{Clock, ResourceId, SystemClock};
use reqwest::Url;

use crate::VerifyError;
use crate::follower::{FollowerConfig, RevocationFollower};
use crate::jwks::{JwksCache, JwksConfig};
use crate::jws::{Jws, Policy};

/// Verifies callsign access tokens for one resource.
pub struct Verifier {
    jwks: JwksCache,
    policy: Policy,
    clock: Arc<dyn Clock>,
    revocations: Option<RevocationFollower>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("policy", &self.policy)
            .field("jwks", &self.jwks)
            .field("revocations", &self.revocations)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// A builder for tokens of `resource` issued by the server at `endpoint`
    /// (`https://host:port/`; the JWKS is `<endpoint>.well-known/jwks.json`).
    pub fn builder(endpoint: Url, resource: ResourceId) -> VerifierBuilder {
        VerifierBuilder {
            jwks_url: endpoint.join(".well-known/jwks.json").ok(),
            http: None,
            policy: Policy::for_resource(resource),
            jwks: JwksConfig::default(),
            clock: Arc::new(SystemClock),
            follower: None,
        }
    }

    /// Verifies `token`: signature, issuer, resource, time, and revocation when a follower is
    /// configured.
    pub async fn verify(&self, token: &str) -> Result<VerifiedToken, VerifyError> {
        self.verify_scopes(token, &[]).await
    }

    /// Like [`Verifier::verify`], also requiring every scope of `required`.
    pub async fn verify_scopes(
        &self,
        token: &str,
        required: &[Scope],
    ) -> Result<VerifiedToken, VerifyError> {
        let jws = Jws::parse(token)?;
        let key = self.jwks.key(jws.kid()).await?;
        let verified = jws.verify(&key, &self.policy, required, self.clock.now())?;
        if let Some(follower) = &self.revocations {
            follower.check(&verified)?;
        }
        Ok(verified)
    }

    /// The JWKS cache (for its fetch count).
    pub fn jwks(&self) -> &JwksCache {
        &self.jwks
    }

    /// The revocation follower, when one is configured.
    pub fn revocations(&self) -> Option<&RevocationFollower> {
        self.revocations.as_ref()
    }
}

/// How a [`Verifier`] is set up.
#[must_use = "nothing is verified before `build`"]
pub struct VerifierBuilder {
    jwks_url: Option<Url>,
    http: Option<reqwest::Client>,
    policy: Policy,
    jwks: JwksConfig,
    clock: Arc<dyn Clock>,
    follower: Option<(ConnectionString, FollowerConfig)>,
}

/// A verifier could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The endpoint cannot be joined with the JWKS path.
    #[error("the endpoint is not a base URL")]
    Endpoint,
    /// The HTTP client could not be built.
    #[error("the HTTP client could not be built: {0}")]
    Http(#[from] reqwest::Error),
}

impl VerifierBuilder {
    /// The HTTP client for the JWKS and the feed (trust callsign's local CA there). By default
    /// a client with the platform's roots.
    pub fn http_client(mut self, http: reqwest::Client) -> Self {
        self.http = Some(http);
        self
    }

    /// The JWKS URL, when it is not the endpoint's `.well-known/jwks.json`.
    pub fn jwks_url(mut self, url: Url) -> Self {
        self.jwks_url = Some(url);
        self
    }

    /// The expected `iss` (by default `urn:callsign:<resource>`, the server's default issuer).
    pub fn issuer(mut self, issuer: impl Into<String>) -> Self {
        self.policy.issuer = issuer.into();
        self
    }

    /// The clock difference forgiven on `exp` and `nbf` (60 s).
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.policy.leeway = leeway;
        self
    }

    /// How the JWKS is cached.
    pub fn jwks_config(mut self, config: JwksConfig) -> Self {
        self.jwks = config;
        self
    }

    /// The clock tokens are judged by (the system clock by default).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Follows the server's revocation feed, signing with `credentials`' access key (the
    /// verify-only key is meant for this), so tokens of revoked or deleted identities are
    /// refused.
    pub fn follow_revocations(
        mut self,
        credentials: ConnectionString,
        config: FollowerConfig,
    ) -> Self {
        self.follower = Some((credentials, config));
        self
    }

    /// Builds the verifier; with a follower, starts it (inside a tokio runtime). No key is
    /// fetched before the first token arrives.
    pub fn build(self) -> Result<Verifier, BuildError> {
        let http = match self.http {
            Some(http) => http,
            None => reqwest::Client::builder().build()?,
        };
        let jwks_url = self.jwks_url.ok_or(BuildError::Endpoint)?;
        let revocations = self
            .follower
            .map(|(cs, config)| RevocationFollower::spawn(http.clone(), cs, config));
        Ok(Verifier {
            jwks: JwksCache::new(http, jwks_url, self.jwks),
            policy: self.policy,
            clock: self.clock,
            revocations,
        })
    }
}
