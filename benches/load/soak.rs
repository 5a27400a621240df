//! The soak: many idle relayed connections held for minutes with AppSync's
//! keep-alives flowing to every client, then closed. Memory must not grow
//! while they are held, and must come back once they are gone.

use crate::clients::{open_many, subscribe_all, Ws};
use crate::measure::{Measure, Target};
use futures_util::StreamExt;
use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// Reads one client's socket until told to stop, counting keep-alives and
/// noting a close.
async fn drain(mut ws: Ws, ka: Rc<Cell<u64>>, closed: Rc<Cell<u64>>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) if t.as_str() == r#"{"type":"ka"}"# => ka.set(ka.get() + 1),
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                    closed.set(closed.get() + 1);
                    return;
                }
                Some(Ok(_)) => {}
            },
        }
    }
}

/// Opens `n` connections (each `connection_init` + one subscription),
/// holds them for `hold` while every client reads its socket, sampling the
/// proxy's RSS every `every`, then closes them all.
pub(crate) async fn soak(
    target: &Target,
    n: usize,
    hold: Duration,
    every: Duration,
) -> Result<Measure, String> {
    let (mut conns, _, _) = open_many(&target.ep, n, 0).await?;
    subscribe_all(&mut conns, &target.ep, "/bench/soak").await?;
    let (ka, closed) = (Rc::new(Cell::new(0)), Rc::new(Cell::new(0)));
    let stop = CancellationToken::new();
    let readers: Vec<_> = conns
        .into_iter()
        .map(|ws| tokio::task::spawn_local(drain(ws, ka.clone(), closed.clone(), stop.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let rss = || target.proxy.as_ref().map(|m| m.rss_kib() as f64 / 1024.0);
    let start = rss();
    let mut max = start;
    let until = Instant::now() + hold;
    while Instant::now() < until {
        tokio::time::sleep(every.min(until.saturating_duration_since(Instant::now()))).await;
        if let (Some(m), Some(now)) = (max, rss()) {
            max = Some(m.max(now));
        }
    }
    let end = rss();
    stop.cancel();
    for r in readers {
        let _ = r.await;
    }
    let mut m: Measure = vec![
        ("held", n as f64),
        ("held_s", hold.as_secs_f64()),
        ("keepalives_per_conn", ka.get() as f64 / n as f64),
        ("closed_while_held", closed.get() as f64),
    ];
    if let (Some(start), Some(end), Some(max)) = (start, end, max) {
        m.push(("proxy_rss_start_mib", start));
        m.push(("proxy_rss_max_mib", max));
        m.push(("proxy_rss_end_mib", end));
        m.push(("growth_kib_per_conn", (end - start) * 1024.0 / n as f64));
    }
    Ok(m)
}
