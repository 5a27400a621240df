//! A browser's cookie jar for one Amplify session, for the tests that drive
//! the relay's session code directly: the three token cookies by suffix,
//! rendered as a `Cookie` header, updated from `Set-Cookie`s.

use super::fake_cognito::Session;
use super::{CLIENT_ID, USERNAME};
use appsync_relay::session::{cookie_name, last_auth_user_cookie};
use hyper::header::{HeaderMap, HeaderValue, COOKIE};
use std::collections::HashMap;

/// `accessToken` / `idToken` / `refreshToken` → value.
pub type Jar = HashMap<&'static str, String>;

/// The jar a sign-in leaves.
pub fn jar(s: &Session) -> Jar {
    Jar::from([
        ("accessToken", s.access.clone()),
        ("idToken", s.id.clone()),
        ("refreshToken", s.refresh.clone()),
    ])
}

/// The `Cookie` header a browser with `jar` sends (as `USERNAME`).
pub fn header_for(jar: &Jar) -> HeaderMap {
    let mut c = format!("{}={USERNAME}", last_auth_user_cookie(CLIENT_ID));
    for (suffix, value) in jar {
        c.push_str(&format!(
            "; {}={value}",
            cookie_name(CLIENT_ID, USERNAME, suffix)
        ));
    }
    let mut h = HeaderMap::new();
    h.insert(COOKIE, HeaderValue::from_str(&c).unwrap());
    h
}

/// Applies a response's `Set-Cookie`s, as a browser would; any other
/// cookie name fails the test.
pub fn apply(jar: &mut Jar, set_cookies: &[HeaderValue]) {
    for v in set_cookies {
        let v = v.to_str().unwrap();
        let (pair, _) = v.split_once(';').unwrap();
        let (name, value) = pair.split_once('=').unwrap();
        let suffix = match name.rsplit('.').next().unwrap() {
            "accessToken" => "accessToken",
            "idToken" => "idToken",
            "refreshToken" => "refreshToken",
            other => panic!("unexpected cookie {other}"),
        };
        jar.insert(suffix, value.to_string());
    }
}
