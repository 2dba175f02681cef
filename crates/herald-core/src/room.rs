//! Room names and tenant scoping.

use std::fmt;
use std::sync::Arc;

/// Longest room name, in bytes.
pub const MAX_ROOM_NAME_BYTES: usize = 255;
/// Longest tenant name, in bytes. Tenants are part of every room key,
/// Redis key and log line, so they are kept short.
pub const MAX_TENANT_BYTES: usize = 64;

/// Why a room name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoomError {
    /// The name is empty.
    #[error("room name is empty")]
    Empty,
    /// The name is longer than [`MAX_ROOM_NAME_BYTES`].
    #[error("room name is {0} bytes long; at most 255 are allowed")]
    TooLong(usize),
    /// The name holds a byte outside `[A-Za-z0-9_.:@/=-]`.
    #[error("room name holds a forbidden character at byte {0}; allowed are A-Z a-z 0-9 and _ . : @ / = -")]
    ForbiddenByte(usize),
}

/// Why a tenant name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TenantError {
    /// The name is longer than [`MAX_TENANT_BYTES`].
    #[error("tenant is {0} bytes long; at most 64 are allowed")]
    TooLong(usize),
    /// The name holds a byte outside the room-name alphabet.
    #[error(
        "tenant holds a forbidden character at byte {0}; allowed are A-Z a-z 0-9 and _ . : @ / = -"
    )]
    ForbiddenByte(usize),
}

/// A validated room name: `namespace:id` or a bare name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomName(Arc<str>);

impl RoomName {
    /// Validates `name`.
    pub fn parse(name: &str) -> Result<Self, RoomError> {
        if name.is_empty() {
            return Err(RoomError::Empty);
        }
        if name.len() > MAX_ROOM_NAME_BYTES {
            return Err(RoomError::TooLong(name.len()));
        }
        if let Some(pos) = name.bytes().position(|b| !allowed(b)) {
            return Err(RoomError::ForbiddenByte(pos));
        }
        Ok(Self(Arc::from(name)))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The namespace: the part before the first `:`, or the whole bare name.
    pub fn namespace(&self) -> &str {
        self.0.split_once(':').map_or(&self.0, |(ns, _)| ns)
    }

    /// The id: the part after the first `:`, or the whole bare name.
    pub fn id(&self) -> &str {
        self.0.split_once(':').map_or(&self.0, |(_, id)| id)
    }
}

impl fmt::Display for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn allowed(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'@' | b'/' | b'=' | b'-')
}

/// A tenant; the default tenant is the empty string, which no token can
/// claim explicitly (an empty `tenant` claim is treated as absent).
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(transparent)]
pub struct Tenant(Arc<str>);

impl Tenant {
    /// The default tenant.
    pub fn default_tenant() -> Self {
        Self(Arc::from(""))
    }

    /// The tenant named `name`, or the default one for `None` or `""`.
    pub fn from_option(name: Option<&str>) -> Self {
        match name {
            Some(n) if !n.is_empty() => Self(Arc::from(n)),
            _ => Self::default_tenant(),
        }
    }

    /// Validates a tenant named by a client (API body or query, token
    /// claim): at most [`MAX_TENANT_BYTES`] of the room-name alphabet;
    /// `None` or `""` is the default tenant.
    pub fn parse(name: Option<&str>) -> Result<Self, TenantError> {
        let name = name.unwrap_or("");
        if name.len() > MAX_TENANT_BYTES {
            return Err(TenantError::TooLong(name.len()));
        }
        if let Some(pos) = name.bytes().position(|b| !allowed(b)) {
            return Err(TenantError::ForbiddenByte(pos));
        }
        Ok(Self::from_option(Some(name)))
    }

    /// Whether this is the default tenant.
    pub fn is_default(&self) -> bool {
        self.0.is_empty()
    }

    /// The tenant's name (empty for the default tenant).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A room within a tenant: the key every map, stream and subscription uses,
/// so rooms of different tenants can never meet.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomKey {
    /// The tenant owning the room.
    pub tenant: Tenant,
    /// The room's name as clients see it.
    pub name: RoomName,
}

impl RoomKey {
    /// The room `name` of `tenant`.
    pub fn new(tenant: Tenant, name: RoomName) -> Self {
        Self { tenant, name }
    }
}

impl fmt::Display for RoomKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.tenant.is_default() {
            write!(f, "{}", self.name)
        } else {
            write!(f, "{}/{}", self.tenant.as_str(), self.name)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_contract_bytes() {
        let r = RoomName::parse("user:42").expect("valid");
        assert_eq!(r.namespace(), "user");
        assert_eq!(r.id(), "42");
        let r = RoomName::parse("global").expect("valid");
        assert_eq!(r.namespace(), "global");
        assert_eq!(r.id(), "global");
        assert!(RoomName::parse("a.b@c/d=e-f_g:h:i").is_ok());
    }

    #[test]
    fn tenants_are_checked_like_room_names_up_to_64_bytes() {
        assert_eq!(Tenant::parse(None), Ok(Tenant::default_tenant()));
        assert_eq!(Tenant::parse(Some("")), Ok(Tenant::default_tenant()));
        assert_eq!(
            Tenant::parse(Some("acme")),
            Ok(Tenant::from_option(Some("acme")))
        );
        assert!(Tenant::parse(Some(&"t".repeat(64))).is_ok());
        assert_eq!(
            Tenant::parse(Some(&"t".repeat(65))),
            Err(TenantError::TooLong(65))
        );
        assert_eq!(
            Tenant::parse(Some("ac me")),
            Err(TenantError::ForbiddenByte(2))
        );
    }

    #[test]
    fn rejects_bad_names() {
        assert_eq!(RoomName::parse(""), Err(RoomError::Empty));
        assert_eq!(
            RoomName::parse(&"a".repeat(256)),
            Err(RoomError::TooLong(256))
        );
        assert!(RoomName::parse(&"a".repeat(255)).is_ok());
        assert_eq!(RoomName::parse("a b"), Err(RoomError::ForbiddenByte(1)));
        assert_eq!(RoomName::parse("x\u{0}"), Err(RoomError::ForbiddenByte(1)));
        assert!(RoomName::parse("é").is_err());
    }

    #[test]
    fn tenants_separate_rooms() {
        let name = RoomName::parse("global").expect("valid");
        let a = RoomKey::new(Tenant::from_option(Some("a")), name.clone());
        let d = RoomKey::new(Tenant::from_option(None), name);
        assert_ne!(a, d);
        assert_eq!(Tenant::from_option(Some("")), Tenant::default_tenant());
    }
}
