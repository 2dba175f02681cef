//! The writer over TLS, on a real loopback pair with small socket buffers
//! and a rustls client: an item whose plaintext rustls took while the
//! socket filled is reported unfinished at its full length; once
//! `write_now` reports every item done, every byte reaches the client
//! without another write (nothing waits in rustls while the queue would
//! believe it empty); the bytes arrive once, in order, then
//! `close_notify`. (Items before an unfinished one may count done while
//! the record holding their end still waits: the unfinished item makes
//! the queue wait for the socket, and the next write flushes first.)

use super::test_support::{tcp_pair, text, WAIT};
use super::*;
use crate::http::Served;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// The wire bytes of `items` (text frames), built by the writer's own
/// header code: the plain-TCP tests check the headers independently.
fn wire_all(items: &[Outbound]) -> Vec<u8> {
    let mut out = Vec::new();
    for item in items {
        match item {
            Outbound::Frame { bytes, .. } => {
                let mut head = [0u8; MAX_HEADER];
                let n = frames::data_header(false, bytes.len(), &mut head);
                out.extend_from_slice(&head[..n]);
                out.extend_from_slice(bytes);
            }
            Outbound::Ping => out.extend_from_slice(PING),
            Outbound::Raw(bytes) => out.extend_from_slice(bytes),
        }
    }
    out
}

/// A server [`Conn`] over TLS and its client, both with 4 KiB socket
/// buffers so the kernel takes little of each write.
async fn tls_pair() -> (Arc<Conn>, TlsStream<TcpStream>) {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    let cert = CertificateDer::from(made.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(made.signing_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server_config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .expect("server config");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).expect("root");
    let client_config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let (server, client) = tcp_pair(true).await;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
    let name = ServerName::try_from("localhost").expect("name");
    let (server, client) = tokio::time::timeout(WAIT, async {
        tokio::join!(acceptor.accept(server), connector.connect(name, client))
    })
    .await
    .expect("handshake in time");
    let conn = Conn::from(Served::Tls(Box::new(server.expect("server handshake"))));
    (Arc::new(conn), client.expect("client handshake"))
}

#[tokio::test]
async fn once_every_item_is_reported_done_every_byte_reaches_the_client_in_order() {
    let mut items = Vec::new();
    for round in 0..6u8 {
        items.extend((0..40usize).map(|i| text(i % 5, round)));
        items.push(Outbound::Ping);
        items.push(text(70_000 + usize::from(round), b'l'));
    }
    // Ends with a frame larger than rustls' buffer limit, so the last
    // write leaves ciphertext behind.
    items.push(text(200_000, b'z'));
    let all = wire_all(&items);
    let (conn, mut client) = tls_pair().await;
    let writer = WsWriter {
        stream: conn.clone(),
        binary: false,
        deflate: None,
    };
    let (mut done, mut offset) = (0, 0);
    let mut received = Vec::new();
    let mut held_whole = 0;
    while done < items.len() {
        tokio::time::timeout(WAIT, conn.writable())
            .await
            .expect("socket never writable")
            .expect("writable");
        done += writer
            .write_now(&items[done..], &mut offset)
            .expect("write_now");
        if done == items.len() {
            break;
        }
        if offset == wire_len(&items[done], false, None) {
            held_whole += 1;
        }
        // Make room: take what has arrived (the socket holds 4 KiB).
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(read) =
            tokio::time::timeout(Duration::from_millis(20), client.read(&mut buf)).await
        {
            let n = read.expect("read");
            assert!(n > 0, "EOF before the end");
            received.extend_from_slice(&buf[..n]);
        }
    }
    // All reported done: every byte must arrive with no further write
    // (nothing may wait in rustls while the queue believes it is empty).
    let mut rest = vec![0u8; all.len() - received.len()];
    tokio::time::timeout(WAIT, client.read_exact(&mut rest))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "all items reported done; the client got {} of {} bytes",
                received.len(),
                all.len()
            )
        })
        .expect("read");
    received.extend_from_slice(&rest);
    assert!(received == all, "the stream differs from the items");
    assert!(held_whole > 0, "no write left an item whole in rustls");
    conn.shutdown_write();
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, client.read_to_end(&mut rest))
        .await
        .expect("no close_notify and EOF")
        .expect("a clean TLS close");
    assert!(rest.is_empty(), "{} bytes past the end", rest.len());
}

#[tokio::test]
async fn reads_decrypt_what_the_client_sent_and_end_at_its_close() {
    use tokio::io::AsyncWriteExt;
    let (conn, mut client) = tls_pair().await;
    let sent: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    let writer = {
        let sent = sent.clone();
        tokio::spawn(async move {
            client.write_all(&sent).await.expect("client write");
            client.shutdown().await.expect("close_notify");
            client
        })
    };
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        tokio::time::timeout(WAIT, conn.readable())
            .await
            .expect("readable in time")
            .expect("readable");
        match conn.try_read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    assert!(
        got == sent,
        "{} of {} bytes, or other bytes",
        got.len(),
        sent.len()
    );
    drop(writer.await.expect("client task"));
}
