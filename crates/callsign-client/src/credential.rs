//! A user's access token that renews itself, like the SDKs' `CommunicationTokenCredential`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::Mutex;

use crate::{AccessToken, Clock, MalformedToken, SystemClock};

/// With proactive refresh, a token is renewed once it has less than this left.
pub const PROACTIVE_REFRESH_WINDOW: Duration = Duration::from_secs(10 * 60);
/// Without proactive refresh, [`CommunicationTokenCredential::get_token`] renews a token that has
/// less than this left.
pub const ON_DEMAND_REFRESH_WINDOW: Duration = Duration::from_secs(2 * 60);
/// After a background refresh that failed (or brought a token that is itself about to expire),
/// the next attempt waits this long.
pub const PROACTIVE_RETRY_INTERVAL: Duration = Duration::from_secs(30);

/// Any error a refresher may return.
pub type RefreshError = Box<dyn std::error::Error + Send + Sync>;

type RefreshFuture = Pin<Box<dyn Future<Output = Result<String, RefreshError>> + Send>>;
type Refresher = Arc<dyn Fn() -> RefreshFuture + Send + Sync>;

/// Why a credential could not be made or could not give a token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialError {
    /// The initial token, or one the refresher returned, has no readable expiry.
    #[error(transparent)]
    MalformedToken(#[from] MalformedToken),
    /// The refresher failed.
    #[error("the token refresher failed: {0}")]
    Refresh(#[source] RefreshError),
    /// The refresher returned a token that had already expired.
    #[error("the token returned from the token refresher is expired (it expired at {expires_on})")]
    RefreshedTokenExpired {
        /// The returned token's expiry.
        expires_on: OffsetDateTime,
    },
    /// Proactive refresh was asked for without a refresher.
    #[error("proactive refresh needs a token refresher")]
    MissingRefresher,
    /// Proactive refresh runs a background task, which needs to be built inside a tokio runtime.
    #[error("proactive refresh must be set up inside a tokio runtime")]
    NoRuntime,
}

/// Holds a user's access token and renews it through your refresher before it expires, the way
/// the Azure SDKs' `CommunicationTokenCredential` does:
///
/// * [`get_token`](Self::get_token) returns the held token while it has at least 2 minutes left
///   (10 minutes with proactive refresh), and otherwise calls the refresher first;
/// * with [`proactive_refresh`](CommunicationTokenCredentialBuilder::proactive_refresh), a
///   background task also renews the token 10 minutes before it expires, so callers rarely wait;
///   it stops when the last clone of the credential is dropped;
/// * concurrent callers share one in-flight refresh; a refresher that returns an already
///   expired token is an error ([`CredentialError::RefreshedTokenExpired`]);
/// * without a refresher the token is returned as is, expired or not (as the Python SDK does).
///
/// The expiry is the `exp` claim of the JWT (read, not verified). Time comes from a [`Clock`],
/// so tests can move it.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use callsign_client::CommunicationTokenCredential;
///
/// // header {"alg":"none"}, payload {"exp":1900000000} (2030)
/// let token = "eyJhbGciOiJub25lIn0.eyJleHAiOjE5MDAwMDAwMDB9.sig";
/// let credential = CommunicationTokenCredential::builder(token)
///     .refresher(|| async {
///         // Ask your own backend, which calls `CommunicationIdentityClient::get_token`.
///         Ok::<_, std::io::Error>("eyJhbGciOiJub25lIn0.eyJleHAiOjE5MDAwMDAwMDB9.sig".to_owned())
///     })
///     .build()?;
/// assert_eq!(credential.get_token().await?.expires_on.unix_timestamp(), 1_900_000_000);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct CommunicationTokenCredential {
    shared: Arc<Shared>,
    /// Aborts the proactive task when the last clone goes.
    _background: Option<Arc<AbortOnDrop>>,
}

impl fmt::Debug for CommunicationTokenCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommunicationTokenCredential")
            .field("refresher", &self.shared.refresher.is_some())
            .field("proactive", &self.shared.proactive)
            .finish_non_exhaustive()
    }
}

struct Shared {
    /// The held token. The lock is held across a refresh, which is what makes concurrent callers
    /// wait for, and then share, a single refresh.
    token: Mutex<AccessToken>,
    refresher: Option<Refresher>,
    proactive: bool,
    clock: Arc<dyn Clock>,
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Options of a [`CommunicationTokenCredential`].
pub struct CommunicationTokenCredentialBuilder {
    token: String,
    refresher: Option<Refresher>,
    proactive: bool,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for CommunicationTokenCredentialBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommunicationTokenCredentialBuilder")
            .field("refresher", &self.refresher.is_some())
            .field("proactive", &self.proactive)
            .finish_non_exhaustive()
    }
}

