//! Access tokens: signing keys, claims, encoding, verification and the revocation rule.
//!
//! Tokens are compact JWS (JWT) signed ES256 by default, EdDSA or RS256 on request. The payload
//! carries the claims ACS tokens carry (`skypeid`, `scp`, `csi`, `iat`, `exp`, `acsScope`,
//! `resourceId`, `resourceLocation`) plus `iss`, `sub`, `jti` and `epoch`, the identity's
//! revocation epoch at issue time (see [`token_in_force`]).
//!
//! Encoding is done here rather than through a general JWT crate because the hot path keeps each
//! key parsed once (a general crate re-parses the PKCS#8 document, with its public-key check, on
//! every signature) and because the payload bytes must obey a client quirk: Python's SDK decodes
//! the payload with the *standard* base64 alphabet and silently drops `-` and `_`, so the base64url
//! text of every payload must contain neither. For ASCII JSON that holds exactly when no `>`, `?`,
//! `~` or DEL byte lands at an offset ≡ 2 (mod 3); we keep those bytes out of payloads entirely
//! ([`is_token_safe`]) and check every encoding in debug builds.

use std::collections::HashMap;
use std::fmt;

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, ED25519, EcdsaKeyPair,
    Ed25519KeyPair, KeyPair as _, RSA_PKCS1_2048_8192_SHA256, RSA_PKCS1_SHA256, RsaKeyPair,
    UnparsedPublicKey,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{ExpiresIn, IdentityId, Scopes};

/// The `scp` claim real ACS tokens carry.
pub const SCP: u32 = 1792;

/// A JWS signature algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// ECDSA over P-256 with SHA-256 (the default).
    Es256,
    /// Ed25519.
    EdDsa,
    /// RSASSA-PKCS1-v1_5 with SHA-256, 2048-bit keys.
    Rs256,
}

impl Algorithm {
    /// The JOSE name (`ES256`, `EdDSA`, `RS256`).
    pub fn jose_name(self) -> &'static str {
        match self {
            Algorithm::Es256 => "ES256",
            Algorithm::EdDsa => "EdDSA",
            Algorithm::Rs256 => "RS256",
        }
    }

    /// Parses a JOSE name, case-insensitively.
    pub fn from_jose_name(s: &str) -> Option<Self> {
        [Algorithm::Es256, Algorithm::EdDsa, Algorithm::Rs256]
            .into_iter()
            .find(|a| a.jose_name().eq_ignore_ascii_case(s))
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.jose_name())
    }
}

/// Key material could not be generated or loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The crypto library refused to generate a key.
    #[error("could not generate a {0} key")]
    Generate(Algorithm),
    /// Stored key material does not parse as a PKCS#8 key of the stated algorithm.
    #[error("stored {0} key is not valid PKCS#8")]
    Parse(Algorithm),
    /// Signing failed (should never happen with a valid key).
    #[error("signing failed")]
    Sign,
}

enum Pair {
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
    Rsa(RsaKeyPair),
}

/// A private signing key with its key id.
///
/// The key id is the RFC 7638 JWK thumbprint of the public key, so the same key always has the
/// same `kid` on every node. `Debug` never shows key material.
pub struct SigningKey {
    alg: Algorithm,
    kid: String,
    pair: Pair,
    pkcs8: Vec<u8>,
    /// base64url of the JOSE header, computed once.
    header_b64: String,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A fresh key of `alg`.
    pub fn generate(alg: Algorithm) -> Result<Self, KeyError> {
        let pkcs8 = match alg {
            Algorithm::Es256 => EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
                .and_then(|k| k.to_pkcs8v1())
                .map(|d| d.as_ref().to_vec()),
            Algorithm::EdDsa => Ed25519KeyPair::generate()
                .and_then(|k| k.to_pkcs8v1())
                .map(|d| d.as_ref().to_vec()),
            Algorithm::Rs256 => RsaKeyPair::generate(KeySize::Rsa2048).and_then(|k| {
                let der: Pkcs8V1Der<'static> = k.as_der()?;
                Ok(der.as_ref().to_vec())
            }),
        }
        .map_err(|_| KeyError::Generate(alg))?;
        Self::from_pkcs8(alg, &pkcs8)
    }

