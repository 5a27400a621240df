//! `appsync-relay demo` end to end: sign in through the demo's login route,
//! then use only the cookies it set, as a browser would.

mod support;

use appsync_relay::cli::DemoArgs;
use appsync_relay::demo;
use serde_json::{json, Value};
use std::time::Duration;
use support::*;
use tokio::net::TcpListener;

/// The demo on ephemeral ports, with tokens living `token_lifetime` seconds.
async fn start_demo(token_lifetime: u64) -> demo::Demo {
    let public = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let args = DemoArgs {
        listen: public.local_addr().unwrap(),
        admin_listen: admin.local_addr().unwrap(),
        token_lifetime,
        tls_cert: None,
        tls_key: None,
    };
    let demo = demo::start(&args, public, admin).await.unwrap();
    assert!(demo.relay.wait_ready(Duration::from_secs(10)).await);
    demo
}

#[tokio::test]
async fn demo_login_sets_httponly_cookies_that_open_the_relay() {
    let demo = start_demo(60).await;
    let addr = demo.relay.public_addr;
    let origin = format!("https://localhost:{}", addr.port());
    assert_eq!(demo.url(), format!("{origin}/"));
    let tls = tls_client(demo.self_signed_cert.as_deref().expect("self-signed cert"));

    // Plain HTTP is not spoken on the demo's public listener.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut raw = tokio::net::TcpStream::connect(addr).await.unwrap();
        raw.write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut buf)).await;
        assert!(
            !String::from_utf8_lossy(&buf).contains("200 OK"),
            "plain HTTP served"
        );
    }

    let (status, headers, page) = https(addr, tls.clone(), "GET", "/", &[], "").await;
    assert_eq!(status, 200);
    assert!(page.contains("appsync-relay demo"));
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));

    let (status, headers, _) = https(
        addr,
        tls.clone(),
        "POST",
        "/demo/login",
        &[("content-type", "application/x-www-form-urlencoded")],
        "username=bob%40example.com",
    )
    .await;
    assert_eq!(status, 303);
    let set_cookies: Vec<&str> = headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(set_cookies.len(), 4, "{set_cookies:?}");
    for c in &set_cookies {
        assert!(
            c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.contains("Path=/"),
            "{c}"
        );
        assert!(
            c.starts_with("CognitoIdentityServiceProvider.demoappclient."),
            "{c}"
        );
    }
    assert!(set_cookies
        .iter()
        .any(|c| c.contains(".bob%40example.com.accessToken=eyJ")));
    let cookie_header = set_cookies
        .iter()
        .map(|c| c.split(';').next().unwrap())
        .collect::<Vec<_>>()
        .join("; ");

    let url = format!("wss://localhost:{}/event/realtime", addr.port());
    let upgrade = Upgrade {
        origin: Some(origin.clone()),
        ..Upgrade::browser(&cookie_header)
    };
    let mut ws = match try_connect_with(&url, &upgrade, Some(tls.clone())).await {
        Attempt::Open(ws, _) => *ws,
        Attempt::Refused(s, b) => panic!("refused {s} {b}"),
        Attempt::Failed(e) => panic!("transport failure: {e}"),
    };
    init(&mut ws).await;
    send_json(&mut ws, amplify_subscribe("s", "/default/demo")).await;
    assert_eq!(recv_json(&mut ws).await["type"], "subscribe_success");
    let (status, _, body) = https(
        addr,
        tls.clone(),
        "POST",
        "/event",
        &[
            ("origin", &origin),
            ("cookie", &cookie_header),
            ("content-type", "application/json"),
        ],
        &json!({"channel": "/default/demo", "events": ["{\"hi\":1}"]}).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let data = recv_json(&mut ws).await;
    assert_eq!(
        serde_json::from_str::<Value>(data["event"].as_str().unwrap()).unwrap(),
        json!({"hi": 1})
    );

    // Bad usernames are refused, and nothing is set.
    let (status, headers, _) = https(
        addr,
        tls.clone(),
        "POST",
        "/demo/login",
        &[],
        "username=%3Cscript%3E",
    )
    .await;
    assert_eq!(status, 400);
    assert!(headers.get("set-cookie").is_none());
}

#[tokio::test]
async fn demo_sessions_outlive_their_token_lifetime() {
    let demo = start_demo(4).await;
    let addr = demo.relay.public_addr;
    let origin = format!("https://localhost:{}", addr.port());
    let tls = tls_client(demo.self_signed_cert.as_deref().unwrap());
    let (_, headers, _) = https(
        addr,
        tls.clone(),
        "POST",
        "/demo/login",
        &[("content-type", "application/x-www-form-urlencoded")],
        "username=carol",
    )
    .await;
    let cookie_header = headers
        .get_all("set-cookie")
        .iter()
        .map(|c| c.to_str().unwrap().split(';').next().unwrap().to_string())
        .collect::<Vec<_>>()
        .join("; ");
    let url = format!("wss://localhost:{}/event/realtime", addr.port());
    let upgrade = Upgrade {
        origin: Some(origin.clone()),
        ..Upgrade::browser(&cookie_header)
    };
    let mut ws = match try_connect_with(&url, &upgrade, Some(tls.clone())).await {
        Attempt::Open(ws, _) => *ws,
        _ => panic!("refused"),
    };
    init(&mut ws).await;
    // Three token lifetimes: renewed in place with the demo IdP's refresh
    // API (before, the demo closed the socket with 4000 at the first
    // renewal: it had no refresh endpoint).
    tokio::time::sleep(Duration::from_secs(10)).await;
    send_json(&mut ws, amplify_subscribe("late", "/default/demo")).await;
    assert_eq!(recv_json(&mut ws).await["type"], "subscribe_success");
    let metrics = http(demo.relay.admin_addr, "GET", "/metrics", &[], "")
        .await
        .2;
    assert!(
        metrics.contains("token_refreshes_total{phase=\"connection\",result=\"ok\"}"),
        "{metrics}"
    );
}