impl CommunicationTokenCredentialBuilder {
    /// The function that fetches a new token (typically from your own backend, which calls
    /// [`CommunicationIdentityClient::get_token`](crate::CommunicationIdentityClient::get_token)).
    /// At most one call runs at a time per credential.
    pub fn refresher<F, Fut, E>(mut self, refresher: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, E>> + Send + 'static,
        E: Into<RefreshError>,
    {
        self.refresher = Some(Arc::new(move || {
            let fut = refresher();
            Box::pin(async move { fut.await.map_err(Into::into) }) as RefreshFuture
        }));
        self
    }

    /// Renew in the background 10 minutes before expiry (and on demand within that window),
    /// instead of only on demand within 2 minutes. Needs a refresher and a tokio runtime.
    pub fn proactive_refresh(mut self, proactive: bool) -> Self {
        self.proactive = proactive;
        self
    }

    /// The clock expiry is judged by (the system clock by default).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Builds the credential; with proactive refresh, starts its background task.
    ///
    /// # Errors
    ///
    /// [`CredentialError::MalformedToken`] if the initial token's expiry cannot be read;
    /// [`CredentialError::MissingRefresher`] or [`CredentialError::NoRuntime`] for proactive
    /// refresh without a refresher or outside a tokio runtime.
    pub fn build(self) -> Result<CommunicationTokenCredential, CredentialError> {
        let token = AccessToken::from_jwt(self.token)?;
        if self.proactive && self.refresher.is_none() {
            return Err(CredentialError::MissingRefresher);
        }
        let shared = Arc::new(Shared {
            token: Mutex::new(token),
            refresher: self.refresher,
            proactive: self.proactive,
            clock: self.clock,
        });
        let background = if self.proactive {
            let runtime =
                tokio::runtime::Handle::try_current().map_err(|_| CredentialError::NoRuntime)?;
            let task = runtime.spawn(proactive_refresh(Arc::downgrade(&shared)));
            Some(Arc::new(AbortOnDrop(task.abort_handle())))
        } else {
            None
        };
        Ok(CommunicationTokenCredential {
            shared,
            _background: background,
        })
    }
}

impl CommunicationTokenCredential {
    /// A credential for a fixed token, never refreshed.
    ///
    /// # Errors
    ///
    /// [`CredentialError::MalformedToken`] if the token's expiry cannot be read.
    pub fn new(token: impl Into<String>) -> Result<Self, CredentialError> {
        Self::builder(token).build()
    }

    /// A builder, to add a refresher, proactive refresh or a clock.
    pub fn builder(token: impl Into<String>) -> CommunicationTokenCredentialBuilder {
        CommunicationTokenCredentialBuilder {
            token: token.into(),
            refresher: None,
            proactive: false,
            clock: Arc::new(SystemClock),
        }
    }

    /// A valid token: the held one, or a fresh one from the refresher when the held one is about
    /// to expire.
    ///
    /// # Errors
    ///
    /// [`CredentialError::Refresh`] if the refresher fails,
    /// [`CredentialError::MalformedToken`] or [`CredentialError::RefreshedTokenExpired`] if it
    /// returns an unusable token. The held token is kept, and the next call tries again.
    pub async fn get_token(&self) -> Result<AccessToken, CredentialError> {
        self.shared.get_token().await
    }
}

impl Shared {
    fn window(&self) -> Duration {
        if self.proactive {
            PROACTIVE_REFRESH_WINDOW
        } else {
            ON_DEMAND_REFRESH_WINDOW
        }
    }

    /// Whether `token` is inside the refresh window. Inclusive, so that the background task's
    /// due time (`until_due` reaching zero) always finds something to do.
    fn expiring_soon(&self, token: &AccessToken) -> bool {
        token.expires_on - self.clock.now() <= self.window()
    }

    async fn get_token(&self) -> Result<AccessToken, CredentialError> {
        let mut held = self.token.lock().await;
        let Some(refresher) = &self.refresher else {
            return Ok(held.clone());
        };
        if !self.expiring_soon(&held) {
            return Ok(held.clone());
        }
        let raw = refresher().await.map_err(CredentialError::Refresh)?;
        let fresh = AccessToken::from_jwt(raw)?;
        if fresh.expires_on <= self.clock.now() {
            return Err(CredentialError::RefreshedTokenExpired {
                expires_on: fresh.expires_on,
            });
        }
        *held = fresh.clone();
        Ok(fresh)
    }

    /// How long until the held token enters the refresh window (zero if it has).
    async fn until_due(&self) -> Duration {
        let expires_on = self.token.lock().await.expires_on;
        let due = expires_on - self.window();
        Duration::try_from(due - self.clock.now()).unwrap_or(Duration::ZERO)
    }
}

/// The proactive refresh loop. It holds the credential only weakly, so it ends once every clone
/// is dropped (their drop also aborts it).
async fn proactive_refresh(shared: Weak<Shared>) {
    let mut just_tried = false;
    loop {
        let delay = {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            shared.until_due().await
        };
        if !delay.is_zero() || just_tried {
            // The clock is re-read after every sleep: it may not be the one tokio sleeps by.
            tokio::time::sleep(if delay.is_zero() {
                PROACTIVE_RETRY_INTERVAL
            } else {
                delay
            })
            .await;
            just_tried = false;
            continue;
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if let Err(e) = shared.get_token().await {
            tracing::warn!(error = %e, "proactive token refresh failed; will retry");
        }
        just_tried = true;
    }
}
