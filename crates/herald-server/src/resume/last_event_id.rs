//! The positions text: the position of every room of a connection, so
//! that one SSE `Last-Event-ID` (or one Socket.IO CONNECT `offset`)
//! resumes all of them.
//!
//! Format: entries `room~epoch~offset` joined by `,`, in room-name order,
//! e.g. `global~9f1c2a7e55d04b13~0,user:42~4be0f2e1aa6c9d07~17`. Neither `~`
//! nor `,` can occur in a room name or an epoch, so the format needs no
//! escaping and stays readable in a browser's devtools.

use herald_core::RoomName;
use herald_protocol::StreamPosition;
use std::collections::BTreeMap;

/// Longest `Last-Event-ID` accepted (256 rooms of long names fit).
pub(crate) const MAX_LAST_EVENT_ID: usize = 96 * 1024;
/// Longest epoch accepted.
const MAX_EPOCH: usize = 64;

/// Positions of the rooms of one stream, by room name.
pub(crate) type Positions = BTreeMap<RoomName, StreamPosition>;

/// Encodes every room's position.
pub(crate) fn encode(positions: &Positions) -> String {
    let mut out = String::with_capacity(positions.len() * 48);
    encode_into(positions, &mut out);
    out
}

/// [`encode`], appended to `out`. The text needs no escaping in JSON:
/// room names, epochs and offsets hold no quote, backslash or control
/// character.
pub(crate) fn encode_into(positions: &Positions, out: &mut String) {
    for (i, (room, p)) in positions.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(room.as_str());
        out.push('~');
        out.push_str(&p.epoch);
        out.push('~');
        out.push_str(itoa(p.offset, &mut [0u8; 20]));
    }
}

/// `n` in decimal, written into `buf` (no allocation per entry).
pub(crate) fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[i..]).unwrap_or("0")
}

/// Parses a `Last-Event-ID`; the error names the bad entry.
pub(crate) fn parse(text: &str) -> Result<Positions, String> {
    if text.len() > MAX_LAST_EVENT_ID {
        return Err(format!(
            "Last-Event-ID is longer than {MAX_LAST_EVENT_ID} bytes"
        ));
    }
    let mut positions = Positions::new();
    if text.trim().is_empty() {
        return Ok(positions);
    }
    for (i, entry) in text.split(',').enumerate() {
        let bad = |why: &str| {
            format!(
                "Last-Event-ID entry {} (`{}`): {why}",
                i + 1,
                shorten(entry)
            )
        };
        let mut parts = entry.split('~');
        let (Some(room), Some(epoch), Some(offset), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("expected room~epoch~offset"));
        };
        let room = RoomName::parse(room).map_err(|e| bad(&e.to_string()))?;
        if epoch.is_empty()
            || epoch.len() > MAX_EPOCH
            || !epoch.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(bad("epoch must be 1 to 64 letters or digits"));
        }
        let offset: u64 = offset
            .parse()
            .map_err(|_| bad("offset must be a non-negative integer"))?;
        positions.insert(room, StreamPosition::new(epoch, offset));
    }
    Ok(positions)
}

fn shorten(s: &str) -> String {
    let mut out: String = s.chars().take(80).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(s: &str) -> RoomName {
        RoomName::parse(s).expect("room")
    }

    #[test]
    fn round_trips() {
        let mut p = Positions::new();
        p.insert(room("user:42"), StreamPosition::new("abc123", 17));
        p.insert(room("global"), StreamPosition::new("ff00", 0));
        let id = encode(&p);
        assert_eq!(id, "global~ff00~0,user:42~abc123~17");
        assert_eq!(parse(&id), Ok(p));
    }

    #[test]
    fn empty_means_no_positions() {
        assert_eq!(parse(""), Ok(Positions::new()));
    }

    #[test]
    fn malformed_entries_are_named() {
        for (text, needle) in [
            ("garbage", "expected room~epoch~offset"),
            ("a~b", "expected room~epoch~offset"),
            ("a~b~c~d", "expected room~epoch~offset"),
            ("bad room~e~1", "forbidden character"),
            ("r~~1", "epoch"),
            ("r~e-1~1", "epoch"),
            ("r~e~-1", "offset"),
            ("r~e~1,x", "entry 2"),
        ] {
            let err = parse(text).expect_err(text);
            assert!(err.contains(needle), "{text}: {err}");
        }
        assert!(parse(&"a".repeat(MAX_LAST_EVENT_ID + 1)).is_err());
    }
}
