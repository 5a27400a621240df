//! `Cookie` header(s) → `session::from_headers`.
//!
//! Input: bytes; `\n` separates several `Cookie` headers (a newline can never
//! be inside a header value). Parts that are not valid header values are
//! skipped, as hyper would never build them.
//!
//! Invariants:
//! - never panics;
//! - on success every token is a non-empty substring of one header value and
//!   the username is non-empty;
//! - `Debug` does not depend on any token value (so it cannot leak one);
//! - the result does not depend on the order of the cookies (duplicates
//!   with different values are refused whatever their order);
//! - the size cap is honoured.
#![no_main]

use appsync_relay::session::{self, Session, SessionError, MAX_COOKIE_HEADER_BYTES};
use hyper::header::{HeaderMap, HeaderValue, COOKIE};
use libfuzzer_sys::fuzz_target;

const CLIENT_ID: &str = "1example23456789";

fn redacted_debug(s: &Session) -> String {
    let mark = |t: &Option<String>| t.as_ref().map(|_| String::from("\u{1}"));
    let copy = Session {
        username: s.username.clone(),
        access_token: mark(&s.access_token),
        id_token: mark(&s.id_token),
        refresh_token: mark(&s.refresh_token),
    };
    format!("{copy:?}")
}

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    // Raw bytes of every header kept: the parser splits them as bytes, so a
    // header with a non-ASCII byte somewhere still carries its other pairs.
    let mut values: Vec<Vec<u8>> = Vec::new();
    for part in data.split(|b| *b == b'\n') {
        if let Ok(v) = HeaderValue::from_bytes(part) {
            values.push(part.to_vec());
            headers.append(COOKIE, v);
        }
    }
    let size: usize = headers.get_all(COOKIE).iter().map(|v| v.len()).sum();
    let result = session::from_headers(&headers, CLIENT_ID);
    // Deterministic.
    assert_eq!(result, session::from_headers(&headers, CLIENT_ID));
    if size > MAX_COOKIE_HEADER_BYTES {
        assert_eq!(result, Err(SessionError::TooLarge));
        return;
    }
    assert_ne!(result, Err(SessionError::TooLarge));

    match &result {
        Ok(s) => {
            assert!(!s.username.is_empty(), "empty username accepted");
            for t in [&s.access_token, &s.id_token, &s.refresh_token]
                .into_iter()
                .flatten()
            {
                assert!(!t.is_empty(), "empty token returned");
                let t = t.as_bytes();
                assert!(
                    values.iter().any(|v| v.windows(t.len()).any(|w| w == t)),
                    "token is not a substring of the input"
                );
            }
            // Debug must not depend on the token values at all.
            let dbg = format!("{s:?}");
            assert_eq!(dbg, redacted_debug(s), "Debug output depends on a token");
        }
        Err(e) => {
            // Error text and labels are fixed strings.
            let _ = (e.reason(), e.to_string());
        }
    }

    // Order independence: the same cookies, reversed, in one header.
    let pairs: Vec<&[u8]> = values.iter().flat_map(|v| v.split(|b| *b == b';')).collect();
    let reversed: Vec<&[u8]> = pairs.iter().rev().copied().collect();
    let joined = reversed.join(&b';');
    if joined.len() <= MAX_COOKIE_HEADER_BYTES {
        if let Ok(v) = HeaderValue::from_bytes(&joined) {
            let mut h2 = HeaderMap::new();
            h2.insert(COOKIE, v);
            let r2 = session::from_headers(&h2, CLIENT_ID);
            assert_eq!(result, r2, "result depends on cookie order");
        }
    }
});
