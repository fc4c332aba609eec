//! Access token scopes: the wire vocabulary's [`Scope`](callsign_api::Scope), under the name the
//! ACS SDKs give it.
//!
//! ```
//! use callsign_client::CommunicationTokenScope;
//!
//! let scope: CommunicationTokenScope = "chat.join.limited".parse().unwrap();
//! assert_eq!(scope, CommunicationTokenScope::ChatJoinLimited);
//! assert_eq!(CommunicationTokenScope::VoipJoin.as_str(), "voip.join");
//! // Names are compared without regard to case, as the service compares them.
//! assert_eq!("Chat".parse::<CommunicationTokenScope>(), Ok(CommunicationTokenScope::Chat));
//! assert!("video".parse::<CommunicationTokenScope>().is_err());
//! ```

pub use callsign_api::{Scope as CommunicationTokenScope, UnknownScope};
