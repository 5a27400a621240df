//! The app reverse proxy (`--app-upstream`): a relay started with
//! [`AppProxy`] in front of a small in-test hyper "app" that records every
//! request it gets. Everything runs on ephemeral loopback ports; streaming is
//! proved by handshakes between test and app (`Notify`), not by timing.

mod support;

use appsync_relay::session;
use appsync_relay::session::TokenSet;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper::{Method, StatusCode};
use sha2::{Digest, Sha256};
use std::time::Duration;
use support::app::{
    body, channel_body, header, next_frame, pattern, proxy_config, request, roundtrip,
    start_proxied, start_proxied_tls, text, Conn, Proxied, TestApp, CHUNK, MIB, WAIT,
};
use support::*;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

// === Tests ===

#[tokio::test]
async fn get_and_post_reach_the_app_with_status_headers_and_body_intact() {
    let app = TestApp::start().await;
    let relay = start_proxied(proxy_config(app.url()), &[]).await;

    let (status, headers, body) = roundtrip(
        relay.addr(),
        "GET",
        "/echo?q=1&r=%20x",
        &[("x-custom", "v1"), ("x-want-status", "418")],
        "",
    )
    .await;
    assert_eq!(status, StatusCode::IM_A_TEAPOT);
    assert_eq!(header(&headers, "x-app"), Some("yes"));
    assert_eq!(header(&headers, "set-cookie"), Some("app=1; Path=/"));
    assert_eq!(body, "GET /echo?q=1&r=%20x ");
    let seen = app.last();
    assert_eq!(seen.method, Method::GET);
    assert_eq!(seen.path, "/echo?q=1&r=%20x");
    assert_eq!(header(&seen.headers, "x-custom"), Some("v1"));
    assert_eq!(
        header(&seen.headers, "host"),
        Some("app.example.com"),
        "Host stays the public host"
    );

    let (status, headers, body) = roundtrip(
        relay.addr(),
        "POST",
        "/echo",
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("x-want-status", "201"),
        ],
        "hello=world&x=1",
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        header(&headers, "x-echo-content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(body, "POST /echo hello=world&x=1");
    let seen = app.last();
    assert_eq!(seen.method, Method::POST);
    assert_eq!(header(&seen.headers, "content-length"), Some("15"));
}

#[tokio::test]
async fn large_bodies_stream_through_intact_both_ways() {
    let app = TestApp::start().await;
    let relay = start_proxied(proxy_config(app.url()), &[]).await;
    let mut conn = Conn::open(relay.addr()).await;

    // 8 MiB up, sent chunk by chunk without a Content-Length.
    let upload: Vec<u8> = (0..8 * MIB).map(|_| rand::random::<u8>()).collect();
    let expected = format!("{} {:x}", upload.len(), Sha256::digest(&upload));
    let (tx, rx) = mpsc::channel(4);
    let feeder = tokio::spawn({
        let upload = Bytes::from(upload);
        async move {
            for i in (0..upload.len()).step_by(CHUNK) {
                let end = (i + CHUNK).min(upload.len());
                tx.send(upload.slice(i..end)).await.unwrap();
            }
        }
    });
    let resp = conn
        .send(request("POST", "/upload", &[], channel_body(rx)))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(text(resp).await, expected);
    feeder.await.unwrap();
    assert!(
        header(&app.last().headers, "content-length").is_none(),
        "a chunked upload stays chunked"
    );

    // 8 MiB down.
    let resp = conn
        .send(request("GET", "/download", &[], body(Bytes::new())))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let got = tokio::time::timeout(WAIT, resp.into_body().collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    assert_eq!(got.len(), 8 * MIB);
    assert!(got == pattern(8 * MIB), "download corrupted");
}

#[tokio::test]
async fn request_body_reaches_the_app_before_it_ends() {
    let app = TestApp::start().await;
    let relay = start_proxied(proxy_config(app.url()), &[]).await;
    let mut conn = Conn::open(relay.addr()).await;

    let (tx, rx) = mpsc::channel(1);
    let shared = app.shared.clone();
    let feeder = tokio::spawn(async move {
        tx.send(Bytes::from_static(b"first;")).await.unwrap();
        // A buffering proxy would wait for the end of the body before the
        // app saw anything, and this would never return.
        tokio::time::timeout(WAIT, shared.first_chunk_arrived.notified())
            .await
            .expect("the app did not see the first chunk before the body ended");
        tx.send(Bytes::from_static(b"last")).await.unwrap();
    });
    let resp = conn
        .send(request("POST", "/stream-request", &[], channel_body(rx)))
        .await;
    assert_eq!(text(resp).await, "10");
    feeder.await.unwrap();
}

#[tokio::test]
async fn response_body_reaches_the_browser_chunk_by_chunk() {
    let app = TestApp::start().await;
    let relay = start_proxied(proxy_config(app.url()), &[]).await;
    let mut conn = Conn::open(relay.addr()).await;

    let resp = conn
        .send(request("GET", "/stream-response", &[], body(Bytes::new())))
        .await;
    let mut body = resp.into_body();
    // The app holds its last chunk until we have seen the first one.
    let first = tokio::time::timeout(WAIT, body.frame())
        .await
        .expect("first chunk was not relayed before the app finished")
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap();
    assert_eq!(&first[..], b"first chunk;");
    app.shared.release_last_chunk.notify_one();
    let rest = tokio::time::timeout(WAIT, body.collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    assert_eq!(&rest[..], b"last chunk");
}

#[tokio::test]
async fn keep_alive_reuses_one_app_connection() {
    let app = TestApp::start().await;
    let relay = start_proxied(proxy_config(app.url()), &[]).await;
    for i in 0..10 {
        // A new browser connection each time: pooling is the relay's, not
        // an artefact of one browser connection.
        let (status, _, body) =
            roundtrip(relay.addr(), "GET", &format!("/echo?n={i}"), &[], "").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, format!("GET /echo?n={i} "));
    }
    assert_eq!(app.seen().len(), 10);
    assert_eq!(
        app.connections(),
        1,
        "every request should reuse the pooled connection"
    );
}

#[tokio::test]
async fn forwarding_headers_from_an_untrusted_peer_are_replaced() {
    let app = TestApp::start().await;
    let relay = start_proxied(proxy_config(app.url()), &[]).await;
    let (status, _, _) = roundtrip(
        relay.addr(),
        "GET",
        "/",
        &[
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
            ("x-forwarded-port", "8443"),
            ("x-real-ip", "203.0.113.7"),
            ("forwarded", "for=203.0.113.7;proto=https"),
        ],
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let h = app.last().headers;
    assert_eq!(header(&h, "x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(header(&h, "x-forwarded-proto"), Some("http"));
    assert_eq!(header(&h, "x-forwarded-host"), Some("app.example.com"));
    assert_eq!(header(&h, "host"), Some("app.example.com"));
    for forged in ["x-forwarded-port", "x-real-ip", "forwarded"] {
        assert!(
            h.get(forged).is_none(),
            "{forged} forwarded from an untrusted peer"
        );
    }
    assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
}

#[tokio::test]
async fn forwarding_headers_from_a_trusted_peer_are_kept_and_appended() {
    let app = TestApp::start().await;
    let relay = start_proxied(proxy_config(app.url()), &["--trust-forwarded", "127.0.0.1"]).await;
    roundtrip(
        relay.addr(),
        "GET",
        "/",
        &[
            ("x-forwarded-for", "203.0.113.7, 10.0.0.1"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "www.example.com"),
            ("forwarded", "for=203.0.113.7;proto=https"),
        ],
        "",
    )
    .await;
    let h = app.last().headers;
    assert_eq!(
        header(&h, "x-forwarded-for"),
        Some("203.0.113.7, 10.0.0.1, 127.0.0.1")
    );
    assert_eq!(header(&h, "x-forwarded-proto"), Some("https"));
    assert_eq!(header(&h, "x-forwarded-host"), Some("www.example.com"));
    assert_eq!(header(&h, "forwarded"), Some("for=203.0.113.7;proto=https"));

    // A trusted peer that sent none: the relay fills them in.
    roundtrip(relay.addr(), "GET", "/", &[], "").await;
    let h = app.last().headers;
    assert_eq!(header(&h, "x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(header(&h, "x-forwarded-proto"), Some("http"));
    assert_eq!(header(&h, "x-forwarded-host"), Some("app.example.com"));
}

#[tokio::test]
async fn the_app_gets_a_trusted_proxys_request_id_or_ours_never_a_clients() {
    let generated = |id: Option<&str>| {
        id.is_some_and(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
    };
    let app = TestApp::start().await;
    let relay = start_proxied(proxy_config(app.url()), &[]).await;
    roundtrip(
        relay.addr(),
        "GET",
        "/",
        &[("x-request-id", "forged-by-a-client")],
        "",
    )
    .await;
    let h = app.last().headers;
    assert!(generated(header(&h, "x-request-id")), "{h:?}");
    assert_eq!(h.get_all("x-request-id").iter().count(), 1);
    // Naming it hop-by-hop does not take the relay's away from the app.
    roundtrip(
        relay.addr(),
        "GET",
        "/",
        &[("connection", "x-request-id")],
        "",
    )
    .await;
    assert!(generated(header(&app.last().headers, "x-request-id")));

    let app = TestApp::start().await;
    let relay = start_proxied(proxy_config(app.url()), &["--trust-forwarded", "127.0.0.1"]).await;
    roundtrip(
        relay.addr(),
        "GET",
        "/",
        &[("x-request-id", "ingress-7f3a")],
        "",
    )
    .await;
    assert_eq!(
        header(&app.last().headers, "x-request-id"),
        Some("ingress-7f3a")
    );
    roundtrip(
        relay.addr(),
        "GET",
        "/",
        &[("x-request-id", "two words")],
        "",
    )
    .await;
    assert!(generated(header(&app.last().headers, "x-request-id")));
    roundtrip(relay.addr(), "GET", "/", &[], "").await;
    assert!(generated(header(&app.last().headers, "x-request-id")));
}

#[tokio::test]
async fn hop_by_hop_headers_are_not_forwarded_either_way() {
    let app = TestApp::start().await;
    let relay = start_proxied(proxy_config(app.url()), &[]).await;
    let (status, headers, body) = roundtrip(
        relay.addr(),
        "GET",
        "/hop",
        &[
            ("connection", "keep-alive, Upgrade, X-Client-Hop"),
            ("x-client-hop", "secret"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("trailer", "x-foo"),
            ("upgrade", "h2c"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("x-client-e2e", "kept"),
        ],
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "hop");
    let seen = app.last().headers;
    for hop in [
        "connection",
        "x-client-hop",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-connection",
        "proxy-authorization",
    ] {
        assert!(seen.get(hop).is_none(), "{hop} reached the app: {seen:?}");
    }
    assert_eq!(header(&seen, "x-client-e2e"), Some("kept"));
    for hop in [
        "connection",
        "x-app-hop",
        "keep-alive",
        "proxy-authenticate",
        "trailer",
        "upgrade",
    ] {
        assert!(
            headers.get(hop).is_none(),
            "{hop} reached the browser: {headers:?}"
        );
    }
    assert_eq!(header(&headers, "x-app-e2e"), Some("kept"));
}

#[tokio::test]
async fn websocket_on_other_paths_is_tunnelled_to_the_app() {
    let app = TestApp::start().await;
    let relay = start_proxied(proxy_config(app.url()), &[]).await;
    let mut req = format!("ws://{}/_next/webpack-hmr?id=1", relay.addr())
        .into_client_request()
        .unwrap();
    // Not an allowed origin: the app checks its own WebSockets, not the relay.
    req.headers_mut()
        .insert("origin", "http://localhost:3000".parse().unwrap());
    req.headers_mut()
        .insert("sec-websocket-protocol", "hmr".parse().unwrap());
    let (mut ws, resp) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .expect("upgrade did not finish")
        .expect("upgrade refused");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(
        header(resp.headers(), "sec-websocket-protocol"),
        Some("hmr")
    );

    assert_eq!(
        next_frame(&mut ws).await,
        Message::Text("hello from app".into())
    );
    ws.send(Message::Text("ping-1".into())).await.unwrap();
    assert_eq!(
        next_frame(&mut ws).await,
        Message::Text("echo:ping-1".into())
    );
    let binary = Bytes::from(pattern(200_000));
    ws.send(Message::Binary(binary.clone())).await.unwrap();
    assert_eq!(next_frame(&mut ws).await, Message::Binary(binary));
    ws.close(None).await.unwrap();

    let seen = app.last();
    assert_eq!(seen.path, "/_next/webpack-hmr?id=1");
    let h = &seen.headers;
    assert_eq!(header(h, "connection"), Some("upgrade"));
    assert_eq!(header(h, "upgrade"), Some("websocket"));
    assert_eq!(header(h, "sec-websocket-version"), Some("13"));
    assert!(h.get("sec-websocket-key").is_some());
    assert_eq!(header(h, "sec-websocket-protocol"), Some("hmr"));
    assert_eq!(header(h, "origin"), Some("http://localhost:3000"));
    assert_eq!(header(h, "x-forwarded-for"), Some("127.0.0.1"));
}

#[tokio::test]
async fn relay_routes_never_reach_the_app() {
    let app = TestApp::start().await;
    let relay = start_proxied(proxy_config(app.url()), &[]).await;
    let origin = [("origin", ORIGIN)];

    let (status, headers, _) = roundtrip(relay.addr(), "POST", "/event", &origin, "{}").await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "publish without a session"
    );
    assert_eq!(header(&headers, "content-type"), Some("application/json"));
    let (status, _, _) = roundtrip(relay.addr(), "GET", "/event", &origin, "").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let (status, _, body) = roundtrip(relay.addr(), "GET", "/event/realtime", &origin, "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("bad_upgrade"), "{body}");
    assert!(
        app.seen().is_empty(),
        "relay routes reached the app: {:?}",
        app.seen()
    );

    // Neighbours of the relay routes are the app's.
    for path in ["/events", "/event/other", "/event/realtime/x"] {
        let (status, _, body) = roundtrip(relay.addr(), "GET", path, &[], "").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "app"), "{path}");
    }
    let paths: Vec<String> = app.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(paths, ["/events", "/event/other", "/event/realtime/x"]);
}

#[tokio::test]
async fn app_down_is_a_plain_text_502_without_request_data() {
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let relay = start_proxied(proxy_config(format!("http://{addr}").parse().unwrap()), &[]).await;
    let (status, headers, body) = roundtrip(
        relay.addr(),
        "POST",
        "/page?marker=REQUEST-DATA",
        &[
            ("cookie", "session=REQUEST-DATA"),
            ("x-marker", "REQUEST-DATA"),
        ],
        "REQUEST-DATA",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        header(&headers, "content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(body, "bad gateway: app upstream unreachable\n");
    for (_, v) in headers.iter() {
        assert!(!v.to_str().unwrap().contains("REQUEST-DATA"));
    }
}

#[tokio::test]
async fn slow_app_is_a_plain_text_504() {
    let app = TestApp::start().await;
    let mut cfg = proxy_config(app.url());
    cfg.response_timeout = Duration::from_millis(300);
    let relay = start_proxied(cfg, &[]).await;
    let (status, headers, body) =
        roundtrip(relay.addr(), "GET", "/slow?marker=REQUEST-DATA", &[], "").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        header(&headers, "content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert!(body.starts_with("gateway timeout"), "{body}");
    assert!(!body.contains("REQUEST-DATA"));
    assert_eq!(app.last().path, "/slow?marker=REQUEST-DATA");
}

/// The access token of a waiting renewal: JWT-shaped, `NEW-ACCESS` in
/// place of a header, an `exp` an hour ahead and no signature (a renewal is
/// only handed out while its access token lives; the proxy passes it on
/// without verifying it, as it came from Cognito).
fn new_access() -> String {
    use base64::Engine as _;
    let claims = serde_json::json!({"exp": now() + 3600}).to_string();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims);
    format!("NEW-ACCESS.{b64}.sig")
}

#[tokio::test]
async fn pending_renewal_reaches_the_app_and_the_browser() {
    let new_access = new_access();
    let app = TestApp::start().await;
    let relay = start_proxied(proxy_config(app.url()), &[]).await;
    let name = |suffix| session::cookie_name(CLIENT_ID, USERNAME, suffix);
    // A genuine token of the session: what a pending renewal is handed to.
    let old_access = sign(
        &access_claims(&relay.relay.state.config().issuer),
        signing_key(),
    );
    let last_user = session::last_auth_user_cookie(CLIENT_ID);
    let other_client = session::cookie_name("otherclient", USERNAME, "accessToken");
    let old = format!(
        "theme=dark; {last_user}=alice%40example.com; {}={old_access}; {}=OLD-ID; \
         {other_client}=OTHER-ACCESS; {}=OLD-REFRESH; _ga=GA1.2.3",
        name("accessToken"),
        name("idToken"),
        name("refreshToken"),
    );
    relay.relay.state.sessions().leave_renewal(
        appsync_relay::verify::token_hash("OLD-REFRESH"),
        USERNAME,
        TokenSet {
            access_token: new_access.clone(),
            id_token: Some("NEW-ID".into()),
            refresh_token: Some("NEW-REFRESH".into()),
        },
        session_proof(),
    );

    let (status, headers, _) =
        roundtrip(relay.addr(), "GET", "/echo", &[("cookie", &old)], "").await;
    assert_eq!(status, StatusCode::OK);
    let seen = app.last().headers;
    assert_eq!(
        header(&seen, "cookie").unwrap(),
        format!(
            "theme=dark; {last_user}=alice%40example.com; {}={new_access}; {}=NEW-ID; \
             {other_client}=OTHER-ACCESS; {}=NEW-REFRESH; _ga=GA1.2.3",
            name("accessToken"),
            name("idToken"),
            name("refreshToken"),
        ),
        "the app sees the renewed tokens, everything else as sent"
    );
    let set: Vec<&str> = headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(set.len(), 4, "{set:?}");
    assert!(set[0].starts_with(&format!("{}={new_access}; ", name("accessToken"))));
    assert!(set[1].starts_with(&format!("{}=NEW-ID; ", name("idToken"))));
    assert!(set[2].starts_with(&format!("{}=NEW-REFRESH; ", name("refreshToken"))));
    assert!(set[..3].iter().all(|c| c.contains("HttpOnly")));
    assert_eq!(
        set[3], "app=1; Path=/",
        "the app's own cookie comes last and wins"
    );

    // A session with no pending renewal passes through byte for byte.
    let untouched = old.replace("OLD-REFRESH", "SOME-OTHER-REFRESH");
    let (_, headers, _) =
        roundtrip(relay.addr(), "GET", "/echo", &[("cookie", &untouched)], "").await;
    assert_eq!(
        header(&app.last().headers, "cookie"),
        Some(untouched.as_str())
    );
    assert_eq!(headers.get_all("set-cookie").iter().count(), 1);
}

#[tokio::test]
async fn renewal_without_rotation_keeps_the_refresh_cookie() {
    let new_access = new_access();
    let app = TestApp::start().await;
    let relay = start_proxied(proxy_config(app.url()), &[]).await;
    let name = |suffix| session::cookie_name(CLIENT_ID, USERNAME, suffix);
    // A genuine token of the session: what a pending renewal is handed to.
    let old_access = sign(
        &access_claims(&relay.relay.state.config().issuer),
        signing_key(),
    );
    let last_user = session::last_auth_user_cookie(CLIENT_ID);
    let old = format!(
        "{last_user}=alice%40example.com; {}={old_access}; {}=KEPT-REFRESH",
        name("accessToken"),
        name("refreshToken"),
    );
    relay.relay.state.sessions().leave_renewal(
        appsync_relay::verify::token_hash("KEPT-REFRESH"),
        USERNAME,
        TokenSet {
            access_token: new_access.clone(),
            id_token: Some("NEW-ID".into()),
            refresh_token: None,
        },
        session_proof(),
    );
    let (_, headers, _) = roundtrip(relay.addr(), "GET", "/", &[("cookie", &old)], "").await;
    assert_eq!(
        header(&app.last().headers, "cookie").unwrap(),
        format!(
            "{last_user}=alice%40example.com; {}={new_access}; {}=KEPT-REFRESH; {}=NEW-ID",
            name("accessToken"),
            name("refreshToken"),
            name("idToken"),
        )
    );
    let set: Vec<&str> = headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(set.len(), 2, "{set:?}");
    assert!(!set.iter().any(|c| c.contains("refreshToken")));
}

#[tokio::test]
async fn head_and_empty_bodies_pass_through() {
    let app = TestApp::start().await;
    let relay = start_proxied(proxy_config(app.url()), &[]).await;
    let mut conn = Conn::open(relay.addr()).await;
    let resp = conn
        .send(request("HEAD", "/echo", &[], Empty::new().boxed()))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(text(resp).await, "");
    // The connection is still usable afterwards.
    let resp = conn
        .send(request("GET", "/", &[], Empty::new().boxed()))
        .await;
    assert_eq!(text(resp).await, "app");
}

#[tokio::test]
async fn behind_our_own_tls_the_app_hears_https() {
    let new_access = new_access();
    let app = TestApp::start().await;
    let (cert_pem, key_pem) = appsync_relay::tls::self_signed(&["localhost"]).unwrap();
    let relay = start_proxied_tls(
        proxy_config(app.url()),
        &[],
        Some(appsync_relay::tls::TlsSource::InMemory {
            cert_pem: cert_pem.clone(),
            key_pem,
        }),
    )
    .await;
    let name = |suffix| session::cookie_name(CLIENT_ID, USERNAME, suffix);
    // A genuine token of the session: what a pending renewal is handed to.
    let old_access = sign(
        &access_claims(&relay.relay.state.config().issuer),
        signing_key(),
    );
    relay.relay.state.sessions().leave_renewal(
        appsync_relay::verify::token_hash("OLD-REFRESH"),
        USERNAME,
        TokenSet {
            access_token: new_access.clone(),
            id_token: None,
            refresh_token: None,
        },
        session_proof(),
    );
    let cookie = format!(
        "{}=alice%40example.com; {}={old_access}; {}=OLD-REFRESH",
        session::last_auth_user_cookie(CLIENT_ID),
        name("accessToken"),
        name("refreshToken"),
    );
    let (status, headers, body) = https(
        relay.addr(),
        tls_client(&cert_pem),
        "GET",
        "/",
        &[("x-forwarded-proto", "http"), ("cookie", &cookie)],
        "",
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "app"));
    let h = app.last().headers;
    assert_eq!(header(&h, "x-forwarded-proto"), Some("https"));
    let set = header(&headers, "set-cookie").unwrap();
    assert!(set.starts_with(&format!("{}={new_access}; ", name("accessToken"))));
    assert!(set.contains("; Secure"), "{set}");
}

#[tokio::test]
async fn shutdown_cuts_an_open_tunnel_after_the_drain_timeout() {
    let app = TestApp::start().await;
    let relay = start_proxied(proxy_config(app.url()), &[]).await;
    let url = format!("ws://{}/_next/webpack-hmr", relay.addr());
    let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        next_frame(&mut ws).await,
        Message::Text("hello from app".into())
    );
    let Proxied {
        relay,
        _jwks,
        _emulator,
    } = relay;
    // The tunnel is on the relay's tracker: shutdown waits for it through
    // the drain timeout, then cuts it instead of hanging.
    tokio::time::timeout(
        WAIT,
        relay.shutdown(Duration::ZERO, Duration::from_millis(200)),
    )
    .await
    .expect("shutdown hung on an open app tunnel");
    let end = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("the browser side stayed open");
    assert!(
        !matches!(end, Some(Ok(Message::Text(_)))),
        "unexpected frame after shutdown: {end:?}"
    );
}

/// A pending renewal for `USERNAME`'s refresh token `rt`, and the cookies of
/// a browser holding `rt` with a genuine (old) access token.
fn pending_for(relay: &Proxied, rt: &str) -> String {
    let new_access = new_access();
    relay.relay.state.sessions().leave_renewal(
        appsync_relay::verify::token_hash(rt),
        USERNAME,
        TokenSet {
            access_token: new_access.clone(),
            id_token: None,
            refresh_token: Some("NEW-REFRESH".into()),
        },
        session_proof(),
    );
    let old_access = sign(
        &access_claims(&relay.relay.state.config().issuer),
        signing_key(),
    );
    format!(
        "{}=alice%40example.com; {}={old_access}; {}={rt}",
        session::last_auth_user_cookie(CLIENT_ID),
        session::cookie_name(CLIENT_ID, USERNAME, "accessToken"),
        session::cookie_name(CLIENT_ID, USERNAME, "refreshToken"),
    )
}

#[tokio::test]
async fn a_response_carrying_our_cookies_is_private_whatever_the_app_said() {
    let app = TestApp::start().await;
    let relay = start_proxied(proxy_config(app.url()), &[]).await;
    let cookie = pending_for(&relay, "RT-CACHE");
    let (_, headers, _) =
        roundtrip(relay.addr(), "GET", "/cached", &[("cookie", &cookie)], "").await;
    assert!(header(&headers, "set-cookie").is_some());
    assert_eq!(header(&headers, "cache-control"), Some("private, no-store"));
    assert!(headers
        .get_all("vary")
        .iter()
        .any(|v| v.to_str().unwrap().contains("Cookie")));
    // Without our cookies the app's caching stands.
    let (_, headers, _) = roundtrip(relay.addr(), "GET", "/cached", &[], "").await;
    assert_eq!(
        header(&headers, "cache-control"),
        Some("public, max-age=31536000, immutable")
    );
}

#[tokio::test]
async fn an_app_failure_after_a_renewal_was_taken_still_writes_the_cookies() {
    let app = TestApp::start().await;
    let cfg = appsync_relay::proxy::ProxyConfig {
        response_timeout: Duration::from_millis(500),
        ..proxy_config(app.url())
    };
    let relay = start_proxied(cfg, &[]).await;
    let cookie = pending_for(&relay, "RT-SLOW");
    let (status, headers, _) =
        roundtrip(relay.addr(), "GET", "/slow", &[("cookie", &cookie)], "").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    let set: Vec<&str> = headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert!(
        set.iter().any(|c| c.contains("NEW-REFRESH")),
        "the renewal was lost with the 504: {set:?}"
    );
}

#[tokio::test]
async fn secure_follows_the_public_scheme_not_an_origin_header() {
    let app = TestApp::start().await;
    // An http origin is allowed too: pages may be served over plain HTTP.
    let relay = start_proxied(
        proxy_config(app.url()),
        &["--allowed-origin", "http://app.example.com"],
    )
    .await;
    let cookie = pending_for(&relay, "RT-ORIGIN");
    let (_, headers, _) = roundtrip(
        relay.addr(),
        "GET",
        "/",
        &[("cookie", &cookie), ("origin", "https://app.example.com")],
        "",
    )
    .await;
    let set = header(&headers, "set-cookie").unwrap();
    assert!(
        !set.contains("Secure"),
        "an Origin header made cookies Secure: {set}"
    );
    let relay = start_proxied(
        proxy_config(app.url()),
        &[
            "--allowed-origin",
            "http://app.example.com",
            "--public-origin",
            "https://app.example.com",
        ],
    )
    .await;
    let cookie = pending_for(&relay, "RT-PUBLIC");
    let (_, headers, _) = roundtrip(relay.addr(), "GET", "/", &[("cookie", &cookie)], "").await;
    assert!(header(&headers, "set-cookie").unwrap().contains("Secure"));
}

/// TLS ended by an ingress that sends no `X-Forwarded-Proto`, every
/// allowed origin https: every page that can use the relay was loaded over
/// TLS, so the cookies the relay writes are `Secure` — never weaker than
/// what the Next.js adapter wrote. Before the fix: written without
/// `Secure` (the last hop was plain HTTP).
#[tokio::test]
async fn cookies_are_secure_when_every_allowed_origin_is_https() {
    let app = TestApp::start().await;
    // relay_config allows only https://app.example.com.
    let relay = start_proxied(proxy_config(app.url()), &[]).await;
    let cookie = pending_for(&relay, "RT-HTTPS-ORIGINS");
    let (_, headers, _) = roundtrip(relay.addr(), "GET", "/", &[("cookie", &cookie)], "").await;
    let set: Vec<&str> = headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .filter(|c| c.starts_with(session::COOKIE_PREFIX))
        .collect();
    assert!(!set.is_empty());
    let weak: Vec<&str> = set
        .iter()
        .filter(|c| !c.contains("; Secure"))
        .map(|c| c.split('=').next().unwrap_or(""))
        .collect();
    assert!(weak.is_empty(), "written without Secure: {weak:?}");
}

#[tokio::test]
async fn framework_internal_headers_never_reach_the_app() {
    let app = TestApp::start().await;
    let relay = start_proxied(proxy_config(app.url()), &[]).await;
    roundtrip(
        relay.addr(),
        "GET",
        "/echo",
        &[
            (
                "x-middleware-subrequest",
                "middleware:middleware:middleware:middleware:middleware",
            ),
            ("x-invoke-path", "/admin"),
            ("x-nextjs-data", "1"),
        ],
        "",
    )
    .await;
    let seen = app.last().headers;
    assert!(header(&seen, "x-middleware-subrequest").is_none());
    assert!(header(&seen, "x-invoke-path").is_none());
    assert_eq!(
        header(&seen, "x-nextjs-data"),
        Some("1"),
        "the client router's header stays"
    );
}

#[tokio::test]
async fn two_hosts_are_refused_and_connection_cannot_remove_host() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::start().await;
    let relay = start_proxied(proxy_config(app.url()), &[]).await;
    let raw = |req: &'static str| {
        let addr = relay.addr();
        async move {
            let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            tcp.write_all(req.as_bytes()).await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        }
    };
    let resp = raw("GET /echo HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    let resp = raw("GET /echo HTTP/1.1\r\nHost: app.example\r\nConnection: host\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(header(&app.last().headers, "host"), Some("app.example"));
}

#[tokio::test]
async fn a_sign_out_seen_through_the_app_drops_what_waits_for_the_session() {
    let app = TestApp::start().await;
    let relay = start_proxied(proxy_config(app.url()), &[]).await;
    let cookie = pending_for(&relay, "RT-SIGNOUT");
    // The sign-out request proves nothing (no token), so nothing is handed
    // out on it; the app expires the refresh-token cookie.
    let bare = format!(
        "{}=alice%40example.com; {}=RT-SIGNOUT",
        session::last_auth_user_cookie(CLIENT_ID),
        session::cookie_name(CLIENT_ID, USERNAME, "refreshToken"),
    );
    let (_, headers, _) =
        roundtrip(relay.addr(), "GET", "/signout", &[("cookie", &bare)], "").await;
    assert!(!headers
        .get_all("set-cookie")
        .iter()
        .any(|v| v.to_str().unwrap().contains("NEW-")));
    // Afterwards even a genuine token of the session gets nothing.
    let (_, headers, _) = roundtrip(relay.addr(), "GET", "/", &[("cookie", &cookie)], "").await;
    assert!(
        !headers
            .get_all("set-cookie")
            .iter()
            .any(|v| v.to_str().unwrap().contains("NEW-")),
        "a signed-out session's renewal was delivered"
    );
}

/// Someone holding a victim's leaked access token, next to a junk refresh
/// token, who gets the app to clear the cookies (a sign-out route) does not
/// end the victim's sign-in: only a refresh token the relay knows to be of
/// that sign-in does. Before the fix: the victim's waiting renewal was
/// dropped by the stranger's sign-out.
#[tokio::test]
async fn a_strangers_sign_out_with_a_junk_refresh_token_ends_nothing() {
    let app = TestApp::start().await;
    let relay = start_proxied(proxy_config(app.url()), &[]).await;
    let victim = pending_for(&relay, "RT-VICTIM");
    let forged = victim.replace("RT-VICTIM", "RT-JUNK");
    let _ = roundtrip(relay.addr(), "GET", "/signout", &[("cookie", &forged)], "").await;
    let (_, headers, _) = roundtrip(relay.addr(), "GET", "/", &[("cookie", &victim)], "").await;
    assert!(
        headers
            .get_all("set-cookie")
            .iter()
            .any(|v| v.to_str().unwrap().contains("NEW-")),
        "the victim's waiting renewal was dropped by someone else's sign-out"
    );
}
