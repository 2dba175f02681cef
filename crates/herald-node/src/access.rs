//! Namespace rules that ask the backend (`join = "proxy"`, `send =
//! "proxy"`) through the node's [`herald_core::AccessProxy`], with each
//! connection's cache of the answers (docs/protocol.md 4).

use crate::error::NodeError;
use crate::metrics;
use crate::session::Session;
use herald_core::{AccessDecision, Identity, ProxyFailure, RoomName, Rule};
use indexmap::IndexMap;
use std::time::Instant;

/// Most answers one connection keeps; the oldest goes first beyond.
pub(crate) const MAX_CACHED_ANSWERS: usize = 256;

/// What the client is told when the backend could not answer (its own
/// text, which may name hosts, goes to the log).
pub(crate) const BACKEND_UNAVAILABLE_MESSAGE: &str =
    "the backend could not answer (proxy); retry shortly";

/// What is asked: joining a room, or sending an event to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action<'a> {
    /// `join_room`, an auto-join, an SSE `?rooms=` join.
    Join,
    /// `send_message` with this event name.
    Send(&'a str),
}

impl Action<'_> {
    fn name(self) -> &'static str {
        match self {
            Self::Join => "join",
            Self::Send(_) => "send",
        }
    }
}

/// One connection's cached backend answers, allow and deny alike, each for
/// its `cache_ttl`; at most [`MAX_CACHED_ANSWERS`], oldest evicted.
#[derive(Debug, Default)]
pub(crate) struct AccessCache {
    /// (room, event for a send) -> (allowed, valid until).
    answers: IndexMap<(RoomName, Option<String>), (bool, Instant)>,
}

impl AccessCache {
    /// The cached answer for `room` and `action`, if still valid.
    pub(crate) fn get(
        &mut self,
        room: &RoomName,
        action: Action<'_>,
        now: Instant,
    ) -> Option<bool> {
        let key = key(room, action);
        match self.answers.get(&key) {
            Some(&(allow, until)) if until > now => Some(allow),
            Some(_) => {
                self.answers.shift_remove(&key);
                None
            }
            None => None,
        }
    }

    /// Keeps `decision` for its `cache_ttl` (not at all without one).
    pub(crate) fn put(
        &mut self,
        room: &RoomName,
        action: Action<'_>,
        decision: AccessDecision,
        now: Instant,
    ) {
        let Some(until) = decision.cache_ttl.and_then(|ttl| now.checked_add(ttl)) else {
            return;
        };
        let key = key(room, action);
        // Re-inserted at the end: the newest answer is the last evicted.
        self.answers.shift_remove(&key);
        if self.answers.len() >= MAX_CACHED_ANSWERS {
            self.answers.shift_remove_index(0);
        }
        self.answers.insert(key, (decision.allow, until));
    }

    /// Answers held, expired ones included until looked up.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.answers.len()
    }
}

fn key(room: &RoomName, action: Action<'_>) -> (RoomName, Option<String>) {
    let event = match action {
        Action::Join => None,
        Action::Send(event) => Some(event.to_owned()),
    };
    (room.clone(), event)
}

impl Session {
    /// Whether this connection may do `action` in `room`: the namespace
    /// rule, or for a `proxy` rule the backend (cached answers first).
    /// Admins pass every rule without asking.
    pub(crate) async fn check_access(
        &mut self,
        room: &RoomName,
        action: Action<'_>,
    ) -> Result<(), NodeError> {
        let identity = self.conn.identity();
        let ns = self.node.namespaces().for_room(room);
        let rule = match action {
            Action::Join => &ns.join,
            Action::Send(_) => &ns.send,
        };
        if rule.allows(&identity, room) {
            return Ok(());
        }
        let denied = || {
            NodeError::Forbidden(match action {
                Action::Join => format!("not allowed to join room `{room}`"),
                Action::Send(_) => format!("not allowed to send to room `{room}`"),
            })
        };
        if *rule != Rule::Proxy {
            return Err(denied());
        }
        if self.ask_backend(&identity, room, action).await? {
            Ok(())
        } else {
            Err(denied())
        }
    }

