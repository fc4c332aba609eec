//! Token scopes.

pub use callsign_api::Scope;

/// A non-empty set of scopes, kept in the order first requested, without repeats.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scopes(Vec<Scope>);

/// Why a list of scopes was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    /// No scope at all.
    #[error("Invalid scopes - Scopes field is required.")]
    Empty,
    /// A string that names no scope (or a join scope where the api-version lacks it).
    #[error("Invalid scopes - '{0}' is not a supported scope.")]
    Unknown(String),
}

impl Scopes {
    /// Parses wire names (case-insensitive). `allow_join` admits the join scopes of
    /// api-version 2023-10-01 and later.
    pub fn parse<'a>(
        names: impl IntoIterator<Item = &'a str>,
        allow_join: bool,
    ) -> Result<Self, ScopeError> {
        let mut scopes = Vec::new();
        for name in names {
            let scope = Scope::from_wire(name)
                .filter(|s| allow_join || !s.is_join_scope())
                .ok_or_else(|| ScopeError::Unknown(sanitize(name)))?;
            if !scopes.contains(&scope) {
                scopes.push(scope);
            }
        }
        if scopes.is_empty() {
            return Err(ScopeError::Empty);
        }
        Ok(Self(scopes))
    }

    /// Whether `scope` is granted.
    pub fn contains(&self, scope: Scope) -> bool {
        self.0.contains(&scope)
    }

    /// The scopes, in request order.
    pub fn iter(&self) -> impl Iterator<Item = Scope> + '_ {
        self.0.iter().copied()
    }

    /// The `acsScope` claim: wire names joined by `,`.
    pub fn to_claim(&self) -> String {
        self.0
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Parses an `acsScope` claim back.
    pub fn from_claim(claim: &str) -> Result<Self, ScopeError> {
        Self::parse(claim.split(','), true)
    }
}

/// Echo at most 64 printable ASCII characters of an unknown scope back to the caller.
fn sanitize(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(64)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_keep_order_and_drop_repeats() {
        let s = Scopes::parse(["voip", "chat", "VOIP"], false).expect("parses");
        assert_eq!(s.to_claim(), "voip,chat");
        assert_eq!(Scopes::from_claim(&s.to_claim()), Ok(s));
    }

    #[test]
    fn join_scopes_need_the_newer_api() {
        assert_eq!(
            Scopes::parse(["chat.join"], false),
            Err(ScopeError::Unknown("chat.join".into()))
        );
        let s =
            Scopes::parse(["chat.join", "voip.join", "chat.join.limited"], true).expect("parses");
        assert!(s.contains(Scope::VoipJoin));
        assert!(!s.contains(Scope::Chat));
    }

    #[test]
    fn empty_and_unknown_scopes_are_refused() {
        assert_eq!(Scopes::parse([], true), Err(ScopeError::Empty));
        assert_eq!(
            Scopes::parse(["chat", "pstn"], true),
            Err(ScopeError::Unknown("pstn".into()))
        );
        assert_eq!(
            Scopes::parse(["", "chat"], true),
            Err(ScopeError::Unknown(String::new()))
        );
    }
}
