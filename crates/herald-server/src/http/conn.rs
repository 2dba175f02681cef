//! The two shapes of a client's byte stream: [`Served`], what hyper reads
//! and writes asynchronously (plain TCP or TLS), and [`Conn`], what an
//! upgraded WebSocket uses synchronously afterwards (`try_read` from its
//! task, `try_write` from whichever thread queues a frame).
//!
//! Plain TCP forwards every call to the `TcpStream`: a match is the whole
//! cost. TLS keeps rustls' connection state behind a lock next to the
//! socket. Its writes differ in one way the writers must know about:
//! plaintext rustls accepted may still sit encrypted in rustls when the
//! socket filled up. [`Conn::flush_now`] writes such ciphertext and says
//! whether any is left; a writer reports an item done only once it is not
//! (see `ws::socket::WsWriter`).

use parking_lot::Mutex;
use rustls::ServerConnection;
use std::io::{self, IoSlice, Read as _, Write as _};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// Most plaintext rustls accepts while its ciphertext waits for the
/// socket: a writer stops there instead of buffering a slow client's
/// backlog a second time.
const TLS_BUFFER_LIMIT: usize = 64 * 1024;

/// The stream hyper serves: an accepted TCP connection, with TLS when the
/// listener has a certificate (handshake already done).
pub(crate) enum Served {
    /// Plain HTTP.
    Plain(TcpStream),
    /// HTTPS. Boxed: rustls' connection state is large, and the plain
    /// variant must not grow by it.
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Served {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Served::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Served::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Served {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Served::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Served::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Served::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Served::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Served::Plain(s) => s.is_write_vectored(),
            Served::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Served::Plain(s) => Pin::new(s).poll_flush(cx),
            Served::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Served::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Served::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// An upgraded connection, used without async I/O traits: readiness is
/// awaited, reads and writes never block (see the module doc).
#[derive(Debug)]
pub(crate) enum Conn {
    /// Plain TCP: every call goes straight to the socket.
    Plain(TcpStream),
    /// TLS over the socket. Boxed: idle plain connections must not carry
    /// rustls' kilobyte of state.
    Tls(Box<TlsConn>),
}

/// A TLS connection taken apart: the socket and rustls' state, locked
/// together for each read or write (reads come from the connection's task,
/// writes from any thread).
#[derive(Debug)]
pub(crate) struct TlsConn {
    stream: TcpStream,
    session: Mutex<ServerConnection>,
}

impl From<Served> for Conn {
    fn from(served: Served) -> Self {
        match served {
            Served::Plain(stream) => Conn::Plain(stream),
            Served::Tls(tls) => {
                let (stream, mut session) = tls.into_inner();
                session.set_buffer_limit(Some(TLS_BUFFER_LIMIT));
                Conn::Tls(Box::new(TlsConn {
                    stream,
                    session: Mutex::new(session),
                }))
            }
        }
    }
}

impl Conn {
    /// The TCP socket underneath (for socket options).
    pub(crate) fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(t) => &t.stream,
        }
    }

    /// Resolves when [`Self::try_read`] may have something: bytes on the
    /// socket, or plaintext rustls decrypted but nobody read yet.
    pub(crate) async fn readable(&self) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.readable().await,
            Conn::Tls(t) => {
                if t.buffered() {
                    return Ok(());
                }
                t.stream.readable().await
            }
        }
    }

    /// Resolves when the socket takes more bytes.
    pub(crate) async fn writable(&self) -> io::Result<()> {
        self.tcp().writable().await
    }

    /// Reads what has arrived without waiting: `Ok(0)` at the end of the
    /// stream, `WouldBlock` when nothing (decryptable) is there yet.
    pub(crate) fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.try_read(buf),
            Conn::Tls(t) => t.try_read(buf),
        }
    }

    /// Writes `buf` without waiting; returns how many bytes were taken
    /// (for TLS: accepted as plaintext, see [`Self::flush_now`]).
    pub(crate) fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.try_write(buf),
            Conn::Tls(t) => t.try_write(buf.len(), |w| w.write(buf)),
        }
    }

    /// [`Self::try_write`] of several slices in order.
    pub(crate) fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.try_write_vectored(bufs),
            Conn::Tls(t) => {
                let len = bufs.iter().map(|b| b.len()).sum();
                t.try_write(len, |w| w.write_vectored(bufs))
            }
        }
    }

    /// Writes bytes accepted earlier but not yet on the wire (TLS only);
    /// `Ok(true)` when none are left. Plain TCP never has any.
    pub(crate) fn flush_now(&self) -> io::Result<bool> {
        match self {
            Conn::Plain(_) => Ok(true),
            Conn::Tls(t) => t.flush_now(),
        }
    }

    /// Ends the sending side: TLS says `close_notify` first (if the socket
    /// takes it), then the TCP FIN.
    pub(crate) fn shutdown_write(&self) {
        if let Conn::Tls(t) = self {
            let mut session = t.session.lock();
            session.send_close_notify();
            let _ = flush_session(&mut session, &t.stream);
        }
        let _ = socket2::SockRef::from(self.tcp()).shutdown(std::net::Shutdown::Write);
    }
}

impl TlsConn {
    /// Whether decrypted plaintext (or the peer's close) waits to be read.
    fn buffered(&self) -> bool {
        let mut session = self.session.lock();
        match session.process_new_packets() {
            Ok(state) => state.plaintext_bytes_to_read() > 0 || state.peer_has_closed(),
            // The error is reported by the next read.
            Err(_) => true,
        }
    }

    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let mut session = self.session.lock();
        loop {
            match session.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The peer closed TCP without close_notify: many clients
                // do; the stream ended all the same.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            // No plaintext yet: take more records from the socket
            // (WouldBlock when it has none).
            session.read_tls(&mut SyncIo(&self.stream))?;
            if let Err(e) = session.process_new_packets() {
                // rustls queued an alert for the peer; send what fits.
                let _ = flush_session(&mut session, &self.stream);
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            // Records read may call for an answer (a key update).
            if session.wants_write() {
                flush_session(&mut session, &self.stream)?;
            }
        }
    }

    /// Flushes pending ciphertext; if some is still pending, reports
    /// `WouldBlock` without taking plaintext. Otherwise lets `write` feed
    /// rustls (`len` bytes offered) and puts on the wire what the socket
    /// takes.
    fn try_write(
        &self,
        len: usize,
        write: impl FnOnce(&mut rustls::Writer<'_>) -> io::Result<usize>,
    ) -> io::Result<usize> {
        let mut session = self.session.lock();
        if !flush_session(&mut session, &self.stream)? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = write(&mut session.writer())?;
        if n == 0 && len > 0 {
            // rustls' buffer is full (it was just flushed, so only with a
            // limit below one record): the same as a full socket.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        flush_session(&mut session, &self.stream)?;
        Ok(n)
    }

    fn flush_now(&self) -> io::Result<bool> {
        flush_session(&mut self.session.lock(), &self.stream)
    }
}

/// Writes rustls' pending ciphertext until none is left (`Ok(true)`) or
/// the socket is full (`Ok(false)`).
fn flush_session(session: &mut ServerConnection, stream: &TcpStream) -> io::Result<bool> {
    while session.wants_write() {
        match session.write_tls(&mut SyncIo(stream)) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// `std::io` over a tokio socket's non-blocking calls, for rustls.
struct SyncIo<'a>(&'a TcpStream);

impl io::Read for SyncIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl io::Write for SyncIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
