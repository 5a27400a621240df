//! Reading a JWT before trusting it: the JOSE header gate that runs before
//! any key is looked up, and the unverified time claims used only to decide
//! how long to remember something about a token already trusted.
//!
//! Nothing here verifies a signature; nothing here logs a token.

use serde::Deserialize;
use serde_json::Value;

/// Tokens longer than this are refused before any parsing (Cognito tokens
/// are 1–2 KB; a huge one is an attack on the parser or the cache).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Why a token's header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderError {
    Malformed,
    Algorithm,
    MissingKid,
}

/// Reads the JOSE header ourselves, before jsonwebtoken sees the token, so
/// that `alg` is checked against exactly `"RS256"` (not a parser's notion
/// of known algorithms: `none`, `None`, `HS256`, `RS256 ` are all refused)
/// and the `kid` is returned. No other header field is ever used.
pub fn check_header(token: &str) -> Result<String, HeaderError> {
    use base64::Engine as _;
    let (header_b64, rest) = token.split_once('.').ok_or(HeaderError::Malformed)?;
    if rest.split('.').count() != 2 {
        return Err(HeaderError::Malformed);
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header_b64)
        .map_err(|_| HeaderError::Malformed)?;
    // A struct (not a map): serde refuses a duplicate `alg` or `kid`, so
    // `{"alg":"none","alg":"RS256"}` cannot pass this gate on its last value.
    #[derive(Deserialize)]
    struct JoseHeader {
        #[serde(default)]
        alg: Option<Value>,
        #[serde(default)]
        kid: Option<Value>,
    }
    // And a JSON object that is valid UTF-8 throughout (the struct parse
    // alone would take an array, and skips ignored fields unchecked).
    if !matches!(
        serde_json::from_slice::<Value>(&bytes),
        Ok(Value::Object(_))
    ) {
        return Err(HeaderError::Malformed);
    }
    let header: JoseHeader = serde_json::from_slice(&bytes).map_err(|_| HeaderError::Malformed)?;
    if header.alg.as_ref().and_then(Value::as_str) != Some("RS256") {
        return Err(HeaderError::Algorithm);
    }
    match header.kid {
        Some(Value::String(kid)) if !kid.is_empty() => Ok(kid),
        _ => Err(HeaderError::MissingKid),
    }
}

/// `exp` and `iat` of a JWT *without verifying it*: only for deciding how
/// long to remember something about a token we already trust.
pub fn unverified_times(token: &str) -> Option<(u64, Option<u64>)> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    #[derive(Deserialize)]
    struct Times {
        exp: u64,
        iat: Option<u64>,
    }
    let t: Times = serde_json::from_slice(&bytes).ok()?;
    Some((t.exp, t.iat))
}

/// The claims of a JWT *without verifying it*, for a token already trusted
/// (one Cognito just returned, one verified when it was stored).
pub fn unverified_claims(token: &str) -> Option<super::claims::Claims> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// `sub` of a JWT *without verifying it* (see [`unverified_claims`]).
pub fn unverified_sub(token: &str) -> Option<String> {
    unverified_claims(token).map(|c| c.sub)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_header_fields_are_malformed() {
        use base64::Engine as _;
        let enc = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        let token = format!(
            "{}.{}.sig",
            enc(r#"{"alg":"none","alg":"RS256","kid":"k"}"#),
            enc("{}")
        );
        assert_eq!(check_header(&token), Err(HeaderError::Malformed));
        let token = format!(
            "{}.{}.sig",
            enc(r#"{"alg":"RS256","kid":"a","kid":"b"}"#),
            enc("{}")
        );
        assert_eq!(check_header(&token), Err(HeaderError::Malformed));
        let token = format!("{}.{}.sig", enc(r#"["RS256","k"]"#), enc("{}"));
        assert_eq!(check_header(&token), Err(HeaderError::Malformed));
        let token = format!(
            "{}.{}.sig",
            enc(r#"{"alg":"RS256","kid":"k","typ":"JWT"}"#),
            enc("{}")
        );
        assert_eq!(check_header(&token), Ok("k".to_string()));
    }
}
