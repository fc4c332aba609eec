//! callsign's domain: what an identity, a scope, an access key and an access token are, and the
//! rule that decides whether a token is still in force.
//!
//! This crate does no IO: no network, no files, no database, and it never reads the wall clock
//! itself (time comes in through [`Clock`]). It knows nothing of HTTP or of the ACS wire format
//! beyond the shape of ids and claims.
//!
//! ```
//! use callsign_core::{IdentityId, ResourceId, Scope, Scopes};
//!
//! let resource = ResourceId::new_random();
//! let id = IdentityId::new_random(resource);
//! assert_eq!(IdentityId::parse(&id.to_string()).unwrap(), id);
//! let scopes = Scopes::parse(["chat", "voip"].iter().copied(), true).unwrap();
//! assert!(scopes.contains(Scope::Voip));
//! ```

mod access;
mod assignment;
mod clock;
mod expiry;
mod id;
mod keys;
mod resource;
mod scope;
pub mod token;

pub use access::{AccessAssignment, AccessPrincipalType, ObjectId, ObjectIdError};
pub use assignment::{MAX_CLIENT_IDS, PrincipalType, TeamsAssignment, parse_guid};
pub use clock::{Clock, FixedClock, SystemClock, format_expires_on};
pub use expiry::{ExpiresIn, ExpiresInError};
pub use id::{CustomId, CustomIdError, IdError, IdentityId, ResourceId};
pub use keys::{AccessKey, AccessKeyError};
pub use resource::{HostName, ResourceName, ResourceNameError};
pub use scope::{Scope, ScopeError, Scopes};
