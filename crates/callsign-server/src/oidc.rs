//! Trusted OpenID Connect issuers: their configuration, their keys (discovery document and JWKS,
//! fetched and cached) and the verification of their bearer tokens into a [`Principal`].
//!
//! A bearer token is unauthenticated input until it verifies, so the work it causes is bounded:
//! at most [`MAX_BEARER_BYTES`] are read, the issuer is picked by exact `iss` among the
//! configured ones (no other is ever contacted), one signature is checked with the algorithm
//! pinned by the key, and a key set is fetched at most once per cooldown however many unknown
//! `kid`s arrive.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use callsign_core::token::VerifyingKey;
use callsign_core::{IdentityId, ObjectId, ResourceId, Scopes, parse_guid};
use callsign_verify::jws::Jws;
use callsign_verify::{JwksCache, JwksConfig, VerifyError};
use reqwest::Url;
use serde::Deserialize;
use serde_json::{Map, Value};
use time::OffsetDateTime;
use uuid::Uuid;

/// The longest bearer token considered (Entra tokens with many groups reach a few KiB).
pub const MAX_BEARER_BYTES: usize = 16 * 1024;

/// The most groups read from a token; the rest are ignored.
pub const MAX_GROUPS: usize = 200;

/// The largest discovery document read.
const MAX_DISCOVERY_BYTES: usize = 256 * 1024;

/// Whose tokens an issuer's claims look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// Any OIDC provider (Keycloak, Zitadel, Auth0, Okta, Google…): subject `sub`, a fixed
    /// tenant.
    #[default]
    Generic,
    /// Microsoft Entra ID: tenant `tid`, object `oid`, application `appid`/`azp`.
    Entra,
}

/// One `[[oidc_issuer]]` table of the configuration file, as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedIssuerConfig {
    /// The exact `iss` of the tokens (and the base of the discovery document).
    pub issuer: String,
    /// The accepted `aud` values (a string or a list).
    pub audience: Audience,
    /// `generic` (default) or `entra`.
    #[serde(default)]
    pub profile: Profile,
    /// The JWKS URL, when it is not to be read from the discovery document.
    pub jwks_uri: Option<String>,
    /// The tenant of every user of a generic issuer (a GUID; default: derived from the issuer
    /// URL, see [`TrustedIssuer::tenant_of_issuer`]).
    pub tenant_id: Option<String>,
    /// The claim carrying the tenant (a GUID); `entra`: `tid`.
    pub tenant_claim: Option<String>,
    /// The tenants a tenant claim may name (GUIDs): an issuer speaks only for its own tenants.
    /// Default for `entra`: the tenant GUID in the issuer URL
    /// (`https://login.microsoftonline.com/<tenant>/v2.0`).
    pub tenants: Option<Vec<String>>,
    /// The claim carrying the user's id; default `sub`, `entra`: `oid`.
    pub subject_claim: Option<String>,
    /// The claim carrying group ids (a list), a dotted path for nested claims; default `groups`.
    pub groups_claim: Option<String>,
    /// The claim carrying roles (a list or a space-separated string), a dotted path for nested
    /// claims (Keycloak: `realm_access.roles`); default `roles`.
    pub roles_claim: Option<String>,
    /// The role that may manage identities and assignments; default `callsign.admin`.
    pub admin_role: Option<String>,
    /// The role that may create identities and issue and revoke their tokens; default
    /// `callsign.tokens`.
    pub tokens_role: Option<String>,
    /// Scopes of exchanged tokens unless an assignment names its own; default chat and voip.
    pub scopes: Option<Vec<String>>,
    /// The longest life of an exchanged token, in minutes (60 to 1440; default 1440); never
    /// beyond the bearer token's own expiry.
    pub max_token_minutes: Option<u16>,
    /// Forgiven clock difference on `exp` and `nbf`, in seconds (default 60, at most 300).
    pub leeway_secs: Option<u64>,
    /// The least time between two key-set fetches, in seconds (default 30, at least 1).
    pub jwks_cooldown_secs: Option<u64>,
    /// Whether the issuer vouches for Teams tokens (the Teams user and Teams extension
    /// exchanges); `entra` only.
    #[serde(default)]
    pub teams: bool,
    /// The resources whose identities this issuer's users may reach (default: every resource).
    pub resources: Option<Vec<String>>,
    /// A PEM file of CA certificates to trust for this issuer's HTTPS (besides the system's).
    pub ca_file: Option<PathBuf>,
    /// The client id under which the admin console signs users in with this issuer
    /// (authorization code with PKCE, a public client); no console sign-in without it.
    pub console_client_id: Option<String>,
    /// The scopes the console asks for (default `openid`); name the API's scope where the
    /// provider needs it to issue an access token for `audience` (Entra:
    /// `api://<app>/.default`).
    pub console_scopes: Option<Vec<String>>,
    /// A `resource` (RFC 8707) the console names in its requests, for providers that pick the
    /// token's audience by it.
    pub console_resource: Option<String>,
}

