//! The token keys of a node: the one that signs, and every published one that verifies; and
//! their rotation.
//!
//! Several nodes can share a database, and any of them (or `callsign signing-key rotate`) may add
//! a key. So the key set is reloaded from the store every refresh interval
//! ([`Settings::key_refresh`](crate::Settings), [`DEFAULT_KEY_REFRESH`]), and at once (at most once
//! a second) when a token names a key id this node has not seen.
//!
//! Rotation: a new key is added *pending*, activating [`ACTIVATION_LEAD`] later. Pending keys
//! are published in the JWKS (and verify) but do not sign, so by the time any node signs with
//! one, every node has published it and every verifier's cached JWKS has expired. A node signs
//! with the newest key of its algorithm whose activation time has come ([`signing_key_for`]);
//! the key it succeeds stays published until [`retirement_bound`] (the new key's activation, the
//! longest token lifetime and [`RETIRE_MARGIN`]), when the last token it signed has expired, and
//! is then deleted by whichever node refreshes first.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use callsign_core::token::{
    Algorithm, Issuer, SigningKey, TokenIssuer, TokenVerifier, VerifyingKey,
};
use callsign_core::{Clock, ExpiresIn};
use callsign_store::{Actor, KeyRotation, Rotation, SigningKeyStore, StoreError, StoredSigningKey};
use time::OffsetDateTime;

use crate::meta::jwks_document;

/// How often a node reloads its keys unless told otherwise.
pub const DEFAULT_KEY_REFRESH: Duration = Duration::from_secs(30);
/// How long verifiers may cache the JWKS (its `Cache-Control: max-age`).
pub const JWKS_MAX_AGE: Duration = Duration::from_secs(300);
/// The JWKS response's `Cache-Control` (its max-age is [`JWKS_MAX_AGE`]).
pub(crate) const JWKS_CACHE_CONTROL: &str = "public, max-age=300";
/// How long before it signs a new key is published: the JWKS cache lifetime (a verifier that
/// fetched the JWKS just before the key was added knows it by then), the node refresh interval
/// (every node has loaded it by then) and a margin of 4.5 minutes for node clock skew and
/// verifiers that refresh late.
pub const ACTIVATION_LEAD: Duration = Duration::from_secs(10 * 60);
/// How long after its last token could have expired a previous key stays published: covers node
/// clock skew and a node that took a refresh interval to switch.
pub const RETIRE_MARGIN: Duration = Duration::from_secs(60 * 60);
/// The longest token lifetime (24 hours).
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(ExpiresIn::MAX_MINUTES as u64 * 60);
const MIN_ON_DEMAND_INTERVAL: Duration = Duration::from_secs(1);

const _: () = assert!(
    ACTIVATION_LEAD.as_secs() >= JWKS_MAX_AGE.as_secs() + DEFAULT_KEY_REFRESH.as_secs() + 60,
    "a new key must be published for a JWKS cache lifetime and a refresh before it signs"
);

/// When the keys a key activating at `activates_at` succeeds may be retired.
pub fn retirement_bound(activates_at: OffsetDateTime) -> OffsetDateTime {
    activates_at + MAX_TOKEN_LIFETIME + RETIRE_MARGIN
}

/// Where a stored key is in its life at some instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// Published, not signing yet.
    Pending,
    /// Published, and the newest key of its algorithm that signs.
    Active,
    /// Published, no longer signing (a newer key of its algorithm is active); tokens it signed
    /// still verify.
    Previous,
    /// Past its retirement bound: deleted at the next refresh of a node.
    Retired,
}

impl KeyState {
    /// The word `signing-key list` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Pending => "pending",
            KeyState::Active => "active",
            KeyState::Previous => "previous",
            KeyState::Retired => "retired",
        }
    }
}

/// The key of `alg` that signs at `now`: the newest whose activation time has come (the latest
/// created among equals), or, when every key of `alg` is pending, the first to activate.
pub fn signing_key_for(
    keys: &[StoredSigningKey],
    alg: Algorithm,
    now: OffsetDateTime,
) -> Option<&StoredSigningKey> {
    let of_alg = || keys.iter().filter(move |k| k.alg == alg);
    of_alg()
        .filter(|k| !k.is_pending(now))
        .max_by_key(|k| (k.activates_at, k.created_at))
        .or_else(|| of_alg().min_by_key(|k| k.activates_at))
}

