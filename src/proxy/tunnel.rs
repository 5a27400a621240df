//! The opaque byte tunnel between a browser and the app once both sides
//! switched protocols (Next.js HMR, the app's own WebSockets). Frames are
//! never parsed, so a shutdown can only cut it.

use hyper_util::rt::TokioIo;
use std::net::SocketAddr;

/// Splices the browser's and the app's upgraded connections until either
/// side ends or the relay shuts down.
pub async fn splice(
    browser: hyper::upgrade::OnUpgrade,
    app: hyper::upgrade::OnUpgrade,
    shutdown: tokio_util::sync::CancellationToken,
    peer: SocketAddr,
) {
    // The browser's side completes once hyper has written our 101.
    let (browser, app) = match tokio::try_join!(browser, app) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "app WebSocket upgrade did not complete");
            return;
        }
    };
    let mut browser = TokioIo::new(browser);
    let mut app = TokioIo::new(app);
    tokio::select! {
        // Opaque bytes, so no close frame is possible: cut both sides.
        _ = shutdown.cancelled() => {
            tracing::debug!(%peer, "app WebSocket tunnel cut by shutdown");
        }
        r = tokio::io::copy_bidirectional(&mut browser, &mut app) => match r {
            Ok((up, down)) => tracing::debug!(%peer, bytes_to_app = up, bytes_to_browser = down, "app WebSocket tunnel closed"),
            Err(e) => tracing::debug!(%peer, error = %e, "app WebSocket tunnel ended with an error"),
        },
    }
}
