//! The one clock of the harness: monotonic nanoseconds shared by every
//! thread (publish stamps and receive times are read from it), the tokio
//! instant for a stamp, and the latency histogram shape.

use hdrhistogram::Histogram;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

static CLOCK: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds on this process's monotonic clock (shared by all threads).
pub(crate) fn now_ns() -> u64 {
    CLOCK.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

pub(crate) fn instant_at(ns: u64) -> tokio::time::Instant {
    (*CLOCK.get_or_init(Instant::now) + Duration::from_nanos(ns)).into()
}

pub(crate) fn histogram() -> Histogram<u64> {
    // 1 ns .. 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds")
}
