//! Per-frame cost of the relay's hot paths, against a baseline in the same
//! run: parsing the same frame with serde_json and doing nothing else.
//!
//! `cargo bench --bench frame_path` prints, for each frame kind, the median
//! of several timed batches in ns/frame and the ratio to the parse-only
//! baseline. (The load harness against direct and nginx is a separate,
//! later bench; see benches/README.md once it exists.)

use appsync_relay::metrics::frame_type_label;
use appsync_relay::rewrite::{rewrite_client_frame, ClientAction, UpstreamAuth};
use serde_json::{json, Value};
use std::hint::black_box;
use std::time::Instant;

const BATCH: usize = 20_000;
const BATCHES: usize = 15;

/// Median ns per call of `f` over `BATCHES` batches of `BATCH` calls.
fn median_ns(mut f: impl FnMut()) -> f64 {
    for _ in 0..BATCH / 10 {
        f();
    }
    let mut samples: Vec<f64> = (0..BATCHES)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..BATCH {
                f();
            }
            start.elapsed().as_nanos() as f64 / BATCH as f64
        })
        .collect();
    samples.sort_by(|a, b| a.total_cmp(b));
    samples[BATCHES / 2]
}

fn main() {
    // A realistic Cognito access token length (~1.1 KB).
    let auth = UpstreamAuth::new(
        "eyJ".to_string() + &"x".repeat(1100),
        "abc.appsync-api.eu-west-1.amazonaws.com",
    );
    let placeholder = json!({"x-api-key": "placeholder", "host": "app.example.com"});
    let event = json!({"text": "x".repeat(200), "n": 42}).to_string();
    let frames = [
        (
            "subscribe (Amplify)",
            json!({"type":"subscribe","id":"5f0b6c1e-3f0a-4bfa-9d2b-2b8f3d0c9e11","channel":"/default/room",
                   "authorization": placeholder, "payload": {"channel": "/default/room", "extensions": {"authorization": placeholder}}})
            .to_string(),
        ),
        (
            "publish 1 event (Amplify)",
            json!({"type":"publish","id":"5f0b6c1e-3f0a-4bfa-9d2b-2b8f3d0c9e12","channel":"/default/room","events":[event],
                   "authorization": placeholder, "payload": {"channel": "/default/room", "events":[event], "extensions": {"authorization": placeholder}}})
            .to_string(),
        ),
        ("connection_init (pass-through)", json!({"type":"connection_init"}).to_string()),
    ];
    println!(
        "{:<34} {:>12} {:>16} {:>8}",
        "client frame", "relay ns", "parse-only ns", "ratio"
    );
    for (name, frame) in &frames {
        let relay = median_ns(|| {
            let action = rewrite_client_frame(black_box(frame), &auth);
            black_box(matches!(action, ClientAction::Reply(_)));
        });
        let baseline = median_ns(|| {
            black_box(serde_json::from_str::<Value>(black_box(frame)).ok());
        });
        println!(
            "{name:<34} {relay:>12.0} {baseline:>16.0} {:>7.2}x",
            relay / baseline
        );
    }
    let data = json!({"type":"data","id":"5f0b6c1e-3f0a-4bfa-9d2b-2b8f3d0c9e11","event": event})
        .to_string();
    let label = median_ns(|| {
        black_box(frame_type_label(black_box(&data)));
    });
    let baseline = median_ns(|| {
        black_box(serde_json::from_str::<Value>(black_box(&data)).ok());
    });
    println!(
        "{:<34} {label:>12.0} {baseline:>16.0} {:>7.2}x",
        "upstream data (pass-through)",
        label / baseline
    );
}