/// One audience or several.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    /// None given.
    #[default]
    None,
    /// One.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// Where a principal's tenant comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantSource {
    /// A claim holding a GUID, one of the issuer's tenants.
    Claim(String, Vec<Uuid>),
    /// The same tenant for every user of the issuer.
    Fixed(Uuid),
}

/// A trusted issuer, checked.
#[derive(Debug, Clone)]
pub struct TrustedIssuer {
    /// The exact `iss`.
    pub issuer: String,
    /// Accepted `aud` values.
    pub audiences: Vec<String>,
    /// Claim shapes.
    pub profile: Profile,
    /// The discovery document's URL.
    pub discovery: Url,
    /// The JWKS URL, when configured rather than discovered.
    pub jwks_uri: Option<Url>,
    /// The tenant.
    pub tenant: TenantSource,
    /// The user's id claim.
    pub subject_claim: String,
    /// The groups claim path.
    pub groups_claim: String,
    /// The roles claim path.
    pub roles_claim: String,
    /// The role that may manage everything.
    pub admin_role: String,
    /// The role that may create identities and issue and revoke tokens.
    pub tokens_role: String,
    /// Scopes of exchanged tokens by default.
    pub scopes: Scopes,
    /// The longest life of an exchanged token.
    pub max_token: Duration,
    /// Forgiven clock difference.
    pub leeway: Duration,
    /// Least time between key-set fetches.
    pub jwks_cooldown: Duration,
    /// Vouches for Teams tokens.
    pub teams: bool,
    /// The resources its users may reach (`None`: all).
    pub resources: Option<Vec<ResourceId>>,
    /// Extra CA certificates (PEM).
    pub ca_pem: Option<Vec<u8>>,
    /// The console's client id at this issuer, when users sign in to the console with it.
    pub console_client_id: Option<String>,
    /// The scopes the console asks for, space-separated.
    pub console_scope: String,
    /// The `resource` the console names, if any.
    pub console_resource: Option<String>,
}

/// URLs an issuer's keys are fetched from: HTTPS, or plain HTTP to a loopback address only.
fn fetchable(url: &Url) -> bool {
    match url.scheme() {
        "https" => true,
        "http" => url.host_str().is_some_and(is_loopback_host),
        _ => false,
    }
}

/// Whether a host, as a URL names it (`localhost`, `127.0.0.1`, `[::1]`), is this machine.
pub fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn parse_url(raw: &str, what: &str) -> anyhow::Result<Url> {
    let url = Url::parse(raw).map_err(|e| anyhow::anyhow!("{what} {raw:?} is not a URL: {e}"))?;
    if !fetchable(&url) {
        anyhow::bail!("{what} {raw:?} must be https (plain http only to a loopback address)");
    }
    Ok(url)
}

/// The configured audiences: at least one, none empty.
fn audiences(audience: Audience, issuer: &str) -> anyhow::Result<Vec<String>> {
    let audiences = match audience {
        Audience::None => Vec::new(),
        Audience::One(a) => vec![a],
        Audience::Many(a) => a,
    };
    if audiences.is_empty() || audiences.iter().any(String::is_empty) {
        anyhow::bail!(
            "the issuer {issuer} needs an audience: the aud its tokens carry for callsign"
        );
    }
    Ok(audiences)
}

/// The console's scopes, space-separated: `openid` unless given; each a printable word.
fn console_scope(scopes: Option<Vec<String>>) -> anyhow::Result<String> {
    let scopes = scopes.unwrap_or_else(|| vec!["openid".into()]);
    if scopes.is_empty()
        || scopes
            .iter()
            .any(|s| s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()))
    {
        anyhow::bail!("console_scopes must be non-empty scope names without spaces");
    }
    Ok(scopes.join(" "))
}

/// The resource ids of an issuer's `resources`.
fn resource_ids(list: &[String]) -> anyhow::Result<Vec<ResourceId>> {
    list.iter()
        .map(|r| {
            ResourceId::parse(r).map_err(|_| anyhow::anyhow!("resource {r:?} is not a resource id"))
        })
        .collect()
}

/// The tenants an issuer taking its tenant from a claim speaks for: those configured, else the
/// GUID in its URL (Entra's per-tenant issuers); at least one.
fn own_tenants(issuer: &str, configured: Option<Vec<String>>) -> anyhow::Result<Vec<Uuid>> {
    let tenants = match configured {
        Some(list) => list
            .iter()
            .map(|t| parse_guid(t).ok_or_else(|| anyhow::anyhow!("tenant {t:?} is not a GUID")))
            .collect::<anyhow::Result<Vec<_>>>()?,
        None => issuer.split('/').filter_map(parse_guid).collect(),
    };
    if tenants.is_empty() {
        anyhow::bail!(
            "the issuer {issuer} takes its tenant from a claim: list the tenants it speaks for in `tenants`"
        );
    }
    Ok(tenants)
}

