//! Reading the user's session out of the `Cookie` header, the way Amplify's
//! server-side auth writes it (names in [`super::names`]). Cookies for
//! other app clients are ignored. Two cookies that decode to the same name
//! with different values (cookie tossing from a sibling subdomain) make the
//! session ambiguous and it is refused rather than guessed.
//!
//! This module never logs and its `Debug` output redacts every token.

use super::names::{decode, COOKIE_PREFIX};
use crate::verify::TokenUse;
use hyper::header::{HeaderMap, COOKIE};
use std::fmt;
/// Cookie headers larger than this are not parsed (browsers cap a cookie at
/// 4 KiB and send ~180 per domain at most).
pub const MAX_COOKIE_HEADER_BYTES: usize = 64 * 1024;

/// Why no usable session was found. Labels are bounded for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("no session cookie")]
    Missing,
    #[error("session cookies are ambiguous (duplicate names with different values)")]
    Ambiguous,
    #[error("cookie header is too large")]
    TooLarge,
}

impl SessionError {
    pub fn reason(&self) -> &'static str {
        match self {
            SessionError::Missing => "no_session",
            SessionError::Ambiguous => "ambiguous_session",
            SessionError::TooLarge => "cookie_too_large",
        }
    }
}

/// The tokens of the signed-in user, as found in the cookies.
#[derive(Clone, PartialEq, Eq)]
pub struct Session {
    pub username: String,
    pub access_token: Option<String>,
    pub id_token: Option<String>,
    pub refresh_token: Option<String>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redact = |t: &Option<String>| if t.is_some() { "<redacted>" } else { "<none>" };
        f.debug_struct("Session")
            .field("username", &self.username)
            .field("access_token", &redact(&self.access_token))
            .field("id_token", &redact(&self.id_token))
            .field("refresh_token", &redact(&self.refresh_token))
            .finish()
    }
}

impl Session {
    /// The token to verify and forward for the configured `token_use`.
    pub fn token(&self, token_use: TokenUse) -> Option<&str> {
        match token_use {
            TokenUse::Access => self.access_token.as_deref(),
            TokenUse::Id => self.id_token.as_deref(),
        }
    }
}

/// Iterates `(decoded name, raw value)` over every cookie in every `Cookie`
/// header. Values are returned as sent: JWTs and Cognito refresh tokens use
/// only cookie-safe characters.
///
/// The header is split as bytes: a pair that is not text (a stray non-ASCII
/// byte, which a sibling subdomain can plant) is skipped alone, never the
/// whole header with the session in it.
fn cookies(headers: &HeaderMap) -> impl Iterator<Item = (std::borrow::Cow<'_, str>, &str)> {
    headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|h| h.as_bytes().split(|b| *b == b';'))
        .filter_map(|pair| std::str::from_utf8(pair).ok().filter(|p| p.is_ascii()))
        .filter_map(|pair| {
            let (name, value) = pair.split_once('=')?;
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            Some((decode(name.trim()), value))
        })
}

/// Finds exactly one value for `name`; duplicates with different values are
/// an error (a sibling subdomain may have planted one).
fn unique<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, SessionError> {
    let mut found: Option<&str> = None;
    for (n, v) in cookies(headers) {
        if n == name {
            match found {
                Some(prev) if prev != v => return Err(SessionError::Ambiguous),
                _ => found = Some(v),
            }
        }
    }
    Ok(found.filter(|v| !v.is_empty()))
}

/// Reads the session for `client_id` from the request's cookies.
pub fn from_headers(headers: &HeaderMap, client_id: &str) -> Result<Session, SessionError> {
    let size: usize = headers.get_all(COOKIE).iter().map(|v| v.len()).sum();
    if size > MAX_COOKIE_HEADER_BYTES {
        return Err(SessionError::TooLarge);
    }
    let base = format!("{COOKIE_PREFIX}.{client_id}.");
    let last_user =
        unique(headers, &format!("{base}LastAuthUser"))?.ok_or(SessionError::Missing)?;
    let username = decode(last_user).into_owned();
    let user_base = format!("{base}{username}.");
    let get = |suffix: &str| -> Result<Option<String>, SessionError> {
        Ok(unique(headers, &format!("{user_base}{suffix}"))?.map(str::to_owned))
    };
    let session = Session {
        access_token: get("accessToken")?,
        id_token: get("idToken")?,
        refresh_token: get("refreshToken")?,
        username,
    };
    if session.access_token.is_none()
        && session.id_token.is_none()
        && session.refresh_token.is_none()
    {
        return Err(SessionError::Missing);
    }
    Ok(session)
}

#[cfg(test)]
mod tests {
    use super::super::names::{cookie_name, last_auth_user_cookie};
    use super::*;
    use hyper::header::HeaderValue;

