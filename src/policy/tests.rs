use super::*;
use proptest::prelude::*;
use serde_json::json;

const EXAMPLE: &str = r#"
[[rule]]
channels = ["/users/{sub}", "/users/{sub}/*"]
allow = ["subscribe", "publish"]

[[rule]]
channels = "/teams/{cognito:groups}/*"
allow = ["subscribe"]

[[rule]]
channels = "/announcements/*"
allow = ["subscribe"]

[[rule]]
channels = "/announcements/*"
allow = ["publish"]
when = { "cognito:groups" = "admins" }
"#;

fn claims(extra: serde_json::Value) -> Claims {
    let mut c =
        json!({"sub": "a1b2c3d4-0000-4000-8000-000000000001", "iss": "https://idp", "exp": 1});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    serde_json::from_value(c).unwrap()
}

fn channel(raw: &str) -> Channel {
    Channel::parse(raw, true).unwrap()
}

fn may(policy: &Policy, op: Op, raw: &str, who: &Claims) -> bool {
    policy.decide(op, &channel(raw), who).is_permitted()
}

const ALICE: &str = "a1b2c3d4-0000-4000-8000-000000000001";

#[test]
fn the_example_policy_decides_as_written() {
    let p = Policy::from_toml(EXAMPLE).unwrap();
    let member = claims(json!({"cognito:groups": ["red", "blue"]}));
    let admin = claims(json!({"cognito:groups": ["admins"]}));
    let nobody = claims(json!({}));
    use Op::*;
    let own = format!("/users/{ALICE}");
    let cases: &[(&Claims, Op, &str, bool)] = &[
        (&nobody, Subscribe, &own, true),
        (&nobody, Publish, &own, true),
        (&nobody, Subscribe, &format!("{own}/inbox"), true),
        (&nobody, Subscribe, &format!("{own}/*"), true),
        (&nobody, Subscribe, &format!("{own}/a/b/*"), true),
        (&nobody, Subscribe, "/users/someone-else", false),
        (&nobody, Subscribe, "/users/*", false),
        (&member, Subscribe, "/teams/red/chat", true),
        (&member, Subscribe, "/teams/blue/*", true),
        (&member, Subscribe, "/teams/red", false), // `*` needs one more segment
        (&member, Publish, "/teams/red/chat", false),
        (&member, Subscribe, "/teams/green/chat", false),
        (&member, Subscribe, "/teams/*", false), // would receive every team
        (&nobody, Subscribe, "/announcements/today", true),
        (&nobody, Subscribe, "/announcements/*", true),
        (&nobody, Publish, "/announcements/today", false),
        (&admin, Publish, "/announcements/today", true),
        (&member, Publish, "/announcements/today", false),
        (&nobody, Subscribe, "/default/anything", false),
    ];
    for (who, op, ch, want) in cases {
        assert_eq!(may(&p, *op, ch, who), *want, "{op:?} {ch}");
    }
    assert_eq!(
        p.decide(Op::Publish, &channel("/announcements/x"), &admin),
        Decision::Permitted { rule: 3 }
    );
}

#[test]
fn hostile_claim_values_match_nothing() {
    let p = Policy::from_toml(
        r#"
[[rule]]
channels = ["/teams/{custom:team}/*", "/t/{custom:team}"]
allow = ["subscribe", "publish"]
"#,
    )
    .unwrap();
    let long = "a".repeat(51);
    let hostile = [
        "",
        "/",
        "*",
        "..",
        "red/blue",
        "red/*",
        "-red",
        "red-",
        " red",
        "red ",
        "réd",
        "rеd", // Cyrillic е: looks like "red"
        "red\u{200b}",
        "RED\n",
        &long,
    ];
    for value in hostile {
        let who = claims(json!({"custom:team": value}));
        for ch in [
            "/teams/red/x",
            "/teams/red/*",
            "/teams/blue/x",
            "/t/red",
            "/teams/a/b",
        ] {
            assert!(!may(&p, Op::Subscribe, ch, &who), "{value:?} {ch}");
            if !ch.ends_with('*') {
                assert!(!may(&p, Op::Publish, ch, &who), "{value:?} {ch}");
            }
        }
    }
    // The same pattern with an honest value does match (the test can fail).
    let red = claims(json!({"custom:team": "red"}));
    assert!(may(&p, Op::Subscribe, "/teams/red/x", &red));
    assert!(may(&p, Op::Publish, "/t/red", &red));
    // Not strings: numbers, objects, nested arrays, booleans.
    for v in [
        json!(7),
        json!({"a": "red"}),
        json!([["red"]]),
        json!(true),
        json!(null),
    ] {
        let who = claims(json!({"custom:team": v}));
        assert!(!may(&p, Op::Subscribe, "/teams/red/x", &who), "{v}");
    }
    // A missing claim.
    assert!(!may(&p, Op::Subscribe, "/teams/red/x", &claims(json!({}))));
}