impl TrustedIssuer {
    /// The tenant of a generic issuer's users when none is configured: the name-based (v5)
    /// UUID of the issuer URL in the URL namespace, the same on every node and run.
    pub fn tenant_of_issuer(issuer: &str) -> Uuid {
        Uuid::new_v5(&Uuid::NAMESPACE_URL, issuer.as_bytes())
    }

    /// Checks a configuration table.
    pub fn from_config(c: TrustedIssuerConfig) -> anyhow::Result<Self> {
        parse_url(&c.issuer, "the issuer")?;
        let audiences = audiences(c.audience, &c.issuer)?;
        let discovery = Url::parse(&format!(
            "{}/.well-known/openid-configuration",
            c.issuer.trim_end_matches('/')
        ))?;
        let entra = c.profile == Profile::Entra;
        let claim = c.tenant_claim.or_else(|| entra.then(|| "tid".to_owned()));
        let tenant = match (claim, c.tenant_id) {
            (Some(_), Some(_)) => anyhow::bail!("give tenant_claim or tenant_id, not both"),
            (Some(claim), None) => TenantSource::Claim(claim, own_tenants(&c.issuer, c.tenants)?),
            (None, Some(id)) => TenantSource::Fixed(
                parse_guid(&id).ok_or_else(|| anyhow::anyhow!("tenant_id {id:?} is not a GUID"))?,
            ),
            (None, None) => TenantSource::Fixed(Self::tenant_of_issuer(&c.issuer)),
        };
        if c.teams && !entra {
            anyhow::bail!("teams = true needs profile = \"entra\" (Teams tokens are Entra's)");
        }
        let scopes = match c.scopes {
            None => Scopes::parse(["chat", "voip"], true),
            Some(s) => Scopes::parse(s.iter().map(String::as_str), true),
        }
        .map_err(|e| anyhow::anyhow!("scopes of the issuer {}: {e}", c.issuer))?;
        let minutes = c.max_token_minutes.unwrap_or(1440);
        if !(60..=1440).contains(&minutes) {
            anyhow::bail!("max_token_minutes must be from 60 to 1440");
        }
        let leeway = c.leeway_secs.unwrap_or(60);
        if leeway > 300 {
            anyhow::bail!("leeway_secs must be at most 300");
        }
        let cooldown = c.jwks_cooldown_secs.unwrap_or(30).max(1);
        let resources = c.resources.map(|l| resource_ids(&l)).transpose()?;
        let ca_pem = c
            .ca_file
            .map(|f| {
                std::fs::read(&f)
                    .map_err(|e| anyhow::anyhow!("cannot read ca_file {}: {e}", f.display()))
            })
            .transpose()?;
        Ok(Self {
            jwks_uri: c.jwks_uri.map(|u| parse_url(&u, "jwks_uri")).transpose()?,
            issuer: c.issuer,
            audiences,
            profile: c.profile,
            discovery,
            tenant,
            subject_claim: c
                .subject_claim
                .unwrap_or_else(|| if entra { "oid" } else { "sub" }.into()),
            groups_claim: c.groups_claim.unwrap_or_else(|| "groups".into()),
            roles_claim: c.roles_claim.unwrap_or_else(|| "roles".into()),
            admin_role: c.admin_role.unwrap_or_else(|| "callsign.admin".into()),
            tokens_role: c.tokens_role.unwrap_or_else(|| "callsign.tokens".into()),
            scopes,
            max_token: Duration::from_secs(u64::from(minutes) * 60),
            leeway: Duration::from_secs(leeway),
            jwks_cooldown: Duration::from_secs(cooldown),
            teams: c.teams,
            resources,
            ca_pem,
            console_scope: console_scope(c.console_scopes)?,
            console_resource: c.console_resource.filter(|r| !r.is_empty()),
            console_client_id: c.console_client_id.filter(|id| {
                !id.is_empty() && id.len() <= 256 && !id.chars().any(char::is_control)
            }),
        })
    }

    /// The tenants this issuer speaks for.
    pub fn tenants(&self) -> &[Uuid] {
        match &self.tenant {
            TenantSource::Claim(_, list) => list,
            TenantSource::Fixed(t) => std::slice::from_ref(t),
        }
    }

    /// Whether this issuer's users may reach `resource`.
    pub fn serves(&self, resource: ResourceId) -> bool {
        self.resources
            .as_ref()
            .is_none_or(|list| list.contains(&resource))
    }
}