    /// The backend's answer for a `proxy` rule, from the cache when it
    /// holds one. No access proxy configured: denied (the server's config
    /// check refuses such a config; this node must not allow silently).
    async fn ask_backend(
        &mut self,
        identity: &Identity,
        room: &RoomName,
        action: Action<'_>,
    ) -> Result<bool, NodeError> {
        if let Some(allow) = self.access.get(room, action, Instant::now()) {
            metrics::access_check(action.name(), if allow { "allow" } else { "deny" }, true);
            return Ok(allow);
        }
        let Some(proxy) = self.node.access_proxy().cloned() else {
            tracing::warn!(%room, "a `proxy` rule applies but no access proxy is configured; denied");
            metrics::access_check(action.name(), "deny", false);
            return Ok(false);
        };
        let answer = match action {
            Action::Join => proxy.join(identity, room).await,
            Action::Send(event) => proxy.send(identity, room, event).await,
        };
        match answer {
            Ok(decision) => {
                let result = if decision.allow { "allow" } else { "deny" };
                metrics::access_check(action.name(), result, false);
                self.access.put(room, action, decision, Instant::now());
                Ok(decision.allow)
            }
            Err(ProxyFailure::Unavailable(detail)) => {
                metrics::access_check(action.name(), "unavailable", false);
                tracing::warn!(
                    connection_id = %self.conn.id, %room, action = action.name(), error = %detail,
                    "the access backend could not answer"
                );
                Err(NodeError::Unavailable(BACKEND_UNAVAILABLE_MESSAGE.into()))
            }
            Err(ProxyFailure::Rejected { message, .. }) => {
                metrics::access_check(action.name(), "rejected", false);
                Err(NodeError::Forbidden(message))
            }
        }
    }
}

impl Session {
    /// The rooms a connection joins at open: its auto-join rooms (a
    /// `proxy` join rule asks the backend; other rules are not checked,
    /// the config named the rooms), then the backend's `extra` rooms
    /// without any rule (the backend decided; invalid names are skipped),
    /// without repeats, at most `limits.max_rooms_per_connection`.
    pub(crate) async fn rooms_at_open(&mut self, extra: &[String]) -> Vec<RoomName> {
        let identity = self.conn.identity();
        let mut rooms = Vec::new();
        for name in self.node.namespaces().auto_join_rooms(&identity) {
            if self.node.namespaces().for_room(&name).join.is_proxy() {
                if let Err(e) = self.check_access(&name, Action::Join).await {
                    tracing::info!(
                        connection_id = %self.conn.id, room = %name, error = %e,
                        "auto-join refused by the backend"
                    );
                    continue;
                }
            }
            rooms.push(name);
        }
        for raw in extra {
            match RoomName::parse(raw) {
                Ok(name) if !rooms.contains(&name) => rooms.push(name),
                Ok(_) => {}
                Err(e) => {
                    let shown: String = raw.chars().take(64).collect();
                    tracing::warn!(
                        connection_id = %self.conn.id, room = %shown, error = %e,
                        "skipping an invalid room the backend named"
                    );
                }
            }
        }
        let max = self.node.limits().max_rooms_per_connection;
        if rooms.len() > max {
            tracing::warn!(
                connection_id = %self.conn.id, rooms = rooms.len(), max,
                "more rooms at open than limits.max_rooms_per_connection; the last are not joined"
            );
            rooms.truncate(max);
        }
        rooms
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn room(s: &str) -> RoomName {
        RoomName::parse(s).expect("valid room")
    }

    fn decision(allow: bool, ttl: Option<u64>) -> AccessDecision {
        AccessDecision {
            allow,
            cache_ttl: ttl.map(Duration::from_secs),
        }
    }

    #[test]
    fn answers_are_kept_for_their_ttl_only() {
        let mut cache = AccessCache::default();
        let now = Instant::now();
        let chat = room("chat:9");
        cache.put(&chat, Action::Join, decision(true, Some(30)), now);
        cache.put(
            &chat,
            Action::Send("typing"),
            decision(false, Some(30)),
            now,
        );
        cache.put(&room("chat:8"), Action::Join, decision(true, None), now);
        assert_eq!(cache.get(&chat, Action::Join, now), Some(true));
        assert_eq!(cache.get(&chat, Action::Send("typing"), now), Some(false));
        assert_eq!(cache.get(&chat, Action::Send("message"), now), None);
        assert_eq!(
            cache.get(&room("chat:8"), Action::Join, now),
            None,
            "no ttl, no cache"
        );
        let later = now + Duration::from_secs(31);
        assert_eq!(cache.get(&chat, Action::Join, later), None);
        assert_eq!(cache.len(), 1, "expired answers are dropped when looked up");
    }

    #[test]
    fn the_cache_is_bounded_and_evicts_the_oldest() {
        let mut cache = AccessCache::default();
        let now = Instant::now();
        for i in 0..MAX_CACHED_ANSWERS + 10 {
            cache.put(
                &room(&format!("chat:{i}")),
                Action::Join,
                decision(true, Some(60)),
                now,
            );
        }
        assert_eq!(cache.len(), MAX_CACHED_ANSWERS);
        assert_eq!(cache.get(&room("chat:0"), Action::Join, now), None);
        assert_eq!(cache.get(&room("chat:9"), Action::Join, now), None);
        assert_eq!(cache.get(&room("chat:10"), Action::Join, now), Some(true));
        // A refreshed answer counts as new.
        cache.put(
            &room("chat:10"),
            Action::Join,
            decision(false, Some(60)),
            now,
        );
        cache.put(&room("chat:x"), Action::Join, decision(true, Some(60)), now);
        assert_eq!(cache.get(&room("chat:10"), Action::Join, now), Some(false));
        assert_eq!(cache.get(&room("chat:11"), Action::Join, now), None);
    }
}