#[test]
fn when_is_equality_or_membership_never_a_substring() {
    let p = Policy::from_toml(
        r#"
[[rule]]
channels = "/ops/*"
allow = "publish"
when = { "cognito:groups" = "admins", "scope" = "write" }
"#,
    )
    .unwrap();
    let ok = claims(json!({"cognito:groups": ["x", "admins"], "scope": "write"}));
    assert!(may(&p, Op::Publish, "/ops/a", &ok));
    for bad in [
        json!({"cognito:groups": ["admins"]}), // one of two
        json!({"cognito:groups": "admins-not", "scope": "write"}), // prefix
        json!({"cognito:groups": ["superadmins"], "scope": "write"}), // substring
        json!({"cognito:groups": "x admins", "scope": "write"}), // space-separated
        json!({"cognito:groups": ["ADMINS"], "scope": "write"}), // case
        json!({"cognito:groups": [["admins"]], "scope": "write"}), // nested
    ] {
        assert!(
            !may(&p, Op::Publish, "/ops/a", &claims(bad.clone())),
            "{bad}"
        );
    }
    assert!(
        !may(&p, Op::Subscribe, "/ops/a", &ok),
        "subscribe is not listed"
    );
}

#[test]
fn known_claims_are_read_from_their_fields() {
    let p = Policy::from_toml(
        "[[rule]]\nchannels = [\"/u/{username}\", \"/c/{client_id}\", \"/n/{exp}\"]\nallow = \"subscribe\"\n",
    )
    .unwrap();
    let who = claims(json!({"username": "alice", "client_id": "app1"}));
    assert!(may(&p, Op::Subscribe, "/u/alice", &who));
    assert!(may(&p, Op::Subscribe, "/c/app1", &who));
    assert!(!may(&p, Op::Subscribe, "/u/bob", &who));
    assert!(
        !may(&p, Op::Subscribe, "/n/1", &who),
        "numbers are not segments"
    );
}

