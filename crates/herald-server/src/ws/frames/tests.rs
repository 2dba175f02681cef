use super::*;

/// A client frame: masked, with FIN, opcode and payload as given.
fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = vec![(if fin { 0x80 } else { 0 }) | opcode];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n < 65536 => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

fn read_all(reader: &mut FrameReader, bytes: &[u8]) -> Result<Vec<Incoming>, ReadError> {
    let mut out = Vec::new();
    reader.feed(bytes, &mut out)?;
    Ok(out)
}

fn reader() -> FrameReader {
    FrameReader::new(1000)
}

#[test]
fn text_frames_in_one_read_and_byte_by_byte() {
    let mut bytes = client_frame(true, 1, br#"{"type":"ping"}"#);
    bytes.extend(client_frame(true, 1, "héllo".as_bytes()));
    let expected = vec![
        Incoming::Text(r#"{"type":"ping"}"#.into()),
        Incoming::Text("héllo".into()),
    ];
    assert_eq!(read_all(&mut reader(), &bytes), Ok(expected.clone()));

    let mut r = reader();
    let mut out = Vec::new();
    for b in &bytes {
        r.feed(std::slice::from_ref(b), &mut out).expect("valid");
    }
    assert_eq!(out, expected);
    assert!(
        r.partial.is_empty() && r.partial.capacity() == 0,
        "nothing kept between frames"
    );
}

#[test]
fn sixteen_and_sixty_four_bit_lengths() {
    let mid = "a".repeat(300);
    let mut r = FrameReader::new(100_000);
    assert_eq!(
        read_all(&mut r, &client_frame(true, 1, mid.as_bytes())),
        Ok(vec![Incoming::Text(mid)])
    );
    let big = "b".repeat(70_000);
    assert_eq!(
        read_all(&mut r, &client_frame(true, 1, big.as_bytes())),
        Ok(vec![Incoming::Text(big)])
    );
}

#[test]
fn fragments_are_joined_and_controls_may_interleave() {
    let mut bytes = client_frame(false, 1, b"{\"type\":");
    bytes.extend(client_frame(true, 9, b"hi"));
    bytes.extend(client_frame(false, 0, b"\"pi"));
    bytes.extend(client_frame(true, 0, b"ng\"}"));
    assert_eq!(
        read_all(&mut reader(), &bytes),
        Ok(vec![
            Incoming::Ping(Bytes::from_static(b"hi")),
            Incoming::Text(r#"{"type":"ping"}"#.into()),
        ])
    );
}

#[test]
fn binary_pong_and_close() {
    let mut bytes = client_frame(true, 2, &[0, 1, 2]);
    bytes.extend(client_frame(true, 10, b""));
    bytes.extend(client_frame(true, 8, &[0x03, 0xe8, b'b', b'y', b'e']));
    assert_eq!(
        read_all(&mut reader(), &bytes),
        Ok(vec![
            Incoming::Binary(vec![0, 1, 2]),
            Incoming::Pong,
            Incoming::Close(Some(1000))
        ])
    );
    assert_eq!(
        read_all(&mut reader(), &client_frame(true, 8, b"")),
        Ok(vec![Incoming::Close(None)])
    );
}

#[test]
fn oversized_frames_and_messages_are_refused_before_buffering() {
    // Only the header of a huge frame has arrived: refused at once.
    let huge = client_frame(true, 1, &vec![b'x'; 5000]);
    assert_eq!(read_all(&mut reader(), &huge[..14]), Err(ReadError::TooBig));
    let mut bytes = client_frame(false, 1, &[b'x'; 600]);
    bytes.extend(client_frame(true, 0, &[b'x'; 600]));
    assert_eq!(read_all(&mut reader(), &bytes), Err(ReadError::TooBig));
}

#[test]
fn invalid_utf8_is_its_own_error() {
    assert_eq!(
        read_all(&mut reader(), &client_frame(true, 1, &[0xff, 0xfe])),
        Err(ReadError::InvalidUtf8)
    );
    // Split inside a character across fragments is still valid.
    let text = "é".as_bytes();
    let mut bytes = client_frame(false, 1, &text[..1]);
    bytes.extend(client_frame(true, 0, &text[1..]));
    assert_eq!(
        read_all(&mut reader(), &bytes),
        Ok(vec![Incoming::Text("é".into())])
    );
}

#[test]
fn framing_violations_are_protocol_errors() {
    let protocol =
        |bytes: Vec<u8>| matches!(read_all(&mut reader(), &bytes), Err(ReadError::Protocol(_)));
    // Unmasked.
    assert!(protocol(vec![0x81, 0x02, b'h', b'i']));
    // Reserved bit.
    let mut rsv = client_frame(true, 1, b"hi");
    rsv[0] |= 0x40;
    assert!(protocol(rsv));
    // Reserved opcodes, data and control.
    assert!(protocol(client_frame(true, 3, b"")));
    assert!(protocol(client_frame(true, 0xb, b"")));
    // Continuation without a message; a message inside a message.
    assert!(protocol(client_frame(true, 0, b"x")));
    let mut nested = client_frame(false, 1, b"a");
    nested.extend(client_frame(true, 1, b"b"));
    assert!(protocol(nested));
    // Fragmented or oversized control frames.
    assert!(protocol(client_frame(false, 9, b"")));
    assert!(protocol(client_frame(true, 9, &[0; 126])));
    // Close: one-byte payload, a code never sent on the wire, bad reason.
    assert!(protocol(client_frame(true, 8, &[0x03])));
    assert!(protocol(client_frame(true, 8, &1005u16.to_be_bytes())));
    assert!(protocol(client_frame(true, 8, &[0x03, 0xe8, 0xff])));
}

#[test]
fn server_headers() {
    let mut h = [0u8; MAX_HEADER];
    let n = data_header(false, 5, &mut h);
    assert_eq!(&h[..n], &[0x81, 5]);
    let n = data_header(false, 300, &mut h);
    assert_eq!(&h[..n], &[0x81, 126, 1, 44]);
    let n = data_header(false, 70_000, &mut h);
    assert_eq!(&h[..n], &[0x81, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
    // A binary codec's frames carry the binary opcode.
    let n = data_header(true, 5, &mut h);
    assert_eq!(&h[..n], &[0x82, 5]);
    assert_eq!(&control(Control::Ping, b"")[..], &[0x89, 0]);
    assert_eq!(
        &close(4011, "slow")[..],
        &[0x88, 6, 0x0f, 0xab, b's', b'l', b'o', b'w']
    );
}

/// The header length changes at 126 and 65,536 payload bytes (RFC 6455
/// 5.2): the writer's offsets into a frame depend on it.
#[test]
fn server_header_lengths_switch_at_126_and_65536() {
    let mut h = [0u8; MAX_HEADER];
    for (len, head) in [
        (0usize, vec![0x81, 0]),
        (125, vec![0x81, 125]),
        (126, vec![0x81, 126, 0, 126]),
        (65_535, vec![0x81, 126, 0xff, 0xff]),
        (65_536, vec![0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]),
    ] {
        let n = data_header(false, len, &mut h);
        assert_eq!(&h[..n], &head[..], "payload of {len} bytes");
    }
}
