//! fastwebsockets 0.10 over a hyper 1 upgrade: `write_frame` per frame, one `flush` per
//! batch. Also accepts the connections of the `raw` stack and hands them to `super::raw`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload, WebSocket};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::broadcast;

use super::raw::raw_conn;
use super::{query_n, Hub, DRAIN_MAX};

pub type Ws = WebSocket<TokioIo<hyper::upgrade::Upgraded>>;

pub async fn serve(listener: TcpListener, hub: Arc<Hub>, nodelay: bool) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // e.g. EMFILE: back off briefly instead of spinning.
                eprintln!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if nodelay {
            let _ = stream.set_nodelay(true);
        }
        let hub = hub.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(req, hub.clone()));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades()
                .await;
        });
    }
}

async fn handle(
    mut req: Request<Incoming>,
    hub: Arc<Hub>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    match req.uri().path() {
        "/ws" => match fastwebsockets::upgrade::upgrade(&mut req) {
            Ok((resp, fut)) => {
                let rx = hub.tx.subscribe();
                let raw = hub.preframed;
                tokio::spawn(async move {
                    if let Ok(ws) = fut.await {
                        if raw {
                            raw_conn(ws, rx).await;
                        } else {
                            conn(ws, rx).await;
                        }
                    }
                });
                let (parts, _) = resp.into_parts();
                Ok(Response::from_parts(parts, Full::default()))
            }
            Err(_) => Ok(status(StatusCode::BAD_REQUEST)),
        },
        "/broadcast" => {
            let r = hub.push(query_n(req.uri().query()));
            Ok(Response::new(Full::new(Bytes::from(format!(
                "receivers={r}\n"
            )))))
        }
        _ => Ok(status(StatusCode::NOT_FOUND)),
    }
}

fn status(s: StatusCode) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::default());
    *r.status_mut() = s;
    r
}

async fn conn(mut ws: Ws, mut rx: broadcast::Receiver<Bytes>) {
    ws.set_auto_close(true);
    ws.set_auto_pong(true);
    // NOTE: read_frame is not fully cancel-safe (a frame header split across reads
    // could be lost if the select! drops it mid-frame). The bench clients send
    // nothing after the handshake, so it is safe here; production code should give
    // the read half its own task (fastwebsockets' `unstable-split`) or own the write half.
    loop {
        tokio::select! {
            f = ws.read_frame() => match f {
                Ok(f) if f.opcode == OpCode::Close => break,
                Ok(_) => {}
                Err(_) => break,
            },
            r = rx.recv() => match r {
                Ok(b) => {
                    if ws.write_frame(Frame::text(Payload::Borrowed(&b))).await.is_err() { break; }
                    let mut n = 1;
                    while n < DRAIN_MAX {
                        match rx.try_recv() {
                            Ok(b) => {
                                if ws.write_frame(Frame::text(Payload::Borrowed(&b))).await.is_err() { return; }
                                n += 1;
                            }
                            Err(_) => break,
                        }
                    }
                    if ws.flush().await.is_err() { break; }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => break,
            },
        }
    }
}