#[test]
fn broken_files_are_refused_with_the_rule_and_reason() {
    let cases: &[(&str, &str)] = &[
        (
            "[[rule]]\nchannels = \"/a/*\"\nallow = \"read\"\n",
            "rule 1: unknown operation",
        ),
        (
            "[[rule]]\nchannels = \"/a/*/b\"\nallow = \"publish\"\n",
            "only be the last",
        ),
        (
            "[[rule]]\nchannels = \"/*\"\nallow = \"publish\"\n",
            "namespace",
        ),
        (
            "[[rule]]\nchannels = \"a/b\"\nallow = \"publish\"\n",
            "start with '/'",
        ),
        (
            "[[rule]]\nchannels = \"/a/b/c/d/e/f\"\nallow = \"publish\"\n",
            "more than 5",
        ),
        (
            "[[rule]]\nchannels = \"/a/b_c\"\nallow = \"publish\"\n",
            "neither a channel segment",
        ),
        (
            "[[rule]]\nchannels = \"/a/x{sub}\"\nallow = \"publish\"\n",
            "neither a channel segment",
        ),
        (
            "[[rule]]\nchannels = \"/a/{}\"\nallow = \"publish\"\n",
            "claim name",
        ),
        (
            "[[rule]]\nchannels = \"/a//b\"\nallow = \"publish\"\n",
            "empty segment",
        ),
        (
            "[[rule]]\nchannels = []\nallow = \"publish\"\n",
            "`channels` is empty",
        ),
        (
            "[[rule]]\nchannels = \"/a\"\nallow = []\n",
            "`allow` is empty",
        ),
        (
            "[[rule]]\nchannels = \"/a\"\nallow = \"publish\"\nwhen = { g = \"\" }\n",
            "empty",
        ),
        (
            "[[rule]]\nchannels = \"/a\"\nallow = \"publish\"\nwhen = { g = 1 }\n",
            "not valid",
        ),
        (
            "[[rule]]\nchannels = \"/a\"\nallow = \"publish\"\nextra = 1\n",
            "not valid",
        ),
        (
            "[[rules]]\nchannels = \"/a\"\nallow = \"publish\"\n",
            "not valid",
        ),
        ("[[rule]]\nallow = \"publish\"\n", "not valid"),
        ("[[rule]\n", "not valid"),
    ];
    for (text, want) in cases {
        let err = Policy::from_toml(text).unwrap_err().to_string();
        assert!(err.contains(want), "{text:?}: {err}");
        assert!(!err.contains('\n'), "one line: {err}");
    }
    // The second rule is named when it is the broken one.
    let err = Policy::from_toml(
        "[[rule]]\nchannels = \"/a\"\nallow = \"publish\"\n[[rule]]\nchannels = \"/b/*/c\"\nallow = \"publish\"\n",
    )
    .unwrap_err();
    assert!(matches!(err, PolicyError::Rule { rule: 2, .. }), "{err}");
}

#[test]
fn an_empty_policy_denies_everything() {
    let p = Policy::from_toml("").unwrap();
    assert_eq!(
        p.decide(Op::Subscribe, &channel("/default/a"), &claims(json!({}))),
        Decision::Denied
    );
}

fn segment() -> impl Strategy<Value = String> {
    // A small alphabet, so that patterns and channels collide often.
    prop_oneof![
        Just("a".to_string()),
        Just("b".to_string()),
        Just("red".to_string()),
        Just("c1".to_string())
    ]
}

fn pattern_text() -> impl Strategy<Value = String> {
    (
        segment(),
        prop::collection::vec(
            prop_oneof![
                segment(),
                Just("{g}".to_string()),
                Just("{sub}".to_string())
            ],
            0..4,
        ),
        any::<bool>(),
    )
        .prop_map(|(ns, rest, tail)| {
            let mut s = format!("/{ns}");
            for r in rest {
                s.push('/');
                s.push_str(&r);
            }
            if tail && s.matches('/').count() < 5 {
                s.push_str("/*");
            }
            s
        })
}

proptest! {
    /// If a wildcard subscription is allowed, every concrete channel it can
    /// receive is allowed too (and AppSync's depth limit is respected).
    #[test]
    fn an_allowed_wildcard_allows_every_channel_under_it(
        patterns in prop::collection::vec(pattern_text(), 1..5),
        prefix in prop::collection::vec(segment(), 1..5),
        below in prop::collection::vec(prop_oneof![segment(), Just("zz9".to_string())], 1..5),
        groups in prop::collection::vec(segment(), 0..3),
    ) {
        let text = format!(
            "[[rule]]\nchannels = {}\nallow = \"subscribe\"\n",
            serde_json::to_string(&patterns).unwrap()
        );
        let p = Policy::from_toml(&text).unwrap();
        let who = claims(json!({"sub": "a", "g": groups}));
        let wild = format!("/{}/*", prefix.join("/"));
        let depth = prefix.len() + below.len();
        prop_assume!(depth <= 5);
        let concrete = format!("/{}/{}", prefix.join("/"), below.join("/"));
        if may(&p, Op::Subscribe, &wild, &who) {
            prop_assert!(may(&p, Op::Subscribe, &concrete, &who), "{wild} allowed but not {concrete} by {patterns:?}");
        }
    }
}