    /// Loads a stored key.
    pub fn from_pkcs8(alg: Algorithm, pkcs8: &[u8]) -> Result<Self, KeyError> {
        let pair = match alg {
            Algorithm::Es256 => {
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8).map(Pair::Ec)
            }
            Algorithm::EdDsa => Ed25519KeyPair::from_pkcs8(pkcs8).map(Pair::Ed),
            Algorithm::Rs256 => RsaKeyPair::from_pkcs8(pkcs8).map(Pair::Rsa),
        }
        .map_err(|_| KeyError::Parse(alg))?;
        let public = public_parts(&pair);
        let kid = public.thumbprint();
        let header = format!(
            r#"{{"alg":"{}","kid":"{}","typ":"JWT"}}"#,
            alg.jose_name(),
            kid
        );
        Ok(Self {
            alg,
            header_b64: B64URL.encode(header),
            kid,
            pair,
            pkcs8: pkcs8.to_vec(),
        })
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// The key id (`kid`).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The private key as PKCS#8 DER, for storage. Handle with care.
    pub fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The public half.
    pub fn verifying_key(&self) -> VerifyingKey {
        VerifyingKey {
            alg: self.alg,
            kid: self.kid.clone(),
            public: public_parts(&self.pair),
        }
    }

    /// Signs `message`, returning the JWS signature bytes.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        match &self.pair {
            Pair::Ec(k) => k
                .sign(&aws_lc_rs::rand::SystemRandom::new(), message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| KeyError::Sign),
            Pair::Ed(k) => Ok(k.sign(message).as_ref().to_vec()),
            Pair::Rsa(k) => {
                let mut sig = vec![0u8; k.public_modulus_len()];
                k.sign(
                    &RSA_PKCS1_SHA256,
                    &aws_lc_rs::rand::SystemRandom::new(),
                    message,
                    &mut sig,
                )
                .map_err(|_| KeyError::Sign)?;
                Ok(sig)
            }
        }
    }
}

/// The public components of a key, as a JWK needs them (raw big-endian bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicParts {
    /// P-256 point coordinates.
    Ec {
        /// x coordinate.
        x: Vec<u8>,
        /// y coordinate.
        y: Vec<u8>,
    },
    /// Ed25519 public key.
    Okp {
        /// The 32-byte key.
        x: Vec<u8>,
    },
    /// RSA public key.
    Rsa {
        /// Modulus.
        n: Vec<u8>,
        /// Public exponent.
        e: Vec<u8>,
        /// PKCS#1 `RSAPublicKey` DER, for verification.
        der: Vec<u8>,
    },
}

impl PublicParts {
    /// RFC 7638 thumbprint, base64url of SHA-256 over the canonical JWK members.
    fn thumbprint(&self) -> String {
        let canonical = match self {
            PublicParts::Ec { x, y } => format!(
                r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
                B64URL.encode(x),
                B64URL.encode(y)
            ),
            PublicParts::Okp { x } => {
                format!(
                    r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
                    B64URL.encode(x)
                )
            }
            PublicParts::Rsa { n, e, .. } => format!(
                r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#,
                B64URL.encode(e),
                B64URL.encode(n)
            ),
        };
        B64URL.encode(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            canonical.as_bytes(),
        ))
    }
}

fn public_parts(pair: &Pair) -> PublicParts {
    match pair {
        Pair::Ec(k) => {
            // Uncompressed SEC1 point: 0x04 || x (32) || y (32).
            let p = k.public_key().as_ref();
            PublicParts::Ec {
                x: p[1..33].to_vec(),
                y: p[33..65].to_vec(),
            }
        }
        Pair::Ed(k) => PublicParts::Okp {
            x: k.public_key().as_ref().to_vec(),
        },
        Pair::Rsa(k) => {
            let pk = k.public_key();
            PublicParts::Rsa {
                n: pk.modulus().big_endian_without_leading_zero().to_vec(),
                e: pk.exponent().big_endian_without_leading_zero().to_vec(),
                der: pk.as_ref().to_vec(),
            }
        }
    }
}

/// A public key that verifies tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyingKey {
    alg: Algorithm,
    kid: String,
    public: PublicParts,
}

impl VerifyingKey {
    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public components, for a JWK.
    pub fn public_parts(&self) -> &PublicParts {
        &self.public
    }

