//! Writing the session back to the browser: `Set-Cookie` headers with
//! Amplify's names and attributes (so the SSR app reads the renewed tokens
//! too), and the store of renewals that still have to reach a browser.
//!
//! **Pending renewals.** A refresh on an open socket has no HTTP response to
//! carry cookies. When Cognito rotated the refresh token, the browser's
//! cookie holds one that dies after a grace period, so the new tokens are
//! kept here, keyed by SHA-256 of the refresh token the browser still holds,
//! and handed out as `Set-Cookie` on that session's next request through the
//! relay. The store is bounded and entries expire; it never holds a key that
//! is a token.

use crate::refresh::RefreshedTokens;
use crate::session;
use dashmap::DashMap;
use hyper::header::HeaderValue;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SameSite {
    Strict,
    Lax,
    None,
}

/// Attributes for the cookies the relay writes.
#[derive(Debug, Clone)]
pub struct CookiePolicy {
    pub same_site: SameSite,
    /// `Max-Age` in seconds (Amplify's default is one year).
    pub max_age: u64,
    pub domain: Option<String>,
}

impl CookiePolicy {
    fn attributes(&self, secure: bool) -> String {
        let mut attrs = format!("Path=/; Max-Age={}; HttpOnly", self.max_age);
        // SameSite=None is only accepted by browsers together with Secure.
        if secure || self.same_site == SameSite::None {
            attrs.push_str("; Secure");
        }
        attrs.push_str(match self.same_site {
            SameSite::Strict => "; SameSite=Strict",
            SameSite::Lax => "; SameSite=Lax",
            SameSite::None => "; SameSite=None",
        });
        if let Some(domain) = &self.domain {
            attrs.push_str("; Domain=");
            attrs.push_str(domain);
        }
        attrs
    }

    /// `Set-Cookie` values for renewed tokens of `username`: access, ID (if
    /// any), refresh (if rotated), with Amplify's cookie names.
    pub fn set_cookies(
        &self,
        client_id: &str,
        username: &str,
        tokens: &RefreshedTokens,
        secure: bool,
    ) -> Vec<HeaderValue> {
        let attrs = self.attributes(secure);
        let mut pairs = vec![("accessToken", tokens.access_token.as_str())];
        if let Some(id) = &tokens.id_token {
            pairs.push(("idToken", id));
        }
        if let Some(refresh) = &tokens.refresh_token {
            pairs.push(("refreshToken", refresh));
        }
        pairs
            .into_iter()
            .filter_map(|(suffix, value)| {
                let name = session::cookie_name(client_id, username, suffix);
                HeaderValue::from_str(&format!("{name}={value}; {attrs}")).ok()
            })
            .collect()
    }
}

struct Pending {
    username: String,
    tokens: Arc<RefreshedTokens>,
    created: Instant,
}

/// Renewals waiting for their browser (see the module docs).
pub struct PendingCookies {
    entries: DashMap<[u8; 32], Pending>,
    capacity: usize,
    ttl: Duration,
}

impl std::fmt::Debug for PendingCookies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingCookies")
            .field("len", &self.entries.len())
            .finish()
    }
}

impl PendingCookies {
    pub fn new(capacity: usize, ttl: Duration) -> PendingCookies {
        PendingCookies {
            entries: DashMap::new(),
            capacity,
            ttl,
        }
    }

    /// Remembers that the browser holding the refresh token hashed as
    /// `browser_refresh` should now get `tokens` (which carry the current
    /// refresh token).
    pub fn record(&self, browser_refresh: [u8; 32], username: &str, tokens: Arc<RefreshedTokens>) {
        if self.entries.len() >= self.capacity {
            self.entries.retain(|_, p| p.created.elapsed() < self.ttl);
            if self.entries.len() >= self.capacity {
                // Full of live renewals: drop the oldest rather than grow.
                let oldest = self
                    .entries
                    .iter()
                    .min_by_key(|e| e.created)
                    .map(|e| *e.key());
                if let Some(k) = oldest {
                    self.entries.remove(&k);
                }
            }
        }
        self.entries.insert(
            browser_refresh,
            Pending {
                username: username.to_string(),
                tokens,
                created: Instant::now(),
            },
        );
    }

    /// The renewal for a browser holding `refresh_token`, if one is waiting.
    /// Entries stay until they expire: the browser may send several requests
    /// with the old cookies before the first `Set-Cookie` reaches it.
    pub fn lookup(&self, refresh_token: &str) -> Option<(String, Arc<RefreshedTokens>)> {
        let key = crate::verify::token_hash(refresh_token);
        let entry = self.entries.get(&key)?;
        if entry.created.elapsed() >= self.ttl {
            drop(entry);
            self.entries.remove(&key);
            return None;
        }
        Some((entry.username.clone(), entry.tokens.clone()))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(rotated: bool) -> RefreshedTokens {
        RefreshedTokens {
            access_token: "acc".into(),
            id_token: Some("idt".into()),
            refresh_token: rotated.then(|| "newref".into()),
        }
    }

    #[test]
    fn writes_amplify_names_and_attributes() {
        let p = CookiePolicy {
            same_site: SameSite::Strict,
            max_age: 31_536_000,
            domain: None,
        };
        let c = p.set_cookies("cid", "a@b.c", &tokens(true), true);
        let c: Vec<&str> = c.iter().map(|v| v.to_str().unwrap()).collect();
        assert_eq!(
            c[0],
            "CognitoIdentityServiceProvider.cid.a%40b.c.accessToken=acc; Path=/; Max-Age=31536000; HttpOnly; Secure; SameSite=Strict"
        );
        assert!(c[1].contains(".idToken=idt;"));
        assert!(c[2].contains(".refreshToken=newref;"));
        let plain = p.set_cookies("cid", "u", &tokens(false), false);
        assert_eq!(plain.len(), 2, "no refresh cookie without rotation");
        assert!(!plain[0].to_str().unwrap().contains("Secure"));
        let none = CookiePolicy {
            same_site: SameSite::None,
            max_age: 60,
            domain: Some("example.com".into()),
        };
        let v = none.set_cookies("cid", "u", &tokens(false), false);
        let v = v[0].to_str().unwrap();
        assert!(
            v.contains("; Secure; SameSite=None; Domain=example.com"),
            "{v}"
        );
    }

    #[test]
    fn pending_renewals_are_bounded_and_keyed_by_hash() {
        let store = PendingCookies::new(2, Duration::from_secs(60));
        for rt in ["r1", "r2", "r3"] {
            store.record(crate::verify::token_hash(rt), "u", Arc::new(tokens(true)));
        }
        assert_eq!(store.len(), 2);
        assert!(store.lookup("r3").is_some());
        assert!(store.lookup("unknown").is_none());
        let expired = PendingCookies::new(2, Duration::from_millis(0));
        expired.record(crate::verify::token_hash("r"), "u", Arc::new(tokens(true)));
        assert!(expired.lookup("r").is_none());
    }
}
