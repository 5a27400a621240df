//! Prometheus metrics, in a registry owned by the relay instance (no global
//! statics, so tests and several relays in one process don't collide).
//!
//! Label values are always from small fixed sets (`reason()` strings,
//! message types, directions): never a channel, a user or a token.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    /// Browser sockets currently relayed.
    pub connections_active: IntGauge,
    /// Handshakes by outcome: `accepted` or the rejection reason.
    pub handshakes: IntCounterVec,
    /// Handshake time, split into `verify` and `upstream_connect` phases,
    /// plus `total`.
    pub handshake_seconds: HistogramVec,
    /// Frames relayed by direction (`client_to_upstream`, `upstream_to_client`,
    /// `local_reply`) and AppSync message type.
    pub frames: IntCounterVec,
    /// Payload bytes relayed by direction.
    pub bytes: IntCounterVec,
    /// Browser sockets that ended, by the close code sent to the browser.
    pub connections_closed: IntCounterVec,
    /// HTTP publish requests by response status class or rejection reason.
    pub publish_requests: IntCounterVec,
    /// JWKS fetch attempts by result.
    pub jwks_fetches: IntCounterVec,
    /// Upstream WebSocket connect attempts by result.
    pub upstream_connects: IntCounterVec,
    /// How long relayed connections lasted.
    pub connection_seconds: Histogram,
    /// Session refreshes by where they happened (`handshake`, `connection`)
    /// and result (`ok`, `rejected`, `unavailable`).
    pub token_refreshes: IntCounterVec,
    /// Relayed connections ended by the session lifecycle, by reason
    /// (`refresh_rejected`, `no_refresh_token`, `max_session_age`, `reauthenticate`).
    pub sessions_ended: IntCounterVec,
    /// Upstream re-dials after an upstream drop, by result.
    pub upstream_redials: IntCounterVec,
    /// Requests proxied to the SSR app, by outcome (status class,
    /// `unreachable`, `timeout`, `upgrade`).
    pub app_requests: IntCounterVec,
    /// Requests or frames refused by a configured limit, by limit.
    pub limits_hit: IntCounterVec,
    /// Channel policy decisions (`--channel-policy`), by operation
    /// (`subscribe`, `publish`) and result (`permitted`, `denied`).
    pub policy_decisions: IntCounterVec,
    /// Channel policy file changes, by result (`ok`, `error`: the previous
    /// policy stays).
    pub policy_reloads: IntCounterVec,
    /// Shared channels (`--shared-channel`) with an upstream subscription.
    pub shared_subscriptions_active: IntGauge,
    /// Browsers on a shared subscription, observed at each upstream event.
    pub shared_browsers: Histogram,
    /// Events of shared subscriptions by side: `upstream` (what AppSync
    /// delivered to the relay) and `browser` (what the relay delivered).
    pub shared_deliveries: IntCounterVec,
    /// Per-user checks before joining a shared subscription, by outcome
    /// (`allowed`, `refused`, `skipped`).
    pub shared_probes: IntCounterVec,
    /// Requests carrying `X-Forwarded-For` from a peer not in
    /// `--trust-forwarded`.
    pub forwarded_untrusted: IntCounter,
    /// 1 from the moment a drain starts (SIGTERM) until the process exits.
    pub draining: IntGauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .expect("static metric definition is valid");
    registry
        .register(Box::new(c.clone()))
        .expect("metric names are unique");
    c
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new_custom(Some("appsync_relay".into()), None)
            .expect("static prefix is valid");
        let connections_active =
            IntGauge::new("connections_active", "Browser WebSockets currently relayed")
                .expect("static metric definition is valid");
        registry
            .register(Box::new(connections_active.clone()))
            .expect("metric names are unique");
        let handshake_seconds = HistogramVec::new(
            HistogramOpts::new("handshake_seconds", "WebSocket handshake duration by phase")
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0,
                ]),
            &["phase"],
        )
        .expect("static metric definition is valid");
        registry
            .register(Box::new(handshake_seconds.clone()))
            .expect("metric names are unique");
        let connection_seconds = Histogram::with_opts(
            HistogramOpts::new("connection_seconds", "Lifetime of relayed connections").buckets(
                vec![
                    1.0,
                    10.0,
                    60.0,
                    300.0,
                    1800.0,
                    3600.0,
                    4.0 * 3600.0,
                    24.0 * 3600.0,
                ],
            ),
        )
        .expect("static metric definition is valid");
        registry
            .register(Box::new(connection_seconds.clone()))
            .expect("metric names are unique");
        let build_info = IntGauge::with_opts(
            Opts::new("build_info", "Build information")
                .const_label("version", env!("CARGO_PKG_VERSION")),
        )
        .expect("static metric definition is valid");
        build_info.set(1);
        registry
            .register(Box::new(build_info))
            .expect("metric names are unique");
        let shared_subscriptions_active = IntGauge::new(
            "shared_subscriptions_active",
            "Shared channels with an upstream subscription",
        )
        .expect("static metric definition is valid");
        registry
            .register(Box::new(shared_subscriptions_active.clone()))
            .expect("metric names are unique");
        let shared_browsers = Histogram::with_opts(
            HistogramOpts::new(
                "shared_browsers",
                "Browsers on a shared subscription, at each upstream event",
            )
            .buckets(vec![
                1.0, 2.0, 5.0, 10.0, 100.0, 1000.0, 10_000.0, 100_000.0,
            ]),
        )
        .expect("static metric definition is valid");
        registry
            .register(Box::new(shared_browsers.clone()))
            .expect("metric names are unique");
        let forwarded_untrusted = IntCounter::new(
            "forwarded_untrusted_total",
            "Requests carrying X-Forwarded-For from a peer --trust-forwarded does not list",
        )
        .expect("static metric definition is valid");
        registry
            .register(Box::new(forwarded_untrusted.clone()))
            .expect("metric names are unique");
        let draining = IntGauge::new(
            "draining",
            "1 while the relay drains (from SIGTERM until it exits)",
        )
        .expect("static metric definition is valid");
        registry
            .register(Box::new(draining.clone()))
            .expect("metric names are unique");
        let metrics = Metrics {
            draining,
            forwarded_untrusted,
            connections_active,
            shared_subscriptions_active,
            shared_browsers,
            shared_deliveries: counter(
                &registry,
                "shared_deliveries_total",
                "Events of shared subscriptions by side (upstream, browser)",
                &["side"],
            ),
            shared_probes: counter(
                &registry,
                "shared_probes_total",
                "Per-user checks before joining a shared subscription, by outcome",
                &["outcome"],
            ),
            handshakes: counter(
                &registry,
                "handshakes_total",
                "WebSocket handshakes by outcome",
                &["outcome"],
            ),
            handshake_seconds,
            frames: counter(
                &registry,
                "frames_total",
                "Frames relayed by direction and message type",
                &["direction", "type"],
            ),
            bytes: counter(
                &registry,
                "bytes_total",
                "Payload bytes relayed by direction",
                &["direction"],
            ),
            connections_closed: counter(
                &registry,
                "connections_closed_total",
                "Relayed connections ended, by close code sent to the browser",
                &["code"],
            ),
            publish_requests: counter(
                &registry,
                "publish_requests_total",
                "HTTP publish requests by outcome",
                &["outcome"],
            ),
            jwks_fetches: counter(
                &registry,
                "jwks_fetches_total",
                "JWKS fetches by result",
                &["result"],
            ),
            upstream_connects: counter(
                &registry,
                "upstream_connects_total",
                "Upstream WebSocket connects by result",
                &["result"],
            ),
            connection_seconds,
            token_refreshes: counter(
                &registry,
                "token_refreshes_total",
                "Session refreshes by phase and result",
                &["phase", "result"],
            ),
            sessions_ended: counter(
                &registry,
                "sessions_ended_total",
                "Connections ended by the session lifecycle, by reason",
                &["reason"],
            ),
            upstream_redials: counter(
                &registry,
                "upstream_redials_total",
                "Upstream re-dials by result",
                &["result"],
            ),
            app_requests: counter(
                &registry,
                "app_requests_total",
                "Requests proxied to the SSR app by outcome",
                &["outcome"],
            ),
            limits_hit: counter(
                &registry,
                "limits_hit_total",
                "Requests or frames refused by a limit",
                &["limit"],
            ),
            policy_decisions: counter(
                &registry,
                "policy_decisions_total",
                "Channel policy decisions by operation and result",
                &["op", "result"],
            ),
            policy_reloads: counter(
                &registry,
                "policy_reloads_total",
                "Channel policy file changes by result",
                &["result"],
            ),
            registry,
        };
        metrics.zero_known_series();
        metrics
    }

    /// Adds a collector defined elsewhere (the cluster's Redis metrics).
    pub fn register(&self, c: Box<dyn prometheus::core::Collector>) {
        self.registry.register(c).expect("metric names are unique");
    }

    /// Creates, at 0, the series of label values known in advance, so that
    /// they are scraped from the start: `rate()` and alerts see a counter
    /// that has not moved yet instead of no series at all, and every metric
    /// the dashboards and alerts name exists on a fresh relay.
    fn zero_known_series(&self) {
        let zero = |v: &IntCounterVec, labels: &[&[&str]]| {
            for l in labels {
                v.with_label_values(l);
            }
        };
        zero(&self.handshakes, &[&["accepted"]]);
        zero(
            &self.connections_closed,
            &[&["1000"], &["1001"], &["4401"], &["1013"]],
        );
        zero(&self.publish_requests, &[&["2xx"]]);
        zero(&self.jwks_fetches, &[&["ok"], &["error"]]);
        zero(&self.upstream_connects, &[&["ok"]]);
        zero(&self.upstream_redials, &[&["ok"], &["gave_up"]]);
        zero(&self.policy_reloads, &[&["ok"], &["error"]]);
        for op in ["subscribe", "publish"] {
            for result in ["permitted", "denied"] {
                self.policy_decisions.with_label_values(&[op, result]);
            }
        }
        for phase in ["handshake", "connection"] {
            for result in ["ok", "rejected", "unavailable"] {
                self.token_refreshes.with_label_values(&[phase, result]);
            }
        }
        zero(
            &self.sessions_ended,
            &[&["refresh_rejected"], &["max_session_age"], &["signed_out"]],
        );
        zero(&self.app_requests, &[&["2xx"]]);
        for limit in [
            "max_connections",
            "max_connections_per_user",
            "max_connections_per_ip",
            "max_subscriptions",
            "publish_rate",
            "refresh_rate_per_ip",
            "refresh_rate_per_user",
            "idle_timeout",
            "send_timeout",
            "shared_lag",
            "shared_channels",
        ] {
            self.limits_hit.with_label_values(&[limit]);
        }
        for phase in ["verify", "renew", "upstream_connect", "total"] {
            self.handshake_seconds.with_label_values(&[phase]);
        }
        zero(&self.shared_deliveries, &[&["upstream"], &["browser"]]);
        zero(
            &self.shared_probes,
            &[&["allowed"], &["refused"], &["skipped"]],
        );
        for direction in ["client_to_upstream", "upstream_to_client", "local_reply"] {
            self.frames.with_label_values(&[direction, "data"]);
            self.bytes.with_label_values(&[direction]);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// A bounded label for a frame's AppSync `type`, read without parsing the
/// whole frame: types outside the protocol's list become `other`.
pub fn frame_type_label(text: &str) -> &'static str {
    const TYPES: &[&str] = &[
        "connection_init",
        "connection_ack",
        "connection_error",
        "ka",
        "subscribe",
        "subscribe_success",
        "subscribe_error",
        "unsubscribe",
        "unsubscribe_success",
        "unsubscribe_error",
        "publish",
        "publish_success",
        "publish_error",
        "broadcast_error",
        "data",
        "error",
    ];
    // Serializers put `"type"` first (AWS's examples, Amplify) or last
    // (sorted keys): look in a bounded head and tail, so a 1 MB frame costs
    // no more than a small one.
    const WINDOW: usize = 256;
    let bytes = text.as_bytes();
    let head = &bytes[..bytes.len().min(WINDOW)];
    let tail = &bytes[bytes.len().saturating_sub(WINDOW)..];
    type_in(head)
        .or_else(|| type_in(tail))
        .and_then(|value| TYPES.iter().find(|t| t.as_bytes() == value).copied())
        .unwrap_or("other")
}

/// The string value following the first `"type"` key in `window`.
fn type_in(window: &[u8]) -> Option<&[u8]> {
    let pos = find(window, b"\"type\"")?;
    let rest = &window[pos + 6..];
    let colon = rest.iter().position(|b| !b.is_ascii_whitespace())?;
    if rest[colon] != b':' {
        return None;
    }
    let rest = &rest[colon + 1..];
    let start = rest.iter().position(|b| !b.is_ascii_whitespace())?;
    if rest[start] != b'"' {
        return None;
    }
    let rest = &rest[start + 1..];
    let end = rest.iter().position(|b| *b == b'"')?;
    Some(&rest[..end])
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_frame_types_from_a_bounded_set() {
        assert_eq!(
            frame_type_label(r#"{"type":"data","id":"1","event":"{}"}"#),
            "data"
        );
        assert_eq!(
            frame_type_label(r#"{"id":"1", "type" : "subscribe"}"#),
            "subscribe"
        );
        assert_eq!(frame_type_label(r#"{"type":"secret-token-abc"}"#), "other");
        assert_eq!(frame_type_label("garbage"), "other");
        let big = format!(
            r#"{{"event":"{}","id":"1","type":"data"}}"#,
            "x".repeat(10_000)
        );
        assert_eq!(frame_type_label(&big), "data");
        assert_eq!(frame_type_label(r#"{"type":5,"x":"data"}"#), "other");
    }

    #[test]
    fn renders_owned_registry() {
        let m = Metrics::new();
        m.handshakes.with_label_values(&["accepted"]).inc();
        let text = m.render();
        assert!(text.contains("appsync_relay_handshakes_total{outcome=\"accepted\"} 1"));
        assert!(text.contains("appsync_relay_build_info"));
    }
}