    /// The public key a JWK describes, its algorithm taken from the key itself (`kty`/`crv`)
    /// and checked against the JWK's `alg`: a verifier pins the algorithm by the key it found,
    /// never by a token's header. `kid` is kept as published.
    pub fn from_jwk(jwk: &callsign_api::Jwk) -> Result<Self, JwkError> {
        let field = |v: &Option<String>, name: &'static str| {
            let text = v.as_deref().ok_or(JwkError::Missing(name))?;
            B64URL.decode(text).map_err(|_| JwkError::Missing(name))
        };
        let (alg, public) = match (jwk.kty.as_str(), jwk.crv.as_deref()) {
            ("EC", Some("P-256")) => {
                let (x, y) = (field(&jwk.x, "x")?, field(&jwk.y, "y")?);
                if x.len() != 32 || y.len() != 32 {
                    return Err(JwkError::Invalid);
                }
                (Algorithm::Es256, PublicParts::Ec { x, y })
            }
            ("OKP", Some("Ed25519")) => {
                let x = field(&jwk.x, "x")?;
                if x.len() != 32 {
                    return Err(JwkError::Invalid);
                }
                (Algorithm::EdDsa, PublicParts::Okp { x })
            }
            ("RSA", None) => {
                let (n, e) = (field(&jwk.n, "n")?, field(&jwk.e, "e")?);
                let (n, e) = (strip_zeros(&n), strip_zeros(&e));
                if n.len() < 256 || e.is_empty() {
                    return Err(JwkError::Invalid);
                }
                let der = rsa_public_key_der(&n, &e);
                (Algorithm::Rs256, PublicParts::Rsa { n, e, der })
            }
            _ => return Err(JwkError::UnsupportedKeyType),
        };
        // A key without `alg` (Entra publishes them so) is pinned to its type's algorithm.
        if !jwk.alg.is_empty() && jwk.alg != alg.jose_name() {
            return Err(JwkError::AlgorithmMismatch);
        }
        if !jwk.use_.is_empty() && jwk.use_ != "sig" {
            return Err(JwkError::NotForSignatures);
        }
        Ok(Self {
            alg,
            kid: jwk.kid.clone(),
            public,
        })
    }

    /// Whether `sig` is this key's signature over `message` under its own algorithm.
    pub fn verify_signature(&self, message: &[u8], sig: &[u8]) -> bool {
        self.verify(message, sig)
    }

    fn verify(&self, message: &[u8], sig: &[u8]) -> bool {
        match &self.public {
            PublicParts::Ec { x, y } => {
                let mut point = Vec::with_capacity(65);
                point.push(4);
                point.extend_from_slice(x);
                point.extend_from_slice(y);
                UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
                    .verify(message, sig)
                    .is_ok()
            }
            PublicParts::Okp { x } => UnparsedPublicKey::new(&ED25519, x)
                .verify(message, sig)
                .is_ok(),
            PublicParts::Rsa { der, .. } => {
                UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, der)
                    .verify(message, sig)
                    .is_ok()
            }
        }
    }
}

/// A JWK that does not describe a key callsign signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JwkError {
    /// Not an EC P-256, OKP Ed25519 or RSA key.
    #[error("unsupported key type")]
    UnsupportedKeyType,
    /// A member the key type needs is missing or not base64url.
    #[error("the member {0} is missing or not base64url")]
    Missing(&'static str),
    /// The key material has the wrong size (RSA below 2048 bits, say).
    #[error("invalid key material")]
    Invalid,
    /// `alg` is not the algorithm of the key type.
    #[error("alg does not match the key type")]
    AlgorithmMismatch,
    /// `use` says the key is not for signatures (`enc`).
    #[error("the key is not for signatures")]
    NotForSignatures,
}

fn strip_zeros(b: &[u8]) -> Vec<u8> {
    let start = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    b[start..].to_vec()
}

