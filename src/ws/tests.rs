//! The framing layer against tungstenite (an independent implementation)
//! on the other end, and against hand-written bytes for every rule a peer
//! could break.

use super::frame;
use super::handshake::client_handshake;
use super::socket::{Limits, Role, WsSocket};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_tungstenite::tungstenite::error::{CapacityError, Error, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::Role as TRole;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const LIMIT: usize = 1 << 20;

async fn pair(ours: Role) -> (WsSocket<DuplexStream>, WebSocketStream<DuplexStream>) {
    let (a, b) = duplex(64 * 1024);
    let theirs = match ours {
        Role::Server => TRole::Client,
        Role::Client => TRole::Server,
    };
    let peer = WebSocketStream::from_raw_socket(b, theirs, None).await;
    (WsSocket::new(a, ours, Limits::of(LIMIT), &[]), peer)
}

fn idle<S>(s: &WsSocket<S>) -> bool {
    s.rd.capacity() == 0 && s.wr.capacity() == 0 && s.fragments.is_none()
}

#[tokio::test]
async fn talks_to_tungstenite_in_both_roles() {
    for role in [Role::Server, Role::Client] {
        let (mut ours, mut peer) = pair(role).await;
        for size in [0usize, 5, 125, 126, 65_535, 65_536, 900_000] {
            let text = "x".repeat(size);
            // Both ends in one task: each send runs beside the other end's
            // read (a large frame does not fit in the pipe).
            let (sent, got) = tokio::join!(peer.send(Message::text(text.clone())), ours.next());
            sent.unwrap();
            match got {
                Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), text, "{role:?} {size}"),
                other => panic!("{role:?}: {other:?}"),
            }
            let (sent, got) = tokio::join!(ours.send(Message::text(text.clone())), peer.next());
            sent.unwrap();
            match got {
                Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), text),
                other => panic!("{role:?}: {other:?}"),
            }
            assert!(idle(&ours), "{role:?} {size}: a buffer outlived its frame");
        }
        ours.send(Message::Binary(vec![1, 2, 3].into()))
            .await
            .unwrap();
        assert_eq!(
            peer.next().await.unwrap().unwrap(),
            Message::Binary(vec![1, 2, 3].into())
        );
    }
}

