//! Priorities under backpressure: what a node may do with a recipient's
//! queued events when its send queue is full (docs/protocol.md,
//! "Priorities under backpressure").
//!
//! A namespace chooses an [`Overflow`] policy; an event is *critical* when
//! its publisher said so or its name is in the namespace's
//! `critical_events`. Fan-out resolves both once per event into the
//! publication's [`PolicyCell`], so the queue's overflow path reads them
//! without any per-recipient lookup.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};

/// Longest `conflation_key` accepted, in bytes.
pub const MAX_CONFLATION_KEY_BYTES: usize = 200;

/// What happens to a connection whose send queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// The connection is cut (4011), today's behaviour.
    #[default]
    Disconnect,
    /// Queued non-critical events are dropped, oldest first, and the client
    /// is told where each room's gap starts (`events_dropped`).
    Drop,
    /// Queued events superseded by a newer one with the same room and
    /// `conflation_key` are removed; if that is not enough, as `Drop`.
    Conflate,
}

/// An `overflow` value that is not one of the three.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an overflow policy; expected disconnect, drop or conflate")]
pub struct OverflowError(pub String);

impl FromStr for Overflow {
    type Err = OverflowError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "disconnect" => Ok(Self::Disconnect),
            "drop" => Ok(Self::Drop),
            "conflate" => Ok(Self::Conflate),
            other => Err(OverflowError(other.to_owned())),
        }
    }
}

impl fmt::Display for Overflow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Disconnect => "disconnect",
            Self::Drop => "drop",
            Self::Conflate => "conflate",
        })
    }
}

/// A `conflation_key` that is empty or too long.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("conflation_key must be 1 to {MAX_CONFLATION_KEY_BYTES} bytes")]
pub struct ConflationKeyError;

/// Checks a publisher's `conflation_key`.
pub fn check_conflation_key(key: &str) -> Result<(), ConflationKeyError> {
    if key.is_empty() || key.len() > MAX_CONFLATION_KEY_BYTES {
        return Err(ConflationKeyError);
    }
    Ok(())
}

/// One event's treatment under backpressure, as fan-out resolved it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EventPolicy {
    /// The namespace's policy.
    pub overflow: Overflow,
    /// Never dropped or conflated.
    pub critical: bool,
}

impl EventPolicy {
    /// Whether a full queue may drop or conflate this event.
    pub fn sheddable(self) -> bool {
        !self.critical && self.overflow != Overflow::Disconnect
    }
}

/// A publication's [`EventPolicy`], written once by fan-out (before any
/// recipient's queue sees the event) and read by queues that overflow.
/// Unset reads as the default: `disconnect`, not critical.
#[derive(Debug, Default)]
pub struct PolicyCell(AtomicU8);

const CRITICAL: u8 = 0b100;

impl PolicyCell {
    /// Records the resolved policy.
    pub fn set(&self, policy: EventPolicy) {
        let overflow = match policy.overflow {
            Overflow::Disconnect => 0,
            Overflow::Drop => 1,
            Overflow::Conflate => 2,
        };
        let critical = if policy.critical { CRITICAL } else { 0 };
        self.0.store(overflow | critical, Ordering::Release);
    }

    /// The recorded policy.
    pub fn get(&self) -> EventPolicy {
        let bits = self.0.load(Ordering::Acquire);
        EventPolicy {
            overflow: match bits & 0b11 {
                1 => Overflow::Drop,
                2 => Overflow::Conflate,
                _ => Overflow::Disconnect,
            },
            critical: bits & CRITICAL != 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_parses_and_names_itself() {
        for o in [Overflow::Disconnect, Overflow::Drop, Overflow::Conflate] {
            assert_eq!(o.to_string().parse::<Overflow>(), Ok(o));
        }
        assert!("Drop".parse::<Overflow>().is_err());
    }

    #[test]
    fn policy_cell_round_trips() {
        let cell = PolicyCell::default();
        assert_eq!(cell.get(), EventPolicy::default());
        assert!(!cell.get().sheddable());
        for overflow in [Overflow::Disconnect, Overflow::Drop, Overflow::Conflate] {
            for critical in [false, true] {
                let p = EventPolicy { overflow, critical };
                cell.set(p);
                assert_eq!(cell.get(), p);
                assert_eq!(p.sheddable(), !critical && overflow != Overflow::Disconnect);
            }
        }
    }

    #[test]
    fn conflation_keys_are_bounded() {
        assert!(check_conflation_key("run-7").is_ok());
        assert!(check_conflation_key("").is_err());
        assert!(check_conflation_key(&"k".repeat(MAX_CONFLATION_KEY_BYTES + 1)).is_err());
    }
}
