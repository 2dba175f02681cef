//! permessage-deflate (RFC 7692), server side: the negotiation here, the
//! compressor and inflater in [`zip`].
//!
//! Herald always answers `server_no_context_takeover` and
//! `client_no_context_takeover` (RFC 7692 7.1.1.1 and 7.1.1.2 let the
//! server add both), so every message in either direction is compressed on
//! its own: an event is deflated once and the same bytes go to every
//! recipient with the same window (cached on the publication), client
//! messages are inflated with a reusable per-thread inflater, and a
//! connection keeps nothing but the few bytes of [`Deflate`].

pub(crate) mod zip;

use crate::config::CompressionConfig;
use axum::http::{header, HeaderMap, HeaderValue};

/// The extension's token.
const NAME: &str = "permessage-deflate";

/// What a connection negotiated: all its compression state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Deflate {
    /// The raw-deflate window of server messages, 9..=15.
    pub(crate) window_bits: u8,
    /// zlib level, 1..=9.
    pub(crate) level: u8,
    /// Smaller frames go uncompressed.
    pub(crate) min_bytes: u32,
}

/// Accepts the first acceptable permessage-deflate offer in the request's
/// `Sec-WebSocket-Extensions`, when compression is enabled: the
/// connection's settings and the answer header. Malformed or unsupported
/// offers are skipped (the extension declined), never an error.
pub(crate) fn negotiate(
    headers: &HeaderMap,
    config: &CompressionConfig,
) -> Option<(Deflate, HeaderValue)> {
    if !config.enabled {
        return None;
    }
    let offers = headers
        .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','));
    for offer in offers {
        let Some(window_bits) = accept(offer) else {
            continue;
        };
        let mut answer = format!("{NAME}; server_no_context_takeover; client_no_context_takeover");
        if let Some(bits) = window_bits {
            answer.push_str(&format!("; server_max_window_bits={bits}"));
        }
        let value = HeaderValue::from_str(&answer).ok()?;
        let deflate = Deflate {
            window_bits: window_bits.unwrap_or(15),
            level: config.level.clamp(1, 9) as u8,
            min_bytes: u32::try_from(config.min_bytes).unwrap_or(u32::MAX),
        };
        crate::ws::deflate::zip::count_negotiated();
        return Some((deflate, value));
    }
    None
}

/// Whether one offer (`permessage-deflate; param; ...`) is acceptable:
/// `Some(server_max_window_bits asked)` when it is, `None` when it is not
/// this extension, is malformed, or asks what zlib cannot do.
fn accept(offer: &str) -> Option<Option<u8>> {
    let mut parts = offer.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case(NAME) {
        return None;
    }
    let mut seen = [false; 4];
    let mut server_bits = None;
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(unquote(v.trim())?)),
            None => (param, None),
        };
        let index = match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" => 0,
            "client_no_context_takeover" => 1,
            "server_max_window_bits" => 2,
            "client_max_window_bits" => 3,
            // Unknown parameters make the offer unacceptable (7.1).
            _ => return None,
        };
        if std::mem::replace(&mut seen[index], true) {
            // A parameter twice is malformed (7.1).
            return None;
        }
        match (index, value) {
            (0 | 1, None) => {}
            (2, Some(v)) => {
                let bits = window_bits(v)?;
                // zlib's raw deflate has no 256-byte window (it would use
                // 512, which this client could not read): decline.
                if bits == 8 {
                    return None;
                }
                server_bits = Some(bits);
            }
            (3, None) => {}
            // The client's window does not matter to an inflater with a
            // 15-bit window; the value must still be valid.
            (3, Some(v)) => {
                window_bits(v)?;
            }
            _ => return None,
        }
    }
    Some(server_bits)
}

/// A quoted-string value without its quotes (7.1: values may be quoted).
fn unquote(v: &str) -> Option<&str> {
    match v.strip_prefix('"') {
        Some(inner) => inner.strip_suffix('"'),
        None => Some(v),
    }
}

/// A window-bits value: 8..=15, digits only, no leading zero.
fn window_bits(v: &str) -> Option<u8> {
    if v.is_empty() || v.len() > 2 || v.starts_with('0') || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let bits: u8 = v.parse().ok()?;
    (8..=15).contains(&bits).then_some(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(values: &[&str]) -> Option<(Deflate, String)> {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(
                header::SEC_WEBSOCKET_EXTENSIONS,
                HeaderValue::from_str(v).expect("header"),
            );
        }
        let config = CompressionConfig {
            enabled: true,
            ..CompressionConfig::default()
        };
        negotiate(&headers, &config).map(|(d, v)| (d, v.to_str().expect("ascii").to_owned()))
    }

    #[test]
    fn offers_are_parsed_and_answered() {
        let (d, answer) = offer(&["permessage-deflate; client_max_window_bits"]).expect("accepted");
        assert_eq!(d.window_bits, 15);
        assert_eq!(
            answer,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        let (d, answer) =
            offer(&["permessage-deflate; server_max_window_bits=\"10\""]).expect("accepted");
        assert_eq!(d.window_bits, 10);
        assert!(answer.ends_with("; server_max_window_bits=10"));
        // The first acceptable offer of several wins, across header lines.
        let (d, _) = offer(&[
            "x-webkit-deflate-frame, permessage-deflate; server_max_window_bits=8",
            "permessage-deflate; bogus, permessage-deflate; server_max_window_bits=12",
        ])
        .expect("accepted");
        assert_eq!(d.window_bits, 12);
    }

    #[test]
    fn malformed_offers_are_declined() {
        for bad in [
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=09",
            "permessage-deflate; server_max_window_bits=8",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; unknown",
            "deflate-frame",
        ] {
            assert!(offer(&[bad]).is_none(), "{bad} must be declined");
        }
        assert!(offer(&[]).is_none());
        let off = CompressionConfig::default();
        let mut headers = HeaderMap::new();
        headers.insert(
            header::SEC_WEBSOCKET_EXTENSIONS,
            HeaderValue::from_static("permessage-deflate"),
        );
        assert!(negotiate(&headers, &off).is_none(), "off by default");
    }
}