#[tokio::test]
async fn answers_pings_with_their_payload() {
    for role in [Role::Server, Role::Client] {
        let (mut ours, mut peer) = pair(role).await;
        peer.send(Message::Ping(b"hi".to_vec().into()))
            .await
            .unwrap();
        assert!(matches!(ours.next().await, Some(Ok(Message::Ping(p))) if &p[..] == b"hi"));
        // The pong goes out when the socket is next polled.
        peer.send(Message::text("after")).await.unwrap();
        assert!(matches!(ours.next().await, Some(Ok(Message::Text(_)))));
        match peer.next().await {
            Some(Ok(Message::Pong(p))) => assert_eq!(&p[..], b"hi"),
            other => panic!("{role:?}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn the_peers_close_is_answered_with_its_code() {
    for role in [Role::Server, Role::Client] {
        let (mut ours, mut peer) = pair(role).await;
        peer.send(Message::Close(Some(CloseFrame {
            code: CloseCode::from(4401),
            reason: "bye".into(),
        })))
        .await
        .unwrap();
        match ours.next().await {
            Some(Ok(Message::Close(Some(f)))) => {
                assert_eq!((u16::from(f.code), f.reason.as_str()), (4401, "bye"))
            }
            other => panic!("{other:?}"),
        }
        assert!(ours.next().await.is_none());
        // A close the caller sends now is a no-op; data is refused.
        ours.send(Message::Close(None)).await.unwrap();
        assert!(ours.send(Message::text("late")).await.is_err());
        match peer.next().await {
            Some(Ok(Message::Close(Some(f)))) => assert_eq!(u16::from(f.code), 4401),
            other => panic!("{role:?}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn our_close_ends_the_stream_when_answered() {
    for role in [Role::Server, Role::Client] {
        let (mut ours, mut peer) = pair(role).await;
        ours.send(Message::Close(Some(CloseFrame {
            code: CloseCode::Away,
            reason: "".into(),
        })))
        .await
        .unwrap();
        assert!(ours.send(Message::text("late")).await.is_err());
        // tungstenite answers when it reads the close.
        assert!(matches!(peer.next().await, Some(Ok(Message::Close(_)))));
        let _ = peer.flush().await;
        match ours.next().await {
            Some(Ok(Message::Close(Some(f)))) => assert_eq!(f.code, CloseCode::Away),
            other => panic!("{role:?}: {other:?}"),
        }
        assert!(ours.next().await.is_none());
    }
}

/// Our server end, a raw client writing `bytes`; what the socket yields.
async fn server_reads(bytes: &[u8], limits: Limits) -> Vec<Result<Message, String>> {
    let (a, mut b) = duplex(1 << 16);
    let mut ours = WsSocket::new(a, Role::Server, limits, &[]);
    b.write_all(bytes).await.unwrap();
    b.shutdown().await.unwrap();
    let mut seen = Vec::new();
    while let Some(item) = ours.next().await {
        seen.push(item.map_err(|e| e.to_string()));
    }
    seen
}

fn masked(opcode_byte: u8, payload: &[u8]) -> Vec<u8> {
    let key = [1, 2, 3, 4];
    let mut out = vec![opcode_byte];
    let mut header = Vec::new();
    frame::write_header(&mut header, 0, payload.len(), Some(key));
    out.extend_from_slice(&header[1..]);
    let start = out.len();
    out.extend_from_slice(payload);
    frame::apply_mask(&mut out[start..], key);
    out
}

fn err(seen: &[Result<Message, String>]) -> &str {
    match seen.last() {
        Some(Err(e)) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test]
async fn reassembles_fragments_with_controls_between() {
    let mut bytes = masked(0x01, b"he"); // text, not final
    bytes.extend(masked(0x89, b"p")); // ping between fragments
    bytes.extend(masked(0x00, b"ll")); // continuation, not final
    bytes.extend(masked(0x80, b"o")); // final continuation
    let seen = server_reads(&bytes, Limits::of(LIMIT)).await;
    assert!(matches!(&seen[0], Ok(Message::Ping(_))));
    assert!(matches!(&seen[1], Ok(Message::Text(t)) if t.as_str() == "hello"));
    // Then the end without a close.
    assert!(err(&seen).contains("closing handshake"), "{seen:?}");
}

#[tokio::test]
async fn text_that_cannot_be_utf8_fails_before_its_last_fragment() {
    // An unfinished character may span fragments; a byte that no
    // character can start fails at once, before the ping that follows.
    let split = "é".as_bytes();
    let mut ok = masked(0x01, &split[..1]);
    ok.extend(masked(0x80, &split[1..]));
    let seen = server_reads(&ok, Limits::of(100)).await;
    assert!(
        matches!(&seen[0], Ok(Message::Text(t)) if t.as_str() == "é"),
        "{seen:?}"
    );
    let mut bad = masked(0x01, &[b'a', 0xff]);
    bad.extend(masked(0x89, b"p"));
    let seen = server_reads(&bad, Limits::of(100)).await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(err(&seen).contains("UTF-8"), "{seen:?}");
}

#[tokio::test]
async fn refuses_what_a_client_must_not_send() {
    let limits = Limits::of(1000);
    let unmasked = [0x81, 0x02, b'h', b'i'];
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (unmasked.to_vec(), "unmasked"),
        (masked(0xC1, b"x"), "reserved bits"),
        (masked(0x83, b"x"), "Unknown data frame type"),
        (masked(0x8B, b"x"), "Unknown control frame type"),
        (masked(0x09, b"x"), "Fragmented control frame"),
        (masked(0x89, &[0u8; 126]), "Control frame too big"),
        (masked(0x80, b"x"), "Continue frame but nothing to continue"),
        (
            [masked(0x01, b"a"), masked(0x81, b"b")].concat(),
            "fragment",
        ),
        (masked(0x81, &[0xff, 0xfe]), "UTF-8"),
        (masked(0x88, &[0x03]), "close"),
        (masked(0x88, &[0x03, 0xe8, 0xff]), "UTF-8"),
    ];
    for (bytes, want) in cases {
        let seen = server_reads(&bytes, limits).await;
        let e = err(&seen);
        assert!(
            e.to_lowercase().contains(&want.to_lowercase()),
            "{want}: {seen:?}"
        );
    }
}

#[tokio::test]
async fn a_too_long_frame_is_refused_from_its_header() {
    // Only the header is sent: the refusal cannot have waited for a byte of
    // the announced payload, nor reserved it.
    let (a, mut b) = duplex(1 << 16);
    let mut ours = WsSocket::new(a, Role::Server, Limits::of(1000), &[]);
    b.write_all(&[0x81, 0xFF, 0, 0, 0, 0, 0x7F, 0xFF, 0xFF, 0xFF, 1, 2, 3, 4])
        .await
        .unwrap();
    match ours.next().await {
        Some(Err(Error::Capacity(CapacityError::MessageTooLong { max_size, .. }))) => {
            assert_eq!(max_size, 1000)
        }
        other => panic!("{other:?}"),
    }
    assert!(ours.rd.capacity() < 64, "{}", ours.rd.capacity());
    // u64::MAX, and a message of fragments that together pass the limit.
    let huge = [
        0x81, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3, 4,
    ];
    let seen = server_reads(&huge, Limits::of(1000)).await;
    assert!(err(&seen).contains("Message too long"), "{seen:?}");
    let limits = Limits {
        max_frame: 600,
        max_message: 1000,
    };
    let bytes = [masked(0x01, &[b'a'; 600]), masked(0x80, &[b'a'; 500])].concat();
    let seen = server_reads(&bytes, limits).await;
    assert!(err(&seen).contains("Message too long"), "{seen:?}");
}

#[tokio::test]
async fn a_trickled_frame_grows_the_buffer_only_as_bytes_arrive() {
    let (a, mut b) = duplex(1 << 20);
    let mut ours = WsSocket::new(a, Role::Server, Limits::of(8 << 20), &[]);
    let frame = masked(0x81, &vec![b'z'; 4 << 20]);
    b.write_all(&frame[..20_000]).await.unwrap();
    let polled = tokio::time::timeout(std::time::Duration::from_millis(50), ours.next()).await;
    assert!(polled.is_err(), "a partial frame is not a message");
    assert!(ours.rd.capacity() < 200_000, "{}", ours.rd.capacity());
    let (written, got) = tokio::join!(b.write_all(&frame[20_000..]), ours.next());
    written.unwrap();
    match got {
        Some(Ok(Message::Text(t))) => assert_eq!(t.len(), 4 << 20),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_large_frame_leaves_no_buffer_behind_it() {
    // A 5 MB frame and the first byte of the next in one write: reads stop
    // at the frame's end, so the byte after it does not keep the large
    // buffer alive (found by review: before, the buffer had doubled to
    // 9 MiB and a one-byte leftover pinned it).
    let (a, mut b) = duplex(1 << 20);
    let mut ours = WsSocket::new(a, Role::Server, Limits::of(8 << 20), &[]);
    let mut bytes = masked(0x81, &vec![b'z'; 5_000_000]);
    bytes.push(0x81);
    let (written, got) = tokio::join!(b.write_all(&bytes), ours.next());
    written.unwrap();
    match got {
        Some(Ok(Message::Text(t))) => assert_eq!(t.len(), 5_000_000),
        other => panic!("{other:?}"),
    }
    assert!(ours.rd.capacity() < 64 * 1024, "{}", ours.rd.capacity());
    // A frame that stops half-way holds about what arrived, never twice
    // that nor the announced length.
    let (a, mut b) = duplex(1 << 20);
    let mut ours = WsSocket::new(a, Role::Server, Limits::of(8 << 20), &[]);
    let frame = masked(0x81, &vec![b'z'; 5_000_000]);
    let fed = tokio::time::timeout(std::time::Duration::from_millis(300), async {
        tokio::join!(b.write_all(&frame[..2_600_000]), ours.next())
    })
    .await;
    assert!(fed.is_err(), "a partial frame is not a message");
    let held = ours.rd.capacity();
    assert!((2_600_000..2 * 2_600_000).contains(&held), "{held}");
    assert!(held <= 5_000_014);
}

#[tokio::test]
async fn close_codes_that_may_not_be_sent_become_protocol_errors() {
    let seen = server_reads(&masked(0x88, &1005u16.to_be_bytes()), Limits::of(100)).await;
    match &seen[0] {
        Ok(Message::Close(Some(f))) => assert_eq!(f.code, CloseCode::Protocol),
        other => panic!("{other:?}"),
    }
    assert_eq!(seen.len(), 1, "the stream ends after the close: {seen:?}");
}

#[tokio::test]
async fn a_client_refuses_masked_frames() {
    let (a, mut b) = duplex(1 << 16);
    let mut ours = WsSocket::new(a, Role::Client, Limits::of(100), &[]);
    b.write_all(&masked(0x81, b"x")).await.unwrap();
    assert!(matches!(
        ours.next().await,
        Some(Err(Error::Protocol(ProtocolError::MaskedFrameFromServer)))
    ));
    assert!(ours.next().await.is_none(), "reads end after an error");
}

#[tokio::test]
async fn the_client_masks_every_frame() {
    let (a, mut b) = duplex(1 << 16);
    let mut ours = WsSocket::new(a, Role::Client, Limits::of(100), &[]);
    ours.send(Message::text("secret-ish")).await.unwrap();
    let mut raw = [0u8; 64];
    let n = b.read(&mut raw).await.unwrap();
    let h = frame::parse(&raw[..n]).unwrap();
    assert!(h.mask.is_some());
    assert_ne!(&raw[h.header_len..n], b"secret-ish");
}

#[tokio::test]
async fn bytes_after_the_handshake_are_read_first() {
    let (a, _b) = duplex(1 << 16);
    let first = [0x81, 0x02, b'o', b'k'];
    let mut ours = WsSocket::new(a, Role::Client, Limits::of(100), &first);
    assert!(matches!(ours.next().await, Some(Ok(Message::Text(t))) if t.as_str() == "ok"));
}

#[tokio::test]
#[allow(clippy::result_large_err)] // tungstenite's callback signature
async fn the_client_handshake_meets_a_tungstenite_server() {
    use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
    let (a, b) = duplex(1 << 16);
    let server = tokio::spawn(async move {
        let pick = |req: &Request, mut resp: Response| {
            let offered = req.headers().get("sec-websocket-protocol").unwrap();
            assert!(offered
                .to_str()
                .unwrap()
                .starts_with("aws-appsync-event-ws, header-"));
            resp.headers_mut().insert(
                "sec-websocket-protocol",
                "aws-appsync-event-ws".parse().unwrap(),
            );
            Ok(resp)
        };
        let mut ws = tokio_tungstenite::accept_hdr_async(b, pick).await.unwrap();
        ws.send(Message::text("first")).await.unwrap();
        ws.next().await
    });
    let uri: hyper::Uri = "ws://example.test:8080/event/realtime".parse().unwrap();
    let (mut ws, selected) =
        client_handshake(a, &uri, "aws-appsync-event-ws, header-abc", Limits::of(100))
            .await
            .unwrap();
    assert_eq!(selected.as_deref(), Some("aws-appsync-event-ws"));
    assert!(matches!(ws.next().await, Some(Ok(Message::Text(t))) if t.as_str() == "first"));
    ws.send(Message::text("back")).await.unwrap();
    assert!(matches!(server.await.unwrap(), Some(Ok(Message::Text(t))) if t.as_str() == "back"));
}

#[tokio::test]
async fn the_client_handshake_reports_refusals_and_bad_answers() {
    let uri: hyper::Uri = "ws://h/x".parse().unwrap();
    let answers: [(&[u8], &str); 3] = [
        (b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n", "HTTP 401"),
        (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: wrong\r\n\r\n",
            "Accept",
        ),
        (b"nonsense\r\n\r\n", "malformed"),
    ];
    for (answer, want) in answers {
        let (a, mut b) = duplex(1 << 16);
        let answer = answer.to_vec();
        tokio::spawn(async move {
            let mut req = [0u8; 1024];
            let _ = b.read(&mut req).await;
            b.write_all(&answer).await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        });
        let e = client_handshake(a, &uri, "p", Limits::of(10))
            .await
            .err()
            .unwrap();
        assert!(e.to_string().contains(want), "{want}: {e}");
    }
}
