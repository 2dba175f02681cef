//! Key and channel names. Every key of one room shares one hash tag, so a
//! room's keys live in one Redis Cluster slot and its publish script may
//! touch them all.

use herald_core::{RoomKey, Tenant};

/// Escapes a tenant or user id for use inside a key: `{`, `}`, `%` and `/`
/// would change the hash tag or the key's structure.
pub fn escape(part: &str) -> String {
    let mut out = String::with_capacity(part.len());
    for c in part.chars() {
        match c {
            '{' | '}' | '%' | '/' => out.push_str(&format!("%{:02X}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// The hash tag of a room: `{tenant/room}`.
pub fn room_tag(room: &RoomKey) -> String {
    format!(
        "{{{}/{}}}",
        escape(room.tenant.as_str()),
        room.name.as_str()
    )
}

/// Names under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Names under `prefix` (`broker.prefix`).
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The engine's current epoch, the one new room streams start in (a
    /// string key living an hour; see `broker/epoch.rs`).
    pub fn engine_epoch(&self) -> String {
        format!("{}:epoch", self.prefix)
    }

    /// Hash `{epoch, offset}` of a room's stream.
    pub fn room_meta(&self, room: &RoomKey) -> String {
        format!("{}:room:{}:meta", self.prefix, room_tag(room))
    }

    /// The Redis stream holding a room's history.
    pub fn room_stream(&self, room: &RoomKey) -> String {
        format!("{}:room:{}:stream", self.prefix, room_tag(room))
    }

    /// The channel a room's publications and presence changes go out on.
    pub fn room_channel(&self, room: &RoomKey) -> String {
        format!("{}:room:{}:ch", self.prefix, room_tag(room))
    }

    /// The outcome of a publish with an idempotency key, in the room's slot.
    pub fn room_idempotency(&self, room: &RoomKey, key: &str) -> String {
        format!("{}:room:{}:idem:{}", self.prefix, room_tag(room), key)
    }

    /// Which room a tenant's idempotency key was first used for.
    pub fn idempotency_owner(&self, tenant: &Tenant, key: &str) -> String {
        format!(
            "{}:idem:{{{}}}:{}",
            self.prefix,
            escape(tenant.as_str()),
            key
        )
    }

    /// Hash of a room's members (presence), connection id to member JSON.
    pub fn room_presence(&self, room: &RoomKey) -> String {
        format!("{}:room:{}:presence", self.prefix, room_tag(room))
    }

    /// Hash of a user's connections, connection id to record JSON.
    pub fn user_connections(&self, tenant: &Tenant, user: &str) -> String {
        format!(
            "{}:user:{{{}/{}}}:conns",
            self.prefix,
            escape(tenant.as_str()),
            escape(user)
        )
    }

    /// The exclusive-session lock of a user, in the user's slot.
    pub fn user_lock(&self, tenant: &Tenant, user: &str) -> String {
        format!(
            "{}:user:{{{}/{}}}:lock",
            self.prefix,
            escape(tenant.as_str()),
            escape(user)
        )
    }

    /// Sorted set of live nodes, scored by their last heartbeat (ms).
    pub fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    /// A node's figures (JSON), refreshed with its heartbeat.
    pub fn node_figures(&self, node_id: &str) -> String {
        format!("{}:node:{{{}}}:figures", self.prefix, escape(node_id))
    }

    /// Hash of a node's connections, connection id to record JSON, so that
    /// survivors can clean up after it.
    pub fn node_connections(&self, node_id: &str) -> String {
        format!("{}:node:{{{}}}:conns", self.prefix, escape(node_id))
    }

    /// Lock taken by the survivor cleaning up after a dead node.
    pub fn node_reaper(&self, node_id: &str) -> String {
        format!("{}:node:{{{}}}:reaper", self.prefix, escape(node_id))
    }

    /// The cluster's control channel (commands between nodes).
    pub fn control_channel(&self) -> String {
        format!("{}:control", self.prefix)
    }

    /// The ingest stream services append publish objects to.
    pub fn ingest(&self) -> String {
        format!("{}:ingest", self.prefix)
    }

    /// Where ingest entries that keep failing end up, with the reason.
    pub fn ingest_dead(&self) -> String {
        format!("{}:ingest:dead", self.prefix)
    }

    /// The webhook outbox: a stream of events (fields `t`, the event's
    /// `time_ms`, and `b`, its JSON). Every webhook key shares the hash tag
    /// `{hooks}`, so one script may append events and change the
    /// transition sets below on Redis Cluster too.
    pub fn hooks_stream(&self) -> String {
        format!("{}:{{hooks}}", self.prefix)
    }

    /// The dispatch lease: names the one node process sending webhooks.
    pub fn hooks_lease(&self) -> String {
        format!("{}:{{hooks}}:lease", self.prefix)
    }

    /// The id of the last outbox entry acknowledged (delivered or dropped).
    pub fn hooks_cursor(&self) -> String {
        format!("{}:{{hooks}}:cursor", self.prefix)
    }

    /// How many unsent events the outbox's bound trimmed since the lease
    /// holder last took the count.
    pub fn hooks_trimmed(&self) -> String {
        format!("{}:{{hooks}}:trimmed", self.prefix)
    }

    /// Set of a user's live connection ids, whose 0 <-> 1 transitions are
    /// `user.online` / `user.offline`.
    pub fn hooks_user(&self, tenant: &Tenant, user: &str) -> String {
        format!(
            "{}:{{hooks}}:user:{}/{}",
            self.prefix,
            escape(tenant.as_str()),
            escape(user)
        )
    }

    /// Set of a room's member connection ids, whose 0 <-> 1 transitions are
    /// `room.occupied` / `room.vacated`.
    pub fn hooks_room(&self, room: &RoomKey) -> String {
        format!(
            "{}:{{hooks}}:room:{}/{}",
            self.prefix,
            escape(room.tenant.as_str()),
            escape(room.name.as_str())
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::RoomName;

    #[test]
    fn tenant_braces_cannot_change_the_hash_tag() {
        let room = RoomKey::new(
            Tenant::from_option(Some("a}b{c/d%")),
            RoomName::parse("project:7").expect("room"),
        );
        assert_eq!(room_tag(&room), "{a%7Db%7Bc%2Fd%25/project:7}");
    }

    #[test]
    fn a_rooms_keys_share_one_tag() {
        let keys = Keys::new("herald");
        let room = RoomKey::new(
            Tenant::default_tenant(),
            RoomName::parse("user:42").expect("room"),
        );
        for k in [
            keys.room_meta(&room),
            keys.room_stream(&room),
            keys.room_channel(&room),
            keys.room_presence(&room),
            keys.room_idempotency(&room, "k"),
        ] {
            assert!(k.contains("{/user:42}"), "{k}");
        }
    }

    #[test]
    fn webhook_keys_share_one_slot_whatever_the_names() {
        let keys = Keys::new("herald");
        let room = RoomKey::new(
            Tenant::from_option(Some("a}b")),
            RoomName::parse("user:42").expect("room"),
        );
        let tenant = Tenant::from_option(Some("{x}"));
        let all = [
            keys.hooks_stream(),
            keys.hooks_lease(),
            keys.hooks_cursor(),
            keys.hooks_trimmed(),
            keys.hooks_user(&tenant, "u{1}"),
            keys.hooks_room(&room),
        ];
        let slot = fred::util::redis_keyslot(all[0].as_bytes());
        for k in &all {
            assert_eq!(fred::util::redis_keyslot(k.as_bytes()), slot, "{k}");
        }
    }
}
