//! Teams extension access assignments: which Entra principal of which tenant a resource lets
//! exchange Teams Phone tokens, and through which client applications.

use std::fmt;

use uuid::Uuid;

/// The kind of principal an assignment is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PrincipalType {
    /// A Teams resource account (`resourceAccount`).
    ResourceAccount,
    /// A Teams user (`user`).
    User,
}

impl PrincipalType {
    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            PrincipalType::ResourceAccount => "resourceAccount",
            PrincipalType::User => "user",
        }
    }

    /// The type named exactly `s` (the service's names are case-sensitive).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "resourceAccount" => Some(PrincipalType::ResourceAccount),
            "user" => Some(PrincipalType::User),
            _ => None,
        }
    }
}

impl fmt::Display for PrincipalType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The most client ids one assignment may name.
pub const MAX_CLIENT_IDS: usize = 100;

/// One assignment: `(tenant, object)` is its key within a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TeamsAssignment {
    /// The Entra tenant.
    pub tenant_id: Uuid,
    /// The Entra object id of the principal.
    pub object_id: Uuid,
    /// What the principal is.
    pub principal_type: PrincipalType,
    /// The client applications allowed, when the assignment names any (`None`: the field was
    /// absent, which is not the same answer as an empty list).
    pub client_ids: Option<Vec<Uuid>>,
}

/// Parses a GUID as Entra writes them (36 characters, hyphenated, either case).
pub fn parse_guid(s: &str) -> Option<Uuid> {
    if s.len() != 36 {
        return None;
    }
    Uuid::try_parse(s).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principal_types_round_trip_and_are_case_sensitive() {
        for t in [PrincipalType::ResourceAccount, PrincipalType::User] {
            assert_eq!(PrincipalType::parse(t.as_str()), Some(t));
        }
        assert_eq!(PrincipalType::parse("User"), None);
        assert_eq!(PrincipalType::parse("group"), None);
    }

    #[test]
    fn guids_must_be_hyphenated() {
        assert!(parse_guid("c70d068c-2f32-484d-9455-73070cd5aadd").is_some());
        assert!(parse_guid("C70D068C-2F32-484D-9455-73070CD5AADD").is_some());
        assert!(parse_guid("c70d068c2f32484d945573070cd5aadd").is_none());
        assert!(parse_guid("{c70d068c-2f32-484d-9455-73070cd5aadd}").is_none());
        assert!(parse_guid("nope").is_none());
    }
}