    fn headers(cookie: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(COOKIE, HeaderValue::from_str(cookie).unwrap());
        h
    }

    #[test]
    fn reads_amplify_cookies_with_encoded_username() {
        let c = "other=1; CognitoIdentityServiceProvider.cid.LastAuthUser=alice%40example.com; \
                 CognitoIdentityServiceProvider.cid.alice%40example.com.accessToken=AAA; \
                 CognitoIdentityServiceProvider.cid.alice%40example.com.idToken=III; \
                 CognitoIdentityServiceProvider.cid.alice%40example.com.refreshToken=RRR";
        let s = from_headers(&headers(c), "cid").unwrap();
        assert_eq!(s.username, "alice@example.com");
        assert_eq!(s.token(TokenUse::Access), Some("AAA"));
        assert_eq!(s.token(TokenUse::Id), Some("III"));
        assert_eq!(s.refresh_token.as_deref(), Some("RRR"));
        assert!(!format!("{s:?}").contains("AAA"));
    }

    #[test]
    fn literal_plus_and_hash_stay_as_js_cookie_writes_them() {
        let name = cookie_name("cid", "a+b#c@d", "accessToken");
        assert_eq!(
            name,
            "CognitoIdentityServiceProvider.cid.a+b#c%40d.accessToken"
        );
        let c = format!("{}=a+b#c%40d; {name}=TOK", last_auth_user_cookie("cid"));
        let s = from_headers(&headers(&c), "cid").unwrap();
        assert_eq!(s.username, "a+b#c@d");
        assert_eq!(s.access_token.as_deref(), Some("TOK"));
    }

    #[test]
    fn ignores_other_clients_and_requires_last_auth_user() {
        let c = "CognitoIdentityServiceProvider.other.LastAuthUser=bob; \
                 CognitoIdentityServiceProvider.other.bob.accessToken=X";
        assert_eq!(from_headers(&headers(c), "cid"), Err(SessionError::Missing));
        assert_eq!(
            from_headers(&HeaderMap::new(), "cid"),
            Err(SessionError::Missing)
        );
    }

    #[test]
    fn last_auth_user_without_tokens_is_no_session() {
        let c = "CognitoIdentityServiceProvider.cid.LastAuthUser=bob; \
                 CognitoIdentityServiceProvider.cid.mallory.accessToken=X";
        assert_eq!(from_headers(&headers(c), "cid"), Err(SessionError::Missing));
    }

    #[test]
    fn conflicting_duplicates_are_refused_identical_ones_accepted() {
        let c = "CognitoIdentityServiceProvider.cid.LastAuthUser=bob; \
                 CognitoIdentityServiceProvider.cid.bob.accessToken=X; \
                 CognitoIdentityServiceProvider.cid.bob.accessToken=Y";
        assert_eq!(
            from_headers(&headers(c), "cid"),
            Err(SessionError::Ambiguous)
        );
        let c = "CognitoIdentityServiceProvider.cid.LastAuthUser=bob; \
                 CognitoIdentityServiceProvider.cid.bob.accessToken=X; \
                 CognitoIdentityServiceProvider.cid.b%6Fb.accessToken=Y";
        assert_eq!(
            from_headers(&headers(c), "cid"),
            Err(SessionError::Ambiguous)
        );
        let c = "CognitoIdentityServiceProvider.cid.LastAuthUser=bob; \
                 CognitoIdentityServiceProvider.cid.bob.accessToken=X; \
                 CognitoIdentityServiceProvider.cid.bob.accessToken=X";
        assert!(from_headers(&headers(c), "cid").is_ok());
    }

    #[test]
    fn a_bad_byte_in_another_cookie_does_not_hide_the_session() {
        let mut raw = b"junk=\xff\xfe; ".to_vec();
        raw.extend_from_slice(
            b"CognitoIdentityServiceProvider.cid.LastAuthUser=bob; \
              CognitoIdentityServiceProvider.cid.bob.accessToken=X; other=\xc3\xa9",
        );
        let mut h = HeaderMap::new();
        h.insert(COOKIE, HeaderValue::from_bytes(&raw).unwrap());
        assert_eq!(
            from_headers(&h, "cid").unwrap().access_token.as_deref(),
            Some("X")
        );
    }

    #[test]
    fn cookies_across_several_headers() {
        let mut h = HeaderMap::new();
        h.append(
            COOKIE,
            HeaderValue::from_static("CognitoIdentityServiceProvider.cid.LastAuthUser=bob"),
        );
        h.append(
            COOKIE,
            HeaderValue::from_static("CognitoIdentityServiceProvider.cid.bob.accessToken=X"),
        );
        assert_eq!(
            from_headers(&h, "cid").unwrap().access_token.as_deref(),
            Some("X")
        );
    }
}
