//! Subject, stream and bucket names under one prefix.
//!
//! Room names, tenants, user ids and node ids may hold characters that
//! NATS gives a meaning to in subjects (`.`, `*`, `>`, spaces), so each one
//! is one token in base64url without padding ([`token`]), which uses only
//! `A-Z a-z 0-9 - _`: valid in subjects, key-value keys and stream names.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use herald_core::{RoomKey, Tenant};

/// One subject token (or key-value key segment) for any string.
pub fn token(part: &str) -> String {
    if part.is_empty() {
        // An empty token is not a valid subject; `_` decodes to nothing
        // valid in base64url, so it cannot clash with an encoded value.
        return "_".into();
    }
    URL_SAFE_NO_PAD.encode(part.as_bytes())
}

/// The string a [`token`] was made from.
pub fn untoken(token: &str) -> Option<String> {
    if token == "_" {
        return Some(String::new());
    }
    let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
    String::from_utf8(bytes).ok()
}

/// A room as one token: its tenant and name, separated by a NUL (which
/// neither may contain).
pub fn room_token(room: &RoomKey) -> String {
    token(&format!("{}\0{}", room.tenant.as_str(), room.name.as_str()))
}

/// The `(tenant, name)` a [`room_token`] was made from.
pub fn room_of_token(token: &str) -> Option<(String, String)> {
    let s = untoken(token)?;
    let (tenant, name) = s.split_once('\0')?;
    Some((tenant.to_owned(), name.to_owned()))
}

/// A prefix as a stream or bucket name part: the characters NATS allows
/// there (`A-Z a-z 0-9 - _`), anything else as `_`.
fn name_part(prefix: &str) -> String {
    prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Names under one prefix (`broker.prefix`).
#[derive(Debug, Clone)]
pub struct Names {
    /// The prefix as the first subject token(s).
    subject: String,
    /// The prefix as a stream/bucket name part.
    name: String,
}

impl Names {
    /// Names under `prefix`.
    pub fn new(prefix: &str) -> Self {
        Self {
            subject: prefix.to_owned(),
            name: name_part(prefix),
        }
    }

    /// The prefix as given.
    pub fn prefix(&self) -> &str {
        &self.subject
    }

    /// The JetStream stream holding every room's events: `<prefix>-rooms`.
    pub fn rooms_stream(&self) -> String {
        format!("{}-rooms", self.name)
    }

    /// The subject a room's events are stored under:
    /// `<prefix>.room.<room token>`.
    pub fn room_subject(&self, room: &RoomKey) -> String {
        format!("{}.room.{}", self.subject, room_token(room))
    }

    /// Every room's stored subject: `<prefix>.room.*`.
    pub fn room_subjects(&self) -> String {
        format!("{}.room.*", self.subject)
    }

    /// The subject a room's accepted events are delivered to nodes on:
    /// `<prefix>.deliver.<room token>`.
    pub fn delivery_subject(&self, room: &RoomKey) -> String {
        format!("{}.deliver.{}", self.subject, room_token(room))
    }

    /// Every room's delivery subject: `<prefix>.deliver.*`.
    pub fn delivery_subjects(&self) -> String {
        format!("{}.deliver.*", self.subject)
    }

    /// The subject a node's control commands (disconnects) go to:
    /// `<prefix>.control.<node token>`.
    pub fn control_subject(&self, node_id: &str) -> String {
        format!("{}.control.{}", self.subject, token(node_id))
    }

    /// The JetStream stream of the webhook outbox: `<prefix>-hooks`.
    pub fn hooks_stream(&self) -> String {
        format!("{}-hooks", self.name)
    }

    /// The subject webhook events are stored under: `<prefix>.hooks`.
    pub fn hooks_subject(&self) -> String {
        format!("{}.hooks", self.subject)
    }

    /// A key-value bucket of the engine: `<prefix>-<what>`.
    pub fn bucket(&self, what: &str) -> String {
        format!("{}-{what}", self.name)
    }

    /// A user as one key segment: `<tenant token>.<user token>`.
    pub fn user_key(&self, tenant: &Tenant, user_id: &str) -> String {
        format!("{}.{}", token(tenant.as_str()), token(user_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::RoomName;

    fn room(tenant: &str, name: &str) -> RoomKey {
        RoomKey::new(
            Tenant::from_option(Some(tenant)),
            RoomName::parse(name).expect("a valid room name"),
        )
    }

    #[test]
    fn tokens_round_trip_and_hold_no_subject_syntax() {
        for s in ["", "42", "a.b", "*", ">", "user 42", "ünïcode", "x/y:z"] {
            let t = token(s);
            assert!(
                t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
                "{s:?} -> {t}"
            );
            assert_eq!(untoken(&t).as_deref(), Some(s));
        }
    }

    #[test]
    fn rooms_of_different_tenants_get_different_subjects() {
        let names = Names::new("herald");
        let a = names.room_subject(&room("", "project:7"));
        let b = names.room_subject(&room("acme", "project:7"));
        assert_ne!(a, b);
        assert!(a.starts_with("herald.room."));
        let t = a.rsplit('.').next().expect("a token");
        assert_eq!(
            room_of_token(t),
            Some((String::new(), "project:7".to_owned()))
        );
    }

    #[test]
    fn stream_and_bucket_names_are_valid() {
        let names = Names::new("my.app v2");
        assert_eq!(names.rooms_stream(), "my_app_v2-rooms");
        assert_eq!(names.bucket("registry"), "my_app_v2-registry");
        assert_eq!(names.hooks_stream(), "my_app_v2-hooks");
        assert_eq!(names.hooks_subject(), "my.app v2.hooks");
    }
}