/// Why a bearer token was refused; each says what is wrong, never what the token holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Not a compact JWS, or a header or payload that is not JSON.
    #[error("the token is not a signed JWT")]
    Malformed,
    /// `alg: none` or an HMAC algorithm.
    #[error("the token's algorithm is not accepted (unsigned or symmetric)")]
    Algorithm,
    /// No `iss`, or one that is not configured.
    #[error("the token's issuer is not trusted")]
    UntrustedIssuer,
    /// No published key of the issuer has the token's `kid`.
    #[error("the token's signing key (kid) is not among the issuer's keys")]
    UnknownKey,
    /// The issuer's keys were never fetched and cannot be now.
    #[error("the issuer's signing keys cannot be fetched")]
    KeysUnavailable,
    /// The header's algorithm is not the key's.
    #[error("the token's algorithm is not its key's")]
    AlgorithmMismatch,
    /// The signature does not verify.
    #[error("the token's signature does not verify")]
    BadSignature,
    /// `aud` names none of the configured audiences.
    #[error("the token is for another audience")]
    WrongAudience,
    /// `exp` missing or passed.
    #[error("the token has expired")]
    Expired,
    /// `nbf` ahead.
    #[error("the token is not valid yet")]
    NotYetValid,
    /// The subject claim is missing, empty or too long.
    #[error("the token has no usable subject claim")]
    NoSubject,
    /// The tenant claim is missing, not a GUID, or not one of the issuer's tenants.
    #[error("the token's tenant is missing or not one of the issuer's")]
    NoTenant,
    /// The issuer is not trusted for this resource.
    #[error("the token's issuer is not trusted for this resource")]
    OtherResource,
    /// Several resources answer at the request's host and the issuer is trusted for more than
    /// one of them.
    #[error(
        "several resources answer at this host; list one in the issuer's resources or address the resource by its own host name"
    )]
    AmbiguousResource,
    /// The issuer does not vouch for Teams tokens.
    #[error("the token's issuer does not vouch for Teams tokens")]
    NotTeams,
}

impl From<VerifyError> for Refusal {
    fn from(e: VerifyError) -> Self {
        match e {
            VerifyError::AlgNone | VerifyError::SymmetricAlgorithm => Refusal::Algorithm,
            VerifyError::AlgorithmMismatch => Refusal::AlgorithmMismatch,
            VerifyError::UnknownKid => Refusal::UnknownKey,
            VerifyError::KeysUnavailable => Refusal::KeysUnavailable,
            VerifyError::BadSignature => Refusal::BadSignature,
            _ => Refusal::Malformed,
        }
    }
}

/// Who a verified bearer token speaks for.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The issuer that vouched.
    pub issuer: Arc<TrustedIssuer>,
    /// The subject claim's value.
    pub subject: String,
    /// The tenant.
    pub tenant: Uuid,
    /// Group ids (at most [`MAX_GROUPS`]).
    pub groups: Vec<String>,
    /// Roles.
    pub roles: Vec<String>,
    /// The application the token was issued to (`appid` or `azp`).
    pub app_id: Option<String>,
    /// When the bearer token expires.
    pub expires_at: OffsetDateTime,
}

impl Principal {
    /// The object part of the principal's identity: for Entra the object id (`oid`, a GUID);
    /// for any other issuer the name-based (v5) UUID of the subject, exactly as it is, in the
    /// tenant's namespace (a subject that looks like a GUID is no shortcut to another's id).
    pub fn object(&self) -> Uuid {
        match (self.issuer.profile, parse_guid(&self.subject)) {
            (Profile::Entra, Some(oid)) => oid,
            _ => Uuid::new_v5(&self.tenant, self.subject.as_bytes()),
        }
    }

    /// The principal's identity in `resource`: `8:acs:<resource>_wf_<tenant>_<object>`.
    pub fn identity(&self, resource: ResourceId) -> IdentityId {
        IdentityId::workforce(resource, self.tenant, self.object())
    }

    /// The object ids an assignment may name for this principal: the user, their groups,
    /// their tenant.
    pub fn object_ids(&self) -> Vec<ObjectId> {
        let mut out = Vec::with_capacity(self.groups.len() + 2);
        out.extend(ObjectId::parse(&self.subject).ok());
        out.extend(self.groups.iter().filter_map(|g| ObjectId::parse(g).ok()));
        let tenant = ObjectId::from_guid(self.tenant);
        if !out.contains(&tenant) {
            out.push(tenant);
        }
        out.sort();
        out.dedup();
        out
    }

    /// Whether the token carries `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    /// Who, for the audit log: `<issuer>#<subject>`.
    pub fn audit_subject(&self) -> String {
        format!("{}#{}", self.issuer.issuer, self.subject)
    }
}

/// The runtime of one trusted issuer: its HTTP client and its cached keys.
#[derive(Debug)]
struct Provider {
    config: Arc<TrustedIssuer>,
    http: reqwest::Client,
    jwks: OnceLock<JwksCache>,
    discovering: tokio::sync::Mutex<()>,
    last_discovery: Mutex<Option<Instant>>,
    /// The console's sign-in endpoints, once discovered.
    login: OnceLock<LoginEndpoints>,
    last_login_discovery: Mutex<Option<Instant>>,
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
    authorization_endpoint: Option<String>,
    token_endpoint: Option<String>,
    #[serde(default)]
    authorization_response_iss_parameter_supported: bool,
}

