//! What names a resource besides its GUID: a unique name, and the host name that routes
//! requests to it.

use std::fmt;

/// Why a resource name or host name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResourceNameError {
    /// A name breaks the rule of [`ResourceName`].
    #[error(
        "a resource name is 1 to 63 characters: lowercase letters, digits and hyphens, starting \
         with a letter or digit"
    )]
    Name,
    /// A host breaks the rule of [`HostName`].
    #[error(
        "a host name is a DNS name (letters, digits, hyphens and dots, labels of 1 to 63 \
         characters, 253 in all) without scheme, port or path"
    )]
    Host,
    /// An IP address was given where a resource's own host name is meant.
    #[error(
        "an IP address cannot be a resource's host name: requests to it would no longer reach the \
         resources that share the server's address; use a DNS name (localhost is one)"
    )]
    IpAddress,
}

/// A resource's name: unique in a deployment, as ACS resource names are. 1–63 characters of
/// `[a-z0-9-]`, not starting with a hyphen.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceName(String);

impl ResourceName {
    /// The name every deployment's first resource has.
    pub fn default_name() -> Self {
        Self("default".to_owned())
    }

    /// Checks the rule (uppercase is refused, not folded: a name is an identifier).
    pub fn parse(s: &str) -> Result<Self, ResourceNameError> {
        let ok = (1..=63).contains(&s.len())
            && !s.starts_with('-')
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(ResourceNameError::Name)
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ResourceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A host name that routes requests to one resource (ACS gives each resource its own host
/// name). Stored in lowercase, without a trailing dot; compared with a request's `Host` header
/// minus its port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostName(String);

impl HostName {
    /// A resource's own host name: a [`HostName`] that is not an IPv4 address (a resource
    /// claiming the server's address would take its requests from the resources sharing it).
    pub fn for_resource(s: &str) -> Result<Self, ResourceNameError> {
        let host = Self::parse(s)?;
        let numeric_tld = host
            .0
            .rsplit('.')
            .next()
            .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()));
        if numeric_tld || host.0.starts_with("0x") {
            return Err(ResourceNameError::IpAddress);
        }
        Ok(host)
    }

    /// Checks the rule and folds to lowercase; a trailing dot is dropped.
    pub fn parse(s: &str) -> Result<Self, ResourceNameError> {
        let s = s.strip_suffix('.').unwrap_or(s).to_ascii_lowercase();
        let labels_ok = s.split('.').all(|l| {
            (1..=63).contains(&l.len())
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
        if (1..=253).contains(&s.len()) && labels_ok {
            Ok(Self(s))
        } else {
            Err(ResourceNameError::Host)
        }
    }

    /// The host a request names: its `Host` value without the port, lowercase, no trailing
    /// dot. `None` for values that cannot be a [`HostName`] (an IPv6 literal, say).
    pub fn of_request(host_header: &str) -> Option<Self> {
        let name = match host_header.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host_header,
        };
        Self::parse(name).ok()
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_rule() {
        assert!(ResourceName::parse("default").is_ok());
        assert!(ResourceName::parse("tenant-7").is_ok());
        for bad in ["", "-a", "A", "a_b", "a.b", &"a".repeat(64), "é"] {
            assert_eq!(
                ResourceName::parse(bad),
                Err(ResourceNameError::Name),
                "{bad}"
            );
        }
    }

    #[test]
    fn hosts_fold_case_and_drop_ports() {
        assert_eq!(
            HostName::parse("Chat.Example.COM.")
                .expect("valid")
                .as_str(),
            "chat.example.com"
        );
        assert_eq!(
            HostName::of_request("chat.example.com:8443")
                .expect("valid")
                .as_str(),
            "chat.example.com"
        );
        assert_eq!(
            HostName::of_request("127.0.0.1:8443")
                .expect("valid")
                .as_str(),
            "127.0.0.1"
        );
        assert_eq!(HostName::of_request("[::1]:8443"), None);
        for bad in [
            "",
            "a..b",
            "-a.b",
            "a-.b",
            "a/b",
            "a b",
            "https://a",
            &"a".repeat(64),
        ] {
            assert_eq!(HostName::parse(bad), Err(ResourceNameError::Host), "{bad}");
        }
        for ip in ["127.0.0.1", "10.0.0.1.", "1.2.3", "0x7f.1", "2130706433"] {
            assert_eq!(
                HostName::for_resource(ip),
                Err(ResourceNameError::IpAddress),
                "{ip}"
            );
        }
        assert!(HostName::for_resource("localhost").is_ok());
        assert!(HostName::for_resource("chat.example.com").is_ok());
    }
}
