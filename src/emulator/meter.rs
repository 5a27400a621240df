//! The emulator's AppSync operations meter: what the emulated API would put
//! on an AWS bill, so tests and benches can show in numbers what a relay
//! costs or saves (one upstream subscription shared by many browsers, say).
//!
//! AppSync Events bills "Event API operations". The meter counts them by
//! `kind` in `appsync_emulator_operations_total{kind}`:
//!
//! - `connect`: a WebSocket connection accepted (the 101 after a valid
//!   authorization; refused handshakes are not counted);
//! - `subscribe` / `unsubscribe`: one per `subscribe_success` /
//!   `unsubscribe_success`;
//! - `publish`: one per event accepted, over WebSocket or HTTP;
//! - `delivery`: one per `data` frame queued for a subscriber;
//! - `keepalive`: one per `ka` frame sent.
//!
//! Publish and delivery are counted per started 5 KB of the message
//! (AWS meters messages in 5 KB increments; this meter takes 5 KB as 5 120
//! bytes of the frame as sent). Beside the counter, the gauges
//! `appsync_emulator_connections_active` and
//! `appsync_emulator_subscriptions_active{channel}` (the channel, or the
//! wildcard pattern, as subscribed). These names are read by other tooling:
//! keep them.
//!
//! The meter never sees a credential: it is given kinds, sizes and channel
//! paths only.

use prometheus::{Encoder, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

/// Bytes per billed increment of a message.
pub const BILLING_INCREMENT_BYTES: usize = 5 * 1024;

/// The `kind` label values, in the order the exposition lists them.
pub const KINDS: [&str; 6] = [
    "connect",
    "subscribe",
    "unsubscribe",
    "publish",
    "delivery",
    "keepalive",
];

pub(crate) struct Meter {
    registry: Registry,
    operations: IntCounterVec,
    connections: IntGauge,
    subscriptions: IntGaugeVec,
}

// === impl Meter ===

impl Default for Meter {
    fn default() -> Self {
        let registry = Registry::new();
        let operations = IntCounterVec::new(
            Opts::new(
                "appsync_emulator_operations_total",
                "Event API operations as AWS bills them (publish and delivery per started 5 KB).",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let connections = IntGauge::new(
            "appsync_emulator_connections_active",
            "Open real-time WebSocket connections.",
        )
        .expect("valid metric");
        let subscriptions = IntGaugeVec::new(
            Opts::new(
                "appsync_emulator_subscriptions_active",
                "Active subscriptions by channel (or wildcard pattern) as subscribed.",
            ),
            &["channel"],
        )
        .expect("valid metric");
        for m in [
            Box::new(operations.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(connections.clone()),
            Box::new(subscriptions.clone()),
        ] {
            registry.register(m).expect("metric registered once");
        }
        // Every kind shows from the start, at 0, so a scrape before any
        // traffic already names them.
        for kind in KINDS {
            operations.with_label_values(&[kind]);
        }
        Meter {
            registry,
            operations,
            connections,
            subscriptions,
        }
    }
}

impl Meter {
    pub fn count(&self, kind: &'static str, n: u64) {
        self.operations.with_label_values(&[kind]).inc_by(n);
    }

    /// One message of `bytes`, in billed increments.
    pub fn count_message(&self, kind: &'static str, bytes: usize) {
        self.count(kind, billed_increments(bytes));
    }

    pub fn operations(&self, kind: &str) -> u64 {
        self.operations.with_label_values(&[kind]).get()
    }

    pub fn connection_opened(&self) {
        self.count("connect", 1);
        self.connections.inc();
    }

    pub fn connection_closed(&self) {
        self.connections.dec();
    }

    pub fn subscription_added(&self, channel: &str) {
        self.subscriptions.with_label_values(&[channel]).inc();
    }

    /// A subscription gone (unsubscribed, or its connection ended).
    pub fn subscription_removed(&self, channel: &str) {
        let gauge = self.subscriptions.with_label_values(&[channel]);
        gauge.dec();
        if gauge.get() <= 0 {
            // Channels come and go; do not keep a series per channel ever seen.
            let _ = self.subscriptions.remove_label_values(&[channel]);
        }
    }

    /// The Prometheus text exposition of every series above.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Started increments of [`BILLING_INCREMENT_BYTES`]; an empty message is
/// still one operation.
pub fn billed_increments(bytes: usize) -> u64 {
    bytes.div_ceil(BILLING_INCREMENT_BYTES).max(1) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_billed_per_started_5_kb() {
        assert_eq!(billed_increments(0), 1);
        assert_eq!(billed_increments(1), 1);
        assert_eq!(billed_increments(5120), 1);
        assert_eq!(billed_increments(5121), 2);
        assert_eq!(billed_increments(240 * 1024), 48);
    }

    #[test]
    fn the_exposition_names_every_kind_and_drops_empty_channels() {
        let m = Meter::default();
        m.connection_opened();
        m.subscription_added("/prices/*");
        m.count_message("delivery", 6000);
        let text = m.render();
        for kind in KINDS {
            assert!(text.contains(&format!(
                "appsync_emulator_operations_total{{kind=\"{kind}\"}}"
            )));
        }
        assert!(text.contains("appsync_emulator_operations_total{kind=\"delivery\"} 2"));
        assert!(text.contains("appsync_emulator_connections_active 1"));
        assert!(text.contains("appsync_emulator_subscriptions_active{channel=\"/prices/*\"} 1"));
        m.subscription_removed("/prices/*");
        assert!(!m.render().contains("/prices/*"));
    }
}
