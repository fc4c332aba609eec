//! `CommunicationTokenCredential`: on-demand and proactive refresh, driven by an injected clock
//! (and tokio's paused time for the background task), so nothing really waits.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use callsign_client::{
    Clock, CommunicationTokenCredential, CommunicationTokenScope, CredentialError,
};
use time::OffsetDateTime;
use time::macros::datetime;

use crate::helpers::spawn_server;

const T0: OffsetDateTime = datetime!(2030-01-01 12:00 UTC);

/// A clock that moves only when told.
#[derive(Clone)]
struct ManualClock(Arc<Mutex<OffsetDateTime>>);

impl ManualClock {
    fn at(t: OffsetDateTime) -> Self {
        Self(Arc::new(Mutex::new(t)))
    }

    fn advance(&self, d: Duration) {
        *self.0.lock().expect("lock") += d;
    }

    fn set(&self, t: OffsetDateTime) {
        *self.0.lock().expect("lock") = t;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        *self.0.lock().expect("lock")
    }
}

fn jwt(exp: OffsetDateTime) -> String {
    format!(
        "{}.{}.c2lnbmF0dXJl",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"ES256","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(format!(
            r#"{{"skypeid":"acs:r_u","exp":{}}}"#,
            exp.unix_timestamp()
        ))
    )
}

const HOUR: Duration = Duration::from_secs(3600);
const MINUTE: Duration = Duration::from_secs(60);

/// A credential holding a token that expires at `T0 + 1 h`, whose refresher counts its calls and
/// returns tokens valid for an hour from the clock's now.
fn credential(
    clock: &ManualClock,
    proactive: bool,
) -> (CommunicationTokenCredential, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let refresh_clock = clock.clone();
    let credential = CommunicationTokenCredential::builder(jwt(T0 + HOUR))
        .refresher(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            let token = jwt(refresh_clock.now() + HOUR);
            async move { Ok::<_, std::io::Error>(token) }
        })
        .proactive_refresh(proactive)
        .clock(Arc::new(clock.clone()))
        .build()
        .expect("credential");
    (credential, calls)
}

#[tokio::test]
async fn a_token_without_refresher_is_returned_as_is_even_when_expired() {
    let token = jwt(T0);
    let credential = CommunicationTokenCredential::new(token.clone()).expect("credential");
    let got = credential.get_token().await.expect("token");
    assert_eq!(got.token, token);
    assert_eq!(got.expires_on, T0);
}

#[tokio::test]
async fn on_demand_refresh_happens_only_in_the_last_two_minutes() {
    let clock = ManualClock::at(T0);
    let (credential, calls) = credential(&clock, false);
    let first = credential.get_token().await.expect("token");
    assert_eq!(first.expires_on, T0 + HOUR);

    clock.set(T0 + HOUR - 2 * MINUTE - Duration::from_secs(1));
    assert_eq!(credential.get_token().await.expect("token"), first);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "2 min 1 s left: no refresh"
    );

    clock.set(T0 + HOUR - 2 * MINUTE + Duration::from_secs(1));
    let fresh = credential.get_token().await.expect("token");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(fresh.expires_on, clock.now() + HOUR);

    assert_eq!(credential.get_token().await.expect("token"), fresh);
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the fresh token is held");
}

#[tokio::test(start_paused = true)]
async fn proactive_refresh_renews_on_demand_within_ten_minutes() {
    let clock = ManualClock::at(T0);
    let (credential, calls) = credential(&clock, true);
    clock.set(T0 + 49 * MINUTE);
    credential.get_token().await.expect("token");
    assert_eq!(calls.load(Ordering::SeqCst), 0, "11 minutes left");
    clock.set(T0 + 51 * MINUTE);
    let fresh = credential.get_token().await.expect("token");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "9 minutes left");
    assert_eq!(fresh.expires_on, T0 + 51 * MINUTE + HOUR);
}

#[tokio::test(start_paused = true)]
async fn proactive_refresh_renews_in_the_background_ten_minutes_before_expiry() {
    let clock = ManualClock::at(T0);
    let (credential, calls) = credential(&clock, true);
    // The background task schedules itself for T0 + 50 min.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 0);

    clock.advance(50 * MINUTE);
    tokio::time::sleep(50 * MINUTE).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1, "refreshed with no caller");
    let held = credential.get_token().await.expect("token");
    assert_eq!(held.expires_on, T0 + 50 * MINUTE + HOUR);
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // And again an hour later.
    clock.advance(HOUR);
    tokio::time::sleep(HOUR).await;
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_credential_stops_refreshing() {
    let clock = ManualClock::at(T0 + HOUR);
    let (credential, calls) = credential(&clock, true);
    drop(credential);
    tokio::time::sleep(2 * HOUR).await;
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn a_failing_background_refresh_is_retried_later() {
    let clock = ManualClock::at(T0 + 55 * MINUTE);
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let refresh_clock = clock.clone();
    let credential = CommunicationTokenCredential::builder(jwt(T0 + HOUR))
        .refresher(move || {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let token = jwt(refresh_clock.now() + HOUR);
            async move {
                if n == 0 {
                    Err(std::io::Error::other("backend down"))
                } else {
                    Ok(token)
                }
            }
        })
        .proactive_refresh(true)
        .clock(Arc::new(clock.clone()))
        .build()
        .expect("credential");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1, "first attempt, failed");
    clock.advance(Duration::from_secs(31));
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 2, "retried after 30 s");
    let held = credential.get_token().await.expect("token");
    assert!(held.expires_on > T0 + HOUR);
}

