//! The reconnect storm: after a deploy or a network blip every browser
//! reconnects at once, each with its own token, so every verification is
//! cold (no process has seen any of the tokens: they are minted for each
//! target's run, and the emulator verifies them cold too). Handshakes are
//! opened with many in flight; none may fail or time out.

use crate::clients::{open, Endpoint};
use crate::clock::histogram;
use crate::measure::{Measure, Target};
use futures_util::StreamExt;
use std::time::Instant;

/// One storm on `target`: every endpoint (one user each) connects, at most
/// `in_flight` handshakes at a time; the connections are held until all
/// are through, then closed. The proxy's RSS is read before and while they
/// are held; the caller reads it again once they are gone.
pub(crate) async fn storm(target: &Target, eps: &[Endpoint], in_flight: usize) -> Measure {
    let cpu = target.proxy.as_ref().map(|m| m.cpu_secs());
    let rss_before = target.proxy.as_ref().map(|m| m.rss_kib());
    let started = Instant::now();
    let mut hist = histogram();
    let mut conns = Vec::with_capacity(eps.len());
    let mut failed = 0usize;
    let mut first_error = None;
    let mut results = futures_util::stream::iter(eps.iter().enumerate())
        .map(|(n, ep)| async move {
            let t = Instant::now();
            open(ep, n).await.map(|ws| (ws, t.elapsed()))
        })
        .buffer_unordered(in_flight);
    while let Some(r) = results.next().await {
        match r {
            Ok((ws, took)) => {
                hist.saturating_record(took.as_nanos() as u64);
                conns.push(ws);
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    let wall = started.elapsed().as_secs_f64();
    if let Some(e) = first_error {
        println!(
            "  [storm] {:<6} {failed} of {} handshakes failed; the first: {e}",
            target.kind.name(),
            eps.len()
        );
    }
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1e6;
    let mut m: Measure = vec![
        ("cold_handshakes_per_s", conns.len() as f64 / wall),
        ("handshake_p50_ms", ms(0.5)),
        ("handshake_p99_ms", ms(0.99)),
        ("handshake_max_ms", hist.max() as f64 / 1e6),
        ("failed", failed as f64),
    ];
    if let (Some(mon), Some(c0), Some(r0)) = (&target.proxy, cpu, rss_before) {
        m.push(("proxy_rss_before_mib", r0 as f64 / 1024.0));
        m.push(("proxy_rss_held_mib", mon.rss_kib() as f64 / 1024.0));
        let used = mon.cpu_secs() - c0;
        m.push(("proxy_cpu_pct", used / wall * 100.0));
        m.push((
            "proxy_cpu_us_per_handshake",
            used * 1e6 / conns.len().max(1) as f64,
        ));
    }
    drop(conns);
    m
}
