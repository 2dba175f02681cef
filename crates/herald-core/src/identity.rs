//! The verified identity behind a connection or an API call.

use serde_json::{Map, Value};

/// What a verified token says about its bearer.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    /// The `sub` claim: the user id.
    pub user_id: String,
    /// The `tenant` claim; `None` is the default tenant.
    pub tenant: Option<String>,
    /// The `roles` claim.
    pub roles: Vec<String>,
    /// When the token stops verifying, seconds since the Unix epoch: its
    /// `exp` claim plus `auth.leeway`. The connection is closed then.
    pub expires_at: Option<u64>,
    /// Every claim of the token, for namespace rules such as `claim:projects`.
    pub claims: Map<String, Value>,
}

impl Identity {
    /// An identity with no roles, tenant, expiry or extra claims.
    pub fn new(user_id: impl Into<String>) -> Self {
        Self {
            user_id: user_id.into(),
            tenant: None,
            roles: Vec::new(),
            expires_at: None,
            claims: Map::new(),
        }
    }

    /// Whether the identity holds `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    /// Whether the identity is an administrator (role `admin` passes every rule).
    pub fn is_admin(&self) -> bool {
        self.has_role("admin")
    }

    /// Whether the claim `name` is an array listing `id` (strings, or numbers
    /// written the same way, so `"projects": [7]` lets `project:7` in).
    pub fn claim_lists(&self, name: &str, id: &str) -> bool {
        match self.claims.get(name) {
            Some(Value::Array(items)) => items.iter().any(|item| match item {
                Value::String(s) => s == id,
                Value::Number(n) => n.to_string() == id,
                _ => false,
            }),
            _ => false,
        }
    }
}
