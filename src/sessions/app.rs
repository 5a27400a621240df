//! The session as the SSR app proxy sees it: a request to the app may carry
//! a renewal an open socket left for it, proves the browser received a
//! rotated refresh token, and its answer may sign the browser out.

use super::shared::Shared;
use crate::cluster::SignedOut;
use crate::session::{self, Pending, SessionProof};
use crate::verify::token_hash;
use hyper::header::HeaderMap;

/// The session cookies of a request to the app, when it has any.
pub struct AppSession {
    /// The cookie username (`LastAuthUser`) and the refresh token.
    pub username: String,
    refresh_token: String,
    /// Only the request's cookies, kept to judge a sign-out in the answer.
    cookies: HeaderMap,
}

/// The cookie username and refresh token of the browser's session, if any.
pub(super) fn session_of(sh: &Shared, headers: &HeaderMap) -> Option<AppSession> {
    let session = session::from_headers(headers, &sh.cfg.client_id).ok()?;
    let cookies = headers
        .get_all(hyper::header::COOKIE)
        .iter()
        .map(|v| (hyper::header::COOKIE, v.clone()))
        .collect();
    Some(AppSession {
        username: session.username,
        refresh_token: session.refresh_token?,
        cookies,
    })
}

/// A request showing its refresh token proves the browser received it (a
/// rotation handed to it earlier arrived): worth a token check only when
/// it replaced another. Then the renewal waiting for this session, taken
/// — only when the request's own token proves the session (verified,
/// expiry ignored) and no end covers it.
pub(super) async fn renewal_for(sh: &Shared, app: &AppSession) -> Option<Pending> {
    let rt = &app.refresh_token;
    let shown = sh.refresher.replaced_something(rt);
    let waiting = sh.pending.has(rt);
    if !shown && !waiting {
        return None;
    }
    let (proof, _, claims) = request_proof(sh, &app.cookies).await?;
    if shown {
        sh.refresher.shown(rt, &proof.lineage());
    }
    if !waiting {
        return None;
    }
    // (A retired access token does not stop it: a sign-out forgot what
    // waited under its own refresh token already, and a stranger's forged
    // sign-out, which retires the victim's access token, must not cost
    // the victim the renewal.)
    let over = sh.cluster.sign_in_ended(&proof.lineage_hash())
        || sh.cluster.subject_ended(&session::Who::of(&claims));
    if over {
        return None;
    }
    let mut pending = sh.pending.take(rt, &proof)?;
    super::ends::freshen(sh, &mut pending);
    Some(pending)
}

/// The app signed this browser out (its answer expired the session's
/// refresh-token cookie). What only that browser holds is retired at once,
/// remembered (and said to the other replicas) before anything is closed:
/// its refresh token is refused from now on, its access token is no longer
/// taken on its word (a request showing it goes to Cognito), and the
/// sockets it opened with that refresh token close with 4401. Replaying the
/// old cookies after sign-out gets nowhere.
///
/// The whole sign-in — other sockets of its lineage, renewals waiting for
/// it — ends only when the refresh token shown is one the relay saw Cognito
/// issue or accept for it; such a sign-out is always said to the other
/// replicas. Each of them judges that again with what it knows (it may
/// know the refresh token when this replica, cut off from Redis, could
/// not tell). A leaked access token next to a junk refresh token must not
/// let a stranger end someone's sign-in: that closes only what was opened
/// with the junk token, and is said to the other replicas within the
/// user's budget of such sign-outs only.
pub(super) async fn signed_out(sh: &Shared, app: &AppSession) {
    let rt = &app.refresh_token;
    sh.pending.forget(rt);
    sh.refresher.retire(rt);
    let Some((proof, token, _)) = request_proof(sh, &app.cookies).await else {
        return;
    };
    let known = super::ends::belongs(sh, rt, &proof).await;
    let (refresh, token) = (token_hash(rt), token_hash(&token));
    let browser = SignedOut {
        refresh,
        token,
        lineage: proof.lineage_hash(),
    };
    sh.cluster.sign_out(&proof.sub, browser, known);
    let closed = sh.sockets.end_browser(&proof.sub, &refresh);
    if known {
        super::ends::end_sign_in(sh, &proof);
    }
    tracing::info!(
        sub = %proof.sub,
        sockets_closed = closed,
        "the app signed a browser out; its tokens are retired"
    );
}

/// The sign-in the request's own token belongs to (verified, expiry
/// ignored), the token, and its claims, if it carries a genuine one.
async fn request_proof(
    sh: &Shared,
    headers: &HeaderMap,
) -> Option<(SessionProof, String, crate::verify::Claims)> {
    let session = session::from_headers(headers, &sh.cfg.client_id).ok()?;
    let token = session.token(sh.cfg.token_use)?;
    let claims = sh.verifier.verify_ignoring_expiry(token).await.ok()?;
    Some((SessionProof::of(&claims), token.to_string(), claims))
}
