//! Access token scopes.

use std::fmt;
use std::str::FromStr;

/// What an access token lets its holder do (api-version 2023-10-01 and later).
///
/// ```
/// use callsign_client::CommunicationTokenScope;
///
/// let scope: CommunicationTokenScope = "chat.join.limited".parse().unwrap();
/// assert_eq!(scope, CommunicationTokenScope::ChatJoinLimited);
/// assert_eq!(CommunicationTokenScope::VoipJoin.as_str(), "voip.join");
/// assert!("video".parse::<CommunicationTokenScope>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CommunicationTokenScope {
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

impl CommunicationTokenScope {
    /// Every scope, in the order above.
    pub const ALL: [CommunicationTokenScope; 5] = [
        Self::Chat,
        Self::Voip,
        Self::ChatJoin,
        Self::ChatJoinLimited,
        Self::VoipJoin,
    ];

    /// The wire name, e.g. `chat.join`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Chat => "chat",
            Self::Voip => "voip",
            Self::ChatJoin => "chat.join",
            Self::ChatJoinLimited => "chat.join.limited",
            Self::VoipJoin => "voip.join",
        }
    }
}

impl fmt::Display for CommunicationTokenScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A scope name that is none of [`CommunicationTokenScope`]'s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a token scope (chat, voip, chat.join, chat.join.limited, voip.join)")]
pub struct UnknownScope(pub String);

impl FromStr for CommunicationTokenScope {
    type Err = UnknownScope;

    /// Parses a wire name; exact and case-sensitive, as the service compares them.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|scope| scope.as_str() == s)
            .ok_or_else(|| UnknownScope(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scope_round_trips_through_its_wire_name() {
        for scope in CommunicationTokenScope::ALL {
            assert_eq!(scope.as_str().parse::<CommunicationTokenScope>(), Ok(scope));
        }
        assert_eq!(
            "Chat".parse::<CommunicationTokenScope>(),
            Err(UnknownScope("Chat".into()))
        );
    }
}
