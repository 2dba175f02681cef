//! `Sec-WebSocket-Protocol` on `/ws` (RFC 6455 4.2.2): which encoding of
//! the client protocol a connection speaks. Herald speaks
//! `herald.v1.json` and `herald.v1.msgpack`; it takes the first of the
//! client's offers it speaks (the client orders them by preference) and
//! names it in the answer. A request that offers none of them, or no
//! subprotocol at all, gets Herald JSON and no header, as before
//! subprotocols existed (a browser that offered only unknown ones then
//! fails the handshake itself, as RFC 6455 says it must).

use axum::http::{header, HeaderMap, HeaderValue};
use herald_protocol::{codec_of_subprotocol, ClientCodec, HERALD_JSON};

/// The codec a connection speaks, and the subprotocol to answer with.
pub(crate) struct Negotiated {
    /// The connection's codec.
    pub(crate) codec: &'static dyn ClientCodec,
    /// The `Sec-WebSocket-Protocol` answer, when the client offered one
    /// Herald speaks.
    pub(crate) answer: Option<HeaderValue>,
}

/// Picks the connection's codec from the request's offers.
pub(crate) fn negotiate(headers: &HeaderMap) -> Negotiated {
    let offers = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim);
    for offer in offers {
        if let Some(codec) = codec_of_subprotocol(offer) {
            return Negotiated {
                codec,
                answer: HeaderValue::from_str(offer).ok(),
            };
        }
    }
    Negotiated {
        codec: &HERALD_JSON,
        answer: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pick(values: &[&str]) -> (&'static str, Option<String>) {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(
                header::SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_str(v).expect("header"),
            );
        }
        let n = negotiate(&headers);
        let answer = n.answer.map(|a| a.to_str().expect("ascii").to_owned());
        (n.codec.name(), answer)
    }

    #[test]
    fn the_clients_first_supported_offer_wins() {
        assert_eq!(pick(&[]), ("json", None));
        assert_eq!(pick(&["mqtt, wamp"]), ("json", None));
        assert_eq!(
            pick(&["herald.v1.msgpack"]),
            ("msgpack", Some("herald.v1.msgpack".into()))
        );
        assert_eq!(
            pick(&["mqtt , herald.v1.json, herald.v1.msgpack"]),
            ("json", Some("herald.v1.json".into()))
        );
        assert_eq!(
            pick(&["x", "herald.v1.msgpack,herald.v1.json"]),
            ("msgpack", Some("herald.v1.msgpack".into()))
        );
    }
}
