//! The trace context a publication carries from its publisher through the
//! broker to every node's fan-out: a W3C Trace Context `traceparent`, kept
//! as plain bytes so that core and the engines need no tracing library.

use std::fmt::Write as _;

/// A W3C trace context (`traceparent`): the trace, the parent span, and the
/// trace flags. Engines only carry it; spans are made by `herald-telemetry`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceContext {
    /// The trace id, never all zeros.
    pub trace_id: [u8; 16],
    /// The parent span id, never all zeros.
    pub span_id: [u8; 8],
    /// W3C trace flags; bit 0 is "sampled".
    pub flags: u8,
}

/// The "sampled" bit of [`TraceContext::flags`].
pub const FLAG_SAMPLED: u8 = 0x01;

impl TraceContext {
    /// Parses a `traceparent` value (`00-<32 hex>-<16 hex>-<2 hex>`).
    ///
    /// Returns `None` for anything else, including all-zero ids, version
    /// `ff`, and upper-case hex, as the W3C spec asks: a receiver ignores a
    /// malformed header and starts a new trace. Versions above 00 are read
    /// by their version-00 prefix, as the spec's forward-compatibility rule
    /// says, provided what follows it starts with `-`.
    pub fn parse_traceparent(value: &str) -> Option<Self> {
        let value = value.trim();
        let bytes = value.as_bytes();
        if bytes.len() < 55 {
            return None;
        }
        let version = hex_byte(&bytes[0..2])?;
        if version == 0xff || bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
            return None;
        }
        match version {
            0 if bytes.len() != 55 => return None,
            0 => {}
            _ if bytes.len() > 55 && bytes[55] != b'-' => return None,
            _ => {}
        }
        let mut trace_id = [0u8; 16];
        for (i, out) in trace_id.iter_mut().enumerate() {
            *out = hex_byte(&bytes[3 + 2 * i..5 + 2 * i])?;
        }
        let mut span_id = [0u8; 8];
        for (i, out) in span_id.iter_mut().enumerate() {
            *out = hex_byte(&bytes[36 + 2 * i..38 + 2 * i])?;
        }
        let flags = hex_byte(&bytes[53..55])?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            span_id,
            flags,
        })
    }

    /// The `traceparent` value (version 00, lower-case hex).
    pub fn to_traceparent(&self) -> String {
        let mut out = String::with_capacity(55);
        out.push_str("00-");
        for b in self.trace_id {
            let _ = write!(out, "{b:02x}");
        }
        out.push('-');
        for b in self.span_id {
            let _ = write!(out, "{b:02x}");
        }
        let _ = write!(out, "-{:02x}", self.flags);
        out
    }

    /// Whether the publisher (or the node) chose to record this trace.
    pub fn is_sampled(&self) -> bool {
        self.flags & FLAG_SAMPLED != 0
    }
}

/// Two lower-case hex digits as a byte (the spec forbids upper case).
fn hex_byte(pair: &[u8]) -> Option<u8> {
    fn digit(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    match pair {
        [hi, lo] => Some((digit(*hi)? << 4) | digit(*lo)?),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::TraceContext;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn round_trips_a_valid_traceparent() {
        let ctx = TraceContext::parse_traceparent(VALID).expect("valid");
        assert_eq!(ctx.trace_id[0], 0x4b);
        assert_eq!(ctx.trace_id[15], 0x36);
        assert_eq!(
            ctx.span_id,
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert!(ctx.is_sampled());
        assert_eq!(ctx.to_traceparent(), VALID);
        let unsampled =
            TraceContext::parse_traceparent(&VALID.replace("-01", "-00")).expect("valid");
        assert!(!unsampled.is_sampled());
    }

    #[test]
    fn rejects_malformed_values() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473x-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
        ] {
            assert_eq!(TraceContext::parse_traceparent(bad), None, "{bad}");
        }
    }

    #[test]
    fn reads_a_later_version_by_its_version_00_prefix() {
        let future = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-whatever";
        let ctx = TraceContext::parse_traceparent(future).expect("forward compatible");
        assert_eq!(ctx.to_traceparent(), VALID);
        let glued = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x";
        assert_eq!(TraceContext::parse_traceparent(glued), None);
    }
}