/// PKCS#1 `RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }`, DER.
fn rsa_public_key_der(n: &[u8], e: &[u8]) -> Vec<u8> {
    fn push_len(out: &mut Vec<u8>, len: usize) {
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let bytes = len.to_be_bytes();
            let skip = bytes
                .iter()
                .position(|&b| b != 0)
                .unwrap_or(bytes.len() - 1);
            out.push(0x80 | (bytes.len() - skip) as u8);
            out.extend_from_slice(&bytes[skip..]);
        }
    }
    fn integer(out: &mut Vec<u8>, v: &[u8]) {
        let pad = v.first().is_some_and(|&b| b & 0x80 != 0);
        out.push(0x02);
        push_len(out, v.len() + usize::from(pad));
        if pad {
            out.push(0);
        }
        out.extend_from_slice(v);
    }
    let mut body = Vec::with_capacity(n.len() + e.len() + 16);
    integer(&mut body, n);
    integer(&mut body, e);
    let mut out = Vec::with_capacity(body.len() + 4);
    out.push(0x30);
    push_len(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

/// The claims of a callsign access token, in the order they are encoded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Raw identity id without its `8:` prefix.
    pub skypeid: String,
    /// Constant [`SCP`], as in ACS tokens.
    pub scp: u32,
    /// `iat` as a string, as in ACS tokens.
    pub csi: String,
    /// Issued at, seconds since the epoch.
    pub iat: i64,
    /// Expires at, seconds since the epoch.
    pub exp: i64,
    /// Scopes joined by `,`.
    #[serde(rename = "acsScope")]
    pub acs_scope: String,
    /// The resource GUID.
    #[serde(rename = "resourceId")]
    pub resource_id: String,
    /// The resource's location label.
    #[serde(rename = "resourceLocation")]
    pub resource_location: String,
    /// Issuer.
    pub iss: String,
    /// The raw identity id.
    pub sub: String,
    /// Unique token id.
    pub jti: String,
    /// The identity's revocation epoch when the token was issued; see [`token_in_force`].
    pub epoch: u64,
}

/// Whether a claim value may appear in a token payload: printable ASCII without `"`, `\`, `>`,
/// `?`, `~` (see the module docs).
pub fn is_token_safe(s: &str) -> bool {
    s.bytes()
        .all(|b| (0x20..0x7f).contains(&b) && !matches!(b, b'"' | b'\\' | b'>' | b'?' | b'~'))
}

/// A configuration value would make tokens unreadable to the Python SDK.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0} must be printable ASCII without \", \\, >, ? or ~")]
pub struct UnsafeClaim(pub &'static str);

/// A freshly issued token.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedToken {
    /// The compact JWS.
    pub token: String,
    /// Expiry (whole seconds, equal to the `exp` claim).
    pub expires_at: OffsetDateTime,
    /// The `jti` claim.
    pub jti: Uuid,
}

impl fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedToken")
            .field("expires_at", &self.expires_at)
            .field("jti", &self.jti)
            .finish_non_exhaustive()
    }
}

/// The `iss` claim of issued tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Issuer {
    /// `urn:callsign:<resourceId>` of the token's own resource (the default): a verifier of
    /// one resource pins its issuer and refuses other resources' tokens by it.
    PerResource,
    /// The same for every resource (`serve --issuer`).
    Fixed(String),
}

impl Issuer {
    /// The `iss` of a token of `resource`.
    pub fn for_resource(&self, resource: crate::ResourceId) -> String {
        match self {
            Issuer::PerResource => format!("urn:callsign:{resource}"),
            Issuer::Fixed(iss) => iss.clone(),
        }
    }
}

/// Issues tokens with one signing key, for one issuer and location.
#[derive(Debug)]
pub struct TokenIssuer {
    key: SigningKey,
    issuer: Issuer,
    location: String,
}

impl TokenIssuer {
    /// Checks that `issuer` and `location` are token-safe.
    pub fn new(key: SigningKey, issuer: Issuer, location: &str) -> Result<Self, UnsafeClaim> {
        if let Issuer::Fixed(iss) = &issuer
            && !is_token_safe(iss)
        {
            return Err(UnsafeClaim("the issuer"));
        }
        if !is_token_safe(location) || location.is_empty() {
            return Err(UnsafeClaim("the location"));
        }
        Ok(Self {
            key,
            issuer,
            location: location.to_owned(),
        })
    }

    /// The signing key.
    pub fn key(&self) -> &SigningKey {
        &self.key
    }

    /// What the `iss` claim is.
    pub fn issuer(&self) -> &Issuer {
        &self.issuer
    }

    /// Issues a token for `identity` at `now`, carrying the identity's current revocation `epoch`.
    pub fn issue(
        &self,
        identity: &IdentityId,
        scopes: &Scopes,
        expires_in: ExpiresIn,
        epoch: u64,
        now: OffsetDateTime,
    ) -> Result<IssuedToken, KeyError> {
        let exp = now + time::Duration::minutes(i64::from(expires_in.minutes()));
        self.issue_until(identity, scopes, exp, epoch, now)
    }

