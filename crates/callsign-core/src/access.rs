//! Access assignments of trusted identity providers' principals (the `/access/entra/assignments`
//! of api-version 2025-03-02-preview): which user, group or whole tenant of a provider a resource
//! lets exchange its own tokens for communication tokens.

use std::fmt;

use uuid::Uuid;

use crate::Scopes;

/// The kind of principal an access assignment is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AccessPrincipalType {
    /// One user (`user`): the object id is the user's subject.
    User,
    /// Every member of a group (`group`): the object id is the group's id as the provider's
    /// groups claim names it.
    Group,
    /// Every user of a tenant (`tenant`): the object id is the tenant id.
    Tenant,
    /// A Teams resource account (`teamsResourceAccount`), stored as given.
    TeamsResourceAccount,
}

impl AccessPrincipalType {
    /// Every type, in a fixed order.
    pub const ALL: [AccessPrincipalType; 4] = [
        AccessPrincipalType::User,
        AccessPrincipalType::Group,
        AccessPrincipalType::Tenant,
        AccessPrincipalType::TeamsResourceAccount,
    ];

    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            AccessPrincipalType::User => "user",
            AccessPrincipalType::Group => "group",
            AccessPrincipalType::Tenant => "tenant",
            AccessPrincipalType::TeamsResourceAccount => "teamsResourceAccount",
        }
    }

    /// The type named exactly `s` (the names are case-sensitive).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

impl fmt::Display for AccessPrincipalType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The object id of a principal: an Entra GUID, or the subject or group name another provider
/// uses. 1 to [`ObjectId::MAX_LEN`] printable ASCII characters without `/`, `\`, `?`, `#`,
/// `%` or spaces, so that it is one path segment as typed; GUIDs are kept in lowercase so that
/// one principal has one object id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId(String);

/// Why an object id was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ObjectIdError {
    /// Empty.
    #[error("ObjectId must not be empty.")]
    Empty,
    /// Longer than [`ObjectId::MAX_LEN`].
    #[error("ObjectId must be at most 128 characters long.")]
    TooLong,
    /// A character outside printable ASCII, or one of `/ \ ? # %` or a space.
    #[error("ObjectId may contain printable ASCII characters except / \\ ? # % and spaces.")]
    Character,
}

impl ObjectId {
    /// The longest object id.
    pub const MAX_LEN: usize = 128;

    /// Checks the rules; a GUID is lowercased.
    pub fn parse(s: &str) -> Result<Self, ObjectIdError> {
        if s.is_empty() {
            return Err(ObjectIdError::Empty);
        }
        if s.len() > Self::MAX_LEN {
            return Err(ObjectIdError::TooLong);
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'/' | b'\\' | b'?' | b'#' | b'%'))
        {
            return Err(ObjectIdError::Character);
        }
        Ok(match crate::parse_guid(s) {
            Some(guid) => Self(guid.hyphenated().to_string()),
            None => Self(s.to_owned()),
        })
    }

    /// The object id of a GUID.
    pub fn from_guid(guid: Uuid) -> Self {
        Self(guid.hyphenated().to_string())
    }

    /// The object id.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The GUID, when the object id is one.
    pub fn as_guid(&self) -> Option<Uuid> {
        crate::parse_guid(&self.0)
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One access assignment; its object id is its key within a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessAssignment {
    /// The principal.
    pub object_id: ObjectId,
    /// The tenant the principal belongs to.
    pub tenant_id: Uuid,
    /// What the principal is.
    pub principal_type: AccessPrincipalType,
    /// The scopes of the communication tokens the principal's exchanges get (a callsign
    /// extension; `None`: the trusted issuer's configured scopes).
    pub scopes: Option<Scopes>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principal_types_round_trip_and_are_case_sensitive() {
        for t in AccessPrincipalType::ALL {
            assert_eq!(AccessPrincipalType::parse(t.as_str()), Some(t));
        }
        assert_eq!(AccessPrincipalType::parse("User"), None);
        assert_eq!(AccessPrincipalType::parse("resourceAccount"), None);
    }

    #[test]
    fn object_ids_are_one_bounded_path_segment_and_guids_are_lowercased() {
        assert_eq!(
            ObjectId::parse("B27B64B9-39D2-44A3-869D-67700B74E805").map(|o| o.0),
            Ok("b27b64b9-39d2-44a3-869d-67700b74e805".to_owned())
        );
        for ok in [
            "auth0|5f7c8ec7c33c6c004bbafe82",
            "248289761001",
            "admins",
            "a@b.c",
        ] {
            assert_eq!(ObjectId::parse(ok).map(|o| o.0), Ok(ok.to_owned()));
        }
        assert_eq!(ObjectId::parse(""), Err(ObjectIdError::Empty));
        assert_eq!(
            ObjectId::parse(&"a".repeat(129)),
            Err(ObjectIdError::TooLong)
        );
        for bad in ["a/b", "a b", "a?b", "a#b", "a%2F", "é", "a\nb", "a\\b"] {
            assert_eq!(
                ObjectId::parse(bad),
                Err(ObjectIdError::Character),
                "{bad:?}"
            );
        }
    }
}
