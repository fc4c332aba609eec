//! Token scope names and the rule for reading them.

use std::fmt;
use std::str::FromStr;

/// What an access token lets its holder do.
///
/// The names are compared without regard to ASCII case, as the service compares them: `Chat` and
/// `chat` are one scope. The join scopes exist from api-version 2023-10-01 on
/// ([`Scope::is_join_scope`]).
///
/// ```
/// use callsign_api::Scope;
///
/// assert_eq!("chat.join.limited".parse(), Ok(Scope::ChatJoinLimited));
/// assert_eq!("VOIP".parse(), Ok(Scope::Voip));
/// assert_eq!(Scope::VoipJoin.as_str(), "voip.join");
/// assert!("video".parse::<Scope>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// `chat`: full access to Chat.
    Chat,
    /// `voip`: full access to Calling.
    Voip,
    /// `chat.join`: Chat without creating, deleting or updating threads.
    ChatJoin,
    /// `chat.join.limited`: `chat.join` without adding or removing participants.
    ChatJoinLimited,
    /// `voip.join`: Calling without starting new calls.
    VoipJoin,
}

impl Scope {
    /// Every scope, in wire order.
    pub const ALL: [Scope; 5] = [
        Scope::Chat,
        Scope::Voip,
        Scope::ChatJoin,
        Scope::ChatJoinLimited,
        Scope::VoipJoin,
    ];

    /// The wire name, e.g. `chat.join`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Scope::Chat => "chat",
            Scope::Voip => "voip",
            Scope::ChatJoin => "chat.join",
            Scope::ChatJoinLimited => "chat.join.limited",
            Scope::VoipJoin => "voip.join",
        }
    }

    /// Whether the scope exists only from api-version 2023-10-01 on.
    pub const fn is_join_scope(self) -> bool {
        matches!(
            self,
            Scope::ChatJoin | Scope::ChatJoinLimited | Scope::VoipJoin
        )
    }

    /// The scope a wire name names, in any ASCII case.
    pub fn from_wire(name: &str) -> Option<Scope> {
        Scope::ALL
            .into_iter()
            .find(|scope| scope.as_str().eq_ignore_ascii_case(name))
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A scope name that is none of [`Scope`]'s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownScope(pub String);

impl fmt::Display for UnknownScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` is not a token scope (chat, voip, chat.join, chat.join.limited, voip.join)",
            self.0
        )
    }
}

impl std::error::Error for UnknownScope {}

impl FromStr for Scope {
    type Err = UnknownScope;

    /// [`Scope::from_wire`], with the name in the error.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::from_wire(s).ok_or_else(|| UnknownScope(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scope_round_trips_through_its_wire_name_in_any_case() {
        for scope in Scope::ALL {
            assert_eq!(scope.as_str().parse::<Scope>(), Ok(scope));
            assert_eq!(scope.as_str().to_uppercase().parse::<Scope>(), Ok(scope));
        }
        assert_eq!("chat ".parse::<Scope>(), Err(UnknownScope("chat ".into())));
        assert_eq!("".parse::<Scope>(), Err(UnknownScope(String::new())));
    }
}
