//! Console sessions: a cookie the server can check without a store read, bound to the access key
//! it was opened with.
//!
//! The cookie carries `v1.<resource>.<slot>.<session id>.<opened>.<seen>` and an HMAC-SHA256 of
//! that text under the access key the user signed in with (domain-separated from request
//! signing). Any node that knows the key checks it; regenerating the key ends every session
//! opened with it, on every node, at once. A logout ends the session on the node that answered it
//! at once and everywhere when it expires (idle [`IDLE`], at most [`LIFETIME`]).

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use callsign_core::ResourceId;
use callsign_hmac::AccessKeyMac;
use callsign_store::{AuditLog, AuditOperation, AuditQuery, Credential, KeySlot, StoreError};

/// The session cookie's name.
pub(crate) const COOKIE: &str = "callsign_session";
/// The login form's double-submit cookie.
pub(crate) const LOGIN_COOKIE: &str = "callsign_login";
/// A session ends this long after it was opened, whatever happens.
pub(crate) const LIFETIME: i64 = 8 * 3600;
/// A session ends after this long without a request.
pub(crate) const IDLE: i64 = 30 * 60;
/// A session's cookie is renewed (its `seen` moved) at most this often.
pub(crate) const RENEW_AFTER: i64 = 60;

const SESSION_CONTEXT: &str = "callsign console session v1\n";
const CSRF_CONTEXT: &str = "callsign console form v1\n";
const KEY_CHECK: &str = "callsign console sign-in v1";

/// What opened a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Signer {
    /// An access key (primary or secondary); the cookie is signed with it.
    Key(KeySlot),
    /// A trusted issuer's sign-in: `<issuer>#<subject>`, and when the issuer's token expires
    /// (the session ends then at the latest). The cookie is signed with a secret only the
    /// server holds (derived from the active token signing key), so no key holder can make one.
    Issuer { subject: String, expires: i64 },
}

/// The longest `<issuer>#<subject>` a session carries.
const MAX_SUBJECT: usize = 400;

/// A console session: whose, since when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Session {
    /// The resource signed in to.
    pub(crate) resource: ResourceId,
    /// What opened it.
    pub(crate) signer: Signer,
    /// 32 random hex digits.
    pub(crate) id: String,
    /// Unix seconds it was opened.
    pub(crate) opened: i64,
    /// Unix seconds of its last renewal.
    pub(crate) seen: i64,
}

/// Why a cookie does not hold a session; all of them send the user to the login page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rejected {
    Malformed,
    /// The key it was opened with is gone (regenerated) or it was forged.
    BadSignature,
    Expired,
}

impl Session {
    /// A new session of `signer` for `resource`, at `now`.
    pub(crate) fn open(resource: ResourceId, signer: Signer, now: i64) -> Self {
        Self {
            resource,
            signer,
            id: random_hex(),
            opened: now,
            seen: now,
        }
    }

    /// The slot of the access key the cookie is signed with (`None`: the server's own secret).
    pub(crate) fn key_slot(&self) -> Option<KeySlot> {
        match self.signer {
            Signer::Key(slot) => Some(slot),
            Signer::Issuer { .. } => None,
        }
    }

    /// The credential the audit log records.
    pub(crate) fn credential(&self) -> Credential {
        match self.signer {
            Signer::Key(slot) => slot.into(),
            Signer::Issuer { .. } => Credential::Bearer,
        }
    }

    fn payload(&self) -> String {
        let signer = match &self.signer {
            Signer::Key(slot) => slot.as_str().to_owned(),
            Signer::Issuer { subject, expires } => {
                format!("oidc~{}~{expires}", URL_SAFE_NO_PAD.encode(subject))
            }
        };
        format!(
            "v1.{}.{signer}.{}.{}.{}",
            self.resource, self.id, self.opened, self.seen
        )
    }

    /// The cookie value, signed with `key`.
    pub(crate) fn to_cookie(&self, key: &AccessKeyMac) -> String {
        let payload = self.payload();
        let sig = key.after(&[SESSION_CONTEXT]).sign(&payload);
        format!("{payload}.{sig}")
    }

