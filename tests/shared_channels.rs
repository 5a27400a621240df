//! Shared channels (`--shared-channel`): browsers on one channel served from
//! one upstream subscription, against the emulator (whose operations meter
//! counts what AWS would bill).

mod support;

use serde_json::{json, Value};
use std::time::Duration;
use support::*;

const SHARED: &[&str] = &["--shared-channel", "/ns/*", "--shared-linger", "1"];

async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A browser, initialised and subscribed to `channel` as `id`.
async fn subscriber(stack: &Stack, id: &str, channel: &str) -> (Ws, Value) {
    let mut ws = connect(&stack.realtime_url(), &stack.good_cookies()).await;
    init(&mut ws).await;
    send_json(&mut ws, amplify_subscribe(id, channel)).await;
    let answer = recv_json(&mut ws).await;
    (ws, answer)
}

async fn publish(ws: &mut Ws, id: &str, channel: &str, event: Value) {
    send_json(ws, amplify_publish(id, channel, &[event])).await;
    let ack = recv_json(ws).await;
    assert_eq!(ack["type"], "publish_success", "{ack}");
}

#[tokio::test]
async fn browsers_on_a_shared_channel_cost_one_upstream_subscription() {
    let stack = Stack::start_with(SHARED).await;
    let mut browsers = Vec::new();
    for i in 0..5 {
        let id = format!("sub-{i}");
        let (ws, answer) = subscriber(&stack, &id, "/ns/room").await;
        assert_eq!(answer, json!({"type": "subscribe_success", "id": id}));
        browsers.push((ws, id));
    }
    // Each browser was checked on its own connection, then the check was
    // undone: what stays upstream is the one shared subscription.
    eventually("one upstream subscription", || {
        stack.emulator.subscription_count() == 1
    })
    .await;
    assert_eq!(stack.emulator.operations("subscribe"), 5 + 1);

    let deliveries = stack.emulator.operations("delivery");
    let (publisher, _) = &mut browsers[0];
    publish(publisher, "p1", "/ns/room", json!({"price": 1})).await;
    for (ws, id) in &mut browsers {
        let data = recv_json(ws).await;
        assert_eq!(data["type"], "data", "{data}");
        assert_eq!(data["id"], id.as_str());
        assert_eq!(data["event"], json!({"price": 1}).to_string());
    }
    assert_eq!(stack.emulator.operations("delivery") - deliveries, 1);
}

