//! The Origin allowlist: the defence against cross-site WebSocket hijacking.
//!
//! A browser attaches the user's cookies to a WebSocket upgrade from *any*
//! site (SameSite=Lax/None cookies, or a same-site attacker on a sibling
//! subdomain even with Strict), so the relay must refuse upgrades whose
//! `Origin` is not one of the app's own. Matching is exact on the serialized
//! origin `scheme://host[:port]` that browsers send: no case folding, no
//! suffix or wildcard matching, no trailing-dot tolerance. `null` never matches.

use hyper::header::{HeaderMap, ORIGIN};
use std::collections::HashSet;

/// Why a request's Origin was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OriginError {
    #[error("Origin header is missing")]
    Missing,
    #[error("Origin is not allowed")]
    NotAllowed,
}

impl OriginError {
    pub fn reason(&self) -> &'static str {
        match self {
            OriginError::Missing => "origin_missing",
            OriginError::NotAllowed => "origin_forbidden",
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct OriginPolicy {
    allowed: HashSet<String>,
    /// Let requests without any Origin through (non-browser clients such as
    /// server-side publishers). Browsers always send Origin on WebSocket
    /// upgrades and cross-origin POSTs, so this does not open a CSWSH hole,
    /// but it is off by default.
    allow_missing: bool,
}

/// Normalises a configured origin to the form browsers serialize:
/// lowercase scheme and host, default port dropped, no path.
pub fn normalize(origin: &str) -> Result<String, String> {
    let url = url::Url::parse(origin).map_err(|e| format!("'{origin}' is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("'{origin}' must use http or https"));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "'{origin}' must be scheme://host[:port] with no path"
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("'{origin}' must not contain credentials"));
    }
    match url.origin() {
        url::Origin::Tuple(..) => Ok(url.origin().ascii_serialization()),
        url::Origin::Opaque(_) => Err(format!("'{origin}' has no host")),
    }
}

impl OriginPolicy {
    pub fn new(origins: &[String], allow_missing: bool) -> Result<Self, String> {
        let allowed = origins
            .iter()
            .map(|o| normalize(o))
            .collect::<Result<_, _>>()?;
        Ok(OriginPolicy {
            allowed,
            allow_missing,
        })
    }

    /// Whether every allowed origin is `https`: then every browser the
    /// relay serves reached its page over TLS, whatever the last hop was.
    pub fn all_https(&self) -> bool {
        !self.allowed.is_empty() && self.allowed.iter().all(|o| o.starts_with("https://"))
    }

    pub fn check(&self, headers: &HeaderMap) -> Result<(), OriginError> {
        let mut values = headers.get_all(ORIGIN).iter();
        let Some(origin) = values.next() else {
            return if self.allow_missing {
                Ok(())
            } else {
                Err(OriginError::Missing)
            };
        };
        // More than one Origin header is never sent by a browser.
        if values.next().is_some() {
            return Err(OriginError::NotAllowed);
        }
        match origin.to_str() {
            Ok(o) if self.allowed.contains(o) => Ok(()),
            _ => Err(OriginError::NotAllowed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn check(policy: &OriginPolicy, origin: Option<&str>) -> Result<(), OriginError> {
        let mut h = HeaderMap::new();
        if let Some(o) = origin {
            h.insert(ORIGIN, HeaderValue::from_str(o).unwrap());
        }
        policy.check(&h)
    }

    #[test]
    fn normalizes_configured_origins() {
        assert_eq!(
            normalize("https://App.Example.com").unwrap(),
            "https://app.example.com"
        );
        assert_eq!(
            normalize("https://app.example.com:443/").unwrap(),
            "https://app.example.com"
        );
        assert_eq!(
            normalize("http://localhost:3000").unwrap(),
            "http://localhost:3000"
        );
        assert!(normalize("https://app.example.com/path").is_err());
        assert!(normalize("ftp://x").is_err());
        assert!(normalize("app.example.com").is_err());
    }

    #[test]
    fn exact_match_only() {
        let p = OriginPolicy::new(&["https://app.example.com".into()], false).unwrap();
        assert_eq!(check(&p, Some("https://app.example.com")), Ok(()));
        for bad in [
            "http://app.example.com",
            "https://app.example.com:8443",
            "https://APP.example.com",
            "https://app.example.com.",
            "https://app.example.com.evil.test",
            "https://evil.app.example.com",
            "null",
            "",
        ] {
            assert_eq!(check(&p, Some(bad)), Err(OriginError::NotAllowed), "{bad}");
        }
        assert_eq!(check(&p, None), Err(OriginError::Missing));
        let lax = OriginPolicy::new(&["https://app.example.com".into()], true).unwrap();
        assert_eq!(check(&lax, None), Ok(()));
    }
}
