//! The `raw` stack (the PERFORMANCE.md idea): fastwebsockets parses the read half; the
//! server owns the TCP write half and writes frames pre-built once per event, one writev
//! per batch. Connections arrive through the fastws stack's upgrade.

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode};
use hyper_util::rt::TokioIo;
use tokio::sync::broadcast;

use super::fastws::Ws;
use super::DRAIN_MAX;

/// Take the TCP stream back from hyper, split it without a lock, let fastwebsockets
/// parse the read half, and write pre-framed `Bytes` with one writev per batch.
pub async fn raw_conn(ws: Ws, mut rx: broadcast::Receiver<Bytes>) {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;
    let parts = match ws
        .into_inner()
        .into_inner()
        .downcast::<TokioIo<TcpStream>>()
    {
        Ok(p) => p,
        Err(_) => {
            eprintln!("raw: upgraded io is not a TcpStream");
            return;
        }
    };
    if !parts.read_buf.is_empty() {
        // Bytes the client sent right behind its handshake; the bench clients send none.
        eprintln!("raw: dropping {} pre-read bytes", parts.read_buf.len());
    }
    // Drop it now: even empty, it can pin hyper's whole read buffer for the connection's life.
    drop(parts.read_buf);
    let (rd, mut wr) = parts.io.into_inner().into_split();
    let (mut rd, _unused_wr) =
        fastwebsockets::after_handshake_split(rd, tokio::io::sink(), fastwebsockets::Role::Server);
    // Control replies (pong, close echo) the reader owes; written by this task.
    // A std Mutex despite /work/main/clippy.toml: it is only locked in sync code, never
    // across an `.await`, and this standalone crate does not depend on parking_lot.
    #[allow(clippy::disallowed_types)]
    let owed = std::sync::Mutex::new(Vec::<Bytes>::new());
    let mut owe = |f: Frame<'_>| {
        let mut buf = Vec::new();
        let mut f = f;
        let b = Bytes::copy_from_slice(f.write(&mut buf));
        owed.lock().unwrap_or_else(|e| e.into_inner()).push(b);
        std::future::ready(Ok::<(), std::io::Error>(()))
    };
    let mut batch: Vec<Bytes> = Vec::new();
    loop {
        tokio::select! {
            f = rd.read_frame(&mut owe) => {
                let close = !matches!(&f, Ok(fr) if fr.opcode != OpCode::Close);
                let ctrl: Vec<Bytes> = std::mem::take(&mut *owed.lock().unwrap_or_else(|e| e.into_inner()));
                if !ctrl.is_empty() && Box::pin(write_all_vectored(&mut wr, ctrl)).await.is_err() { break; }
                if close { break; }
            },
            r = rx.recv() => match r {
                Ok(b) => {
                    batch.push(b);
                    while batch.len() < DRAIN_MAX {
                        match rx.try_recv() {
                            Ok(b) => batch.push(b),
                            Err(_) => break,
                        }
                    }
                    if Box::pin(write_all_vectored(&mut wr, std::mem::take(&mut batch))).await.is_err() { break; }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => break,
            },
        }
    }
    let _ = wr.shutdown().await;
}

/// Called through `Box::pin`: its 1 KiB iovec array then lives on the heap only while
/// writing, instead of in every idle connection's task.
async fn write_all_vectored(
    wr: &mut tokio::net::tcp::OwnedWriteHalf,
    bufs: Vec<Bytes>,
) -> std::io::Result<()> {
    use std::io::IoSlice;
    use tokio::io::AsyncWriteExt;
    let (mut idx, mut off) = (0usize, 0usize);
    // Bounded: every pass writes at least one byte or fails.
    while idx < bufs.len() {
        let mut iov: [IoSlice<'_>; DRAIN_MAX] = [IoSlice::new(&[]); DRAIN_MAX];
        let mut k = 0;
        for (j, b) in bufs[idx..].iter().enumerate().take(DRAIN_MAX) {
            iov[k] = IoSlice::new(if j == 0 { &b[off..] } else { &b[..] });
            k += 1;
        }
        let mut n = wr.write_vectored(&iov[..k]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 && idx < bufs.len() {
            let rem = bufs[idx].len() - off;
            if n >= rem {
                n -= rem;
                idx += 1;
                off = 0;
            } else {
                off += n;
                n = 0;
            }
        }
    }
    Ok(())
}
