//! The token keys of a node: the one that signs, and every published one that verifies.
//!
//! Several nodes can share a database, and one of them may add a key (for instance when started
//! with another `--signing-alg`). So the verifying set is reloaded from the store every
//! [`REFRESH_EVERY`], and at once (at most once a second) when a token names a key id this node
//! has not seen.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use callsign_core::Clock;
use callsign_core::token::{Algorithm, SigningKey, TokenVerifier, VerifyingKey};
use callsign_store::{SigningKeyStore, StoreError, StoredSigningKey};

use crate::meta::jwks_document;

/// How often the verifying keys are reloaded.
pub const REFRESH_EVERY: Duration = Duration::from_secs(30);
const MIN_ON_DEMAND_INTERVAL: Duration = Duration::from_secs(1);

/// The verifying keys and their JWKS document, swapped whole on refresh.
pub(crate) struct KeySet {
    pub(crate) verifier: TokenVerifier,
    pub(crate) jwks: bytes::Bytes,
    kids: Vec<String>,
}

impl KeySet {
    fn build(keys: Vec<VerifyingKey>) -> anyhow::Result<Self> {
        let jwks = serde_json::to_vec(&jwks_document(&keys))?;
        Ok(Self {
            kids: keys.iter().map(|k| k.kid().to_owned()).collect(),
            verifier: TokenVerifier::new(keys),
            jwks: jwks.into(),
        })
    }

    /// Whether `kid` is known.
    pub(crate) fn knows(&self, kid: &str) -> bool {
        self.kids.iter().any(|k| k == kid)
    }
}

/// The published keys, refreshable.
pub(crate) struct Keys {
    current: RwLock<Arc<KeySet>>,
    last_refresh: Mutex<Instant>,
    active_kid: String,
}

impl Keys {
    /// The current set.
    pub(crate) fn get(&self) -> Arc<KeySet> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Reloads from the store.
    pub(crate) async fn refresh(&self, store: &dyn SigningKeyStore) -> Result<(), StoreError> {
        let set = load(store, &self.active_kid).await?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set);
        *self.last_refresh.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        Ok(())
    }

    /// Reloads if the last reload is older than a second (for an unknown `kid`).
    pub(crate) async fn refresh_if_stale(
        &self,
        store: &dyn SigningKeyStore,
    ) -> Result<(), StoreError> {
        let stale = self
            .last_refresh
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
            >= MIN_ON_DEMAND_INTERVAL;
        if stale {
            self.refresh(store).await?;
        }
        Ok(())
    }
}

/// Loads every stored key; the active key first.
async fn load(store: &dyn SigningKeyStore, active_kid: &str) -> Result<KeySet, StoreError> {
    let mut keys = Vec::new();
    for stored in store.signing_keys().await? {
        match SigningKey::from_pkcs8(stored.alg, &stored.pkcs8) {
            Ok(k) => keys.push(k.verifying_key()),
            Err(e) => {
                tracing::error!(kid = %stored.kid, error = %e, "a stored signing key does not load")
            }
        }
    }
    keys.sort_by_key(|k| k.kid() != active_kid);
    KeySet::build(keys)
        .map_err(|e| StoreError::backend("cannot publish the signing keys").caused_by(e))
}

/// The signing key for `alg` (the newest stored one, or a new one that all nodes agree on) and
/// the verifying set.
pub(crate) async fn bootstrap(
    store: &dyn SigningKeyStore,
    alg: Algorithm,
    clock: &dyn Clock,
) -> anyhow::Result<(SigningKey, Keys)> {
    let existing = store
        .signing_keys()
        .await?
        .into_iter()
        .find(|k| k.alg == alg);
    let stored = match existing {
        Some(k) => k,
        None => {
            let key = SigningKey::generate(alg)?;
            let candidate = StoredSigningKey {
                kid: key.kid().to_owned(),
                alg,
                pkcs8: key.pkcs8_der().to_vec(),
                created_at: clock.now(),
            };
            let chosen = store.bootstrap_signing_key(candidate).await?;
            if chosen.kid == key.kid() {
                tracing::info!(kid = key.kid(), alg = %alg, "generated a token signing key");
            }
            chosen
        }
    };
    let active = SigningKey::from_pkcs8(stored.alg, &stored.pkcs8)?;
    let set = load(store, active.kid()).await?;
    let keys = Keys {
        current: RwLock::new(Arc::new(set)),
        last_refresh: Mutex::new(Instant::now()),
        active_kid: active.kid().to_owned(),
    };
    Ok((active, keys))
}