    /// The session a cookie value names, unchecked: the caller finds the key, then calls
    /// [`Session::check`].
    pub(crate) fn parse(cookie: &str) -> Result<(Session, &str), Rejected> {
        if cookie.len() > 1024 {
            return Err(Rejected::Malformed);
        }
        let (payload, sig) = cookie.rsplit_once('.').ok_or(Rejected::Malformed)?;
        let parts: Vec<&str> = payload.split('.').collect();
        let ["v1", resource, signer, id, opened, seen] = parts.as_slice() else {
            return Err(Rejected::Malformed);
        };
        let session = Session {
            resource: ResourceId::parse(resource).map_err(|_| Rejected::Malformed)?,
            signer: parse_signer(signer).ok_or(Rejected::Malformed)?,
            id: (*id).to_owned(),
            opened: opened.parse().map_err(|_| Rejected::Malformed)?,
            seen: seen.parse().map_err(|_| Rejected::Malformed)?,
        };
        if session.id.len() != 32 || !session.id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Rejected::Malformed);
        }
        Ok((session, sig))
    }

    /// Checks the signature under `key` (constant time), the lifetime and the idle time.
    pub(crate) fn check(&self, sig: &str, key: &AccessKeyMac, now: i64) -> Result<(), Rejected> {
        if !key.after(&[SESSION_CONTEXT]).verify(&self.payload(), sig) {
            return Err(Rejected::BadSignature);
        }
        if now >= self.ends() || self.seen < self.opened {
            return Err(Rejected::Expired);
        }
        Ok(())
    }

    /// Unix seconds at which the session ends unless renewed.
    pub(crate) fn ends(&self) -> i64 {
        let ends = (self.opened + LIFETIME).min(self.seen + IDLE);
        match self.signer {
            Signer::Key(_) => ends,
            Signer::Issuer { expires, .. } => ends.min(expires),
        }
    }

    /// The form token of this session: every form it posts must carry it.
    pub(crate) fn csrf(&self, key: &AccessKeyMac) -> String {
        key.after(&[CSRF_CONTEXT]).sign(&self.id)
    }

    /// Whether `token` is this session's form token (constant time).
    pub(crate) fn csrf_matches(&self, key: &AccessKeyMac, token: &str) -> bool {
        key.after(&[CSRF_CONTEXT]).verify(&self.id, token)
    }

    /// What the audit log records as the session's subject: `console#<session>`, followed by
    /// `<issuer>#<subject>` for an issuer's sign-in.
    pub(crate) fn subject(&self) -> String {
        match &self.signer {
            Signer::Key(_) => format!("console#{}", &self.id[..12]),
            Signer::Issuer { subject, .. } => format!("console#{} {subject}", &self.id[..12]),
        }
    }
}

