//! Namespace rules (PROTOCOL.md 4): who may join and send, presence, history
//! and auto-join, per namespace (the part of a room name before the first `:`).

use crate::{Identity, RoomName};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Who passes a join or send rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// Every authenticated user.
    Any,
    /// Users whose `sub` equals the room id (`user:42` for `sub` 42) or
    /// its first `:`-separated segment (`user:42:operation:7`).
    Owner,
    /// Users whose claim of that name is an array listing the room id or
    /// its first `:`-separated segment (`collection:c5:status` for `c5`).
    Claim(String),
    /// Users holding at least one of these roles.
    Roles(Vec<String>),
    /// Nobody (except role `admin`, which passes every rule).
    None,
    /// The backend decides (`proxy.join_url` / `proxy.send_url`): the node
    /// asks its [`crate::AccessProxy`]; [`Rule::allows`] alone says no.
    Proxy,
}

/// A rule string that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a rule; expected any, owner, claim:<name>, role:<r1>,<r2>, proxy or none")]
pub struct RuleError(pub String);

impl FromStr for Rule {
    type Err = RuleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || RuleError(s.to_owned());
        match s {
            "any" => Ok(Self::Any),
            "owner" => Ok(Self::Owner),
            "none" => Ok(Self::None),
            "proxy" => Ok(Self::Proxy),
            _ => {
                if let Some(name) = s.strip_prefix("claim:") {
                    if name.is_empty() {
                        return Err(bad());
                    }
                    Ok(Self::Claim(name.to_owned()))
                } else if let Some(list) = s.strip_prefix("role:") {
                    let roles: Vec<String> = list
                        .split(',')
                        .map(str::trim)
                        .filter(|r| !r.is_empty())
                        .map(str::to_owned)
                        .collect();
                    if roles.is_empty() {
                        return Err(bad());
                    }
                    Ok(Self::Roles(roles))
                } else {
                    Err(bad())
                }
            }
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("any"),
            Self::Owner => f.write_str("owner"),
            Self::Claim(c) => write!(f, "claim:{c}"),
            Self::Roles(r) => write!(f, "role:{}", r.join(",")),
            Self::None => f.write_str("none"),
            Self::Proxy => f.write_str("proxy"),
        }
    }
}

impl Serialize for Rule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Rule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Rule {
    /// Whether `who` passes this rule for `room` without asking anyone:
    /// false for [`Rule::Proxy`] unless `who` is an admin (the node asks
    /// the backend then).
    pub fn allows(&self, who: &Identity, room: &RoomName) -> bool {
        if who.is_admin() {
            return true;
        }
        match self {
            Self::Any => true,
            Self::Owner => scopes(room).any(|id| id == who.user_id),
            Self::Claim(name) => scopes(room).any(|id| who.claim_lists(name, id)),
            Self::Roles(roles) => roles.iter().any(|r| who.has_role(r)),
            Self::None | Self::Proxy => false,
        }
    }

    /// Whether this rule asks the backend.
    pub fn is_proxy(&self) -> bool {
        matches!(self, Self::Proxy)
    }
}

/// The ids `owner` and `claim:` rules match for `room`: its whole id, and
/// the id's first `:`-separated segment when there is more after it, so a
/// room scoped below an id (`user:42:operation:7`) belongs to that id.
fn scopes(room: &RoomName) -> impl Iterator<Item = &str> {
    let id = room.id();
    let first = id.split_once(':').map(|(first, _)| first);
    std::iter::once(id).chain(first.filter(|f| !f.is_empty()))
}

/// The rules of one namespace.
#[derive(Debug, Clone, PartialEq)]
pub struct NamespaceConfig {
    /// Who may join.
    pub join: Rule,
    /// Who may `send_message`.
    pub send: Rule,
    /// Whether members see each other (`member_joined` / `member_left`).
    pub presence: bool,
    /// How many events the room keeps for recovery.
    pub history_size: usize,
    /// How long kept events live.
    pub history_ttl: Duration,
    /// Bytes of history a room keeps; `None` uses the node's
    /// `limits.history_room_bytes`.
    pub history_max_bytes: Option<usize>,
    /// A room joined at connect: `user:{sub}` style or a fixed name.
    pub auto_join: Option<String>,
    /// What happens to a connection whose send queue is full.
    pub overflow: crate::Overflow,
    /// Event names always treated as critical (never dropped or conflated).
    pub critical_events: Vec<String>,
}

impl Default for NamespaceConfig {
    fn default() -> Self {
        Self {
            join: Rule::None,
            send: Rule::None,
            presence: false,
            history_size: 0,
            history_ttl: Duration::ZERO,
            history_max_bytes: None,
            auto_join: None,
            overflow: crate::Overflow::Disconnect,
            critical_events: Vec::new(),
        }
    }
}

/// Every namespace's rules. Rooms of unknown namespaces can be joined by
/// nobody but admins.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Namespaces {
    map: BTreeMap<String, NamespaceConfig>,
    fallback: NamespaceConfig,
}

