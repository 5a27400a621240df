//! Writing the session back: `Set-Cookie` headers with Amplify's names and
//! attributes for renewed tokens (so the SSR app reads them too), and the
//! rewrite of a request's `Cookie` header so the app sees a renewal on the
//! very request that delivers it.
//!
//! Values written are tokens Cognito issued; every other cookie of the
//! browser's is kept byte for byte. Nothing here logs.

use super::names::{cookie_name, decode};
use super::tokens::TokenSet;
use hyper::header::{HeaderMap, HeaderValue, COOKIE};

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
        tokens: &TokenSet,
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
                let name = cookie_name(client_id, username, suffix);
                HeaderValue::from_str(&format!("{name}={value}; {attrs}")).ok()
            })
            .collect()
    }
}

/// Replaces the values of `username`'s token cookies with `tokens` in every
/// `Cookie` header, keeping every other cookie as sent and in order. Token
/// cookies the renewal has a value for but the browser did not send are
/// appended (the browser will hold them once our `Set-Cookie` lands).
pub fn rewrite_cookie_header(
    headers: &mut HeaderMap,
    client_id: &str,
    username: &str,
    tokens: &TokenSet,
) {
    let mut replacements: Vec<(String, &str, bool)> = vec![(
        token_cookie(client_id, username, "accessToken"),
        tokens.access_token.as_str(),
        false,
    )];
    if let Some(id) = &tokens.id_token {
        replacements.push((token_cookie(client_id, username, "idToken"), id, false));
    }
    if let Some(refresh) = &tokens.refresh_token {
        replacements.push((
            token_cookie(client_id, username, "refreshToken"),
            refresh,
            false,
        ));
    }

    // Each Cookie header is rewritten in place; `None` marks one that is not
    // UTF-8 (it cannot hold the session we found) and is kept byte for byte.
    let mut rewritten: Vec<Option<String>> = Vec::new();
    for value in headers.get_all(COOKIE).iter() {
        let Ok(value) = value.to_str() else {
            rewritten.push(None);
            continue;
        };
        let pairs: Vec<String> = value
            .split(';')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|pair| {
                let name = pair.split_once('=').map_or(pair, |(n, _)| n).trim();
                let decoded = decode(name);
                match replacements.iter_mut().find(|(n, _, _)| *n == decoded) {
                    Some((_, new, seen)) => {
                        *seen = true;
                        format!("{name}={new}")
                    }
                    None => pair.to_string(),
                }
            })
            .collect();
        rewritten.push(Some(pairs.join("; ")));
    }
    let missing: Vec<String> = replacements
        .iter()
        .filter(|(_, _, seen)| !seen)
        .filter_map(|(decoded, value, _)| {
            // Written under the name Amplify uses, not the decoded one.
            let suffix = decoded.rsplit('.').next()?;
            Some(format!(
                "{}={value}",
                cookie_name(client_id, username, suffix)
            ))
        })
        .collect();
    if !missing.is_empty() {
        let missing = missing.join("; ");
        match rewritten.iter_mut().rev().find_map(Option::as_mut) {
            Some(last) if !last.is_empty() => {
                last.push_str("; ");
                last.push_str(&missing);
            }
            Some(last) => last.push_str(&missing),
            None => rewritten.push(Some(missing)),
        }
    }

    let originals: Vec<HeaderValue> = headers.get_all(COOKIE).iter().cloned().collect();
    let mut values = Vec::with_capacity(rewritten.len());
    for (i, v) in rewritten.into_iter().enumerate() {
        let value = match v {
            Some(text) => HeaderValue::from_str(&text).ok(),
            None => originals.get(i).cloned(),
        };
        match value {
            Some(value) => values.push(value),
            // Every part came from a valid header or a header-safe token; if
            // one did not survive, leave the browser's cookies as they were.
            None => return,
        }
    }
    headers.remove(COOKIE);
    for v in values {
        headers.append(COOKIE, v);
    }
}

/// A token cookie's name, decoded (as [`decode`] yields it).
fn token_cookie(client_id: &str, username: &str, suffix: &str) -> String {
    decode(&cookie_name(client_id, username, suffix)).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn tokens(rotated: bool) -> TokenSet {
        TokenSet {
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
    fn cookie_rewrite_keeps_order_and_other_cookies() {
        let cid = "cid";
        let user = "a@b.c";
        let base = "CognitoIdentityServiceProvider.cid";
        let mut h = headers(&[(
            "cookie",
            &format!(
                "theme=dark; {base}.LastAuthUser=a%40b.c; {base}.a%40b.c.accessToken=OLD-A; \
                 x=\"q\"; {base}.a%40b.c.refreshToken=OLD-R; {base}.other.accessToken=KEEP"
            ),
        )]);
        let tokens = TokenSet {
            access_token: "NEW-A".into(),
            id_token: Some("NEW-I".into()),
            refresh_token: None,
        };
        rewrite_cookie_header(&mut h, cid, user, &tokens);
        assert_eq!(
            h[COOKIE].to_str().unwrap(),
            format!(
                "theme=dark; {base}.LastAuthUser=a%40b.c; {base}.a%40b.c.accessToken=NEW-A; \
                 x=\"q\"; {base}.a%40b.c.refreshToken=OLD-R; {base}.other.accessToken=KEEP; \
                 {base}.a%40b.c.idToken=NEW-I"
            )
        );
    }

    #[test]
    fn cookie_rewrite_matches_decoded_names() {
        let base = "CognitoIdentityServiceProvider.cid";
        let mut h = headers(&[("cookie", &format!("{base}.a@b.c.accessToken=OLD"))]);
        let tokens = TokenSet {
            access_token: "NEW".into(),
            id_token: None,
            refresh_token: None,
        };
        rewrite_cookie_header(&mut h, "cid", "a@b.c", &tokens);
        assert_eq!(
            h[COOKIE].to_str().unwrap(),
            format!("{base}.a@b.c.accessToken=NEW")
        );
    }
}