#[tokio::test]
async fn a_channel_appsync_refuses_the_user_is_never_joined() {
    // `nope` is no namespace of the emulated API: AppSync refuses the
    // subscription, and so the check refuses the join.
    let stack = Stack::start_with(&["--shared-channel", "/nope/*"]).await;
    let (mut ws, answer) = subscriber(&stack, "mine", "/nope/room").await;
    assert_eq!(answer["type"], "subscribe_error", "{answer}");
    assert_eq!(answer["id"], "mine");
    assert_eq!(
        answer["errors"][0]["errorType"], "UnauthorizedException",
        "{answer}"
    );
    // Nothing was joined: the socket is fine, no shared subscription exists.
    send_json(&mut ws, amplify_subscribe("other", "/ns/plain")).await;
    assert_eq!(recv_json(&mut ws).await["type"], "subscribe_success");
    assert_eq!(stack.emulator.subscription_count(), 1);
    let (_, _, metrics) = http(stack.relay.admin_addr, "GET", "/metrics", &[], "").await;
    assert!(
        metrics.contains("appsync_relay_shared_probes_total{outcome=\"refused\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn leaving_touches_nobody_else_and_the_last_one_out_unsubscribes_after_the_linger() {
    let stack = Stack::start_with(SHARED).await;
    let (mut a, _) = subscriber(&stack, "a", "/ns/room").await;
    let (mut b, _) = subscriber(&stack, "b", "/ns/room").await;
    eventually("shared", || stack.emulator.subscription_count() == 1).await;

    send_json(&mut a, json!({"type": "unsubscribe", "id": "a"})).await;
    assert_eq!(
        recv_json(&mut a).await,
        json!({"type": "unsubscribe_success", "id": "a"})
    );
    publish(&mut a, "p1", "/ns/room", json!(1)).await;
    let data = recv_json(&mut b).await;
    assert_eq!(
        (data["type"].as_str(), data["id"].as_str()),
        (Some("data"), Some("b"))
    );

    // The last browser goes (its socket closes): the upstream subscription
    // stays for the linger, then goes.
    drop(b);
    let unsubscribes = stack.emulator.operations("unsubscribe");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        stack.emulator.subscription_count(),
        1,
        "gone before the linger"
    );
    eventually("unsubscribed after the linger", || {
        stack.emulator.subscription_count() == 0
    })
    .await;
    assert_eq!(stack.emulator.operations("unsubscribe"), unsubscribes + 1);
    // The carrier, with nothing left to carry, closes: only `a`'s own
    // upstream stays.
    eventually("the idle carrier closed", || {
        stack.emulator.connection_count() == 1
    })
    .await;
}

#[tokio::test]
async fn an_upstream_drop_is_redialled_with_the_shared_subscriptions_replayed() {
    let stack = Stack::start_with(SHARED).await;
    let (mut a, _) = subscriber(&stack, "a", "/ns/room").await;
    let (mut b, _) = subscriber(&stack, "b", "/ns/room").await;
    eventually("shared", || stack.emulator.subscription_count() == 1).await;

    stack.emulator.abort_all();
    eventually("re-dialled and replayed", || {
        stack.emulator.subscription_count() == 1 && stack.emulator.connection_count() == 3
    })
    .await;
    // `a`'s own upstream was cut too: a publish into it while it is being
    // re-dialled is answered publish_error (by design); try until through.
    let mut attempt = 0;
    loop {
        attempt += 1;
        send_json(
            &mut a,
            amplify_publish(&format!("p{attempt}"), "/ns/room", &[json!("after")]),
        )
        .await;
        let ack = recv_json(&mut a).await;
        if ack["type"] == "publish_success" {
            break;
        }
        assert!(attempt < 20, "{ack}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Each browser's next frame is the event: no second subscribe_success.
    for (ws, id) in [(&mut a, "a"), (&mut b, "b")] {
        let data = recv_json(ws).await;
        assert_eq!(data["type"], "data", "{data}");
        assert_eq!(data["id"], id);
    }
}

/// Cookies of a second user (another `sub`).
fn other_user_cookies(stack: &Stack, sub: &str) -> String {
    let mut claims = access_claims(&stack.jwks.issuer());
    claims["sub"] = json!(sub);
    claims["username"] = json!("bob@example.com");
    amplify_cookies(Some(&sign(&claims, signing_key())), None)
}

const BOB: &str = "5f1c6a2e-0000-4000-8000-0000000000b0";

#[tokio::test]
async fn a_user_the_namespace_refuses_gets_subscribe_error_and_no_events() {
    let stack = Stack::start_with(SHARED).await;
    stack.emulator.refuse_subscriptions(BOB, "/ns/room");
    let (mut alice, answer) = subscriber(&stack, "a", "/ns/room").await;
    assert_eq!(answer["type"], "subscribe_success");

    let mut bob = connect(&stack.realtime_url(), &other_user_cookies(&stack, BOB)).await;
    init(&mut bob).await;
    send_json(&mut bob, amplify_subscribe("b", "/ns/room")).await;
    let refused = recv_json(&mut bob).await;
    assert_eq!(refused["type"], "subscribe_error", "{refused}");
    assert_eq!(refused["id"], "b");
    assert_eq!(refused["errors"][0]["errorType"], "UnauthorizedException");

    publish(&mut alice, "p1", "/ns/room", json!("secret")).await;
    assert_eq!(recv_json(&mut alice).await["type"], "data");
    // Bob's next frame answers his next request: no event was queued for him.
    send_json(&mut bob, amplify_subscribe("c", "/ns/elsewhere")).await;
    let next = recv_json(&mut bob).await;
    assert_eq!(
        next,
        json!({"type": "subscribe_success", "id": "c"}),
        "{next}"
    );
}

#[tokio::test]
async fn a_session_that_ends_leaves_the_shared_subscription_to_the_others() {
    let stack = Stack::start_with(&["--shared-channel", "/ns/*", "--max-session-age", "2"]).await;
    let (mut alice, _) = subscriber(&stack, "a", "/ns/room").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (mut bob, _) = subscriber(&stack, "b", "/ns/room").await;
    // Alice's session reaches its maximum age first: 4401 for her only.
    assert_eq!(recv_close(&mut alice).await, Some(4401));
    publish(&mut bob, "p1", "/ns/room", json!("still here")).await;
    let data = recv_json(&mut bob).await;
    assert_eq!(
        (data["type"].as_str(), data["id"].as_str()),
        (Some("data"), Some("b"))
    );
    assert_eq!(stack.emulator.subscription_count(), 1);
}

#[tokio::test]
async fn a_browser_that_falls_behind_is_closed_and_the_others_keep_up() {
    let stack = Stack::start_with(&[
        "--shared-channel",
        "/ns/*",
        "--shared-queue",
        "4",
        "--publish-rate",
        "0",
    ])
    .await;
    let (mut reader, _) = subscriber(&stack, "r", "/ns/room").await;
    let (mut stalled, _) = subscriber(&stack, "s", "/ns/room").await;
    let (mut publisher, _) = subscriber(&stack, "p", "/ns/other").await;
    // Events big enough to fill the stalled browser's socket buffers
    // quickly; it reads nothing from here on.
    let event = json!("x".repeat(60_000));
    let mut lagged = false;
    for i in 0..400 {
        publish(&mut publisher, &format!("p{i}"), "/ns/room", event.clone()).await;
        let data = recv_json(&mut reader).await;
        assert_eq!(
            (data["type"].as_str(), data["id"].as_str()),
            (Some("data"), Some("r"))
        );
        let (_, _, metrics) = http(stack.relay.admin_addr, "GET", "/metrics", &[], "").await;
        if metrics.contains("limits_hit_total{limit=\"shared_lag\"} 1") {
            lagged = true;
            break;
        }
    }
    assert!(lagged, "the stalled browser was never found lagging");
    // The reader is still served in real time.
    publish(&mut publisher, "last", "/ns/room", json!("after")).await;
    assert_eq!(
        recv_json(&mut reader).await["event"],
        json!("after").to_string()
    );
    // The stalled one, once it reads again, finds its socket ended.
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match futures_util::StreamExt::next(&mut stalled).await {
                Some(Ok(tokio_tungstenite::tungstenite::Message::Close(frame))) => {
                    return frame.map(|f| u16::from(f.code));
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    })
    .await
    .expect("the lagging socket was not closed");
    assert!(matches!(ended, Some(1008) | None), "{ended:?}");
}

/// Found by review: a carrier that lost its upstream while its only channel
/// lingered (no member left to lend a token) looped without ever waiting;
/// on this single-threaded runtime that froze the relay outright.
#[tokio::test]
async fn a_carrier_with_nobody_to_carry_for_waits_instead_of_spinning() {
    let stack = Stack::start_with(&["--shared-channel", "/ns/*", "--shared-linger", "30"]).await;
    let (mut a, _) = subscriber(&stack, "a", "/ns/room").await;
    eventually("shared", || stack.emulator.subscription_count() == 1).await;
    send_json(&mut a, json!({"type": "unsubscribe", "id": "a"})).await;
    assert_eq!(recv_json(&mut a).await["type"], "unsubscribe_success");
    // The channel lingers with no member; now its carrier loses AppSync.
    stack.emulator.abort_all();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The relay still serves: a new browser, a plain subscription.
    let answer = tokio::time::timeout(Duration::from_secs(5), async {
        let (_ws, answer) = subscriber(&stack, "b", "/elsewhere/x").await;
        answer
    })
    .await
    .expect("the relay stopped serving");
    assert_eq!(answer["type"], "subscribe_success", "{answer}");
}

#[tokio::test]
async fn with_an_api_key_the_shared_connection_uses_it_and_users_are_still_checked() {
    const KEY: &str = "da2-sharedchannelsapikey";
    let dir = std::env::temp_dir().join(format!("shared-key-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key_file = dir.join("key");
    std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
    let key_path = key_file.to_string_lossy().into_owned();
    let mut flags = SHARED.to_vec();
    flags.extend(["--shared-api-key-file", key_path.as_str()]);
    let stack = Stack::start_with_api_key(&flags, KEY).await;
    stack.emulator.refuse_subscriptions(BOB, "/ns/room");
    let key_uses = || {
        stack
            .emulator
            .seen_authorizations()
            .iter()
            .filter(|c| *c == KEY)
            .count()
    };

    let (mut alice, answer) = subscriber(&stack, "a", "/ns/room").await;
    assert_eq!(answer["type"], "subscribe_success", "{answer}");
    // The carrier's connect and its one subscribe carried the key; alice's
    // own connection and her check carried her token, never the key.
    eventually("the carrier subscribed with the key", || key_uses() == 2).await;
    let seen = stack.emulator.seen_authorizations();
    let jwts = seen.iter().filter(|c| c.starts_with("eyJ")).count();
    assert_eq!(jwts + 2, seen.len(), "only JWTs besides the key: {seen:?}");
    assert!(jwts >= 2, "alice's connect and check: {seen:?}");

    // A user the namespace refuses is still refused: the key does not
    // stand in for anybody's authorisation.
    let mut bob = connect(&stack.realtime_url(), &other_user_cookies(&stack, BOB)).await;
    init(&mut bob).await;
    send_json(&mut bob, amplify_subscribe("b", "/ns/room")).await;
    let refused = recv_json(&mut bob).await;
    assert_eq!(refused["type"], "subscribe_error", "{refused}");

    publish(&mut alice, "p1", "/ns/room", json!({"n": 1})).await;
    let data = recv_json(&mut alice).await;
    assert_eq!(
        (data["type"].as_str(), data["id"].as_str()),
        (Some("data"), Some("a"))
    );
    assert!(!data.to_string().contains(KEY));

    // A second channel on the connected carrier: its subscribe carries
    // the key, not alice's token.
    send_json(&mut alice, amplify_subscribe("a2", "/ns/second")).await;
    let answer = recv_json(&mut alice).await;
    assert_eq!(answer, json!({"type": "subscribe_success", "id": "a2"}));
    assert_eq!(key_uses(), 3);

    // A re-dial replays with the key too (connect + two subscribes).
    stack.emulator.abort_all();
    eventually("re-dialled with the key", || key_uses() == 6).await;
    let (_, _, metrics) = http(stack.relay.admin_addr, "GET", "/metrics", &[], "").await;
    assert!(!metrics.contains(KEY));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn beyond_the_cap_a_new_channel_is_served_unshared() {
    let stack =
        Stack::start_with(&["--shared-channel", "/ns/*", "--shared-max-channels", "1"]).await;
    let (mut a, _) = subscriber(&stack, "a", "/ns/one").await;
    let (mut b, _) = subscriber(&stack, "b", "/ns/one").await;
    eventually("one shared", || stack.emulator.subscription_count() == 1).await;

    // A second channel would be a second shared one: each browser gets
    // its own upstream subscription instead, as without --shared-channel.
    for (ws, id) in [(&mut a, "a2"), (&mut b, "b2")] {
        send_json(ws, amplify_subscribe(id, "/ns/two")).await;
        assert_eq!(
            recv_json(ws).await,
            json!({"type": "subscribe_success", "id": id})
        );
    }
    let (_, _, metrics) = http(stack.relay.admin_addr, "GET", "/metrics", &[], "").await;
    assert!(
        metrics.contains("appsync_relay_shared_subscriptions_active 1\n"),
        "{metrics}"
    );
    eventually("one shared and two own", || {
        stack.emulator.subscription_count() == 3
    })
    .await;
    publish(&mut a, "p1", "/ns/two", json!("unshared")).await;
    for (ws, id) in [(&mut a, "a2"), (&mut b, "b2")] {
        let data = recv_json(ws).await;
        assert_eq!(
            (data["type"].as_str(), data["id"].as_str()),
            (Some("data"), Some(id))
        );
    }
    // The shared channel itself still takes joiners.
    let (_c, answer) = subscriber(&stack, "c", "/ns/one").await;
    assert_eq!(answer["type"], "subscribe_success");
    // (Its check's probe is undone upstream just after.)
    eventually("c joined the shared one", || {
        stack.emulator.subscription_count() == 3
    })
    .await;
    let (_, _, metrics) = http(stack.relay.admin_addr, "GET", "/metrics", &[], "").await;
    assert!(
        metrics.contains("appsync_relay_limits_hit_total{limit=\"shared_channels\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_key_appsync_refuses_answers_the_browsers_instead_of_leaving_them_waiting() {
    let dir = std::env::temp_dir().join(format!("shared-badkey-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key_file = dir.join("key");
    std::fs::write(&key_file, "da2-revokedorwrongkey\n").unwrap();
    let key_path = key_file.to_string_lossy().into_owned();
    let mut flags = SHARED.to_vec();
    flags.extend(["--shared-api-key-file", key_path.as_str()]);
    let stack = Stack::start_with_api_key(&flags, "da2-theapiskey").await;

    // Refused on the upgrade (HTTP 401), and, MiniStack's way, with a
    // connection_error after it: either way the browser hears
    // subscribe_error under its own id, and its socket stays usable.
    let mut ws = connect(&stack.realtime_url(), &stack.good_cookies()).await;
    init(&mut ws).await;
    for (id, channel, after_upgrade) in [("a", "/ns/one", false), ("b", "/ns/two", true)] {
        stack.emulator.refuse_after_upgrade(after_upgrade);
        send_json(&mut ws, amplify_subscribe(id, channel)).await;
        let answer = recv_json(&mut ws).await;
        assert_eq!(answer["type"], "subscribe_error", "{answer}");
        assert_eq!(answer["id"], id);
        // Not an auth type: the relay's key is at fault, not the user's
        // session (before: UnauthorizedException, which tells an app to
        // sign the user in again).
        assert_eq!(
            answer["errors"][0]["errorType"], "SubscriptionProcessingError",
            "{answer}"
        );
        assert!(!answer.to_string().contains("da2-"), "{answer}");
    }
    stack.emulator.refuse_after_upgrade(false);
    send_json(&mut ws, amplify_subscribe("c", "/ns/plain-but-shared")).await;
    assert_eq!(recv_json(&mut ws).await["type"], "subscribe_error");
    let (_, _, metrics) = http(stack.relay.admin_addr, "GET", "/metrics", &[], "").await;
    assert!(
        metrics.contains("appsync_relay_shared_subscriptions_active 0\n"),
        "{metrics}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A browser that stops reading is bounded in bytes too: with 60 kB events
/// it is found lagging long before `--shared-queue`'s 256 events (15 MB
/// per stalled browser) would be held for it. Before the fix there was no
/// byte budget: the test had no flag to set, and with the budget at its
/// maximum (a mutation) the browser is not found lagging within 200 events.
#[tokio::test]
async fn a_stalled_browser_is_bounded_in_bytes_not_only_in_events() {
    let stack = Stack::start_with(&[
        "--shared-channel",
        "/ns/*",
        "--shared-queue-bytes",
        "131072",
        "--publish-rate",
        "0",
    ])
    .await;
    let (mut reader, _) = subscriber(&stack, "r", "/ns/room").await;
    let (_stalled, _) = subscriber(&stack, "s", "/ns/room").await;
    let (mut publisher, _) = subscriber(&stack, "p", "/ns/other").await;
    let event = json!("x".repeat(60_000));
    let mut lagged_after = None;
    for i in 0..200 {
        publish(&mut publisher, &format!("p{i}"), "/ns/room", event.clone()).await;
        assert_eq!(recv_json(&mut reader).await["type"], "data");
        let (_, _, metrics) = http(stack.relay.admin_addr, "GET", "/metrics", &[], "").await;
        if metrics.contains("limits_hit_total{limit=\"shared_lag\"} 1") {
            lagged_after = Some(i + 1);
            break;
        }
    }
    let n = lagged_after.expect("the stalled browser was never found lagging");
    eprintln!("a stalled browser found lagging after {n} events of 60 kB");
}

/// A shared subscription AppSync refused is not carried: the relay-owned
/// connection, left with nothing, closes. Before the fix: the refused id
/// stayed in the carrier's set, and the connection stayed open for good on
/// a departed user's token.
#[tokio::test]
async fn a_carrier_whose_only_subscription_was_refused_goes_idle() {
    let stack = Stack::start_with(&[
        "--shared-channel",
        "/ns/*",
        "--shared-channel-check",
        "none",
        "--shared-linger",
        "1",
    ])
    .await;
    stack.emulator.refuse_subscriptions(SUB, "/ns/room");
    let (mut ws, answer) = subscriber(&stack, "a", "/ns/room").await;
    assert_eq!(answer["type"], "subscribe_error", "{answer}");
    ws.close(None).await.unwrap();
    eventually("the carrier closed its connection", || {
        stack.emulator.connection_count() == 0
    })
    .await;
}

/// `ns/room/` (AppSync's pattern allows a trailing `/` and no leading one)
/// shares `/ns/room`, and the check asks AppSync about `/ns/room` itself:
/// what is checked is what is joined. A user refused on `/ns/room` is not
/// joined through the other spelling.
#[tokio::test]
async fn another_spelling_of_a_shared_channel_is_checked_as_the_channel_it_joins() {
    let stack = Stack::start_with(SHARED).await;
    let (mut a, answer) = subscriber(&stack, "a", "/ns/room").await;
    assert_eq!(answer["type"], "subscribe_success", "{answer}");
    let (mut b, answer) = subscriber(&stack, "b", "ns/room/").await;
    assert_eq!(answer["type"], "subscribe_success", "{answer}");
    eventually("one upstream subscription", || {
        stack.emulator.subscription_count() == 1
    })
    .await;
    publish(&mut a, "p1", "/ns/room", json!({"n": 1})).await;
    for (ws, id) in [(&mut a, "a"), (&mut b, "b")] {
        let data = recv_json(ws).await;
        assert_eq!(
            (data["type"].as_str(), data["id"].as_str()),
            (Some("data"), Some(id))
        );
    }
    // Refused on /ns/room: refused in every spelling.
    stack.emulator.refuse_subscriptions(BOB, "/ns/room");
    let mut bob = connect(&stack.realtime_url(), &other_user_cookies(&stack, BOB)).await;
    init(&mut bob).await;
    send_json(&mut bob, amplify_subscribe("c", "ns/room/")).await;
    let answer = recv_json(&mut bob).await;
    assert_eq!(answer["type"], "subscribe_error", "{answer}");
}