fn parse_signer(text: &str) -> Option<Signer> {
    match text {
        "primary" => return Some(Signer::Key(KeySlot::Primary)),
        "secondary" => return Some(Signer::Key(KeySlot::Secondary)),
        _ => {}
    }
    let mut parts = text.strip_prefix("oidc~")?.split('~');
    let (subject, expires) = (parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let subject = String::from_utf8(URL_SAFE_NO_PAD.decode(subject).ok()?).ok()?;
    if subject.is_empty() || subject.len() > MAX_SUBJECT {
        return None;
    }
    Some(Signer::Issuer {
        subject,
        expires: expires.parse().ok()?,
    })
}

/// Whether `given` is the key behind `stored`, without comparing key bytes directly: both MAC a
/// fixed text and the results are compared in constant time.
pub(crate) fn same_key(given: &AccessKeyMac, stored: &AccessKeyMac) -> bool {
    let proof = given.sign(KEY_CHECK);
    stored.verify(KEY_CHECK, &proof)
}

/// 16 random bytes as 32 hex digits.
pub(crate) fn random_hex() -> String {
    let mut bytes = [0u8; 16];
    // The system generator does not fail on the platforms served; a zero id would still be
    // refused as a duplicate logout at worst, never accepted as another's session.
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        tracing::error!("the system random generator failed");
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares two texts in time independent of where they differ (aws-lc's `CRYPTO_memcmp`).
pub(crate) fn fixed_time_eq(a: &str, b: &str) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a.as_bytes(), b.as_bytes()).is_ok()
}

/// Sessions ended by a logout: on this node at once, on every node once it has read the
/// logout's audit record (the store is shared; each node reads new logouts every second), and
/// after a restart (the last [`LIFETIME`] of logouts are read at start). Sessions are known by
/// the first 12 hex digits of their id, as the audit log records them.
#[derive(Debug, Default)]
pub(crate) struct Logouts {
    ended: Mutex<HashMap<String, i64>>,
    /// The sequence number of the last logout record read; `None` before the first read.
    read_up_to: Mutex<Option<i64>>,
}

/// The most logouts remembered; past it the soonest-ending are forgotten first.
const MAX_LOGOUTS: usize = 100_000;

/// The audit records read per query when catching up.
const SYNC_BATCH: usize = 1000;

impl Logouts {
    /// Ends `session` on this node at once.
    pub(crate) fn end(&self, session: &Session, now: i64) {
        self.remember(session.id[..12].to_owned(), session.opened + LIFETIME, now);
    }

    fn remember(&self, short_id: String, until: i64, now: i64) {
        let mut ended = self.ended.lock().unwrap_or_else(|e| e.into_inner());
        if ended.len() >= MAX_LOGOUTS {
            ended.retain(|_, ends| *ends > now);
        }
        if ended.len() >= MAX_LOGOUTS
            && let Some(first) = ended
                .iter()
                .min_by_key(|(_, ends)| **ends)
                .map(|(id, _)| id.clone())
        {
            ended.remove(&first);
        }
        ended.insert(short_id, until);
    }

    /// Whether `session` was logged out.
    pub(crate) fn ended(&self, session: &Session) -> bool {
        self.ended
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&session.id[..12])
    }

    /// Reads the logouts recorded since the last read (at the first, those of the last
    /// [`LIFETIME`]).
    pub(crate) async fn sync(
        &self,
        log: &dyn AuditLog,
        now: time::OffsetDateTime,
    ) -> Result<(), StoreError> {
        let after = *self.read_up_to.lock().unwrap_or_else(|e| e.into_inner());
        let mut query = AuditQuery {
            after,
            since: after
                .is_none()
                .then(|| now - time::Duration::seconds(LIFETIME)),
            operation: Some(AuditOperation::ConsoleLogout),
            limit: SYNC_BATCH,
            ..AuditQuery::default()
        };
        loop {
            let records = log.audit_records(&query).await?;
            for r in &records {
                let short = r
                    .subject
                    .as_deref()
                    .and_then(|s| s.strip_prefix("console#"))
                    .and_then(|s| s.get(..12));
                if let Some(short) = short {
                    let until = r.at.unix_timestamp() + LIFETIME;
                    self.remember(short.to_owned(), until, now.unix_timestamp());
                }
            }
            let last = records.last().map(|r| r.seq).or(query.after);
            *self.read_up_to.lock().unwrap_or_else(|e| e.into_inner()) = Some(last.unwrap_or(0));
            if records.len() < SYNC_BATCH {
                return Ok(());
            }
            query.after = last;
            query.since = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> AccessKeyMac {
        AccessKeyMac::from_bytes(&[b; 32])
    }

    #[test]
    fn a_cookie_round_trips_and_is_bound_to_its_key() {
        let s = Session::open(
            ResourceId::new_random(),
            Signer::Key(KeySlot::Secondary),
            1_000,
        );
        let cookie = s.to_cookie(&key(1));
        let (back, sig) = Session::parse(&cookie).expect("parses");
        assert_eq!(back, s);
        assert_eq!(back.check(sig, &key(1), 1_001), Ok(()));
        assert_eq!(back.check(sig, &key(2), 1_001), Err(Rejected::BadSignature));
    }

    #[test]
    fn a_changed_field_breaks_the_signature() {
        let s = Session::open(
            ResourceId::new_random(),
            Signer::Key(KeySlot::Primary),
            1_000,
        );
        let cookie = s.to_cookie(&key(1));
        let forged = cookie.replacen(".1000.1000.", ".1000.9000.", 1);
        let (back, sig) = Session::parse(&forged).expect("parses");
        assert_eq!(back.check(sig, &key(1), 1_001), Err(Rejected::BadSignature));
        let other_slot = cookie.replacen(".primary.", ".secondary.", 1);
        let (back, sig) = Session::parse(&other_slot).expect("parses");
        assert_eq!(back.check(sig, &key(1), 1_001), Err(Rejected::BadSignature));
    }

    #[test]
    fn sessions_expire_idle_and_at_their_lifetime() {
        let mut s = Session::open(ResourceId::new_random(), Signer::Key(KeySlot::Primary), 0);
        let sig = |s: &Session| {
            s.to_cookie(&key(1))
                .rsplit_once('.')
                .expect("dot")
                .1
                .to_owned()
        };
        assert_eq!(s.check(&sig(&s), &key(1), IDLE - 1), Ok(()));
        assert_eq!(s.check(&sig(&s), &key(1), IDLE), Err(Rejected::Expired));
        s.seen = LIFETIME - 10;
        assert_eq!(s.check(&sig(&s), &key(1), LIFETIME - 1), Ok(()));
        assert_eq!(s.check(&sig(&s), &key(1), LIFETIME), Err(Rejected::Expired));
    }

    #[test]
    fn malformed_cookies_are_refused() {
        for bad in [
            "",
            "v1",
            "v2.a.b.c.d.e.f",
            "v1.not-a-guid.primary.00000000000000000000000000000000.1.1.sig",
            "v1.a1b2c3d4-0000-4000-8000-000000000001.verifyOnly.00000000000000000000000000000000.1.1.sig",
            "v1.a1b2c3d4-0000-4000-8000-000000000001.primary.short.1.1.sig",
        ] {
            assert_eq!(
                Session::parse(bad).err(),
                Some(Rejected::Malformed),
                "{bad}"
            );
        }
        assert!(Session::parse(&"x".repeat(2000)).is_err());
    }

    #[test]
    fn an_issuer_session_carries_its_subject_and_ends_with_the_token() {
        let signer = Signer::Issuer {
            subject: "https://sso.example/realms/a#alice.b@x".into(),
            expires: 600,
        };
        let s = Session::open(ResourceId::new_random(), signer.clone(), 0);
        let cookie = s.to_cookie(&key(1));
        let (back, sig) = Session::parse(&cookie).expect("parses");
        assert_eq!(back.signer, signer);
        assert_eq!(back.key_slot(), None);
        assert_eq!(back.credential(), Credential::Bearer);
        assert!(
            back.subject()
                .ends_with(" https://sso.example/realms/a#alice.b@x")
        );
        assert_eq!(back.check(sig, &key(1), 599), Ok(()));
        assert_eq!(back.check(sig, &key(1), 600), Err(Rejected::Expired));
        let longer = cookie.replacen("~600.", "~99999.", 1);
        let (forged, sig) = Session::parse(&longer).expect("parses");
        assert_eq!(forged.check(sig, &key(1), 700), Err(Rejected::BadSignature));
    }

    #[test]
    fn form_tokens_belong_to_one_session_and_key() {
        let a = Session::open(ResourceId::new_random(), Signer::Key(KeySlot::Primary), 0);
        let b = Session::open(a.resource, Signer::Key(KeySlot::Primary), 0);
        let token = a.csrf(&key(1));
        assert!(a.csrf_matches(&key(1), &token));
        assert!(!b.csrf_matches(&key(1), &token));
        assert!(!a.csrf_matches(&key(2), &token));
        assert!(!a.csrf_matches(&key(1), ""));
    }

    #[test]
    fn keys_are_compared_by_their_macs() {
        assert!(same_key(&key(3), &key(3)));
        assert!(!same_key(&key(3), &key(4)));
        assert!(fixed_time_eq("abc", "abc"));
        assert!(!fixed_time_eq("abc", "abd"));
        assert!(!fixed_time_eq("abc", "ab"));
    }

    #[test]
    fn a_logout_ends_that_session_only() {
        let logouts = Logouts::default();
        let a = Session::open(ResourceId::new_random(), Signer::Key(KeySlot::Primary), 0);
        let b = Session::open(a.resource, Signer::Key(KeySlot::Primary), 0);
        logouts.end(&a, 1);
        assert!(logouts.ended(&a));
        assert!(!logouts.ended(&b));
    }
}
