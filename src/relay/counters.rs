//! What one relayed connection counts: its totals for the closing log line,
//! and a per-connection cache of `frames_total` handles.

use crate::metrics::Metrics;

/// Counts what one relay moved, for the connection's closing log line.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub frames_to_upstream: u64,
    pub frames_to_client: u64,
    pub local_replies: u64,
    pub bytes_to_upstream: u64,
    pub bytes_to_client: u64,
    pub refreshes: u64,
    pub redials: u64,
}

/// Per-connection cache of `frames_total` handles: labels come from a small
/// fixed set, so a short linear scan beats the registry's hash-and-lock
/// lookup on every frame.
#[derive(Default)]
pub struct FrameCounters(Vec<(&'static str, &'static str, prometheus::IntCounter)>);

impl FrameCounters {
    pub fn get(
        &mut self,
        metrics: &Metrics,
        direction: &'static str,
        label: &'static str,
    ) -> &prometheus::IntCounter {
        let found = self
            .0
            .iter()
            .position(|(d, l, _)| *d == direction && *l == label);
        let i = match found {
            Some(i) => i,
            None => {
                let c = metrics.frames.with_label_values(&[direction, label]);
                self.0.push((direction, label, c));
                self.0.len() - 1
            }
        };
        &self.0[i].2
    }
}
