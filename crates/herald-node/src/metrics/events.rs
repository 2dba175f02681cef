//! Publishes and deliveries by namespace and event name
//! (`herald_events_published_total`, `herald_events_delivered_total`).
//!
//! Both labels are bounded. `namespace` is one of the configured
//! namespaces, or [`OTHER`] for a room outside all of them. `event` is one
//! of the first `metrics.max_event_names` distinct names this node saw
//! (first come, first kept), or [`OTHER`] for every later new name.
//!
//! Per publication this costs one map lookup for the namespace and one
//! under a read lock for the event name, then an increment of a cached
//! counter handle; the write lock is taken only to admit a new name.

use metrics::{counter, describe_counter, Counter};
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

/// The label of a room outside every configured namespace, and of event
/// names past the cap.
pub const OTHER: &str = "other";
/// `metrics.max_event_names` unless configured.
pub const DEFAULT_MAX_EVENT_NAMES: usize = 100;

const PUBLISHED: &str = "herald_events_published_total";
const DELIVERED: &str = "herald_events_delivered_total";

/// The cap nodes started from now on use; one process serves one node, so
/// the cap is the process's (set by the server from its config).
static MAX_EVENT_NAMES: AtomicUsize = AtomicUsize::new(DEFAULT_MAX_EVENT_NAMES);

/// Sets `metrics.max_event_names` for the nodes started after this call
/// (0: every event is counted as [`OTHER`]).
pub fn set_max_event_names(n: usize) {
    MAX_EVENT_NAMES.store(n, Ordering::Relaxed);
}

/// The two counters of one (namespace, event) pair, made on first use.
#[derive(Default)]
struct Pair {
    published: OnceLock<Counter>,
    delivered: OnceLock<Counter>,
}

/// One event label: its counters per namespace (the last is [`OTHER`]).
struct EventSlot {
    event: String,
    per_namespace: Box<[Pair]>,
}

impl EventSlot {
    fn new(event: &str, namespaces: usize) -> Self {
        Self {
            event: event.to_owned(),
            per_namespace: (0..=namespaces).map(|_| Pair::default()).collect(),
        }
    }
}

/// The per-node counters of publishes and deliveries by namespace and event.
pub(crate) struct EventCounters {
    /// Configured namespace name to its index in `labels`.
    namespaces: HashMap<String, usize>,
    /// Namespace labels by index; the last is [`OTHER`].
    labels: Box<[String]>,
    names: RwLock<HashMap<String, Arc<EventSlot>>>,
    other: Arc<EventSlot>,
    cap: usize,
}

impl EventCounters {
    /// Counters for the namespaces `names`, with the current cap.
    pub(crate) fn new<'a>(names: impl IntoIterator<Item = &'a String>) -> Self {
        describe();
        let mut labels: Vec<String> = names.into_iter().cloned().collect();
        let namespaces = labels
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i))
            .collect::<HashMap<_, _>>();
        labels.push(OTHER.to_owned());
        let count = namespaces.len();
        Self {
            namespaces,
            labels: labels.into(),
            names: RwLock::new(HashMap::new()),
            other: Arc::new(EventSlot::new(OTHER, count)),
            cap: MAX_EVENT_NAMES.load(Ordering::Relaxed),
        }
    }

    fn namespace_index(&self, namespace: &str) -> usize {
        self.namespaces
            .get(namespace)
            .copied()
            .unwrap_or(self.labels.len() - 1)
    }

    /// Runs `f` on the slot of `event`, admitting it while under the cap.
    fn with_slot<R>(&self, event: &str, f: impl FnOnce(&EventSlot) -> R) -> R {
        {
            let names = self.names.read();
            if let Some(slot) = names.get(event) {
                return f(slot);
            }
            // Names are never removed: once full, a new name is `other`
            // without queueing every such publish on the write lock.
            if names.len() >= self.cap {
                drop(names);
                return f(&self.other);
            }
        }
        let slot = {
            let mut names = self.names.write();
            match names.get(event) {
                Some(slot) => slot.clone(),
                None if names.len() < self.cap => {
                    let slot = Arc::new(EventSlot::new(event, self.namespaces.len()));
                    names.insert(event.to_owned(), slot.clone());
                    slot
                }
                None => self.other.clone(),
            }
        };
        f(&slot)
    }

    fn counter<'s>(
        &self,
        slot: &'s EventSlot,
        ns: usize,
        pick: impl Fn(&Pair) -> &OnceLock<Counter>,
        name: &'static str,
    ) -> &'s Counter {
        let labels = &self.labels;
        pick(&slot.per_namespace[ns]).get_or_init(
            || counter!(name, "namespace" => labels[ns].clone(), "event" => slot.event.clone()),
        )
    }

    /// Counts one event of `event` accepted by the broker in `namespace`.
    #[cfg(test)]
    fn published(&self, namespace: &str, event: &str) {
        self.published_counter(namespace, event).increment(1);
    }

    /// The counter of events of `event` accepted in `namespace`, taken
    /// before the publish (which consumes the event name) and incremented
    /// once the broker accepted it.
    pub(crate) fn published_counter(&self, namespace: &str, event: &str) -> Counter {
        let ns = self.namespace_index(namespace);
        self.with_slot(event, |slot| {
            self.counter(slot, ns, |p| &p.published, PUBLISHED).clone()
        })
    }

    /// Counts `recipients` frames of one publication queued by live fan-out.
    pub(crate) fn delivered(&self, namespace: &str, event: &str, recipients: usize) {
        if recipients == 0 {
            return;
        }
        let ns = self.namespace_index(namespace);
        self.with_slot(event, |slot| {
            self.counter(slot, ns, |p| &p.delivered, DELIVERED)
                .increment(recipients as u64);
        });
    }

    /// Event names admitted so far (for tests).
    #[cfg(test)]
    fn admitted(&self) -> usize {
        self.names.read().len()
    }
}

fn describe() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        describe_counter!(
            PUBLISHED,
            "Events accepted by the broker from this node, by namespace and event (names past metrics.max_event_names count as other)"
        );
        describe_counter!(
            DELIVERED,
            "Event frames queued to recipients by this node's live fan-out, by namespace and event"
        );
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(cap: usize) -> EventCounters {
        let names = ["chat".to_owned(), "user".to_owned()];
        let mut c = EventCounters::new(names.iter());
        c.cap = cap;
        c
    }

    #[test]
    fn unknown_namespaces_fold_into_other() {
        let c = counters(10);
        assert_eq!(c.namespace_index("chat"), 0);
        assert_eq!(c.namespace_index("user"), 1);
        assert_eq!(c.labels[c.namespace_index("secret")], OTHER);
    }

    #[test]
    fn names_past_the_cap_fold_into_other() {
        let c = counters(2);
        c.published("chat", "a");
        c.published("chat", "b");
        c.published("chat", "c");
        c.delivered("user", "a", 3);
        assert_eq!(c.admitted(), 2, "first come, first kept");
        let event = |name: &str| c.with_slot(name, |s| s.event.clone());
        assert_eq!(event("a"), "a");
        assert_eq!(event("b"), "b");
        assert_eq!(event("c"), OTHER);
        assert_eq!(event("d"), OTHER);
    }

    #[test]
    fn a_zero_cap_counts_every_event_as_other() {
        let c = counters(0);
        c.published("chat", "a");
        assert_eq!(c.admitted(), 0);
        assert_eq!(c.with_slot("a", |s| s.event.clone()), OTHER);
    }
}
