//! The identity of a Communication Services user.

use std::fmt;

/// A Communication Services user, by its raw id (`8:acs:<resourceId>_<uuid>`).
///
/// The client never looks inside the id: the service decides what it means, so ids of other
/// clouds (`8:gcch-acs:…`, `8:dod-acs:…`) or of other resources pass through unchanged and the
/// service answers for them (e.g. `401 IdentityNotOwned`). In request paths the id is
/// percent-encoded (`8%3Aacs%3A…`), as the Azure SDKs send it.
///
/// ```
/// use callsign_client::CommunicationUserIdentifier;
///
/// let user = CommunicationUserIdentifier::new("8:acs:res_user");
/// assert_eq!(user.raw_id(), "8:acs:res_user");
/// assert_eq!(user.to_string(), "8:acs:res_user");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CommunicationUserIdentifier {
    raw_id: String,
}

impl CommunicationUserIdentifier {
    /// Wraps a raw id, e.g. one stored by your application.
    pub fn new(raw_id: impl Into<String>) -> Self {
        Self {
            raw_id: raw_id.into(),
        }
    }

    /// The raw id, e.g. `8:acs:2dee53b4-…_00000005-…`.
    pub fn raw_id(&self) -> &str {
        &self.raw_id
    }

    /// The raw id, owned.
    pub fn into_raw_id(self) -> String {
        self.raw_id
    }
}

impl fmt::Display for CommunicationUserIdentifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw_id)
    }
}

impl From<String> for CommunicationUserIdentifier {
    fn from(raw_id: String) -> Self {
        Self::new(raw_id)
    }
}

impl From<&str> for CommunicationUserIdentifier {
    fn from(raw_id: &str) -> Self {
        Self::new(raw_id)
    }
}

impl AsRef<str> for CommunicationUserIdentifier {
    fn as_ref(&self) -> &str {
        &self.raw_id
    }
}
