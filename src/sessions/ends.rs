//! How sessions end, here and on the other replicas: a refused refresh
//! token, an operator's end of a user, what another replica said. Each end
//! is **remembered before anything open is closed**, so that a request
//! which registered before it is closed by it, and one that checks after it
//! is refused by the memory (see `identify`).

use super::shared::Shared;
use crate::cluster::chain::View;
use crate::cluster::{Heard, Reach};
use crate::refresh::Holder;
use crate::session::{Pending, SessionProof, Subject, TokenSet};
use crate::verify::token_hash;
use std::sync::Arc;

/// Cognito refused `refresh_token`, shown for the sign-in `proof`. What
/// waits with that token is dropped; the sign-in itself ends only when the
/// token is that sign-in's newest (Cognito issued or accepted it for that
/// lineage and nothing replaced it) — with `--redis-url`, the newest the
/// replicas filed in the shared rotation chain, not this replica's view,
/// which may be stale. A refusal of anything else — a junk token next to
/// someone's genuine one, a stale token rotated out by the app or another
/// replica — or while Redis cannot tell, ends nothing but the request or
/// socket that showed it (the others learn from Cognito at their own next
/// renewal).
pub(super) async fn refused(sh: &Shared, refresh_token: &str, proof: &SessionProof) {
    sh.pending.forget_refresh_token(refresh_token);
    let newest = match sh.cluster.newest(&proof.lineage_hash()).await {
        View::Local => sh.refresher.is_newest(refresh_token, &proof.lineage()),
        View::Known(newest) => newest == Some(token_hash(refresh_token)),
        View::Unknown => false,
    };
    if newest {
        end_sign_in(sh, proof);
    }
}

/// Whether the relay — this replica or, with `--redis-url`, any of them —
/// saw Cognito issue or accept `refresh_token` for the sign-in `proof`.
pub(super) async fn belongs(sh: &Shared, refresh_token: &str, proof: &SessionProof) -> bool {
    sh.refresher.belongs(refresh_token, &proof.lineage())
        || sh
            .cluster
            .belongs(&proof.lineage_hash(), &token_hash(refresh_token))
            .await
}

/// A sign-in is over (its newest refresh token was refused, or the app
/// signed the user out): remembered and said to the other replicas first,
/// then nothing remembered may revive it — neither a renewal waiting for
/// its browser nor a refresh answer kept for reuse, here or in Redis — and
/// its open sockets close. Its access tokens are no longer taken on their
/// word: a request of that sign-in goes to Cognito with its own refresh
/// token, which settles it. Other sign-ins of the user are not affected.
///
/// The mark needs a lineage claim (`origin_jti` or `event_id`, which
/// Cognito issues with token revocation on, the default): without one it
/// would cover every sign-in of the user, on other devices too.
pub(super) fn end_sign_in(sh: &Shared, proof: &SessionProof) {
    if proof.origin_jti.is_none() && proof.event_id.is_none() {
        // Nothing tells this sign-in from the user's others: ending it
        // here would end theirs too. What waits with the refused token
        // was dropped already.
        return;
    }
    let lineage = proof.lineage_hash();
    sh.cluster.say_in_background(Heard::SignIn { lineage });
    sh.cluster.forget_sign_in(lineage);
    sh.pending.end_session(proof);
    sh.refresher.forget_answers(&proof.lineage());
    sh.sockets.end_sign_in(proof);
}

/// An operator ended `subject`'s sessions (every sign-in made until now):
/// remembered, this replica's sockets and handshakes in progress of it
/// closed with 4401, what waits for its browsers dropped, and said to the
/// other replicas, which do the same. How many sockets and handshakes
/// closed here, and how far the end reached.
pub(super) async fn end_subject(sh: &Shared, subject: &Subject) -> (usize, Reach) {
    // Cognito's clock sets `auth_time`; this replica's may lag it by up
    // to the leeway the relay allows tokens anyway.
    let at = crate::clock::now_secs() + sh.cfg.jwt_leeway.as_secs();
    let heard = Heard::Subject {
        subject: subject.hash(),
        at,
    };
    sh.cluster.remember(&heard);
    let closed = apply(sh, heard).await;
    // The refresh results the replicas share for its tokens, too.
    sh.cluster.forget_subject(subject.hash());
    let reach = sh.cluster.say(heard).await;
    tracing::info!(
        closed_here = closed,
        reach = reach.as_str(),
        "sessions ended by an operator"
    );
    (closed, reach)
}

/// Applies an end the cluster memory already holds: what another replica
/// said, or what this one just said. How many sockets (and handshakes in
/// progress) closed here.
pub(super) async fn apply(sh: &Shared, heard: Heard) -> usize {
    match heard {
        Heard::Subject { subject, at } => {
            sh.pending.end_subject(&subject, at);
            sh.refresher.forget_answers_of_subject(&subject, at);
            sh.sockets.end_subject(&subject, at)
        }
        Heard::SignIn { lineage } => {
            sh.pending.end_session_hashed(&lineage);
            sh.refresher.forget_answers_hashed(&lineage);
            sh.sockets.end_sign_in_hashed(&lineage)
        }
        Heard::Browser {
            sub,
            refresh,
            lineage,
            ..
        } => {
            sh.pending.forget_hashed(&refresh);
            sh.refresher.retire_hashed(refresh);
            let mut closed = sh.sockets.end_browser_hashed(&sub, &refresh);
            // The sayer could not tell (cut off from Redis, say) whether
            // the refresh token is the sign-in's; this replica judges again.
            if let Some(lineage) = lineage {
                let known = sh.refresher.belongs_hashed(&refresh, &lineage)
                    || sh.cluster.belongs(&lineage, &refresh).await;
                if known && !sh.cluster.sign_in_ended(&lineage) {
                    // Said too (the sayer could not tell, the others may
                    // not know either), remembered first, then applied.
                    let ended = Heard::SignIn { lineage };
                    sh.cluster.say_in_background(ended);
                    closed += Box::pin(apply(sh, ended)).await;
                }
            }
            closed
        }
    }
}

/// Brings a taken renewal's refresh token up to date: another socket may
/// have rotated it since it was left, and handing out a dead one would
/// lose the session.
pub(super) fn freshen(sh: &Shared, pending: &mut Pending) {
    let Some(rt) = &pending.tokens.refresh_token else {
        return;
    };
    let newest = sh
        .refresher
        .newest(rt, &pending.proof.lineage(), Holder::Socket);
    if &newest != rt {
        pending.tokens = Arc::new(TokenSet {
            refresh_token: Some(newest),
            ..(*pending.tokens).clone()
        });
    }
}