    /// Issues a token for `identity` at `now` that expires at `expires_at` (whole seconds; a
    /// token exchanged for another issuer's token never outlives it).
    pub fn issue_until(
        &self,
        identity: &IdentityId,
        scopes: &Scopes,
        expires_at: OffsetDateTime,
        epoch: u64,
        now: OffsetDateTime,
    ) -> Result<IssuedToken, KeyError> {
        let iat = now.unix_timestamp();
        let exp = expires_at.unix_timestamp();
        let jti = Uuid::new_v4();
        let claims = Claims {
            skypeid: identity.skype_id(),
            scp: SCP,
            csi: iat.to_string(),
            iat,
            exp,
            acs_scope: scopes.to_claim(),
            resource_id: identity.resource().to_string(),
            resource_location: self.location.clone(),
            iss: self.issuer.for_resource(identity.resource()),
            sub: identity.to_string(),
            jti: jti.hyphenated().to_string(),
            epoch,
        };
        let token = self.encode(&claims)?;
        let expires_at = OffsetDateTime::from_unix_timestamp(exp).map_err(|_| KeyError::Sign)?;
        Ok(IssuedToken {
            token,
            expires_at,
            jti,
        })
    }

    /// Encodes and signs arbitrary claims.
    pub fn encode(&self, claims: &Claims) -> Result<String, KeyError> {
        let payload = serde_json::to_vec(claims).map_err(|_| KeyError::Sign)?;
        let mut out = String::with_capacity(self.key.header_b64.len() + payload.len() * 2 + 100);
        out.push_str(&self.key.header_b64);
        out.push('.');
        B64URL.encode_string(&payload, &mut out);
        debug_assert!(
            !out[self.key.header_b64.len() + 1..].contains(['-', '_']),
            "token payload would break the Python SDK's base64 decoding"
        );
        let sig = self.key.sign(out.as_bytes())?;
        out.push('.');
        B64URL.encode_string(sig, &mut out);
        Ok(out)
    }
}

/// Why a token does not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// Not three base64url segments of JSON with our claims.
    #[error("malformed")]
    Malformed,
    /// Unknown `kid` or a signature that does not verify.
    #[error("signature")]
    Signature,
    /// `exp` has passed.
    #[error("expired")]
    Expired,
}

/// Verifies tokens against a set of public keys (all keys this service ever signed with that are
/// still published).
#[derive(Debug, Clone, Default)]
pub struct TokenVerifier {
    keys: HashMap<String, VerifyingKey>,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: String,
}

impl TokenVerifier {
    /// A verifier for `keys`.
    pub fn new(keys: impl IntoIterator<Item = VerifyingKey>) -> Self {
        Self {
            keys: keys.into_iter().map(|k| (k.kid.clone(), k)).collect(),
        }
    }

    /// Checks the signature and expiry and returns the claims read into domain types. Revocation
    /// is the caller's next step: [`token_in_force`].
    pub fn verify(&self, token: &str, now: OffsetDateTime) -> Result<VerifiedToken, VerifyError> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(VerifyError::Malformed);
        };
        let header: Header = B64URL
            .decode(h)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(VerifyError::Malformed)?;
        let key = self.keys.get(&header.kid).ok_or(VerifyError::Signature)?;
        if header.alg != key.alg.jose_name() {
            return Err(VerifyError::Signature);
        }
        let sig = B64URL.decode(s).map_err(|_| VerifyError::Malformed)?;
        let signed_len = h.len() + 1 + p.len();
        if !key.verify(&token.as_bytes()[..signed_len], &sig) {
            return Err(VerifyError::Signature);
        }
        let claims: Claims = B64URL
            .decode(p)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(VerifyError::Malformed)?;
        if now.unix_timestamp() >= claims.exp {
            return Err(VerifyError::Expired);
        }
        VerifiedToken::from_claims(&claims, header.kid)
    }
}

/// A token whose signature and expiry checked out, its claims read into domain types: nothing
/// downstream parses a claim string again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    /// The identity it was issued to (`sub`).
    pub identity: IdentityId,
    /// What it grants (`acsScope`).
    pub scopes: Scopes,
    /// When it was issued (`iat`).
    pub issued_at: OffsetDateTime,
    /// When it expires (`exp`).
    pub expires_at: OffsetDateTime,
    /// The identity's revocation epoch when it was issued; see [`token_in_force`].
    pub epoch: u64,
    /// Its unique id (`jti`).
    pub jti: Uuid,
    /// The id of the key that signed it.
    pub kid: String,
}

