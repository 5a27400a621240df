//! The publisher thread: its own runtime, publishes sent on a fixed
//! schedule and stamped with their due time (no coordinated omission), or
//! as fast as a window of 64 allows, and the acknowledgements counted.

use crate::clients::{expect_reply, open, Endpoint, PublishTemplate};
use crate::clock::{histogram, instant_at, now_ns};
use crate::IO_TIMEOUT;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

pub(crate) struct PubStats {
    pub(crate) in_window: u64,
    pub(crate) acked: u64,
    pub(crate) errors: u64,
    pub(crate) lag: Histogram<u64>,
}

/// The publisher: its own thread and runtime, sleeping (with 1 ns timer
/// slack) until each publish is due, so pacing does not depend on the
/// subscribers' runtime being idle.
pub(crate) fn spawn_publisher(
    ep: Endpoint,
    channel: String,
    rate: u64,
    ready: tokio::sync::oneshot::Sender<Result<(), String>>,
    start: std::sync::mpsc::Receiver<(u64, u64, u64)>,
    done: tokio::sync::oneshot::Sender<Result<PubStats, String>>,
) {
    let body = move || {
        let _ = nix::sys::prctl::set_timerslack(1);
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ = ready.send(Err(e.to_string()));
                return;
            }
        };
        let result = rt.block_on(async move {
            let setup = async {
                let mut ws = open(&ep, 0).await?;
                expect_reply(
                    &mut ws,
                    r#"{"type":"connection_init"}"#.into(),
                    "connection_ack",
                )
                .await?;
                Ok::<_, String>(ws)
            }
            .await;
            let ws = match setup {
                Ok(ws) => {
                    let _ = ready.send(Ok(()));
                    ws
                }
                Err(e) => {
                    let _ = ready.send(Err(e.clone()));
                    return Err(e);
                }
            };
            let (t0, w_start, w_end) = start.recv().map_err(|_| "no start signal")?;
            let (mut sink, mut stream) = ws.split();
            let acked = Arc::new(AtomicU64::new(0));
            let errors = Arc::new(AtomicU64::new(0));
            let progress = Arc::new(tokio::sync::Notify::new());
            let reader = {
                let (acked, errors, progress) = (acked.clone(), errors.clone(), progress.clone());
                tokio::spawn(async move {
                    while let Some(Ok(msg)) = stream.next().await {
                        if let Message::Text(t) = msg {
                            if t.as_str().contains("publish_success") {
                                acked.fetch_add(1, Ordering::Relaxed);
                            } else if t.as_str().contains("error") {
                                errors.fetch_add(1, Ordering::Relaxed);
                                acked.fetch_add(1, Ordering::Relaxed);
                            }
                            progress.notify_one();
                        }
                    }
                    progress.notify_one();
                })
            };
            let template = PublishTemplate::new(&channel, &ep.auth);
            let mut lag = histogram();
            let (mut sent, mut in_window) = (0u64, 0u64);
            if rate > 0 {
                let period = 1e9 / rate as f64;
                for k in 0u64.. {
                    let due = t0 + (k as f64 * period) as u64;
                    if due >= w_end {
                        break;
                    }
                    let now = now_ns();
                    if due > now {
                        std::thread::sleep(Duration::from_nanos(due - now));
                    }
                    lag.saturating_record(now_ns().saturating_sub(due).max(1));
                    sink.send(Message::Text(template.frame(due).into()))
                        .await
                        .map_err(|e| format!("publish: {e}"))?;
                    sent += 1;
                    if due >= w_start {
                        in_window += 1;
                    }
                    // Let the reader drain acknowledgements.
                    tokio::task::yield_now().await;
                }
            } else {
                const WINDOW: u64 = 64;
                tokio::time::sleep_until(instant_at(t0)).await;
                while now_ns() < w_end {
                    if sent - acked.load(Ordering::Relaxed) >= WINDOW {
                        let _ = tokio::time::timeout(IO_TIMEOUT, progress.notified()).await;
                        continue;
                    }
                    let now = now_ns();
                    sink.send(Message::Text(template.frame(now).into()))
                        .await
                        .map_err(|e| format!("publish: {e}"))?;
                    sent += 1;
                    if now >= w_start {
                        in_window += 1;
                    }
                }
            }
            // Everything sent is acknowledged (so fanned out) before the
            // socket closes: closing earlier could drop queued publishes.
            let deadline = Instant::now() + Duration::from_secs(5);
            while acked.load(Ordering::Relaxed) < sent && Instant::now() < deadline {
                let _ = tokio::time::timeout(Duration::from_millis(50), progress.notified()).await;
            }
            let _ = sink.close().await;
            reader.abort();
            Ok(PubStats {
                in_window,
                acked: acked.load(Ordering::Relaxed),
                errors: errors.load(Ordering::Relaxed),
                lag,
            })
        });
        let _ = done.send(result);
    };
    std::thread::Builder::new()
        .name("publisher".into())
        .spawn(body)
        .expect("publisher thread");
}
