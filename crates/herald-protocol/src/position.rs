//! Positions in a room's stream.

use serde::{Deserialize, Serialize};

/// Where a room's stream stands: its `epoch` (an id that changes whenever the
/// stored history is lost) and the `offset` of its last event (0 when none).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct StreamPosition {
    /// Identifies one continuous life of the stream.
    pub epoch: String,
    /// Offset of the last event; offsets count up by one from 1.
    pub offset: u64,
}

impl StreamPosition {
    /// A position in `epoch` at `offset`.
    pub fn new(epoch: impl Into<String>, offset: u64) -> Self {
        Self {
            epoch: epoch.into(),
            offset,
        }
    }
}
