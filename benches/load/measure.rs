//! Targets and what is measured on them: a load run (subscribers, the
//! paced publisher, end-to-end latency, loss, CPU), the idle-connection
//! memory ramp, the handshake burst, and waiting for a target to settle
//! between runs.

use crate::clients::{open_many, stamp_of, subscribe_all, Endpoint, Ws};
use crate::clock::{histogram, instant_at, now_ns};
use crate::monitor::{bench_processes, machine_busy_secs, Monitor};
use crate::publisher::spawn_publisher;
use futures_util::StreamExt;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    Direct,
    Nginx,
    Relay,
    /// The relay, on channels it shares (`--shared-channel`).
    Shared,
    Custom,
}

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Nginx => "nginx",
            Kind::Relay => "relay",
            Kind::Shared => "shared",
            Kind::Custom => "target",
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Target {
    pub(crate) kind: Kind,
    pub(crate) ep: Endpoint,
    /// The proxy's own processes (none for direct).
    pub(crate) proxy: Option<Monitor>,
}

/// What one run of one scenario on one target measured.
pub(crate) type Measure = Vec<(&'static str, f64)>;

/// Waits until the processes hold no more files than `baseline` (+ slack):
/// the previous scenario's connections are gone on both legs.
pub(crate) async fn settle(mons: &[&Monitor], baseline: usize) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let open: usize = mons.iter().map(|m| m.open_files()).sum();
        if open <= baseline + 8 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let the allocator and the kernel catch up with the frees.
    tokio::time::sleep(Duration::from_millis(200)).await;
}

pub(crate) struct LoadSpec {
    pub(crate) subscribers: usize,
    /// Publishes per second; 0 = as fast as possible with a window.
    pub(crate) rate: u64,
    pub(crate) warmup: Duration,
    pub(crate) measure: Duration,
    pub(crate) channel: String,
}

/// One load run: subscribers, a paced publisher, latency of every delivery
/// in the measured window, loss, and the processes' CPU.
pub(crate) async fn run_load(
    target: &Target,
    spec: &LoadSpec,
    emulator: Option<&Monitor>,
) -> Result<Measure, String> {
    let (mut subs, hs_rate, _) = open_many(&target.ep, spec.subscribers, 1).await?;
    subscribe_all(&mut subs, &target.ep, &spec.channel).await?;

    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (start_tx, start_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    spawn_publisher(
        target.ep.clone(),
        spec.channel.clone(),
        spec.rate,
        ready_tx,
        start_rx,
        done_tx,
    );
    ready_rx.await.map_err(|_| "publisher thread died")??;

    let t0 = now_ns() + 20_000_000;
    let w_start = t0 + spec.warmup.as_nanos() as u64;
    let w_end = w_start + spec.measure.as_nanos() as u64;
    let hist = Rc::new(RefCell::new(histogram()));
    let received = Rc::new(Cell::new(0u64));
    let closed = Rc::new(Cell::new(0u64));
    let cancel = CancellationToken::new();
    let mut tasks = Vec::with_capacity(subs.len());
    let n_subs = subs.len() as u64;
    for mut ws in subs {
        let (hist, received, closed, cancel) = (
            hist.clone(),
            received.clone(),
            closed.clone(),
            cancel.clone(),
        );
        tasks.push(tokio::task::spawn_local(async move {
            loop {
                tokio::select! {
                    biased;
                    msg = ws.next() => match msg {
                        Some(Ok(Message::Text(t))) => {
                            if let Some(stamp) = stamp_of(t.as_str()) {
                                let now = now_ns();
                                if stamp >= w_start && stamp < w_end {
                                    hist.borrow_mut().saturating_record(now.saturating_sub(stamp).max(1));
                                    received.set(received.get() + 1);
                                }
                            }
                        }
                        Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                            closed.set(closed.get() + 1);
                            break;
                        }
                        Some(Ok(_)) => {}
                    },
                    () = cancel.cancelled() => break,
                }
            }
        }));
    }
    start_tx
        .send((t0, w_start, w_end))
        .map_err(|_| "publisher thread died")?;

    let mons: Vec<(&'static str, Monitor)> = [
        target.proxy.clone().map(|m| ("proxy", m)),
        emulator.cloned().map(|m| ("emulator", m)),
        Some((
            "client",
            Monitor {
                pids: vec![std::process::id()],
            },
        )),
    ]
    .into_iter()
    .flatten()
    .collect();
    let everything = bench_processes();
    tokio::time::sleep_until(instant_at(w_start)).await;
    let cpu0: Vec<f64> = mons.iter().map(|(_, m)| m.cpu_secs()).collect();
    let (busy0, ours0) = (machine_busy_secs(), everything.cpu_secs());
    let wall0 = Instant::now();
    tokio::time::sleep_until(instant_at(w_end)).await;
    let cpu1: Vec<f64> = mons.iter().map(|(_, m)| m.cpu_secs()).collect();
    let (busy1, ours1) = (machine_busy_secs(), everything.cpu_secs());
    let wall = wall0.elapsed().as_secs_f64();
    let rss = target.proxy.as_ref().map(|m| m.rss_kib());

    let stats = done_rx.await.map_err(|_| "publisher thread died")??;
    let expected = stats.in_window * n_subs;
    let deadline = Instant::now() + Duration::from_secs(3);
    while received.get() < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cancel.cancel();
    for t in tasks {
        let _ = t.await;
    }

    let h = hist.borrow();
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let got = received.get();
    let mut m: Measure = vec![
        ("p50_us", us(0.5)),
        ("p90_us", us(0.9)),
        ("p99_us", us(0.99)),
        ("p999_us", us(0.999)),
        ("max_us", h.max() as f64 / 1000.0),
        ("delivered_per_s", got as f64 / spec.measure.as_secs_f64()),
        ("expected", expected as f64),
        ("lost", expected.saturating_sub(got) as f64),
        ("closed", closed.get() as f64),
        ("publish_errors", stats.errors as f64),
        (
            "unacked",
            (stats.in_window.saturating_sub(stats.acked)) as f64,
        ),
        (
            "send_lag_p99_us",
            stats.lag.value_at_quantile(0.99) as f64 / 1000.0,
        ),
    ];
    if spec.subscribers >= 10 {
        m.push(("sub_handshakes_per_s", hs_rate));
    }
    for (i, (name, _)) in mons.iter().enumerate() {
        let pct = (cpu1[i] - cpu0[i]) / wall * 100.0;
        m.push((
            match *name {
                "proxy" => "proxy_cpu_pct",
                "emulator" => "emulator_cpu_pct",
                _ => "client_cpu_pct",
            },
            pct,
        ));
        if *name == "proxy" && got > 0 {
            m.push((
                "proxy_cpu_us_per_delivery",
                (cpu1[i] - cpu0[i]) * 1e6 / got as f64,
            ));
        }
    }
    if let Some(rss) = rss {
        m.push(("proxy_rss_mib", rss as f64 / 1024.0));
    }
    // Approximate (kernel work on loopback is booked either way): a high
    // value means another job shared the machine during this run.
    m.push((
        "others_cpu_pct",
        ((busy1 - busy0) - (ours1 - ours0)).max(0.0) / wall * 100.0,
    ));
    Ok(m)
}