/// Where the console sends a user to sign in with an issuer, and redeems the code.
#[derive(Debug, Clone)]
pub(crate) struct LoginEndpoints {
    pub(crate) authorization: Url,
    pub(crate) token: Url,
    /// Whether the issuer names itself (`iss`) in its authorization responses (RFC 9207).
    pub(crate) names_itself: bool,
}

impl Provider {
    fn new(config: TrustedIssuer) -> anyhow::Result<Self> {
        let mut http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(5));
        if let Some(pem) = &config.ca_pem {
            for cert in reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| anyhow::anyhow!("ca_file of {}: {e}", config.issuer))?
            {
                http = http.add_root_certificate(cert);
            }
        }
        let http = http.build()?;
        let jwks = OnceLock::new();
        if let Some(url) = &config.jwks_uri {
            let _ = jwks.set(JwksCache::new(
                http.clone(),
                url.clone(),
                jwks_config(&config),
            ));
        }
        Ok(Self {
            config: Arc::new(config),
            http,
            jwks,
            discovering: tokio::sync::Mutex::new(()),
            last_discovery: Mutex::new(None),
            login: OnceLock::new(),
            last_login_discovery: Mutex::new(None),
        })
    }

    /// The key `kid` names: the discovery document first if not read yet (at most once per
    /// cooldown), then the JWKS cache.
    async fn key(&self, kid: &str) -> Result<VerifyingKey, Refusal> {
        Ok(self.jwks().await?.key(kid).await?)
    }

    async fn jwks(&self) -> Result<&JwksCache, Refusal> {
        if let Some(cache) = self.jwks.get() {
            return Ok(cache);
        }
        let _one = self.discovering.lock().await;
        if let Some(cache) = self.jwks.get() {
            return Ok(cache);
        }
        {
            let mut last = self
                .last_discovery
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|t| t.elapsed() < self.config.jwks_cooldown) {
                return Err(Refusal::KeysUnavailable);
            }
            *last = Some(Instant::now());
        }
        match self.discover().await {
            Ok(url) => {
                let cache = JwksCache::new(self.http.clone(), url, jwks_config(&self.config));
                Ok(self.jwks.get_or_init(|| cache))
            }
            Err(e) => {
                tracing::warn!(issuer = %self.config.issuer, error = %e, "the issuer's discovery document could not be read");
                Err(Refusal::KeysUnavailable)
            }
        }
    }

    /// Reads the discovery document: its `issuer` must be the configured one, its `jwks_uri`
    /// fetchable.
    async fn discover(&self) -> anyhow::Result<Url> {
        let doc = self.read_discovery().await?;
        parse_url(&doc.jwks_uri, "jwks_uri")
    }

    /// The discovery document, read with a bound; its `issuer` must be the configured one.
    async fn read_discovery(&self) -> anyhow::Result<Discovery> {
        let resp = self.http.get(self.config.discovery.clone()).send().await?;
        if !resp.status().is_success() {
            anyhow::bail!("status {}", resp.status());
        }
        let body = callsign_verify::read_bounded(resp, MAX_DISCOVERY_BYTES)
            .await?
            .ok_or_else(|| {
                anyhow::anyhow!("the document is larger than {MAX_DISCOVERY_BYTES} bytes")
            })?;
        let doc: Discovery = serde_json::from_slice(&body)?;
        if doc.issuer != self.config.issuer {
            anyhow::bail!("the document names another issuer");
        }
        Ok(doc)
    }

    /// The authorization and token endpoints, read once from the discovery document (at most
    /// once per cooldown while it cannot be read).
    async fn login_endpoints(&self) -> anyhow::Result<LoginEndpoints> {
        if let Some(e) = self.login.get() {
            return Ok(e.clone());
        }
        {
            let mut last = self
                .last_login_discovery
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|t| t.elapsed() < self.config.jwks_cooldown) {
                anyhow::bail!("the discovery document could not be read a moment ago");
            }
            *last = Some(Instant::now());
        }
        let doc = self.read_discovery().await?;
        let endpoint = |raw: Option<String>, what: &str| -> anyhow::Result<Url> {
            let raw = raw.ok_or_else(|| anyhow::anyhow!("the document names no {what}"))?;
            parse_url(&raw, what)
        };
        let endpoints = LoginEndpoints {
            authorization: endpoint(doc.authorization_endpoint, "authorization_endpoint")?,
            token: endpoint(doc.token_endpoint, "token_endpoint")?,
            names_itself: doc.authorization_response_iss_parameter_supported,
        };
        Ok(self.login.get_or_init(|| endpoints).clone())
    }
}

fn jwks_config(c: &TrustedIssuer) -> JwksConfig {
    JwksConfig {
        cooldown: c.jwks_cooldown,
        min_ttl: c.jwks_cooldown.min(JwksConfig::default().min_ttl),
        ..JwksConfig::default()
    }
}