impl VerifiedToken {
    /// Reads signed claims; claims that do not fit together (an id that does not parse, a
    /// resource other than the identity's, unknown scopes) make the token malformed.
    pub fn from_claims(claims: &Claims, kid: String) -> Result<Self, VerifyError> {
        let identity = IdentityId::parse(&claims.sub).map_err(|_| VerifyError::Malformed)?;
        if claims.resource_id != identity.resource().to_string()
            || claims.skypeid != identity.skype_id()
        {
            return Err(VerifyError::Malformed);
        }
        let time = |t| OffsetDateTime::from_unix_timestamp(t).map_err(|_| VerifyError::Malformed);
        Ok(Self {
            scopes: Scopes::from_claim(&claims.acs_scope).map_err(|_| VerifyError::Malformed)?,
            issued_at: time(claims.iat)?,
            expires_at: time(claims.exp)?,
            epoch: claims.epoch,
            jti: Uuid::parse_str(&claims.jti).map_err(|_| VerifyError::Malformed)?,
            identity,
            kid,
        })
    }
}

/// **The revocation rule**, the one place that decides whether a token issued at revocation
/// epoch `token_epoch` is still in force for an identity whose current epoch is
/// `identity_epoch`.
///
/// Every identity starts at epoch 0. A revoke (or a delete) atomically increments the epoch; a
/// token records the epoch it was issued under. So a token is in force exactly when no revoke has
/// been acknowledged since it was issued: `token_epoch >= identity_epoch`. Unlike a comparison of
/// second-granularity `iat` with a revocation time, this is exact within the same second and does
/// not depend on clocks agreeing between nodes.
///
/// A token issued concurrently with a revoke may carry the old epoch; it is then revoked, which
/// is the safe side: no token issued *after* a revoke was acknowledged is ever refused, and no
/// token issued *before* it is ever accepted.
pub fn token_in_force(token_epoch: u64, identity_epoch: u64) -> bool {
    token_epoch >= identity_epoch
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ResourceId;
    use base64::engine::general_purpose::STANDARD;
    use time::macros::datetime;

    fn issuer(alg: Algorithm) -> TokenIssuer {
        TokenIssuer::new(
            SigningKey::generate(alg).expect("key"),
            Issuer::Fixed("urn:callsign:test".into()),
            "local",
        )
        .expect("issuer")
    }

    fn scopes() -> Scopes {
        Scopes::parse(["chat", "voip"], true).expect("scopes")
    }

    /// Mimics the Python SDK: standard-alphabet, non-strict base64 of the payload plus `==`, then
    /// ASCII decoding and JSON.
    /// The payload of `token` as JSON, decoded without verifying.
    fn payload_claims(token: &str) -> serde_json::Value {
        let payload = token.split('.').nth(1).expect("payload");
        serde_json::from_slice(&B64URL.decode(payload).expect("base64url")).expect("json")
    }

    fn python_reads_exp(token: &str) -> Option<i64> {
        let payload = token.split('.').nth(1)?;
        // Non-strict decoding discards characters outside the standard alphabet.
        let kept: String = payload
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '+' || *c == '/')
            .collect();
        let padded = format!("{kept}{}", "=".repeat((4 - kept.len() % 4) % 4));
        let bytes = STANDARD.decode(padded).ok()?;
        let text = String::from_utf8(bytes).ok().filter(|t| t.is_ascii())?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        v.get("exp")?.as_i64()
    }

    #[test]
    fn every_algorithm_signs_and_verifies() {
        let now = datetime!(2024-01-01 0:00 UTC);
        for alg in [Algorithm::Es256, Algorithm::EdDsa, Algorithm::Rs256] {
            let issuer = issuer(alg);
            let id = IdentityId::new_random(ResourceId::new_random());
            let t = issuer
                .issue(&id, &scopes(), ExpiresIn::DEFAULT, 3, now)
                .expect("issues");
            let verifier = TokenVerifier::new([issuer.key().verifying_key()]);
            let verified = verifier.verify(&t.token, now).expect("verifies");
            assert_eq!(verified.identity, id);
            assert_eq!(verified.issued_at, now);
            assert_eq!(
                verified.expires_at - verified.issued_at,
                time::Duration::DAY
            );
            assert_eq!(verified.scopes, scopes());
            assert_eq!(verified.epoch, 3);
            assert_eq!(verified.jti, t.jti);
            assert_eq!(verified.kid, issuer.key().kid());
            assert_eq!(t.expires_at, verified.expires_at);
            let claims = payload_claims(&t.token);
            assert_eq!(claims["sub"], id.to_string());
            assert_eq!(claims["skypeid"], id.skype_id());
            assert_eq!(
                claims["csi"],
                claims["iat"].as_i64().expect("iat").to_string()
            );
            assert_eq!(claims["acsScope"], "chat,voip");
            // Reloading the stored key gives the same kid.
            let reloaded = SigningKey::from_pkcs8(alg, issuer.key().pkcs8_der()).expect("reloads");
            assert_eq!(reloaded.kid(), issuer.key().kid());
        }
    }

    #[test]
    fn a_published_jwk_reads_back_as_the_same_key() {
        for alg in [Algorithm::Es256, Algorithm::EdDsa, Algorithm::Rs256] {
            let key = SigningKey::generate(alg).expect("key").verifying_key();
            let (kty, crv) = match alg {
                Algorithm::Es256 => ("EC", Some("P-256")),
                Algorithm::EdDsa => ("OKP", Some("Ed25519")),
                Algorithm::Rs256 => ("RSA", None),
            };
            let mut jwk = callsign_api::Jwk {
                kty: kty.into(),
                kid: key.kid().into(),
                alg: alg.jose_name().into(),
                use_: "sig".into(),
                crv: crv.map(Into::into),
                x: None,
                y: None,
                n: None,
                e: None,
            };
            match key.public_parts() {
                PublicParts::Ec { x, y } => {
                    jwk.x = Some(B64URL.encode(x));
                    jwk.y = Some(B64URL.encode(y));
                }
                PublicParts::Okp { x } => jwk.x = Some(B64URL.encode(x)),
                PublicParts::Rsa { n, e, .. } => {
                    jwk.n = Some(B64URL.encode(n));
                    jwk.e = Some(B64URL.encode(e));
                }
            }
            assert_eq!(VerifyingKey::from_jwk(&jwk), Ok(key.clone()), "{alg}");
            assert_eq!(
                VerifyingKey::from_jwk(&jwk)
                    .expect("jwk")
                    .public_parts()
                    .thumbprint(),
                key.kid()
            );
            let mut lying = jwk.clone();
            lying.alg = "HS256".into();
            assert_eq!(
                VerifyingKey::from_jwk(&lying),
                Err(JwkError::AlgorithmMismatch)
            );
            // Entra publishes keys without alg: the key type pins it.
            let mut bare = jwk.clone();
            bare.alg = String::new();
            bare.use_ = String::new();
            assert_eq!(VerifyingKey::from_jwk(&bare), Ok(key.clone()), "{alg}");
            let mut enc = jwk.clone();
            enc.use_ = "enc".into();
            assert_eq!(
                VerifyingKey::from_jwk(&enc),
                Err(JwkError::NotForSignatures)
            );
        }
    }

    #[test]
    fn signed_claims_that_do_not_fit_together_are_malformed() {
        let now = datetime!(2024-01-01 0:00 UTC);
        let issuer = issuer(Algorithm::Es256);
        let verifier = TokenVerifier::new([issuer.key().verifying_key()]);
        let id = IdentityId::new_random(ResourceId::new_random());
        let other = IdentityId::new_random(ResourceId::new_random());
        let iat = now.unix_timestamp();
        let good = Claims {
            skypeid: id.skype_id(),
            scp: SCP,
            csi: iat.to_string(),
            iat,
            exp: iat + 3600,
            acs_scope: "chat,voip".into(),
            resource_id: id.resource().to_string(),
            resource_location: "local".into(),
            iss: "urn:callsign:test".into(),
            sub: id.to_string(),
            jti: Uuid::new_v4().hyphenated().to_string(),
            epoch: 0,
        };
        let token = issuer.encode(&good).expect("signs");
        assert_eq!(verifier.verify(&token, now).expect("verifies").identity, id);
        type Change = fn(&mut Claims, &IdentityId);
        let changes: [(&str, Change); 5] = [
            ("another resource", |c, o| {
                c.resource_id = o.resource().to_string()
            }),
            ("another skypeid", |c, o| c.skypeid = o.skype_id()),
            ("a sub that is no id", |c, _| c.sub = "8:acs:nope".into()),
            ("an unknown scope", |c, _| c.acs_scope = "chat,video".into()),
            ("a jti that is no uuid", |c, _| c.jti = "j".into()),
        ];
        for (what, change) in changes {
            let mut claims = good.clone();
            change(&mut claims, &other);
            let token = issuer.encode(&claims).expect("signs");
            assert_eq!(
                verifier.verify(&token, now),
                Err(VerifyError::Malformed),
                "{what}"
            );
        }
    }

    #[test]
    fn tampering_expiry_and_foreign_keys_are_detected() {
        let now = datetime!(2024-01-01 0:00 UTC);
        let issuer = issuer(Algorithm::Es256);
        let id = IdentityId::new_random(ResourceId::new_random());
        let t = issuer
            .issue(
                &id,
                &scopes(),
                ExpiresIn::from_minutes(60).expect("60"),
                0,
                now,
            )
            .expect("issues");
        let verifier = TokenVerifier::new([issuer.key().verifying_key()]);
        let expired = now + time::Duration::minutes(60);
        assert_eq!(
            verifier.verify(&t.token, expired),
            Err(VerifyError::Expired)
        );
        let mut parts: Vec<&str> = t.token.split('.').collect();
        let forged_payload = B64URL.encode(br#"{"exp":1}"#);
        parts[1] = &forged_payload;
        assert_eq!(
            verifier.verify(&parts.join("."), now),
            Err(VerifyError::Signature)
        );
        assert_eq!(verifier.verify("a.b", now), Err(VerifyError::Malformed));
        assert_eq!(verifier.verify("a.b.c.d", now), Err(VerifyError::Malformed));
        let other = TokenVerifier::new([issuer_key_other()]);
        assert_eq!(other.verify(&t.token, now), Err(VerifyError::Signature));
    }

    fn issuer_key_other() -> VerifyingKey {
        SigningKey::generate(Algorithm::Es256)
            .expect("key")
            .verifying_key()
    }

    #[test]
    fn python_sdk_reads_exp_of_many_tokens() {
        // Vary identity, scopes, lifetime, epoch and time so every padding residue and offset
        // shows up.
        let issuer = issuer(Algorithm::Es256);
        let scope_sets = [
            vec!["chat"],
            vec!["voip"],
            vec!["chat.join"],
            vec!["chat.join.limited"],
            vec!["voip.join"],
            vec!["voip", "chat"],
            vec!["chat", "chat.join", "chat.join.limited"],
            vec!["voip", "voip.join"],
            vec!["chat.join", "voip.join"],
        ];
        let mut residues = [0usize; 4];
        let start = datetime!(2024-01-01 0:00 UTC);
        for i in 0..3000u64 {
            let id = IdentityId::new_random(ResourceId::new_random());
            let s = Scopes::parse(
                scope_sets[i as usize % scope_sets.len()].iter().copied(),
                true,
            )
            .expect("scopes");
            let minutes = 60 + (i as i64 * 7) % 1381;
            let now = start + time::Duration::seconds(i as i64 * 7919);
            let t = issuer
                .issue(
                    &id,
                    &s,
                    ExpiresIn::from_minutes(minutes).expect("range"),
                    i * 31,
                    now,
                )
                .expect("issues");
            let payload = t.token.split('.').nth(1).expect("payload");
            assert!(
                !payload.contains(['-', '_']),
                "token {i} has - or _ in its payload"
            );
            residues[payload.len() % 4] += 1;
            assert_eq!(
                python_reads_exp(&t.token),
                Some(t.expires_at.unix_timestamp())
            );
        }
        assert!(
            residues[0] > 0 && residues[2] > 0 && residues[3] > 0,
            "{residues:?}"
        );
    }

    #[test]
    fn unsafe_configuration_is_refused() {
        let key = || SigningKey::generate(Algorithm::EdDsa).expect("key");
        let fixed = |iss: &str| Issuer::Fixed(iss.into());
        assert!(TokenIssuer::new(key(), fixed("https://x/?a"), "local").is_err());
        assert!(TokenIssuer::new(key(), fixed("iss"), "nörd").is_err());
        assert!(TokenIssuer::new(key(), fixed("iss"), "").is_err());
        assert!(TokenIssuer::new(key(), fixed("https://callsign.example/"), "westeurope").is_ok());
        assert!(TokenIssuer::new(key(), Issuer::PerResource, "local").is_ok());
    }

    #[test]
    fn revocation_rule_is_exact() {
        // Issued under epoch 0; no revoke yet.
        assert!(token_in_force(0, 0));
        // One revoke: every token issued before it is out, every one after it is in.
        assert!(!token_in_force(0, 1));
        assert!(token_in_force(1, 1));
        assert!(!token_in_force(5, 6));
    }
}