/// Opens `levels` connections in stages (each subscribed once, then idle)
/// and reports the proxy's RSS growth per connection and the handshake rate.
pub(crate) async fn memory_ramp(
    target: &Target,
    levels: &[usize],
    emulator: &Monitor,
) -> Result<Measure, String> {
    let proxy = target.proxy.as_ref();
    let rss0 = proxy.map(|m| m.rss_kib());
    let emu0 = emulator.rss_kib();
    let mut conns: Vec<Ws> = Vec::new();
    let mut m: Measure = Vec::new();
    let mut prev: Option<(usize, u64)> = rss0.map(|r| (0, r));
    for &level in levels {
        let add = level.saturating_sub(conns.len());
        let (mut new, rate, hist) = open_many(&target.ep, add, conns.len()).await?;
        subscribe_all(&mut new, &target.ep, "/bench/idle").await?;
        conns.extend(new);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let key =
            |what: &str| -> &'static str { Box::leak(format!("{what}@{level}").into_boxed_str()) };
        m.push((key("handshakes_per_s"), rate));
        m.push((
            key("handshake_p99_ms"),
            hist.value_at_quantile(0.99) as f64 / 1e6,
        ));
        m.push((key("emulator_rss_mib"), emulator.rss_kib() as f64 / 1024.0));
        m.push((
            key("emulator_kib_per_conn"),
            (emulator.rss_kib().saturating_sub(emu0)) as f64 / level as f64,
        ));
        if let (Some(p), Some(r0)) = (proxy, rss0) {
            let rss = p.rss_kib();
            m.push((key("proxy_rss_mib"), rss as f64 / 1024.0));
            m.push((
                key("proxy_kib_per_conn"),
                rss.saturating_sub(r0) as f64 / level as f64,
            ));
            if let Some((pl, pr)) = prev {
                m.push((
                    key("proxy_kib_per_conn_marginal"),
                    (rss as f64 - pr as f64) / (level - pl) as f64,
                ));
            }
            prev = Some((level, rss));
        }
    }
    if let Some(r0) = rss0 {
        m.push(("proxy_rss_idle_mib", r0 as f64 / 1024.0));
    }
    drop(conns);
    Ok(m)
}

pub(crate) async fn handshake_burst(target: &Target, n: usize) -> Result<Measure, String> {
    let cpu = target.proxy.as_ref().map(|m| m.cpu_secs());
    let started = Instant::now();
    let (conns, rate, hist) = open_many(&target.ep, n, 0).await?;
    let wall = started.elapsed().as_secs_f64();
    let mut m: Measure = vec![
        ("handshakes_per_s", rate),
        ("handshake_p50_ms", hist.value_at_quantile(0.5) as f64 / 1e6),
        (
            "handshake_p99_ms",
            hist.value_at_quantile(0.99) as f64 / 1e6,
        ),
    ];
    if let (Some(mon), Some(c0)) = (&target.proxy, cpu) {
        m.push(("proxy_cpu_pct", (mon.cpu_secs() - c0) / wall * 100.0));
        m.push((
            "proxy_cpu_us_per_handshake",
            (mon.cpu_secs() - c0) * 1e6 / n as f64,
        ));
    }
    drop(conns);
    Ok(m)
}
