//! When what a connection is allowed to do may change: renewing its token
//! ([`Connection::renew`]), re-dialling AppSync, which may renew too
//! ([`Connection::redial`]), and a reloaded channel policy. After each, the
//! connection's subscriptions are decided again
//! ([`Connection::revoke_denied`]): one the policy no longer allows ends.

use super::admit::POLICY_DENIED;
use super::close::Ending;
use super::pump::Connection;
use super::redial::redial;
use crate::policy::Op;
use crate::protocol::{error_frame, error_type, Channel};
use std::sync::Arc;

impl Connection {
    pub(super) async fn renew(&mut self) -> Result<(), Ending> {
        if self.token.renew(self.state.sessions()).await? {
            self.stats.refreshes += 1;
            if let Some(m) = &self.shared {
                m.set_auth(&self.token.auth);
            }
            // The claims may have changed (a group removed).
            self.revoke_denied();
        }
        Ok(())
    }

    /// A new upstream, with everything replayed; whatever was in flight on
    /// the old one gets its answer (see [`super::subscriptions`]).
    pub(super) async fn redial(&mut self, cause: Ending) -> Result<(), Ending> {
        let claims = self.token.claims.clone();
        let socket = redial(
            &self.state,
            &mut self.token,
            &mut self.subs,
            &mut self.stats,
            cause,
        )
        .await?;
        self.upstream = socket;
        self.to_upstream.clear();
        if let Some(m) = &mut self.shared {
            // A re-dial may have renewed the token: the hub's copy follows.
            m.set_auth(&self.token.auth);
            m.resend_probes(&self.token.auth);
        }
        self.replies.extend(self.subs.answers_after_redial());
        if !Arc::ptr_eq(&claims, &self.token.claims) {
            // The re-dial renewed the token and replayed what the browser
            // held: decide again on the new claims. A denied replay's
            // events are dropped from here, and it is unsubscribed.
            self.revoke_denied();
        }
        Ok(())
    }

    /// Once the claims changed (a renewal): every subscription the policy
    /// no longer allows ends. A subscription of its own is unsubscribed
    /// upstream and its events dropped until AppSync confirms; a shared one
    /// leaves the channel; the browser gets `subscribe_error`
    /// (`UnauthorizedException`) for the id.
    pub(super) fn revoke_denied(&mut self) {
        if self.state.live_policy().is_none() {
            return;
        }
        let claims = self.token.claims.clone();
        let denied = |raw: &str| match Channel::parse(raw, true) {
            Ok(channel) => !self
                .state
                .policy_decision(Op::Subscribe, &channel, &claims)
                .is_none_or(|d| d.is_permitted()),
            Err(_) => true,
        };
        let mut ended: Vec<String> = self
            .subs
            .channels()
            .filter(|(_, ch)| denied(ch))
            .map(|(id, _)| id.to_string())
            .collect();
        ended.retain(|id| self.subs.revoke(id));
        if let Some(m) = &mut self.shared {
            let shared: Vec<String> = m
                .joined()
                .filter(|(_, ch)| denied(ch))
                .map(|(id, _)| id.to_string())
                .collect();
            ended.extend(shared.into_iter().filter(|id| m.revoke(id)));
        }
        for id in ended {
            self.replies.push_back(error_frame(
                "subscribe_error",
                Some(&id),
                error_type::UNAUTHORIZED,
                POLICY_DENIED,
            ));
        }
    }
}