/// The trusted issuers of a server.
#[derive(Debug, Default)]
pub struct Issuers {
    providers: Vec<Provider>,
}

#[derive(Deserialize)]
struct IssOnly {
    iss: Option<String>,
}

impl Issuers {
    /// The runtime of the configured issuers (no network yet: keys are fetched on first use).
    pub fn new(configs: Vec<TrustedIssuer>) -> anyhow::Result<Self> {
        // A tenant belongs to one issuer: another could otherwise name its users.
        let mut owners = std::collections::HashMap::new();
        for c in &configs {
            for t in c.tenants() {
                if let Some(other) = owners.insert(*t, &c.issuer) {
                    anyhow::bail!(
                        "the tenant {t} is claimed by two issuers ({other} and {}); give each its own tenant_id or tenants",
                        c.issuer
                    );
                }
            }
        }
        Ok(Self {
            providers: configs
                .into_iter()
                .map(Provider::new)
                .collect::<anyhow::Result<_>>()?,
        })
    }

    /// Whether any issuer is configured.
    pub fn any(&self) -> bool {
        !self.providers.is_empty()
    }

    /// The issuers users may sign in to the console with: their position and configuration.
    pub(crate) fn console_logins(&self) -> impl Iterator<Item = (usize, &TrustedIssuer)> {
        self.providers
            .iter()
            .enumerate()
            .filter(|(_, p)| p.config.console_client_id.is_some())
            .map(|(i, p)| (i, p.config.as_ref()))
    }

    /// The sign-in endpoints of the console issuer at `index`, its configuration and its HTTP
    /// client (its own CA, no redirects, timeouts).
    pub(crate) async fn console_login(
        &self,
        index: usize,
    ) -> anyhow::Result<(LoginEndpoints, &TrustedIssuer, &reqwest::Client)> {
        let provider = self
            .providers
            .get(index)
            .filter(|p| p.config.console_client_id.is_some())
            .ok_or_else(|| anyhow::anyhow!("no console sign-in with issuer {index}"))?;
        let endpoints = provider.login_endpoints().await?;
        Ok((endpoints, provider.config.as_ref(), &provider.http))
    }

    /// Whether an issuer vouches for Teams tokens.
    pub fn any_teams(&self) -> bool {
        self.providers.iter().any(|p| p.config.teams)
    }

    /// Verifies `token` at `now` against the issuer its `iss` names.
    pub async fn verify(&self, token: &str, now: OffsetDateTime) -> Result<Principal, Refusal> {
        if token.len() > MAX_BEARER_BYTES {
            return Err(Refusal::Malformed);
        }
        let jws = Jws::parse(token)?;
        let iss = jws
            .unverified_payload()
            .and_then(|p| serde_json::from_slice::<IssOnly>(&p).ok())
            .ok_or(Refusal::Malformed)?
            .iss
            .ok_or(Refusal::UntrustedIssuer)?;
        let provider = self
            .providers
            .iter()
            .find(|p| p.config.issuer == iss)
            .ok_or(Refusal::UntrustedIssuer)?;
        let key = provider.key(jws.kid()).await?;
        let payload = jws.verified_payload(&key)?;
        let claims: Map<String, Value> =
            serde_json::from_slice(&payload).map_err(|_| Refusal::Malformed)?;
        principal(&provider.config, &claims, now)
    }
}

/// The claim at a dotted `path` (`realm_access.roles`).
fn claim<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let mut value = claims.get(parts.next()?)?;
    for part in parts {
        value = value.as_object()?.get(part)?;
    }
    Some(value)
}