impl Namespaces {
    /// No namespaces at all.
    pub fn empty() -> Self {
        Self::default()
    }

    /// The namespaces Herald ships (PROTOCOL.md 4).
    pub fn shipped() -> Self {
        let hour = Duration::from_secs(3600);
        let mut ns = Self::empty();
        ns.insert(
            "user",
            NamespaceConfig {
                join: Rule::Owner,
                history_size: 100,
                history_ttl: 24 * hour,
                auto_join: Some("user:{sub}".into()),
                ..Default::default()
            },
        );
        ns.insert(
            "global",
            NamespaceConfig {
                join: Rule::Any,
                auto_join: Some("global".into()),
                ..Default::default()
            },
        );
        for (name, claim) in [("project", "projects"), ("agent", "agents")] {
            ns.insert(
                name,
                NamespaceConfig {
                    join: Rule::Claim(claim.into()),
                    presence: true,
                    history_size: 100,
                    history_ttl: hour,
                    ..Default::default()
                },
            );
        }
        ns.insert(
            "collection",
            NamespaceConfig {
                join: Rule::Claim("collections".into()),
                history_size: 100,
                history_ttl: hour,
                ..Default::default()
            },
        );
        ns.insert(
            "system",
            NamespaceConfig {
                join: Rule::Any,
                history_size: 10,
                history_ttl: Duration::from_secs(300),
                ..Default::default()
            },
        );
        ns
    }

    /// Adds or replaces a namespace.
    pub fn insert(&mut self, name: impl Into<String>, config: NamespaceConfig) {
        self.map.insert(name.into(), config);
    }

    /// The namespace named `name`, if configured.
    pub fn get(&self, name: &str) -> Option<&NamespaceConfig> {
        self.map.get(name)
    }

