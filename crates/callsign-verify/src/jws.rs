//! The pure part of verification: a token's header read, then checked against one key and a
//! policy at a given time. No IO, so it is what the benchmark measures.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use callsign_api::Scope;
use callsign_core::ResourceId;
use callsign_core::token::{Claims, VerifiedToken, VerifyingKey};
use serde::Deserialize;
use time::OffsetDateTime;

use crate::VerifyError;

/// What a token must say besides a good signature: who issued it, for which resource, and how
/// much clock difference is forgiven on `exp` and `nbf`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The expected `iss`.
    pub issuer: String,
    /// The resource whose identities may present tokens.
    pub resource: ResourceId,
    /// Forgiven clock difference on `exp` and `nbf`/`iat`.
    pub leeway: Duration,
}

impl Policy {
    /// A policy for `resource` with callsign's default issuer (`urn:callsign:<resource>`) and
    /// a leeway of 60 seconds.
    pub fn for_resource(resource: ResourceId) -> Self {
        Self {
            issuer: format!("urn:callsign:{resource}"),
            resource,
            leeway: Duration::from_secs(60),
        }
    }
}

#[derive(Deserialize)]
struct Header {
    alg: Option<String>,
    kid: Option<String>,
}

#[derive(Deserialize)]
struct Payload {
    #[serde(flatten)]
    claims: Claims,
    nbf: Option<i64>,
}

/// A compact JWS whose header has been read (not yet verified).
#[derive(Debug, Clone)]
pub struct Jws<'a> {
    token: &'a str,
    alg: String,
    kid: String,
    payload: &'a str,
    signature: &'a str,
}

impl<'a> Jws<'a> {
    /// Reads the header. An unsigned (`alg: none`) or HMAC-named token is refused here, before
    /// any key is looked up.
    pub fn parse(token: &'a str) -> Result<Self, VerifyError> {
        let mut parts = token.split('.');
        let (Some(h), Some(payload), signature, None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(VerifyError::Malformed);
        };
        let header: Header = B64URL
            .decode(h)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(VerifyError::Malformed)?;
        let alg = header.alg.ok_or(VerifyError::Malformed)?;
        if alg.eq_ignore_ascii_case("none") {
            return Err(VerifyError::AlgNone);
        }
        if alg.len() >= 2 && alg[..2].eq_ignore_ascii_case("HS") {
            return Err(VerifyError::SymmetricAlgorithm);
        }
        let signature = signature.ok_or(VerifyError::Malformed)?;
        let kid = header.kid.ok_or(VerifyError::UnknownKid)?;
        Ok(Self {
            token,
            alg,
            kid,
            payload,
            signature,
        })
    }

    /// The `kid` the header names.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The payload's bytes, once the signature verifies with `key` under the key's own
    /// algorithm (the header must name that algorithm). For tokens of any issuer: what the
    /// claims mean is the caller's business.
    pub fn verified_payload(&self, key: &VerifyingKey) -> Result<Vec<u8>, VerifyError> {
        if self.alg != key.algorithm().jose_name() {
            return Err(VerifyError::AlgorithmMismatch);
        }
        let sig = B64URL
            .decode(self.signature)
            .map_err(|_| VerifyError::BadSignature)?;
        let signed = &self.token.as_bytes()[..self.token.len() - self.signature.len() - 1];
        if !key.verify_signature(signed, &sig) {
            return Err(VerifyError::BadSignature);
        }
        B64URL
            .decode(self.payload)
            .map_err(|_| VerifyError::Malformed)
    }

    /// The payload's bytes before any verification: only to choose which issuer's keys to
    /// verify with, never to trust.
    pub fn unverified_payload(&self) -> Option<Vec<u8>> {
        B64URL.decode(self.payload).ok()
    }

    /// Checks the token with `key` (its algorithm is the key's), then `policy` and `required`
    /// scopes at `now`, and reads the claims into domain types.
    pub fn verify(
        &self,
        key: &VerifyingKey,
        policy: &Policy,
        required: &[Scope],
        now: OffsetDateTime,
    ) -> Result<VerifiedToken, VerifyError> {
        let payload: Payload = serde_json::from_slice(&self.verified_payload(key)?)
            .map_err(|_| VerifyError::Malformed)?;
        let token = VerifiedToken::from_claims(&payload.claims, self.kid.clone())
            .map_err(|_| VerifyError::Malformed)?;
        if payload.claims.iss != policy.issuer {
            return Err(VerifyError::WrongIssuer);
        }
        if token.identity.resource() != policy.resource {
            return Err(VerifyError::WrongResource);
        }
        check_times(&payload, policy.leeway, now)?;
        if let Some(missing) = required.iter().find(|s| !token.scopes.contains(**s)) {
            return Err(VerifyError::MissingScope(*missing));
        }
        Ok(token)
    }
}

fn check_times(
    payload: &Payload,
    leeway: Duration,
    now: OffsetDateTime,
) -> Result<(), VerifyError> {
    let leeway = i64::try_from(leeway.as_secs()).unwrap_or(i64::MAX);
    let now = now.unix_timestamp();
    if now.saturating_sub(leeway) >= payload.claims.exp {
        return Err(VerifyError::Expired);
    }
    let not_before = payload.nbf.unwrap_or(payload.claims.iat);
    if now.saturating_add(leeway) < not_before {
        return Err(VerifyError::NotYetValid);
    }
    Ok(())
}
