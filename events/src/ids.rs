//! Validated identifiers: parse, don't validate.
//!
//! Every id or name that crosses a trust boundary (a request body, a path, a file) is parsed into
//! one of these newtypes once; code that holds one may rely on its invariants.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// Why a string was refused as an id, scope, email or name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what}: {reason}")]
pub struct ParseIdError {
    /// What was being parsed (for example "device id").
    pub what: &'static str,
    /// Why it was refused.
    pub reason: &'static str,
}

impl ParseIdError {
    fn new(what: &'static str, reason: &'static str) -> Self {
        Self { what, reason }
    }
}

macro_rules! string_newtype {
    ($(#[$meta:meta])* $name:ident, $parse:path) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The canonical string form.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = ParseIdError;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                $parse(value).map(Self)
            }
        }

        impl FromStr for $name {
            type Err = ParseIdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::try_from(s.to_owned())
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

fn is_slug_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'
}

fn parse_device_id(s: String) -> Result<String, ParseIdError> {
    const WHAT: &str = "device id";
    if s.len() < 8 || s.len() > 64 {
        return Err(ParseIdError::new(WHAT, "must be 8 to 64 characters"));
    }
    if !s.chars().all(is_slug_char) || s.starts_with('-') {
        return Err(ParseIdError::new(
            WHAT,
            "only lowercase letters, digits and '-' are allowed",
        ));
    }
    Ok(s)
}

fn parse_org_id(s: String) -> Result<String, ParseIdError> {
    const WHAT: &str = "organization id";
    if s.is_empty() || s.len() > 63 {
        return Err(ParseIdError::new(WHAT, "must be 1 to 63 characters"));
    }
    if !s.chars().all(is_slug_char) || s.starts_with('-') {
        return Err(ParseIdError::new(
            WHAT,
            "only lowercase letters, digits and '-' are allowed",
        ));
    }
    Ok(s)
}

fn parse_email(s: String) -> Result<String, ParseIdError> {
    const WHAT: &str = "email";
    let s = s.trim().to_ascii_lowercase();
    if s.is_empty() || s.len() > 254 {
        return Err(ParseIdError::new(WHAT, "must be 1 to 254 characters"));
    }
    let Some((local, domain)) = s.split_once('@') else {
        return Err(ParseIdError::new(WHAT, "must contain '@'"));
    };
    if local.is_empty() || domain.is_empty() || domain.contains('@') {
        return Err(ParseIdError::new(WHAT, "must look like name@domain"));
    }
    if s.chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == ':')
    {
        return Err(ParseIdError::new(
            WHAT,
            "must not contain spaces, control characters or ':'",
        ));
    }
    Ok(s)
}

fn parse_device_name(s: String) -> Result<String, ParseIdError> {
    const WHAT: &str = "device name";
    let s = s.trim().to_owned();
    if s.is_empty() || s.chars().count() > 64 {
        return Err(ParseIdError::new(WHAT, "must be 1 to 64 characters"));
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(ParseIdError::new(
            WHAT,
            "only letters, digits, '-', '_' and '.' are allowed",
        ));
    }
    Ok(s)
}

fn parse_scope(s: String) -> Result<String, ParseIdError> {
    const WHAT: &str = "scope";
    match s.split_once(':') {
        Some(("user", email)) => Ok(format!("user:{}", parse_email(email.to_owned())?)),
        Some(("org", org)) => Ok(format!("org:{}", parse_org_id(org.to_owned())?)),
        _ => Err(ParseIdError::new(
            WHAT,
            "must be user:<email> or org:<organization id>",
        )),
    }
}

string_newtype!(
    /// A device's stable id, generated once by the device: 8 to 64 of `[a-z0-9-]`.
    DeviceId,
    parse_device_id
);
string_newtype!(
    /// An organization's id: 1 to 63 of `[a-z0-9-]`.
    OrgId,
    parse_org_id
);
string_newtype!(
    /// An email address, trimmed and lowercased.
    Email,
    parse_email
);
string_newtype!(
    /// A device's display name: 1 to 64 of letters, digits, `-`, `_`, `.`.
    DeviceName,
    parse_device_name
);
string_newtype!(
    /// An access scope: `user:<email>` or `org:<id>`.
    Scope,
    parse_scope
);

/// What a [`Scope`] names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScopeKind {
    /// One user, by email.
    User(Email),
    /// An organization.
    Org(OrgId),
}

impl Scope {
    /// The scope of one user.
    pub fn user(email: &Email) -> Self {
        Self(format!("user:{email}"))
    }

    /// The scope of an organization.
    pub fn org(org: &OrgId) -> Self {
        Self(format!("org:{org}"))
    }

    /// What this scope names.
    pub fn kind(&self) -> ScopeKind {
        // The string was validated on construction, so both arms hold.
        match self.0.split_once(':') {
            Some(("org", org)) => ScopeKind::Org(OrgId(org.to_owned())),
            Some((_, email)) => ScopeKind::User(Email(email.to_owned())),
            None => ScopeKind::User(Email(self.0.clone())),
        }
    }
}

macro_rules! uuid_newtype {
    ($(#[$meta:meta])* $name:ident, $what:literal) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A new, time-ordered (UUIDv7) id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            /// Wraps an existing UUID.
            pub fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }

            /// The UUID inside.
            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl FromStr for $name {
            type Err = ParseIdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s)
                    .map(Self)
                    .map_err(|_| ParseIdError::new($what, "must be a UUID"))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
    };
}

uuid_newtype!(
    /// The id of a registration request.
    RequestId,
    "request id"
);
uuid_newtype!(
    /// The id of an API key (not the key itself).
    KeyId,
    "api key id"
);
uuid_newtype!(
    /// The id of one stored event.
    EventId,
    "event id"
);
uuid_newtype!(
    /// The id of a remote session (one token, one client connection).
    SessionId,
    "session id"
);
uuid_newtype!(
    /// Ties together the events caused by one request.
    CorrelationId,
    "correlation id"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_and_normalise() {
        let s: Scope = "user:Alice@Example.com".parse().unwrap();
        assert_eq!(s.as_str(), "user:alice@example.com");
        assert_eq!(
            s.kind(),
            ScopeKind::User("alice@example.com".parse().unwrap())
        );
        let o: Scope = "org:acme-robots".parse().unwrap();
        assert_eq!(o.kind(), ScopeKind::Org("acme-robots".parse().unwrap()));
        for bad in [
            "",
            "user:",
            "org:",
            "team:x",
            "user:no-at",
            "org:UPPER",
            "alice",
        ] {
            assert!(bad.parse::<Scope>().is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn device_ids_and_names_are_checked() {
        assert!("0123abcd".parse::<DeviceId>().is_ok());
        assert!("short".parse::<DeviceId>().is_err());
        assert!("has space here".parse::<DeviceId>().is_err());
        assert!("-leading-dash".parse::<DeviceId>().is_err());
        assert!("robot-7.lab_2".parse::<DeviceName>().is_ok());
        assert!("rm -rf".parse::<DeviceName>().is_err());
        assert!("".parse::<DeviceName>().is_err());
    }

    #[test]
    fn serde_refuses_invalid_values() {
        let err = serde_json::from_str::<Email>("\"not-an-email\"").unwrap_err();
        assert!(err.to_string().contains("invalid email"));
        let ok: Email = serde_json::from_str("\"A@B.io\"").unwrap();
        assert_eq!(ok.as_str(), "a@b.io");
    }
}