/// Strings of a list claim, or of a space-separated string claim.
fn strings(value: Option<&Value>, max: usize) -> Vec<String> {
    match value {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .take(max)
            .map(str::to_owned)
            .collect(),
        Some(Value::String(s)) => s.split_whitespace().take(max).map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}

/// Checks the verified claims against the issuer's rules at `now`.
fn principal(
    issuer: &Arc<TrustedIssuer>,
    claims: &Map<String, Value>,
    now: OffsetDateTime,
) -> Result<Principal, Refusal> {
    // A string `aud` is one audience (never split); a list is several.
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => issuer.audiences.contains(a),
        Some(Value::Array(list)) => list
            .iter()
            .take(64)
            .filter_map(Value::as_str)
            .any(|a| issuer.audiences.iter().any(|ours| ours == a)),
        _ => false,
    };
    if !aud_ok {
        return Err(Refusal::WrongAudience);
    }
    let leeway = i64::try_from(issuer.leeway.as_secs()).unwrap_or(300);
    let now_s = now.unix_timestamp();
    let exp = claims
        .get("exp")
        .and_then(Value::as_i64)
        .ok_or(Refusal::Expired)?;
    if now_s.saturating_sub(leeway) >= exp {
        return Err(Refusal::Expired);
    }
    match claims.get("nbf").map(Value::as_i64) {
        Some(None) => return Err(Refusal::Malformed),
        Some(Some(nbf)) if now_s.saturating_add(leeway) < nbf => {
            return Err(Refusal::NotYetValid);
        }
        _ => {}
    }
    let subject = claims
        .get(&issuer.subject_claim)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty() && s.len() <= 255 && !s.chars().any(char::is_control))
        .ok_or(Refusal::NoSubject)?
        .to_owned();
    let tenant = match &issuer.tenant {
        TenantSource::Fixed(t) => *t,
        TenantSource::Claim(name, own) => claims
            .get(name)
            .and_then(Value::as_str)
            .and_then(parse_guid)
            .filter(|t| own.contains(t))
            .ok_or(Refusal::NoTenant)?,
    };
    // An Entra object id is a GUID; the identity is named by it.
    if issuer.profile == Profile::Entra && parse_guid(&subject).is_none() {
        return Err(Refusal::NoSubject);
    }
    let app_id = ["appid", "azp"]
        .iter()
        .find_map(|c| claims.get(*c).and_then(Value::as_str))
        .map(str::to_owned);
    Ok(Principal {
        issuer: Arc::clone(issuer),
        subject,
        tenant,
        groups: strings(claim(claims, &issuer.groups_claim), MAX_GROUPS),
        roles: strings(claim(claims, &issuer.roles_claim), 64),
        app_id,
        expires_at: OffsetDateTime::from_unix_timestamp(exp).map_err(|_| Refusal::Expired)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issuer(profile: Profile) -> Arc<TrustedIssuer> {
        Arc::new(
            TrustedIssuer::from_config(TrustedIssuerConfig {
                issuer: "https://id.example.com/realms/test".into(),
                audience: Audience::Many(vec!["api://callsign".into(), "other".into()]),
                profile,
                roles_claim: Some("realm_access.roles".into()),
                tenants: (profile == Profile::Entra)
                    .then(|| vec!["c70d068c-2f32-484d-9455-73070cd5aadd".into()]),
                ..TrustedIssuerConfig::default()
            })
            .expect("valid"),
        )
    }

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().expect("object").clone()
    }

    #[test]
    fn claims_are_checked_and_read() {
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("time");
        let t = now.unix_timestamp();
        let i = issuer(Profile::Generic);
        let good = json_claims(t, serde_json::json!("api://callsign"));
        let p = principal(&i, &good, now).expect("verifies");
        assert_eq!(p.subject, "auth0|abc");
        assert_eq!(p.tenant, TrustedIssuer::tenant_of_issuer(&i.issuer));
        assert_eq!(p.roles, ["callsign.admin"]);
        assert_eq!(p.groups, ["g1", "g2"]);
        assert_eq!(p.object(), Uuid::new_v5(&p.tenant, b"auth0|abc"));
        let ids: Vec<String> = p.object_ids().iter().map(|o| o.to_string()).collect();
        assert!(ids.contains(&"auth0|abc".to_owned()) && ids.contains(&"g2".to_owned()));
        let wrong_aud = json_claims(t, serde_json::json!(["x", "y"]));
        assert_eq!(
            principal(&i, &wrong_aud, now).err(),
            Some(Refusal::WrongAudience)
        );
        let later = now + time::Duration::seconds(3600 + 61);
        assert_eq!(principal(&i, &good, later).err(), Some(Refusal::Expired));
        let within_leeway = now + time::Duration::seconds(3600 + 30);
        assert!(principal(&i, &good, within_leeway).is_ok());
        let mut early = good.clone();
        early.insert("nbf".into(), Value::from(t + 120));
        assert_eq!(principal(&i, &early, now).err(), Some(Refusal::NotYetValid));
        let mut no_sub = good.clone();
        no_sub.remove("sub");
        assert_eq!(principal(&i, &no_sub, now).err(), Some(Refusal::NoSubject));
        let mut no_exp = good;
        no_exp.remove("exp");
        assert_eq!(principal(&i, &no_exp, now).err(), Some(Refusal::Expired));
    }

    fn json_claims(t: i64, aud: Value) -> Map<String, Value> {
        claims(serde_json::json!({
            "iss": "https://id.example.com/realms/test",
            "aud": aud,
            "sub": "auth0|abc",
            "exp": t + 3600,
            "groups": ["g1", "g2"],
            "realm_access": {"roles": ["callsign.admin"]},
        }))
    }

    #[test]
    fn entra_tokens_give_the_spec_identity() {
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("time");
        let i = issuer(Profile::Entra);
        let c = claims(serde_json::json!({
            "aud": "api://callsign",
            "exp": now.unix_timestamp() + 600,
            "oid": "B27B64B9-39D2-44A3-869D-67700B74E805",
            "tid": "c70d068c-2f32-484d-9455-73070cd5aadd",
            "appid": "11111111-2222-3333-4444-555555555555",
        }));
        let p = principal(&i, &c, now).expect("verifies");
        let r = ResourceId::parse("2dee53b4-368b-45b4-ab52-8493fb117652").expect("id");
        assert_eq!(
            p.identity(r).to_string(),
            "8:acs:2dee53b4-368b-45b4-ab52-8493fb117652_wf_c70d068c-2f32-484d-9455-73070cd5aadd_b27b64b9-39d2-44a3-869d-67700b74e805"
        );
        assert_eq!(
            p.app_id.as_deref(),
            Some("11111111-2222-3333-4444-555555555555")
        );
        let mut no_tid = c.clone();
        no_tid.remove("tid");
        assert_eq!(principal(&i, &no_tid, now).err(), Some(Refusal::NoTenant));
        let mut foreign = c.clone();
        foreign.insert("tid".into(), Value::from(Uuid::new_v4().to_string()));
        assert_eq!(
            principal(&i, &foreign, now).err(),
            Some(Refusal::NoTenant),
            "another's tenant"
        );
        let mut not_guid = c;
        not_guid.insert("oid".into(), Value::from("alice"));
        assert_eq!(
            principal(&i, &not_guid, now).err(),
            Some(Refusal::NoSubject)
        );
    }

    #[test]
    fn audiences_strings_and_times_are_read_strictly() {
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("time");
        let i = issuer(Profile::Generic);
        let spaced = json_claims(
            now.unix_timestamp(),
            serde_json::json!("other api://callsign"),
        );
        assert_eq!(
            principal(&i, &spaced, now).err(),
            Some(Refusal::WrongAudience)
        );
        let mut text_nbf = json_claims(now.unix_timestamp(), serde_json::json!("api://callsign"));
        text_nbf.insert("nbf".into(), Value::from("9999999999"));
        assert_eq!(
            principal(&i, &text_nbf, now).err(),
            Some(Refusal::Malformed)
        );
        // A GUID-looking subject is named like any other, never taken as an object id.
        let mut guid_sub = json_claims(now.unix_timestamp(), serde_json::json!("api://callsign"));
        let other = Uuid::new_v5(&TrustedIssuer::tenant_of_issuer(&i.issuer), b"alice");
        guid_sub.insert("sub".into(), Value::from(other.to_string()));
        let p = principal(&i, &guid_sub, now).expect("verifies");
        assert_ne!(p.object(), other);
    }

    #[test]
    fn a_tenant_belongs_to_one_issuer() {
        let entra = |issuer: &str| TrustedIssuerConfig {
            issuer: issuer.into(),
            audience: Audience::One("a".into()),
            profile: Profile::Entra,
            ..TrustedIssuerConfig::default()
        };
        let t = "c70d068c-2f32-484d-9455-73070cd5aadd";
        let url = format!("https://login.microsoftonline.com/{t}/v2.0");
        let own = TrustedIssuer::from_config(entra(&url)).expect("tenant from the URL");
        assert_eq!(own.tenants(), [parse_guid(t).expect("guid")]);
        assert!(TrustedIssuer::from_config(entra("https://login.example.com/common")).is_err());
        let twice = TrustedIssuerConfig {
            issuer: "https://other.example.com".into(),
            tenant_id: Some(t.into()),
            ..entra("x")
        };
        let twice = TrustedIssuer::from_config(TrustedIssuerConfig {
            profile: Profile::Generic,
            ..twice
        })
        .expect("valid alone");
        assert!(
            Issuers::new(vec![own, twice]).is_err(),
            "one tenant, two issuers"
        );
    }

    #[test]
    fn configuration_is_checked() {
        let base = TrustedIssuerConfig {
            issuer: "https://id.example.com".into(),
            audience: Audience::One("a".into()),
            ..TrustedIssuerConfig::default()
        };
        assert!(TrustedIssuer::from_config(base.clone()).is_ok());
        let http = TrustedIssuerConfig {
            issuer: "http://id.example.com".into(),
            ..base.clone()
        };
        assert!(
            TrustedIssuer::from_config(http).is_err(),
            "plain http off loopback"
        );
        let loopback = TrustedIssuerConfig {
            issuer: "http://127.0.0.1:8080/realms/x".into(),
            ..base.clone()
        };
        assert!(TrustedIssuer::from_config(loopback).is_ok());
        let no_aud = TrustedIssuerConfig {
            audience: Audience::None,
            ..base.clone()
        };
        assert!(TrustedIssuer::from_config(no_aud).is_err());
        let teams_generic = TrustedIssuerConfig {
            teams: true,
            ..base.clone()
        };
        assert!(TrustedIssuer::from_config(teams_generic).is_err());
        let bad_scope = TrustedIssuerConfig {
            scopes: Some(vec!["admin".into()]),
            ..base
        };
        assert!(TrustedIssuer::from_config(bad_scope).is_err());
    }
}
