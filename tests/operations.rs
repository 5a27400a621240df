//! What an operator relies on: admission and rate limits (each with its
//! metric), slow-loris and header-size guards, the idle timeout, the drain
//! sequence, JSON logs, and the README's flag table matching the binary.

mod support;

use futures_util::StreamExt;
use serde_json::{json, Value};
use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

async fn metrics(stack: &Stack) -> String {
    http(stack.relay.admin_addr, "GET", "/metrics", &[], "")
        .await
        .2
}

fn refused(attempt: Attempt) -> (u16, String) {
    match attempt {
        Attempt::Refused(s, b) => (s, b),
        Attempt::Open(..) => panic!("expected a refusal, got a 101"),
        Attempt::Failed(e) => panic!("transport failure: {e}"),
    }
}

/// Cookies for another user (`sub`) of the same pool.
fn cookies_for_sub(stack: &Stack, sub: &str) -> String {
    let mut claims = access_claims(&stack.jwks.issuer());
    claims["sub"] = json!(sub);
    amplify_cookies(Some(&sign(&claims, signing_key())), None)
}

#[tokio::test]
async fn connection_limits_answer_429_and_free_their_slots() {
    let stack = Stack::start_with(&[
        "--max-connections",
        "3",
        "--max-connections-per-user",
        "2",
        "--max-connections-per-ip",
        "0",
    ])
    .await;
    let url = stack.realtime_url();
    let alice = cookies_for_sub(&stack, "alice");
    let a1 = connect(&url, &alice).await;
    let _a2 = connect(&url, &alice).await;
    let (status, body) = refused(try_connect(&url, &Upgrade::browser(&alice)).await);
    assert_eq!(
        (status, body.contains("max_connections_per_user")),
        (429, true),
        "{body}"
    );
    let _b1 = connect(&url, &cookies_for_sub(&stack, "bob")).await;
    let (status, body) =
        refused(try_connect(&url, &Upgrade::browser(&cookies_for_sub(&stack, "carol"))).await);
    assert_eq!(
        (status, body.contains("\"max_connections\"")),
        (429, true),
        "{body}"
    );
    // Closing a socket gives its slot back.
    drop(a1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match try_connect(&url, &Upgrade::browser(&cookies_for_sub(&stack, "carol"))).await {
            Attempt::Open(..) => break,
            _ => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "slot never released"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    let m = metrics(&stack).await;
    assert!(
        m.contains("appsync_relay_limits_hit_total{limit=\"max_connections_per_user\"} 1"),
        "{m}"
    );
    // (The series exists from the start, at 0: it must have moved.)
    assert!(
        m.contains("appsync_relay_limits_hit_total{limit=\"max_connections\"}")
            && !m.contains("appsync_relay_limits_hit_total{limit=\"max_connections\"} 0\n"),
        "{m}"
    );
}

#[tokio::test]
async fn per_ip_limit_counts_the_client_behind_a_trusted_proxy() {
    let stack = Stack::start_with(&[
        "--max-connections-per-ip",
        "1",
        "--trust-forwarded",
        "127.0.0.1",
    ])
    .await;
    let url = stack.realtime_url();
    // A user `user` whose request arrives through the proxy for client `ip`.
    let via = |user: &str, ip: &str| Upgrade {
        headers: vec![("x-forwarded-for", ip.to_string())],
        ..Upgrade::browser(&cookies_for_sub(&stack, user))
    };
    // Two clients behind the same (trusted) proxy address are told apart by
    // X-Forwarded-For; the same client address twice is refused.
    let _c1 = connect_as(&url, &via("u1", "203.0.113.1")).await;
    let _c2 = connect_as(&url, &via("u2", "203.0.113.2")).await;
    let again = match try_connect(&url, &via("u3", "203.0.113.1")).await {
        Attempt::Refused(status, _) => Err(status),
        _ => Ok(()),
    };
    assert_eq!(again.err(), Some(429));
    assert!(metrics(&stack)
        .await
        .contains("appsync_relay_limits_hit_total{limit=\"max_connections_per_ip\"} 1"));
}

#[tokio::test]
async fn an_untrusted_forwarder_is_counted_and_named_by_readyz_which_stays_ready() {
    // The default: no --trust-forwarded. An ingress in front (127.0.0.1
    // here) forwards X-Forwarded-For: every browser behind it shares its
    // address for the per-IP limit, which the operator must hear about.
    let stack = Stack::start_with(&["--max-connections-per-ip", "2"]).await;
    let url = stack.realtime_url();
    let (status, _, body) = http(stack.relay.admin_addr, "GET", "/readyz", &[], "").await;
    assert_eq!(
        (status, body.as_str()),
        (200, "ready\n"),
        "nothing seen yet"
    );
    let direct = Upgrade::browser(&cookies_for_sub(&stack, "u0"));
    let _plain = connect_as(&url, &direct).await;
    assert!(metrics(&stack)
        .await
        .contains("appsync_relay_forwarded_untrusted_total 0"));

    let via = |user: &str, ip: &str| Upgrade {
        headers: vec![("x-forwarded-for", ip.to_string())],
        ..Upgrade::browser(&cookies_for_sub(&stack, user))
    };
    let _c1 = connect_as(&url, &via("u1", "203.0.113.1")).await;
    // Another client behind it is refused: u0 and u1 already hold the
    // ingress's address, and the limit is 2.
    let refused = matches!(
        try_connect(&url, &via("u2", "203.0.113.2")).await,
        Attempt::Refused(429, _)
    );
    assert!(
        refused,
        "the header must not be believed from an untrusted peer"
    );
    assert!(metrics(&stack)
        .await
        .contains("appsync_relay_forwarded_untrusted_total 2"));
    let (status, _, body) = http(stack.relay.admin_addr, "GET", "/readyz", &[], "").await;
    assert_eq!(status, 200, "a warning, not an outage: {body}");
    assert!(body.starts_with("ready\n"), "{body}");
    assert!(
        body.contains("X-Forwarded-For arrived from 127.0.0.1")
            && body.contains("--trust-forwarded"),
        "{body}"
    );
    assert!(
        !body.contains("203.0.113"),
        "a client's claimed address is not news: {body}"
    );
}

#[tokio::test]
async fn a_trusted_forwarder_is_not_warned_about() {
    let stack = Stack::start_with(&["--trust-forwarded", "127.0.0.1"]).await;
    let up = Upgrade {
        headers: vec![("x-forwarded-for", "203.0.113.1".to_string())],
        ..Upgrade::browser(&cookies_for_sub(&stack, "u1"))
    };
    let _c = connect_as(&stack.realtime_url(), &up).await;
    assert!(metrics(&stack)
        .await
        .contains("appsync_relay_forwarded_untrusted_total 0"));
    let (_, _, body) = http(stack.relay.admin_addr, "GET", "/readyz", &[], "").await;
    assert_eq!(body, "ready\n");
}

#[tokio::test]
async fn slow_loris_is_cut_off_while_others_are_served() {
    let stack = Stack::start_with(&["--handshake-timeout", "1"]).await;
    let mut slow = tokio::net::TcpStream::connect(stack.relay.public_addr)
        .await
        .unwrap();
    slow.write_all(b"GET /event/realtime HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // A well-behaved client is served meanwhile.
    let mut ws = connect(&stack.realtime_url(), &stack.good_cookies()).await;
    init(&mut ws).await;
    // The slow one is dropped after the deadline (EOF or reset).
    let mut buf = [0u8; 256];
    let read = tokio::time::timeout(Duration::from_secs(5), slow.read(&mut buf)).await;
    match read {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => assert!(
            String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"),
            "slow client got {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(_) => panic!("slow client still connected after 5 s"),
    }
}

#[tokio::test]
async fn oversized_request_heads_are_refused() {
    let stack = Stack::start_with(&["--max-header-bytes", "8192"]).await;
    let big = "x".repeat(20_000);
    let mut s = tokio::net::TcpStream::connect(stack.relay.public_addr)
        .await
        .unwrap();
    s.write_all(
        format!("GET /event/realtime HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 431"),
        "{text}"
    );
    assert!(!text.contains("101"));
}

#[tokio::test]
async fn subscription_limit_answers_subscribe_error() {
    let stack = Stack::start_with(&["--max-subscriptions", "2"]).await;
    let mut ws = connect(&stack.realtime_url(), &stack.good_cookies()).await;
    init(&mut ws).await;
    for i in 0..2 {
        send_json(&mut ws, amplify_subscribe(&format!("s{i}"), "/default/x")).await;
        assert_eq!(recv_json(&mut ws).await["type"], "subscribe_success");
    }
    send_json(&mut ws, amplify_subscribe("s2", "/default/x")).await;
    let e = recv_json(&mut ws).await;
    assert_eq!(
        (e["type"].as_str(), e["id"].as_str()),
        (Some("subscribe_error"), Some("s2")),
        "{e}"
    );
    assert_eq!(
        stack.emulator.subscription_count(),
        2,
        "the third never reached upstream"
    );
    // Unsubscribing frees a slot.
    send_json(&mut ws, json!({"type": "unsubscribe", "id": "s0"})).await;
    assert_eq!(recv_json(&mut ws).await["type"], "unsubscribe_success");
    send_json(&mut ws, amplify_subscribe("s3", "/default/x")).await;
    assert_eq!(recv_json(&mut ws).await["type"], "subscribe_success");
    assert!(metrics(&stack)
        .await
        .contains("appsync_relay_limits_hit_total{limit=\"max_subscriptions\"} 1"));
}

#[tokio::test]
async fn publish_rate_answers_publish_error_and_keeps_the_socket() {
    let stack = Stack::start_with(&["--publish-rate", "3"]).await;
    let mut ws = connect(&stack.realtime_url(), &stack.good_cookies()).await;
    init(&mut ws).await;
    for i in 0..5 {
        send_json(
            &mut ws,
            amplify_publish(&format!("p{i}"), "/default/x", &[json!(i)]),
        )
        .await;
    }
    let mut results = std::collections::HashMap::new();
    for _ in 0..5 {
        let v = recv_json(&mut ws).await;
        results.insert(
            v["id"].as_str().unwrap().to_string(),
            v["type"].as_str().unwrap().to_string(),
        );
    }
    let ok = results.values().filter(|t| *t == "publish_success").count();
    let throttled = results.values().filter(|t| *t == "publish_error").count();
    assert_eq!((ok, throttled), (3, 2), "{results:?}");
    // The bucket refills: a publish a moment later succeeds on the same socket.
    tokio::time::sleep(Duration::from_millis(400)).await;
    send_json(
        &mut ws,
        amplify_publish("later", "/default/x", &[json!("later")]),
    )
    .await;
    assert_eq!(recv_json(&mut ws).await["type"], "publish_success");
    assert!(metrics(&stack)
        .await
        .contains("appsync_relay_limits_hit_total{limit=\"publish_rate\"} 2"));
}

#[tokio::test]
async fn idle_sockets_are_closed() {
    let stack = Stack::start_with(&["--idle-timeout", "1"]).await;
    let mut ws = connect(&stack.realtime_url(), &stack.good_cookies()).await;
    init(&mut ws).await;
    let started = tokio::time::Instant::now();
    assert_eq!(recv_close(&mut ws).await, Some(1000));
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert!(metrics(&stack)
        .await
        .contains("appsync_relay_limits_hit_total{limit=\"idle_timeout\"} 1"));
}

#[tokio::test]
async fn drain_keeps_serving_then_closes_every_socket_with_1001_losing_no_acknowledged_publish() {
    let stack = Stack::start().await;
    let mut sub = connect(&stack.realtime_url(), &stack.good_cookies()).await;
    init(&mut sub).await;
    send_json(&mut sub, amplify_subscribe("sub", "/default/drain")).await;
    assert_eq!(recv_json(&mut sub).await["type"], "subscribe_success");
    let mut publisher = connect(&stack.realtime_url(), &stack.good_cookies()).await;
    init(&mut publisher).await;

    let Stack {
        relay,
        emulator,
        jwks,
        cognito,
    } = stack;
    let admin = relay.admin_addr;
    let public = relay.public_addr;
    let state = relay.state.clone();
    let drain =
        tokio::spawn(relay.shutdown(Duration::from_millis(600), Duration::from_millis(1500)));
    // Readiness drops at once ...
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while http(admin, "GET", "/readyz", &[], "").await.0 != 503 {
        assert!(tokio::time::Instant::now() < deadline, "readyz still 200");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // ... while the listener still serves new clients during the drain delay ...
    let stack_view = (jwks, cognito, emulator);
    let url = format!("ws://{public}/event/realtime");
    let cookies = amplify_cookies(
        Some(&sign(&access_claims(&stack_view.0.issuer()), signing_key())),
        None,
    );
    let mut late = connect(&url, &cookies).await;
    init(&mut late).await;

    // ... and open sockets keep working: every acknowledged publish arrives.
    let mut acked = Vec::new();
    for i in 0..40 {
        send_json(
            &mut publisher,
            amplify_publish(&format!("p{i}"), "/default/drain", &[json!({"i": i})]),
        )
        .await;
        let v = recv_json(&mut publisher).await;
        if v["type"] == "publish_success" {
            acked.push(i);
        }
    }
    assert_eq!(acked.len(), 40, "publishes refused during the drain window");
    let mut received = Vec::new();
    let sub_close = loop {
        match tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .expect("no 1001")
        {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "data" {
                    let e: Value = serde_json::from_str(v["event"].as_str().unwrap()).unwrap();
                    received.push(e["i"].as_i64().unwrap());
                }
            }
            Some(Ok(Message::Close(f))) => break f.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            other => panic!("subscriber ended without a close frame: {other:?}"),
        }
    };
    let acked: Vec<i64> = acked.into_iter().collect();
    assert_eq!(received, acked, "an acknowledged publish was lost");
    assert_eq!(sub_close, Some(1001));
    assert_eq!(recv_close(&mut publisher).await, Some(1001));
    assert_eq!(recv_close(&mut late).await, Some(1001));
    drain.await.unwrap();
    assert!(!state.is_ready());
    // After the delay the listener is gone.
    assert!(tokio::net::TcpStream::connect(public).await.is_err());
}

#[test]
fn json_logs_are_one_object_per_line() {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_appsync-relay"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--appsync-http-endpoint",
            "http://127.0.0.1:9/event",
            "--cognito-user-pool-id",
            "eu-west-1_abc",
            "--cognito-client-id",
            "client",
            "--cognito-jwks-url",
            "http://127.0.0.1:9/jwks.json",
            "--allowed-origin",
            "https://app.example.com",
            "--log-format",
            "json",
        ])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufReader::new(stderr).lines();
    let mut parsed: Vec<Value> = Vec::new();
    // Every line is JSON; read until the "listening" line (it races with the
    // background tasks' first lines), at most 10.
    while !parsed
        .iter()
        .any(|v| v["message"] == "appsync-relay listening")
    {
        assert!(parsed.len() < 10, "no listening line in {parsed:?}");
        let line = lines.next().expect("a log line").unwrap();
        let v: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        parsed.push(v);
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        parsed
            .iter()
            .all(|v| v["level"].is_string() && v["timestamp"].is_string()),
        "{parsed:?}"
    );
    assert!(
        parsed
            .iter()
            .any(|v| v["message"] == "appsync-relay listening"),
        "{parsed:?}"
    );
}

#[test]
fn readme_flag_table_matches_serve_help() {
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_appsync-relay"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    let flags_in =
        |text: &str, line_filter: &dyn Fn(&str) -> bool| -> std::collections::BTreeSet<String> {
            text.lines()
                .filter(|l| line_filter(l))
                .flat_map(|l| {
                    l.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                        .filter(|w| w.starts_with("--") && w.len() > 2)
                        .map(str::to_string)
                        .collect::<Vec<_>>()
                })
                .collect()
        };
    let mut in_help = flags_in(&help, &|l| l.trim_start().starts_with("--"));
    in_help.remove("--help");
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    // The flag table: rows that start with "| `--".
    let in_readme = flags_in(&readme, &|l| l.starts_with("| `--"));
    let missing: Vec<_> = in_help.difference(&in_readme).collect();
    let stale: Vec<_> = in_readme.difference(&in_help).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "README flag table out of date: missing {missing:?}, not in --help {stale:?}"
    );
}

#[test]
fn out_of_range_numbers_are_refused_at_start_up_with_exit_code_2() {
    let base = [
        "serve",
        "--appsync-http-endpoint",
        "http://127.0.0.1:9/event",
        "--cognito-user-pool-id",
        "eu-west-1_abc",
        "--cognito-client-id",
        "client",
        "--allowed-origin",
        "https://app.example.com",
    ];
    for (flag, value) in [
        // Overflowed `Instant` arithmetic and panicked every connection.
        ("--max-session-age", "18446744073709551615"),
        ("--idle-timeout", "18446744073709551615"),
        ("--cookie-max-age", "0"),
        ("--send-timeout", "0"),
        ("--upstream-timeout", "100000"),
        ("--refresh-token-validity", "1"),
        // Applied to the runtime before validation: never handed to tokio.
        ("--worker-threads", "100000"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_appsync-relay"))
            .args(base)
            .args([flag, value])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag} {value}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&flag[2..]) && err.contains("out of range"),
            "{flag} {value}: {err}"
        );
    }
}
