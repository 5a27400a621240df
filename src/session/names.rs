//! The names Amplify's server-side auth gives its cookies:
//!
//! ```text
//! CognitoIdentityServiceProvider.<clientId>.LastAuthUser = <username>
//! CognitoIdentityServiceProvider.<clientId>.<username>.accessToken
//! CognitoIdentityServiceProvider.<clientId>.<username>.idToken
//! CognitoIdentityServiceProvider.<clientId>.<username>.refreshToken
//! ```
//!
//! The username inside a cookie *name* is percent-encoded (js-cookie's
//! `encodeURIComponent` variant: `@` becomes `%40` while `# $ & + ^ \` |`
//! stay literal), so names are percent-decoded before matching.

use percent_encoding::percent_decode_str;

pub const COOKIE_PREFIX: &str = "CognitoIdentityServiceProvider";

/// Decodes a cookie name (or value) the way js-cookie encodes it. Invalid
/// percent sequences or non-UTF-8 results are kept verbatim, which can then
/// only fail to match.
pub fn decode(raw: &str) -> std::borrow::Cow<'_, str> {
    if !raw.contains('%') {
        return raw.into();
    }
    match percent_decode_str(raw).decode_utf8() {
        Ok(s) => s,
        Err(_) => raw.into(),
    }
}

/// Encodes a username for use inside a cookie name, as Amplify (js-cookie)
/// does: `encodeURIComponent`, then `# $ & + ^ \` |` restored.
pub fn encode_username(username: &str) -> String {
    use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
    // encodeURIComponent leaves A-Z a-z 0-9 - _ . ! ~ * ' ( ) alone; js-cookie
    // additionally leaves # $ & + ^ ` | alone in names.
    const SET: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'!')
        .remove(b'~')
        .remove(b'*')
        .remove(b'\'')
        .remove(b'(')
        .remove(b')')
        .remove(b'#')
        .remove(b'$')
        .remove(b'&')
        .remove(b'+')
        .remove(b'^')
        .remove(b'`')
        .remove(b'|');
    utf8_percent_encode(username, SET).to_string()
}

/// The cookie name Amplify uses for one of the user's tokens.
pub fn cookie_name(client_id: &str, username: &str, suffix: &str) -> String {
    format!(
        "{COOKIE_PREFIX}.{client_id}.{}.{suffix}",
        encode_username(username)
    )
}

/// The `LastAuthUser` cookie name for an app client.
pub fn last_auth_user_cookie(client_id: &str) -> String {
    format!("{COOKIE_PREFIX}.{client_id}.LastAuthUser")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_decode_back_to_the_username() {
        let name = cookie_name("cid", "a+b#c@d", "accessToken");
        assert_eq!(
            decode(&name),
            "CognitoIdentityServiceProvider.cid.a+b#c@d.accessToken"
        );
        assert_eq!(
            last_auth_user_cookie("cid"),
            "CognitoIdentityServiceProvider.cid.LastAuthUser"
        );
    }
}
