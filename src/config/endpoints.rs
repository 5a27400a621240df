//! The URLs the relay derives from the ones it is given: AppSync's
//! real-time endpoint from its HTTP endpoint, the `host` AppSync wants in
//! every authorization object, and the region a user pool id names.

/// `host[:port]` as AppSync expects it in `host`: the port only when it is
/// not the scheme's default.
pub fn host_with_port(url: &url::Url) -> Option<String> {
    let host = url.host_str()?;
    Some(match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    })
}

/// The real-time URL AppSync serves for an HTTP endpoint.
pub fn derive_realtime(http: &url::Url) -> Result<url::Url, String> {
    let mut rt = http.clone();
    let scheme = match http.scheme() {
        "https" => "wss",
        "http" => "ws",
        other => return Err(format!("unsupported scheme '{other}'")),
    };
    rt.set_scheme(scheme)
        .map_err(|_| "cannot derive a WebSocket scheme".to_string())?;
    if let Some(host) = http.host_str() {
        if host.contains(".appsync-api.") {
            let rt_host = host.replacen(".appsync-api.", ".appsync-realtime-api.", 1);
            rt.set_host(Some(&rt_host)).map_err(|e| e.to_string())?;
        }
    }
    let path = format!("{}/realtime", http.path().trim_end_matches('/'));
    rt.set_path(&path);
    Ok(rt)
}

/// The AWS region encoded in a user pool id (`<region>_<id>`).
pub fn pool_region(pool_id: &str) -> Option<&str> {
    let (region, rest) = pool_id.split_once('_')?;
    let ok = !region.is_empty()
        && !rest.is_empty()
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && rest.bytes().all(|b| b.is_ascii_alphanumeric());
    ok.then_some(region)
}

pub fn parse_http_url(flag: &str, value: &str, errors: &mut Vec<String>) -> Option<url::Url> {
    match url::Url::parse(value) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => Some(u),
        Ok(_) => {
            errors.push(format!(
                "--{flag}: '{value}' must be an http:// or https:// URL with a host"
            ));
            None
        }
        Err(e) => {
            errors.push(format!("--{flag}: '{value}' is not a URL: {e}"));
            None
        }
    }
}
