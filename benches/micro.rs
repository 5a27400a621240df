//! Criterion micro-benches for the relay's per-frame and per-handshake CPU
//! work, each next to a baseline measured in the same run:
//!
//! - `client_frame/*`: [`rewrite_client_frame`] on the frames Amplify sends
//!   (subscribe, publish with its duplicate `payload` copy), against
//!   `serde_json::from_str::<Value>` of the same bytes (`parse_only`): the
//!   least any JSON-aware relay must spend.
//! - `upstream_frame/*`: [`frame_type_label`] on a `data` frame (all the
//!   relay does to a frame from AppSync besides copying it), against the
//!   same parse-only baseline.
//! - `verify/*`: [`Verifier::verify`] with the token cached (the same token
//!   again) and cold (a token the cache does not hold: two tokens alternate
//!   through a verifier whose cache holds one, so every call runs the full
//!   RS256 path and the cache insert), against `jsonwebtoken::decode` with
//!   the same key (`decode_only`) and the SHA-256 that keys the cache.
//!
//! `cargo bench --bench micro` (filter: `cargo bench --bench micro -- verify`).

#[path = "common/mod.rs"]
mod common;

use appsync_relay::metrics::frame_type_label;
use appsync_relay::rewrite::{rewrite_client_frame, UpstreamAuth};
use appsync_relay::verify::{token_hash, TokenUse, Verifier, VerifierConfig};
use criterion::{criterion_group, criterion_main, Criterion};
use futures_util::FutureExt;
use serde_json::{json, Value};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

fn frames(c: &mut Criterion) {
    // A realistic Cognito access token length (~1.1 KB).
    let auth = UpstreamAuth::new(
        "eyJ".to_string() + &"x".repeat(1100),
        "abc.appsync-api.eu-west-1.amazonaws.com",
    );
    let placeholder = json!({"x-api-key": "placeholder", "host": "app.example.com"});
    let event = json!({"text": "x".repeat(200), "n": 42}).to_string();
    let id = "5f0b6c1e-3f0a-4bfa-9d2b-2b8f3d0c9e11";
    let subscribe = json!({"type": "subscribe", "id": id, "channel": "/default/room",
        "authorization": placeholder,
        "payload": {"channel": "/default/room", "extensions": {"authorization": placeholder}}})
    .to_string();
    let publish = json!({"type": "publish", "id": id, "channel": "/default/room", "events": [event],
        "authorization": placeholder,
        "payload": {"channel": "/default/room", "events": [event], "extensions": {"authorization": placeholder}}})
    .to_string();
    for (name, frame) in [
        ("subscribe_amplify", &subscribe),
        ("publish_amplify", &publish),
    ] {
        let mut group = c.benchmark_group(format!("client_frame/{name}"));
        group.bench_function("relay", |b| {
            b.iter(|| rewrite_client_frame(black_box(frame), &auth))
        });
        group.bench_function("parse_only", |b| {
            b.iter(|| serde_json::from_str::<Value>(black_box(frame)).ok())
        });
        group.finish();
    }
    let data = json!({"type": "data", "id": id, "event": event}).to_string();
    let mut group = c.benchmark_group("upstream_frame/data");
    group.bench_function("relay", |b| b.iter(|| frame_type_label(black_box(&data))));
    group.bench_function("parse_only", |b| {
        b.iter(|| serde_json::from_str::<Value>(black_box(&data)).ok())
    });
    group.finish();
}

fn verifier(
    idp: &common::Idp,
    cache_capacity: usize,
    rt: &tokio::runtime::Runtime,
) -> Arc<Verifier> {
    let v = Verifier::new(
        VerifierConfig {
            issuer: idp.issuer(),
            jwks_url: idp.jwks_url(),
            client_id: common::CLIENT_ID.to_string(),
            token_use: TokenUse::Access,
            leeway: Duration::from_secs(10),
            jwks_refetch_interval: Duration::from_secs(10),
            fetch_timeout: Duration::from_secs(5),
            jwks_refresh_interval: Duration::from_secs(600),
            cache_capacity,
        },
        appsync_relay::http_client::build(Duration::from_secs(5)),
    );
    rt.block_on(v.load_jwks())
        .expect("JWKS from the in-process server");
    v
}

/// Polls a verification that must not wait on anything (keys are loaded).
fn verify_now(v: &Verifier, token: &str) {
    let result = v
        .verify(token)
        .now_or_never()
        .expect("verification with loaded keys completes without waiting");
    assert!(result.is_ok(), "bench token refused: {result:?}");
}

fn verification(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let idp = common::Idp::start();
    let lifetime = Duration::from_secs(3600);
    let tokens = [
        idp.access_token("bench-a", lifetime),
        idp.access_token("bench-b", lifetime),
    ];
    let cached = verifier(&idp, 100_000, &rt);
    let cold = verifier(&idp, 1, &rt);
    let mut group = c.benchmark_group("verify");
    group.bench_function("cached", |b| {
        verify_now(&cached, &tokens[0]);
        b.iter(|| verify_now(&cached, black_box(&tokens[0])))
    });
    group.bench_function("cold", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i += 1;
            verify_now(&cold, black_box(&tokens[i % 2]))
        })
    });
    // Baselines: the library's own RS256 decode with the same key, and the
    // hash the cache is keyed by.
    let jwks: jsonwebtoken::jwk::JwkSet = {
        let body = rt.block_on(async {
            let mut s = tokio::net::TcpStream::connect(idp.addr)
                .await
                .expect("JWKS");
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.expect("JWKS");
            let mut out = String::new();
            s.read_to_string(&mut out).await.expect("JWKS");
            out
        });
        let json = body.split("\r\n\r\n").nth(1).expect("JWKS body");
        serde_json::from_str(json).expect("JWKS JSON")
    };
    let key = jsonwebtoken::DecodingKey::from_jwk(&jwks.keys[0]).expect("decoding key");
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.validate_aud = false;
    group.bench_function("decode_only", |b| {
        b.iter(|| {
            jsonwebtoken::decode::<Value>(black_box(&tokens[0]), &key, &validation)
                .expect("decodes")
        })
    });
    group.bench_function("sha256_only", |b| {
        b.iter(|| token_hash(black_box(&tokens[0])))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = frames, verification
}
criterion_main!(benches);
