//! Token lifetime.

/// A token lifetime in whole minutes, within the service's bounds (60..=1440).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ExpiresIn(u16);

/// The requested lifetime is out of bounds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ExpiresInMinutes value {0} is invalid. Value must be within the [60, 1440] interval.")]
pub struct ExpiresInError(pub i64);

impl ExpiresIn {
    /// Shortest lifetime, one hour.
    pub const MIN_MINUTES: i64 = 60;
    /// Longest lifetime and the default, 24 hours.
    pub const MAX_MINUTES: i64 = 1440;
    /// The default lifetime (24 hours).
    pub const DEFAULT: ExpiresIn = ExpiresIn(1440);

    /// Checks the bounds.
    pub fn from_minutes(minutes: i64) -> Result<Self, ExpiresInError> {
        if (Self::MIN_MINUTES..=Self::MAX_MINUTES).contains(&minutes) {
            Ok(Self(minutes as u16))
        } else {
            Err(ExpiresInError(minutes))
        }
    }

    /// `None` (absent or `null` on the wire) means the default.
    pub fn from_optional_minutes(minutes: Option<i64>) -> Result<Self, ExpiresInError> {
        minutes.map_or(Ok(Self::DEFAULT), Self::from_minutes)
    }

    /// The lifetime in minutes.
    pub fn minutes(self) -> u16 {
        self.0
    }

    /// The lifetime as a duration.
    pub fn duration(self) -> time::Duration {
        time::Duration::minutes(i64::from(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_inclusive() {
        assert!(ExpiresIn::from_minutes(59).is_err());
        assert_eq!(ExpiresIn::from_minutes(60).map(ExpiresIn::minutes), Ok(60));
        assert_eq!(
            ExpiresIn::from_minutes(1440).map(ExpiresIn::minutes),
            Ok(1440)
        );
        assert!(ExpiresIn::from_minutes(1441).is_err());
        assert!(ExpiresIn::from_minutes(i64::MIN).is_err());
        assert!(ExpiresIn::from_minutes(-60).is_err());
    }

    #[test]
    fn absent_means_one_day() {
        assert_eq!(
            ExpiresIn::from_optional_minutes(None),
            Ok(ExpiresIn::DEFAULT)
        );
        assert_eq!(ExpiresIn::DEFAULT.minutes(), 1440);
    }

    #[test]
    fn error_text_matches_the_service() {
        assert_eq!(
            ExpiresInError(59).to_string(),
            "ExpiresInMinutes value 59 is invalid. Value must be within the [60, 1440] interval."
        );
    }
}
