//! The connection type hyper serves: a client's stream (plain TCP or TLS,
//! [`Served`]) that gives hyper's own error answers the API's JSON error
//! body.
//!
//! hyper answers a request it cannot parse (a garbage request line, a
//! request target over 65,534 bytes, more than 100 header fields, a head
//! over its ~400 KB buffer) by itself, before any service runs, with an
//! empty body and no way to configure one. Those answers are recognisable
//! on the way out: a 4xx/5xx head with `content-length: 0` and nothing
//! after it, which Herald's router never writes (every error it answers
//! carries a JSON body, see `ops::json_errors`). This wrapper replaces such
//! a head with the same status, `content-type: application/json` and the
//! JSON body. Everything else passes through untouched.

use super::conn::Served;
use bytes::Bytes;
use herald_protocol::ErrorCode;
use serde_json::json;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A served connection; see the module doc.
pub(crate) struct ServerIo {
    stream: Served,
    /// A rewritten answer not yet fully written, and how much of it was.
    pending: Option<(Bytes, usize)>,
}

impl ServerIo {
    /// Wraps an accepted stream.
    pub(crate) fn new(stream: Served) -> Self {
        Self {
            stream,
            pending: None,
        }
    }

    /// The connection back, for a WebSocket upgrade (hyper wrote only the
    /// 101 head, never rewritten, so nothing is pending).
    pub(crate) fn into_conn(self) -> super::Conn {
        super::Conn::from(self.stream)
    }

    /// Writes what is left of a rewritten answer.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, written)) = &mut self.pending {
            if *written >= bytes.len() {
                self.pending = None;
                break;
            }
            let n = ready!(Pin::new(&mut self.stream).poll_write(cx, &bytes[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(()))
    }

    /// Takes `buf` as written; when it is one of hyper's empty error
    /// answers, queues the JSON version instead.
    fn poll_write_head(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        ready!(self.poll_pending(cx))?;
        match with_json_body(buf) {
            Some(answer) => {
                self.pending = Some((answer, 0));
                // Start writing now; the rest goes out on flush or shutdown,
                // which hyper calls next.
                if let Poll::Ready(Err(e)) = self.poll_pending(cx) {
                    return Poll::Ready(Err(e));
                }
                Poll::Ready(Ok(buf.len()))
            }
            None => Pin::new(&mut self.stream).poll_write(cx, buf),
        }
    }
}

/// The JSON version of `head` when it is a whole 4xx/5xx answer with an
/// empty body (hyper's own), else `None`.
fn with_json_body(head: &[u8]) -> Option<Bytes> {
    let status = head.strip_prefix(b"HTTP/1.1 ")?.get(..3)?;
    if !matches!(status.first(), Some(b'4' | b'5')) || !head.ends_with(b"\r\n\r\n") {
        return None;
    }
    let text = std::str::from_utf8(head).ok()?;
    let body_len = text
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))?;
    if body_len.trim() != "0" || text.matches("\r\n\r\n").count() != 1 {
        return None;
    }
    let code = std::str::from_utf8(status).ok()?.parse::<u16>().ok()?;
    let (code, message) = match code {
        400 => (
            ErrorCode::BadRequest,
            "malformed HTTP/1.1 request (request line or header fields)",
        ),
        414 => (
            ErrorCode::BadRequest,
            "request target over 65534 bytes (hyper's limit)",
        ),
        431 => (
            ErrorCode::BadRequest,
            "over 100 request header fields, or a request head over hyper's ~400 KB buffer",
        ),
        c if c >= 500 => (ErrorCode::Internal, "internal error"),
        _ => (ErrorCode::BadRequest, "request refused"),
    };
    let body = json!({"error": {"code": code, "message": message}}).to_string();
    let mut out = String::with_capacity(head.len() + body.len() + 48);
    for line in text.trim_end().split("\r\n") {
        if !line.starts_with("content-length:") {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("content-type: application/json\r\n");
    out.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    out.push_str(&body);
    Some(Bytes::from(out))
}

impl AsyncRead for ServerIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ServerIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_head(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // hyper's error answers are a head alone, one slice; responses with
        // a body (several slices) pass straight through.
        let mut filled = bufs.iter().filter(|b| !b.is_empty());
        if let (Some(only), None) = (filled.next(), filled.next()) {
            return self.poll_write_head(cx, only);
        }
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::with_json_body;

    #[test]
    fn hypers_empty_error_heads_get_a_json_body() {
        let head = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\ndate: Sun, 06 Dec 2026 11:00:00 GMT\r\n\r\n";
        let out = with_json_body(head).expect("rewritten");
        let text = std::str::from_utf8(&out).expect("utf-8");
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        assert!(head.starts_with("HTTP/1.1 431 "), "{head}");
        assert!(head.contains("connection: close"), "{head}");
        assert!(head.contains("content-type: application/json"), "{head}");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        let json: serde_json::Value = serde_json::from_str(body).expect("JSON");
        assert_eq!(json["error"]["code"], "bad_request");
    }

    #[test]
    fn other_answers_pass_through() {
        for head in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"[..],
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n",
            b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 50\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n{}",
            b"data: {}\n\n",
        ] {
            assert!(with_json_body(head).is_none(), "{:?}", String::from_utf8_lossy(head));
        }
    }
}
