//! Resource and identity ids.

use std::fmt;

use uuid::Uuid;

/// The immutable GUID of a communication resource; the prefix inside every identity id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceId(Uuid);

impl ResourceId {
    /// A fresh random resource id.
    pub fn new_random() -> Self {
        Self(Uuid::new_v4())
    }

    /// Parses a GUID (any case, hyphenated).
    pub fn parse(s: &str) -> Result<Self, IdError> {
        parse_guid(s).map(Self).ok_or(IdError::Malformed)
    }

    /// The GUID.
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl fmt::Display for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// Only the canonical 36-character hyphenated form, as ACS emits it.
fn parse_guid(s: &str) -> Option<Uuid> {
    if s.len() != 36 {
        return None;
    }
    Uuid::try_parse(s).ok()
}

/// A communication user id: `8:acs:<resourceGuid>_<userGuid>`.
///
/// Exactly one `_`, no `:` after the prefix, ASCII only, so that every SDK parses it as a
/// communication user (a second `_` makes the JS SDK read a Teams extension user).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdentityId {
    resource: ResourceId,
    user: Uuid,
}

/// Why a string is not one of our identity ids.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Not shaped like a communication user id at all.
    #[error("the identifier is not a valid communication user id")]
    Malformed,
    /// A well-formed communication user id of another cloud (`8:gcch-acs:`, `8:dod-acs:`,
    /// `8:spool:`): it can never belong to a callsign resource.
    #[error("the identifier belongs to another cloud")]
    OtherCloud,
}

const PREFIX: &str = "8:acs:";
const OTHER_CLOUDS: [&str; 3] = ["8:gcch-acs:", "8:dod-acs:", "8:spool:"];

impl IdentityId {
    /// A fresh, never-before-seen id in `resource` (a random v4 UUID for the user part).
    pub fn new_random(resource: ResourceId) -> Self {
        Self {
            resource,
            user: Uuid::new_v4(),
        }
    }

    /// Parses a raw id.
    pub fn parse(raw: &str) -> Result<Self, IdError> {
        if let Some(rest) = raw.strip_prefix(PREFIX) {
            return Self::parse_suffix(rest);
        }
        for prefix in OTHER_CLOUDS {
            if let Some(rest) = raw.strip_prefix(prefix) {
                Self::parse_suffix(rest)?;
                return Err(IdError::OtherCloud);
            }
        }
        Err(IdError::Malformed)
    }

    fn parse_suffix(rest: &str) -> Result<Self, IdError> {
        let (resource, user) = rest.split_once('_').ok_or(IdError::Malformed)?;
        let resource = parse_guid(resource).ok_or(IdError::Malformed)?;
        let user = parse_guid(user).ok_or(IdError::Malformed)?;
        Ok(Self {
            resource: ResourceId(resource),
            user,
        })
    }

    /// The resource this id belongs to.
    pub fn resource(&self) -> ResourceId {
        self.resource
    }

    /// The `skypeid` claim: the raw id without its `8:` prefix.
    pub fn skype_id(&self) -> String {
        format!("acs:{}_{}", self.resource, self.user.hyphenated())
    }
}

impl fmt::Display for IdentityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}_{}", self.resource, self.user.hyphenated())
    }
}

/// A caller-chosen identity key (the `customId` of api-version 2025-03-02-preview): 1 to 256
/// characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CustomId(String);

/// Why a custom id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CustomIdError {
    /// Empty.
    #[error("CustomId must not be empty.")]
    Empty,
    /// Longer than 256 characters.
    #[error("CustomId must be at most 256 characters long.")]
    TooLong,
    /// Contains a control character.
    #[error("CustomId must not contain control characters.")]
    Control,
}

impl CustomId {
    /// Longest accepted custom id, in characters.
    pub const MAX_CHARS: usize = 256;

    /// Checks the rules.
    pub fn parse(s: &str) -> Result<Self, CustomIdError> {
        if s.is_empty() {
            return Err(CustomIdError::Empty);
        }
        if s.chars().count() > Self::MAX_CHARS {
            return Err(CustomIdError::TooLong);
        }
        if s.chars().any(char::is_control) {
            return Err(CustomIdError::Control);
        }
        Ok(Self(s.to_owned()))
    }

    /// The custom id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_have_exactly_one_underscore_and_round_trip() {
        let r = ResourceId::new_random();
        for _ in 0..100 {
            let id = IdentityId::new_random(r);
            let raw = id.to_string();
            assert!(raw.starts_with("8:acs:"));
            assert_eq!(raw.matches('_').count(), 1);
            assert_eq!(raw.matches(':').count(), 2);
            assert!(raw.is_ascii());
            assert_eq!(IdentityId::parse(&raw), Ok(id));
            assert_eq!(id.resource(), r);
            assert_eq!(format!("8:{}", id.skype_id()), raw);
        }
    }

    #[test]
    fn real_service_ids_parse() {
        let raw = "8:acs:2b236b8e-e9b7-4be0-8757-b43061a56d37_00000021-c6b7-24db-7137-8e3a0d0064e1";
        let id = IdentityId::parse(raw).expect("parses");
        assert_eq!(id.to_string(), raw);
        assert_eq!(
            id.resource().to_string(),
            "2b236b8e-e9b7-4be0-8757-b43061a56d37"
        );
    }

    #[test]
    fn malformed_ids_are_refused() {
        for raw in [
            "",
            "8:acs:",
            "8:acs:abc",
            "8:acs:2b236b8e-e9b7-4be0-8757-b43061a56d37",
            "8:acs:2b236b8e-e9b7-4be0-8757-b43061a56d37_",
            "8:acs:2b236b8e-e9b7-4be0-8757-b43061a56d37_x_y",
            "8:acs:2b236b8e-e9b7-4be0-8757-b43061a56d37_00000021-c6b7-24db-7137-8e3a0d0064e1_1",
            "8:acs:2b236b8e-e9b7-4be0-8757-b43061a56d37_00000021-c6b7-24db-7137-8e3a0d0064e1:x",
            "4:+14255550123",
            "8:orgid:2b236b8e-e9b7-4be0-8757-b43061a56d37",
            "acs:2b236b8e-e9b7-4be0-8757-b43061a56d37_00000021-c6b7-24db-7137-8e3a0d0064e1",
            "8:acs:2b236b8ee9b74be08757b43061a56d37_00000021c6b724db71378e3a0d0064e1",
        ] {
            assert_eq!(IdentityId::parse(raw), Err(IdError::Malformed), "{raw:?}");
        }
    }

    #[test]
    fn ids_of_other_clouds_are_told_apart() {
        let raw =
            "8:gcch-acs:2b236b8e-e9b7-4be0-8757-b43061a56d37_00000021-c6b7-24db-7137-8e3a0d0064e1";
        assert_eq!(IdentityId::parse(raw), Err(IdError::OtherCloud));
    }

    #[test]
    fn custom_ids_are_bounded() {
        assert!(CustomId::parse("sally@contoso.com").is_ok());
        assert_eq!(CustomId::parse(""), Err(CustomIdError::Empty));
        assert!(CustomId::parse(&"é".repeat(256)).is_ok());
        assert_eq!(
            CustomId::parse(&"a".repeat(257)),
            Err(CustomIdError::TooLong)
        );
        assert_eq!(CustomId::parse("a\nb"), Err(CustomIdError::Control));
    }
}