#[tokio::test]
async fn concurrent_callers_share_one_refresh() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let clock = ManualClock::at(T0 + HOUR);
    let credential = CommunicationTokenCredential::builder(jwt(T0 + HOUR))
        .refresher(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok::<_, std::io::Error>(jwt(T0 + 3 * HOUR))
            }
        })
        .clock(Arc::new(clock))
        .build()
        .expect("credential");
    let callers: Vec<_> = (0..16)
        .map(|_| {
            let c = credential.clone();
            tokio::spawn(async move { c.get_token().await })
        })
        .collect();
    for caller in callers {
        let token = caller.await.expect("join").expect("token");
        assert_eq!(token.expires_on, T0 + 3 * HOUR);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_refreshed_token_that_is_already_expired_is_an_error_and_the_next_call_retries() {
    let clock = ManualClock::at(T0 + HOUR);
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let credential = CommunicationTokenCredential::builder(jwt(T0 + HOUR))
        .refresher(move || {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let exp = if n == 0 { T0 + HOUR } else { T0 + 2 * HOUR };
            async move { Ok::<_, std::io::Error>(jwt(exp)) }
        })
        .clock(Arc::new(clock))
        .build()
        .expect("credential");
    let e = credential.get_token().await.expect_err("expired refresh");
    assert!(
        matches!(e, CredentialError::RefreshedTokenExpired { expires_on } if expires_on == T0 + HOUR),
        "{e:?}"
    );
    let t = credential.get_token().await.expect("second refresh");
    assert_eq!(t.expires_on, T0 + 2 * HOUR);
}

#[tokio::test]
async fn refresher_failures_and_malformed_tokens_are_errors() {
    let clock = ManualClock::at(T0 + HOUR);
    let failing = CommunicationTokenCredential::builder(jwt(T0 + HOUR))
        .refresher(|| async { Err::<String, _>(std::io::Error::other("backend down")) })
        .clock(Arc::new(clock.clone()))
        .build()
        .expect("credential");
    let e = failing.get_token().await.expect_err("refresher fails");
    assert!(matches!(e, CredentialError::Refresh(_)), "{e:?}");
    assert!(e.to_string().contains("backend down"), "{e}");

    let garbage = CommunicationTokenCredential::builder(jwt(T0 + HOUR))
        .refresher(|| async { Ok::<_, std::io::Error>("garbage".to_owned()) })
        .clock(Arc::new(clock))
        .build()
        .expect("credential");
    let e = garbage.get_token().await.expect_err("not a JWT");
    assert!(matches!(e, CredentialError::MalformedToken(_)), "{e:?}");

    let e = CommunicationTokenCredential::new("not.a-jwt").expect_err("malformed");
    assert!(matches!(e, CredentialError::MalformedToken(_)), "{e:?}");
}

#[test]
fn proactive_refresh_needs_a_refresher_and_a_runtime() {
    let e = CommunicationTokenCredential::builder(jwt(T0))
        .proactive_refresh(true)
        .build()
        .expect_err("no refresher");
    assert!(matches!(e, CredentialError::MissingRefresher), "{e:?}");
    let e = CommunicationTokenCredential::builder(jwt(T0))
        .refresher(|| async { Ok::<_, std::io::Error>(jwt(T0)) })
        .proactive_refresh(true)
        .build()
        .expect_err("no runtime");
    assert!(matches!(e, CredentialError::NoRuntime), "{e:?}");
}

#[tokio::test]
async fn a_credential_refreshes_through_the_identity_client() {
    let server = spawn_server().await;
    let client = server.client();
    let (user, first) = client
        .create_user_and_token(&[CommunicationTokenScope::Voip], Some(HOUR))
        .await
        .expect("create");
    // Pretend 59 minutes have passed.
    let clock = ManualClock::at(first.expires_on - MINUTE);
    let credential = CommunicationTokenCredential::builder(first.token.clone())
        .refresher(move || {
            let (client, user) = (client.clone(), user.clone());
            async move {
                client
                    .get_token(&user, &[CommunicationTokenScope::Voip], None)
                    .await
                    .map(|t| t.token)
            }
        })
        .clock(Arc::new(clock))
        .build()
        .expect("credential");
    let fresh = credential
        .get_token()
        .await
        .expect("refreshed from the server");
    assert_ne!(fresh.token, first.token);
    assert!(fresh.expires_on > first.expires_on + 20 * HOUR);
}
