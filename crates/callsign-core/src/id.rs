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

/// A communication user id: `8:acs:<resourceGuid>_<userGuid>`, or for a user of a trusted
/// identity provider (a workforce identity, created by a token exchange)
/// `8:acs:<resourceGuid>_wf_<tenantGuid>_<objectGuid>`.
///
/// An ordinary id has exactly one `_` and no `:` after the prefix, ASCII only, so that every SDK
/// parses it as a communication user (a second `_` makes the JS SDK read a Teams extension
/// user); a workforce id has the shape ACS gives Entra users.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdentityId {
    resource: ResourceId,
    user: UserPart,
}

/// What follows the resource in an identity id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum UserPart {
    /// A created identity's own GUID.
    Random(Uuid),
    /// A workforce user: the tenant and the object id within it.
    Workforce { tenant: Uuid, object: Uuid },
}

/// The marker between the resource and the tenant of a workforce id.
const WORKFORCE: &str = "wf_";

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
            user: UserPart::Random(Uuid::new_v4()),
        }
    }

    /// The workforce identity of `object` in `tenant` (`8:acs:<resource>_wf_<tenant>_<object>`):
    /// the same pair always gives the same id.
    pub fn workforce(resource: ResourceId, tenant: Uuid, object: Uuid) -> Self {
        Self {
            resource,
            user: UserPart::Workforce { tenant, object },
        }
    }

    /// The tenant and object of a workforce identity.
    pub fn workforce_parts(&self) -> Option<(Uuid, Uuid)> {
        match self.user {
            UserPart::Workforce { tenant, object } => Some((tenant, object)),
            UserPart::Random(_) => None,
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
        let user = match user.strip_prefix(WORKFORCE) {
            Some(pair) => {
                let (tenant, object) = pair.split_once('_').ok_or(IdError::Malformed)?;
                UserPart::Workforce {
                    tenant: parse_guid(tenant).ok_or(IdError::Malformed)?,
                    object: parse_guid(object).ok_or(IdError::Malformed)?,
                }
            }
            None => UserPart::Random(parse_guid(user).ok_or(IdError::Malformed)?),
        };
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
        self.to_string()[2..].to_owned()
    }
}

impl fmt::Display for IdentityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.user {
            UserPart::Random(user) => {
                write!(f, "{PREFIX}{}_{}", self.resource, user.hyphenated())
            }
            UserPart::Workforce { tenant, object } => write!(
                f,
                "{PREFIX}{}_{WORKFORCE}{}_{}",
                self.resource,
                tenant.hyphenated(),
                object.hyphenated()
            ),
        }
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
    fn workforce_ids_have_the_entra_shape_and_round_trip() {
        let raw = "8:acs:2dee53b4-368b-45b4-ab52-8493fb117652_wf_c70d068c-2f32-484d-9455-73070cd5aadd_b27b64b9-39d2-44a3-869d-67700b74e805";
        let id = IdentityId::parse(raw).expect("parses");
        assert_eq!(id.to_string(), raw);
        assert_eq!(format!("8:{}", id.skype_id()), raw);
        let (tenant, object) = id.workforce_parts().expect("workforce");
        assert_eq!(IdentityId::workforce(id.resource(), tenant, object), id);
        assert_eq!(
            IdentityId::parse(
                &raw.to_ascii_uppercase()
                    .replace("8:ACS:", "8:acs:")
                    .replace("_WF_", "_wf_")
            ),
            Ok(id),
            "GUIDs in either case"
        );
        assert!(
            IdentityId::new_random(id.resource())
                .workforce_parts()
                .is_none()
        );
        for bad in [
            "8:acs:2dee53b4-368b-45b4-ab52-8493fb117652_wf_c70d068c-2f32-484d-9455-73070cd5aadd",
            "8:acs:2dee53b4-368b-45b4-ab52-8493fb117652_wf__b27b64b9-39d2-44a3-869d-67700b74e805",
            "8:acs:2dee53b4-368b-45b4-ab52-8493fb117652_WF_c70d068c-2f32-484d-9455-73070cd5aadd_b27b64b9-39d2-44a3-869d-67700b74e805",
            "8:acs:2dee53b4-368b-45b4-ab52-8493fb117652_wf_c70d068c-2f32-484d-9455-73070cd5aadd_b27b64b9-39d2-44a3-869d-67700b74e805_x",
        ] {
            assert_eq!(IdentityId::parse(bad), Err(IdError::Malformed), "{bad}");
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