/// The state of each of `keys` at `now`, in the same order.
pub fn key_states(keys: &[StoredSigningKey], now: OffsetDateTime) -> Vec<KeyState> {
    keys.iter()
        .map(|k| {
            if k.is_pending(now) {
                KeyState::Pending
            } else if signing_key_for(keys, k.alg, now).is_some_and(|s| s.kid == k.kid) {
                KeyState::Active
            } else if k.retire_after.is_some_and(|t| t <= now) {
                KeyState::Retired
            } else {
                KeyState::Previous
            }
        })
        .collect()
}

/// The key a rotation added, or the one pending already.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingKey {
    /// Its key id.
    pub kid: String,
    /// When it starts signing.
    pub activates_at: OffsetDateTime,
    /// Whether this rotation added it (false: it was pending already, nothing changed).
    pub added: bool,
}

/// Generates a key of `alg` and adds it pending, activating [`ACTIVATION_LEAD`] after `now`, the
/// keys it succeeds to be retired at [`retirement_bound`]; unless a key of `alg` is pending
/// already (then that one is returned). One store transaction; safe to run on several nodes and
/// processes at once.
pub async fn rotate_signing_key(
    store: &dyn SigningKeyStore,
    alg: Algorithm,
    now: OffsetDateTime,
    actor: Actor,
) -> anyhow::Result<PendingKey> {
    // RSA key generation takes a while: off the async workers.
    let key = tokio::task::spawn_blocking(move || SigningKey::generate(alg)).await??;
    // The store keeps milliseconds: the times reported are the times stored.
    let now = now
        .replace_nanosecond(u32::from(now.millisecond()) * 1_000_000)
        .unwrap_or(now);
    let activates_at = now + ACTIVATION_LEAD;
    let rotation = KeyRotation {
        key: StoredSigningKey {
            kid: key.kid().to_owned(),
            alg,
            pkcs8: key.pkcs8_der().to_vec(),
            created_at: now,
            activates_at,
            retire_after: None,
        },
        now,
        retire_previous_after: retirement_bound(activates_at),
        actor,
    };
    Ok(match store.rotate_signing_key(rotation).await? {
        Rotation::Added => PendingKey {
            kid: key.kid().to_owned(),
            activates_at,
            added: true,
        },
        Rotation::AlreadyPending { kid, activates_at } => PendingKey {
            kid,
            activates_at,
            added: false,
        },
    })
}

/// Whether a scheduled rotation of `alg` is due: its signing key has signed for `period` and no
/// key of `alg` is pending.
fn rotation_due(
    keys: &[StoredSigningKey],
    alg: Algorithm,
    now: OffsetDateTime,
    period: Duration,
) -> bool {
    let pending = keys.iter().any(|k| k.alg == alg && k.is_pending(now));
    !pending && signing_key_for(keys, alg, now).is_some_and(|k| k.activates_at + period <= now)
}

/// The verifying keys, their JWKS document and the issuer signing with the active key, swapped
/// whole on refresh.
pub(crate) struct KeySet {
    pub(crate) verifier: TokenVerifier,
    pub(crate) jwks: bytes::Bytes,
    issuer: TokenIssuer,
    kids: Vec<String>,
}

impl KeySet {
    /// Whether `kid` is known.
    pub(crate) fn knows(&self, kid: &str) -> bool {
        self.kids.iter().any(|k| k == kid)
    }
}

/// What a node signs with: its algorithm and the claims every token carries.
#[derive(Debug, Clone)]
pub(crate) struct Signer {
    pub(crate) alg: Algorithm,
    pub(crate) issuer: Issuer,
    pub(crate) location: String,
    /// Scheduled rotation period (`--signing-key-rotation`), if any.
    pub(crate) rotation: Option<Duration>,
    /// How often the keys are reloaded.
    pub(crate) refresh_every: Duration,
}

/// The published keys and the signing one, refreshable.
pub(crate) struct Keys {
    current: RwLock<Arc<KeySet>>,
    last_refresh: Mutex<Instant>,
    signer: Signer,
}

impl Keys {
    /// The current set.
    pub(crate) fn get(&self) -> Arc<KeySet> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Runs `f` with the issuer of the active key: one uncontended read lock, no allocation.
    pub(crate) fn with_issuer<R>(&self, f: impl FnOnce(&TokenIssuer) -> R) -> R {
        f(&self
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .issuer)
    }

    /// How often the keys are reloaded.
    pub(crate) fn alg(&self) -> Algorithm {
        self.signer.alg
    }

    pub(crate) fn refresh_every(&self) -> Duration {
        self.signer.refresh_every
    }

    /// Reloads from the store: the published set, and the key that signs at `now`.
    pub(crate) async fn refresh(
        &self,
        store: &dyn SigningKeyStore,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let stored = store.signing_keys().await?;
        self.install(&stored, now)
    }