    /// All namespaces, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &NamespaceConfig)> {
        self.map.iter()
    }

    /// The rules for `room` (the fallback, join and send `none`, when its
    /// namespace is unknown).
    pub fn for_room(&self, room: &RoomName) -> &NamespaceConfig {
        self.map.get(room.namespace()).unwrap_or(&self.fallback)
    }

    /// Whether any namespace sheds events or lists critical ones (when
    /// none does, fan-out resolves no policy at all).
    pub fn uses_priorities(&self) -> bool {
        self.map
            .values()
            .chain(std::iter::once(&self.fallback))
            .any(|ns| ns.overflow != crate::Overflow::Disconnect || !ns.critical_events.is_empty())
    }

    /// The claims any `claim:<name>` rule reads. A connection needs to
    /// keep only these of its token's claims.
    pub fn rule_claims(&self) -> std::collections::BTreeSet<String> {
        self.map
            .values()
            .chain(std::iter::once(&self.fallback))
            .flat_map(|ns| [&ns.join, &ns.send])
            .filter_map(|rule| match rule {
                Rule::Claim(name) => Some(name.clone()),
                _ => None,
            })
            .collect()
    }

    /// Whether any namespace (or the fallback) has a `proxy` join or send
    /// rule: such a config needs an access proxy.
    pub fn uses_proxy(&self) -> bool {
        self.map
            .values()
            .chain(std::iter::once(&self.fallback))
            .any(|ns| ns.join.is_proxy() || ns.send.is_proxy())
    }

    /// Whether `who` may join `room` by the rules alone (a `proxy` rule
    /// says no here: see [`Rule::allows`]).
    pub fn can_join(&self, who: &Identity, room: &RoomName) -> bool {
        self.for_room(room).join.allows(who, room)
    }

    /// Whether `who` may send to `room` by the rules alone.
    pub fn can_send(&self, who: &Identity, room: &RoomName) -> bool {
        self.for_room(room).send.allows(who, room)
    }

    /// The rooms `who` joins at connect, in namespace-name order. A template
    /// that yields an invalid name (a `sub` with forbidden bytes) is skipped.
    pub fn auto_join_rooms(&self, who: &Identity) -> Vec<RoomName> {
        let mut rooms: Vec<RoomName> = self
            .map
            .values()
            .filter_map(|ns| ns.auto_join.as_deref())
            .filter_map(|tpl| RoomName::parse(&tpl.replace("{sub}", &who.user_id)).ok())
            .collect();
        rooms.dedup();
        rooms
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn who(sub: &str) -> Identity {
        Identity::new(sub)
    }

    fn room(s: &str) -> RoomName {
        RoomName::parse(s).expect("valid room")
    }

    #[test]
    fn parses_rule_forms() {
        assert_eq!("any".parse(), Ok(Rule::Any));
        assert_eq!("owner".parse(), Ok(Rule::Owner));
        assert_eq!("claim:projects".parse(), Ok(Rule::Claim("projects".into())));
        assert_eq!(
            "role:a, b".parse(),
            Ok(Rule::Roles(vec!["a".into(), "b".into()]))
        );
        assert_eq!("proxy".parse(), Ok(Rule::Proxy));
        assert_eq!(Rule::Proxy.to_string(), "proxy");
        assert!("claim:".parse::<Rule>().is_err());
        assert!("role:".parse::<Rule>().is_err());
        assert!("everyone".parse::<Rule>().is_err());
    }

    #[test]
    fn shipped_rules() {
        let ns = Namespaces::shipped();
        let mut alice = who("alice");
        assert!(ns.can_join(&alice, &room("user:alice")));
        assert!(!ns.can_join(&alice, &room("user:bob")));
        assert!(ns.can_join(&alice, &room("global")));
        assert!(!ns.can_join(&alice, &room("project:7")));
        alice.claims.insert("projects".into(), json!([7, "8"]));
        assert!(ns.can_join(&alice, &room("project:7")));
        assert!(ns.can_join(&alice, &room("project:8")));
        assert!(!ns.can_join(&alice, &room("project:9")));
        assert!(!ns.can_join(&alice, &room("secret:1")), "unknown namespace");
        assert!(!ns.can_send(&alice, &room("system")));
        alice.roles.push("admin".into());
        assert!(ns.can_join(&alice, &room("secret:1")), "admin passes all");
        assert!(ns.can_join(&alice, &room("user:bob")));
    }

    #[test]
    fn auto_join_substitutes_sub() {
        let ns = Namespaces::shipped();
        let rooms = ns.auto_join_rooms(&who("42"));
        let names: Vec<&str> = rooms.iter().map(RoomName::as_str).collect();
        assert_eq!(names, vec!["global", "user:42"]);
        let rooms = ns.auto_join_rooms(&who("bad sub"));
        assert_eq!(rooms.len(), 1, "invalid generated names are skipped");
    }

    #[test]
    fn rule_claims_lists_every_claim_rule() {
        let names: Vec<String> = Namespaces::shipped().rule_claims().into_iter().collect();
        assert_eq!(names, vec!["agents", "collections", "projects"]);
    }

    #[test]
    fn roles_rule() {
        let rule: Rule = "role:editor,owner".parse().expect("rule");
        let mut w = who("x");
        assert!(!rule.allows(&w, &room("a:b")));
        w.roles.push("owner".into());
        assert!(rule.allows(&w, &room("a:b")));
    }

    #[test]
    fn proxy_rule_allows_only_admins_by_itself() {
        let mut w = who("42");
        assert!(!Rule::Proxy.allows(&w, &room("chat:9")));
        w.roles.push("admin".into());
        assert!(Rule::Proxy.allows(&w, &room("chat:9")));
        let mut ns = Namespaces::shipped();
        assert!(!ns.uses_proxy());
        ns.insert(
            "chat",
            NamespaceConfig {
                join: Rule::Proxy,
                ..Default::default()
            },
        );
        assert!(ns.uses_proxy());
    }

    #[test]
    fn owner_matches_the_id_or_its_first_segment() {
        let w = who("42");
        assert!(Rule::Owner.allows(&w, &room("user:42")));
        assert!(Rule::Owner.allows(&w, &room("user:42:operation:7")));
        assert!(Rule::Owner.allows(&w, &room("user:42:")));
        assert!(!Rule::Owner.allows(&w, &room("user:420:operation:7")));
        assert!(!Rule::Owner.allows(&w, &room("user:4:42")));
        assert!(!Rule::Owner.allows(&w, &room("user:operation:42")));
        assert!(!Rule::Owner.allows(&w, &room("user:")));
        // A `sub` holding `:` still owns its exact id.
        let scoped = who("a:b");
        assert!(Rule::Owner.allows(&scoped, &room("user:a:b")));
        assert!(!Rule::Owner.allows(&scoped, &room("user:a")));
    }

    #[test]
    fn claim_matches_the_id_or_its_first_segment() {
        let mut w = who("x");
        w.claims.insert("collections".into(), json!(["c5", 7]));
        let rule = Rule::Claim("collections".into());
        assert!(rule.allows(&w, &room("collection:c5")));
        assert!(rule.allows(&w, &room("collection:c5:status")));
        assert!(rule.allows(&w, &room("collection:7:status:deep")));
        assert!(!rule.allows(&w, &room("collection:c55:status")));
        assert!(!rule.allows(&w, &room("collection:status:c5")));
        assert!(!rule.allows(&w, &room("collection:c6:c5")));
        // Exact ids holding `:` keep matching a claim listing them whole.
        w.claims.insert("collections".into(), json!(["c5:status"]));
        assert!(rule.allows(&w, &room("collection:c5:status")));
        assert!(!rule.allows(&w, &room("collection:c5")));
    }

    #[test]
    fn shipped_namespaces_take_scoped_rooms() {
        let ns = Namespaces::shipped();
        let mut w = who("42");
        w.claims.insert("projects".into(), json!([7]));
        assert!(ns.can_join(&w, &room("user:42:operation:7")));
        assert!(!ns.can_join(&w, &room("user:43:operation:7")));
        assert!(ns.can_join(&w, &room("project:7:board")));
        assert!(!ns.can_join(&w, &room("project:8:board")));
    }
}
