//! Where the SSR app is, when the relay fronts it (`--app-upstream`): the
//! target is parsed and checked once, at start-up, and the proxy only ever
//! uses the parsed form.

use hyper::header::HeaderName;
use hyper::http::uri::{Authority, PathAndQuery, Scheme};
use hyper::Uri;
use std::time::Duration;

/// Headers internal to Next.js that a browser must never be able to set:
/// `x-middleware-subrequest` lets a request skip middleware (CVE-2025-29927);
/// the others carry the results of middleware or internal routing between
/// Next.js's own processes. `x-nextjs-data` is not here: the client router
/// sends it legitimately.
pub const FRAMEWORK_INTERNAL_HEADERS: &[&str] = &[
    "x-middleware-subrequest",
    "x-middleware-invoke",
    "x-middleware-next",
    "x-middleware-rewrite",
    "x-middleware-redirect",
    "x-middleware-set-cookie",
    "x-middleware-override-headers",
    "x-middleware-prefetch",
    "x-invoke-path",
    "x-invoke-query",
    "x-invoke-output",
    "x-invoke-status",
    "x-invoke-error",
];

pub fn default_strip_headers() -> Vec<HeaderName> {
    FRAMEWORK_INTERNAL_HEADERS
        .iter()
        .map(|h| HeaderName::from_static(h))
        .collect()
}

/// `--strip-request-header` values as header names: the default list when
/// none are given, nothing for `none`.
pub fn strip_headers(given: &[String], errors: &mut Vec<String>) -> Vec<HeaderName> {
    if given.is_empty() {
        return default_strip_headers();
    }
    if given.len() == 1 && given[0].eq_ignore_ascii_case("none") {
        return Vec::new();
    }
    given
        .iter()
        .filter_map(|h| match HeaderName::from_bytes(h.trim().as_bytes()) {
            Ok(name) => Some(name),
            Err(_) => {
                errors.push(format!(
                    "--strip-request-header: '{h}' is not a header name"
                ));
                None
            }
        })
        .collect()
}

/// The app upstream and how long to wait for it.
#[derive(Debug, Clone)]
pub struct AppUpstream {
    pub target: AppTarget,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    /// Request headers removed before the app sees them.
    pub strip_headers: Vec<HeaderName>,
}

/// Scheme, authority and base path of the app.
#[derive(Debug, Clone)]
pub struct AppTarget {
    scheme: Scheme,
    authority: Authority,
    /// The upstream URL's path without its trailing `/` (`""` for the root).
    base_path: String,
}

impl AppTarget {
    /// `http` or `https`, a host, no credentials, query or fragment.
    pub fn parse(url: &url::Url) -> Result<AppTarget, String> {
        let scheme = match url.scheme() {
            "http" => Scheme::HTTP,
            "https" => Scheme::HTTPS,
            other => {
                return Err(format!(
                    "app upstream scheme must be http or https, not {other}"
                ))
            }
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err("app upstream must not carry credentials".into());
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err("app upstream must not have a query or fragment".into());
        }
        let host = url
            .host_str()
            .ok_or_else(|| "app upstream needs a host".to_string())?;
        // `port()` is `None` for the scheme's default, which the URI implies.
        let host = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_string(),
        };
        let authority = Authority::try_from(host.as_str())
            .map_err(|_| "app upstream host is not a valid authority".to_string())?;
        Ok(AppTarget {
            scheme,
            authority,
            base_path: url.path().trim_end_matches('/').to_string(),
        })
    }

    /// The app's URI for a browser request target: only its path and query,
    /// appended to the base path. `None` when the target is not origin-form.
    pub fn uri_for(&self, browser: &Uri) -> Option<Uri> {
        let pq = browser
            .path_and_query()
            .map(PathAndQuery::as_str)
            .filter(|pq| pq.starts_with('/'))?;
        let pq = PathAndQuery::try_from(format!("{}{pq}", self.base_path)).ok()?;
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(pq)
            .build()
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_uses_only_path_and_query() {
        let t = AppTarget::parse(&"http://127.0.0.1:3000/base/".parse().unwrap()).unwrap();
        let u = t
            .uri_for(&"http://evil.example/x?y=1".parse().unwrap())
            .unwrap();
        assert_eq!(u.to_string(), "http://127.0.0.1:3000/base/x?y=1");
        let root = AppTarget::parse(&"http://app:3000".parse().unwrap()).unwrap();
        assert_eq!(
            root.uri_for(&"/".parse().unwrap()).unwrap().to_string(),
            "http://app:3000/"
        );
        assert!(root.uri_for(&"*".parse().unwrap()).is_none());
        assert!(AppTarget::parse(&"ftp://x/".parse().unwrap()).is_err());
        assert!(AppTarget::parse(&"http://u:p@x/".parse().unwrap()).is_err());
        assert!(AppTarget::parse(&"https://app.internal:8443".parse().unwrap()).is_ok());
    }
}