    fn install(&self, stored: &[StoredSigningKey], now: OffsetDateTime) -> Result<(), StoreError> {
        let set = build(stored, &self.signer, now)
            .map_err(|e| StoreError::backend("cannot load the signing keys").caused_by(e))?;
        let previous = self.get().issuer.key().kid().to_owned();
        if previous != set.issuer.key().kid() {
            tracing::info!(kid = set.issuer.key().kid(), previous = %previous, "signing with a new key");
        }
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set);
        *self.last_refresh.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        Ok(())
    }

    /// The periodic refresh: reloads, retires keys past their bound, starts a scheduled
    /// rotation when one is due, and reloads again after a change. A failing write is logged;
    /// the keys read are installed anyway.
    pub(crate) async fn maintain(
        &self,
        store: &dyn SigningKeyStore,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let stored = store.signing_keys().await?;
        self.install(&stored, now)?;
        let mut changed = false;
        if stored
            .iter()
            .any(|k| k.retire_after.is_some_and(|t| t <= now))
        {
            match store.retire_signing_keys(now).await {
                Ok(kids) => {
                    for kid in &kids {
                        tracing::info!(kid = %kid, "retired a signing key (its last token has expired)");
                    }
                    changed |= !kids.is_empty();
                }
                Err(e) => tracing::warn!(error = %e.chain(), "could not retire signing keys"),
            }
        }
        if let Some(period) = self.signer.rotation
            && rotation_due(&stored, self.signer.alg, now, period)
        {
            match rotate_signing_key(store, self.signer.alg, now, Actor::node()).await {
                Ok(key) if key.added => {
                    tracing::info!(kid = %key.kid, activates_at = %key.activates_at, "scheduled signing-key rotation: added a pending key");
                    changed = true;
                }
                Ok(_) => changed = true,
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "scheduled signing-key rotation failed")
                }
            }
        }
        if changed {
            self.refresh(store, now).await?;
        }
        Ok(())
    }

    /// Reloads if the last reload is older than a second (for an unknown `kid`).
    pub(crate) async fn refresh_if_stale(
        &self,
        store: &dyn SigningKeyStore,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let stale = self
            .last_refresh
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
            >= MIN_ON_DEMAND_INTERVAL;
        if stale {
            self.refresh(store, now).await?;
        }
        Ok(())
    }
}

/// The key set of `stored` at `now`: every key that loads and is not past its retirement bound
/// verifies (the signing one first in the JWKS), the signing key of the signer's algorithm
/// signs. A retired key stops verifying at its bound even if deleting it failed.
fn build(
    stored: &[StoredSigningKey],
    signer: &Signer,
    now: OffsetDateTime,
) -> anyhow::Result<KeySet> {
    let chosen = signing_key_for(stored, signer.alg, now)
        .ok_or_else(|| anyhow::anyhow!("no signing key of {} is stored", signer.alg))?;
    let active = SigningKey::from_pkcs8(chosen.alg, &chosen.pkcs8)
        .with_context(|| format!("the signing key {} does not load", chosen.kid))?;
    let mut keys: Vec<VerifyingKey> = Vec::with_capacity(stored.len());
    let states = key_states(stored, now);
    for (k, _) in stored
        .iter()
        .zip(states)
        .filter(|(_, state)| *state != KeyState::Retired)
    {
        match SigningKey::from_pkcs8(k.alg, &k.pkcs8) {
            Ok(key) => keys.push(key.verifying_key()),
            Err(e) => {
                tracing::error!(kid = %k.kid, error = %e, "a stored signing key does not load")
            }
        }
    }
    keys.sort_by_key(|k| k.kid() != active.kid());
    let jwks = serde_json::to_vec(&jwks_document(&keys)).context("cannot publish the keys")?;
    let issuer = TokenIssuer::new(active, signer.issuer.clone(), &signer.location)?;
    Ok(KeySet {
        kids: keys.iter().map(|k| k.kid().to_owned()).collect(),
        verifier: TokenVerifier::new(keys),
        jwks: jwks.into(),
        issuer,
    })
}

/// Makes sure a key of the signer's algorithm exists (a new one that all nodes agree on, active
/// at once, if there is none) and loads the key set.
pub(crate) async fn bootstrap(
    store: &dyn SigningKeyStore,
    signer: Signer,
    clock: &dyn Clock,
) -> anyhow::Result<Keys> {
    let alg = signer.alg;
    let now = clock.now();
    let mut stored = store.signing_keys().await?;
    if !stored.iter().any(|k| k.alg == alg) {
        let key = SigningKey::generate(alg)?;
        let candidate = StoredSigningKey {
            kid: key.kid().to_owned(),
            alg,
            pkcs8: key.pkcs8_der().to_vec(),
            created_at: now,
            activates_at: now,
            retire_after: None,
        };
        let chosen = store.bootstrap_signing_key(candidate).await?;
        if chosen.kid == key.kid() {
            tracing::info!(kid = key.kid(), alg = %alg, "generated a token signing key");
        }
        stored = store.signing_keys().await?;
    }
    let set = build(&stored, &signer, now)?;
    Ok(Keys {
        current: RwLock::new(Arc::new(set)),
        last_refresh: Mutex::new(Instant::now()),
        signer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(kid: &str, alg: Algorithm, activates: i64, retire: Option<i64>) -> StoredSigningKey {
        let at = |s| OffsetDateTime::from_unix_timestamp(s).expect("time");
        StoredSigningKey {
            kid: kid.into(),
            alg,
            pkcs8: Vec::new(),
            created_at: at(activates.min(1_000)),
            activates_at: at(activates),
            retire_after: retire.map(at),
        }
    }

    #[test]
    fn the_newest_activated_key_of_the_algorithm_signs_and_others_are_named_by_state() {
        let keys = [
            key("next", Algorithm::Es256, 3_000, None),
            key("current", Algorithm::Es256, 2_000, None),
            key("old", Algorithm::Es256, 1_000, Some(2_500)),
            key("rsa", Algorithm::Rs256, 1_000, None),
        ];
        let at = |s| OffsetDateTime::from_unix_timestamp(s).expect("time");
        let kid = |now| signing_key_for(&keys, Algorithm::Es256, at(now)).map(|k| k.kid.as_str());
        assert_eq!(kid(2_999), Some("current"));
        assert_eq!(kid(3_000), Some("next"));
        assert_eq!(kid(500), Some("old"), "all pending: the first to activate");
        use KeyState::*;
        assert_eq!(
            key_states(&keys, at(2_400)),
            [Pending, Active, Previous, Active]
        );
        assert_eq!(
            key_states(&keys, at(3_000)),
            [Active, Previous, Retired, Active]
        );
    }

    /// A key past its retirement bound neither verifies nor is published, even while its
    /// deletion keeps failing (a full disk, a read-only replica).
    #[test]
    fn a_key_past_its_bound_stops_verifying_though_still_stored() {
        let real = |activates: i64, retire: Option<i64>| {
            let generated = SigningKey::generate(Algorithm::Es256).expect("key");
            let kid = generated.kid().to_owned();
            StoredSigningKey {
                kid: kid.clone(),
                pkcs8: generated.pkcs8_der().to_vec(),
                ..key(&kid, Algorithm::Es256, activates, retire)
            }
        };
        let stored = [real(2_000, None), real(1_000, Some(2_500))];
        let (new, old) = (stored[0].kid.clone(), stored[1].kid.clone());
        let signer = Signer {
            alg: Algorithm::Es256,
            issuer: Issuer::Fixed("urn:test".into()),
            location: "local".into(),
            rotation: None,
            refresh_every: Duration::from_secs(30),
        };
        let at = |s| OffsetDateTime::from_unix_timestamp(s).expect("time");
        let before = build(&stored, &signer, at(2_499)).expect("build");
        assert!(before.knows(&old) && before.knows(&new));
        let after = build(&stored, &signer, at(2_500)).expect("build");
        assert!(!after.knows(&old), "a retired key verifies");
        assert!(after.knows(&new));
        assert!(!String::from_utf8_lossy(&after.jwks).contains(&old));
    }

    #[test]
    fn the_jwks_cache_lifetime_is_the_one_the_lead_counts_on() {
        let expected = format!("public, max-age={}", JWKS_MAX_AGE.as_secs());
        assert_eq!(JWKS_CACHE_CONTROL, expected);
    }

    #[test]
    fn rotation_is_due_after_the_period_unless_a_key_is_pending() {
        let at = |s| OffsetDateTime::from_unix_timestamp(s).expect("time");
        let period = Duration::from_secs(100);
        let one = [key("a", Algorithm::Es256, 1_000, None)];
        assert!(!rotation_due(&one, Algorithm::Es256, at(1_099), period));
        assert!(rotation_due(&one, Algorithm::Es256, at(1_100), period));
        assert!(!rotation_due(&one, Algorithm::Rs256, at(1_100), period));
        let pending = [
            key("b", Algorithm::Es256, 2_000, None),
            key("a", Algorithm::Es256, 1_000, None),
        ];
        assert!(!rotation_due(&pending, Algorithm::Es256, at(1_500), period));
    }
}
