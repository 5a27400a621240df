//! `appsync-relay check`: a deployment's settings verified before users
//! meet them. It takes `serve`'s flags (and environment) and checks, in
//! order: the flag values and their combinations, the issuer's OpenID
//! configuration and key set, the sign-in's token when one is given,
//! Cognito's token endpoint, the AppSync hosts (name, TCP, TLS), and, given
//! a real sign-in, a round trip through a relay started in this process.
//!
//! - [`report`]: the ✓/✗ lines and their text and JSON forms.
//! - [`flags`]: what the command line alone tells.
//! - [`identity`]: OpenID configuration, JWKS, token, Cognito.
//! - [`network`]: the AppSync hosts.
//! - [`policy`]: `--channel-policy`'s rules, and `--policy-test`.
//! - [`roundtrip`]: connect, subscribe, publish, receive, HTTP publish,
//!   unsubscribe; [`browser`]: the browser's side of it.
//!
//! It must never print a token, a cookie, the client secret or an API key:
//! the files holding them are read, never echoed, and every line names what
//! it checked by flag or URL.

pub mod browser;
pub mod flags;
pub mod identity;
pub mod network;
pub mod policy;
pub mod report;
pub mod roundtrip;

pub use report::{peer_text, Line, Report, Status};

use crate::cli::CheckArgs;
use crate::config::Config;
use crate::session::{cookie_name, encode_username, from_headers, last_auth_user_cookie};
use crate::state::RelayState;
use crate::verify::{unverified_claims, TokenUse};

/// Largest token or cookie file read.
const MAX_SIGN_IN_BYTES: u64 = 64 * 1024;

/// The sign-in the round trip uses.
struct SignIn {
    /// The `Cookie` header a browser would send.
    cookie: String,
    /// The `--token-use` token in it.
    token: String,
    /// A refresh token is there: an expired token is renewed on connect.
    renewable: bool,
}

/// Runs every check, in order.
pub async fn run(args: &CheckArgs) -> Report {
    let mut report = Report::default();
    let Some(config) = flags::check(args, &mut report) else {
        report.skip("identity", "not run: the flags are invalid");
        return report;
    };
    let sign_in = read_sign_in(args, &config, &mut report);
    // The relay's own clients and verifier, built from the same config.
    let probe = RelayState::new(config.clone(), None);
    identity::openid_configuration(&args.serve, &config, probe.http(), &mut report).await;
    identity::jwks(&config, probe.http(), &mut report).await;
    if let Some(s) = &sign_in {
        identity::token(
            &config,
            probe.sessions().verifier(),
            &s.token,
            s.renewable,
            &mut report,
        )
        .await;
    }
    // A leg that is not TLS carries no secret of the check's either: the
    // probe names the app client (and its secret), the round trip the user.
    let plaintext = report.failed("transport");
    if plaintext {
        report.skip("cognito", "not run: see transport");
    } else {
        identity::cognito(&config, probe.http(), &mut report).await;
    }
    policy::rules(&config, &mut report);
    policy::test(
        &config,
        probe.sessions().verifier(),
        sign_in.as_ref().map(|s| s.token.as_str()),
        &args.policy_test,
        &mut report,
    )
    .await;
    network::appsync_hosts(&config, &mut report).await;
    if let Some(key) = &config.shared.api_key {
        network::shared_api_key(probe.upstream(), key, &mut report).await;
    }
    if let Some(cluster) = &config.cluster {
        network::redis(cluster, &mut report).await;
    }
    match (&sign_in, &args.check_channel) {
        (Some(_), _) if plaintext => report.skip("round_trip", "not run: see transport"),
        (Some(s), Some(channel)) if !report.failed("check_channel") => {
            let origin = args.serve.allowed_origins.first().cloned();
            roundtrip::run(&config, origin, &s.cookie, channel, &mut report).await;
        }
        (Some(_), _) => report.skip("round_trip", "not run: see check_channel"),
        (None, _) if args.token_file.is_some() || args.cookie_file.is_some() => {
            report.skip("round_trip", "not run: see sign_in")
        }
        (None, _) => report.skip(
            "round_trip",
            "no --token-file or --cookie-file: give one from a real sign-in, with --check-channel, for a real round trip",
        ),
    }
    report
}

/// The sign-in from `--token-file` or `--cookie-file`, as a browser's
/// cookies; `None` (with a ✗ line) when the file is unusable.
fn read_sign_in(args: &CheckArgs, config: &Config, report: &mut Report) -> Option<SignIn> {
    const CHECK: &str = "sign_in";
    let (path, is_token) = match (&args.token_file, &args.cookie_file) {
        (Some(p), _) => (p, true),
        (None, Some(p)) => (p, false),
        (None, None) => return None,
    };
    let text = match flags::read_limited(path, MAX_SIGN_IN_BYTES) {
        Ok(t) => t.trim().to_string(),
        Err(e) => {
            report.fail(
                CHECK,
                format!("cannot read {}: {e}", path.display()),
                "give a readable file",
            );
            return None;
        }
    };
    let suffix = match config.token_use {
        TokenUse::Access => "accessToken",
        TokenUse::Id => "idToken",
    };
    if is_token {
        let Some(claims) = unverified_claims(&text) else {
            report.fail(
                CHECK,
                format!("{} does not hold a JWT", path.display()),
                format!("copy the whole {suffix} value (three dot-separated parts), nothing else"),
            );
            return None;
        };
        let user = claims.username().unwrap_or(&claims.sub).to_string();
        let cookie = format!(
            "{}={}; {}={}",
            last_auth_user_cookie(&config.client_id),
            encode_username(&user),
            cookie_name(&config.client_id, &user, suffix),
            text
        );
        report.pass(
            CHECK,
            format!(
                "an {} token of user {}",
                peer_text(claims.token_use.as_deref().unwrap_or("?")),
                peer_text(&user)
            ),
        );
        return Some(SignIn {
            cookie,
            token: text,
            renewable: false,
        });
    }
    let cookie = text
        .strip_prefix("Cookie:")
        .or_else(|| text.strip_prefix("cookie:"))
        .unwrap_or(&text)
        .split(['\n', ';'])
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    // Without --allow-refresh the refresh token stays out of the round
    // trip: nothing inside `check` can spend it.
    let cookie = if args.allow_refresh {
        cookie
    } else {
        cookie
            .split("; ")
            .filter(|pair| {
                !pair
                    .split('=')
                    .next()
                    .unwrap_or("")
                    .ends_with(".refreshToken")
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    let mut headers = hyper::HeaderMap::new();
    let Ok(value) = cookie.parse() else {
        report.fail(
            CHECK,
            format!("{} is not a Cookie header", path.display()),
            "copy the request's Cookie header value",
        );
        return None;
    };
    headers.insert(hyper::header::COOKIE, value);
    let session = match from_headers(&headers, &config.client_id) {
        Ok(s) => s,
        Err(e) => {
            report.fail(
                CHECK,
                format!("the cookies hold no usable Amplify session of app client {} ({})", config.client_id, e.reason()),
                "copy the Cookie header after signing in with this app client, or correct --cognito-client-id",
            );
            return None;
        }
    };
    let Some(token) = session.token(config.token_use).map(str::to_string) else {
        report.fail(
            CHECK,
            format!(
                "the session of user {} has no {suffix} cookie",
                session.username
            ),
            "copy every CognitoIdentityServiceProvider.* cookie, or correct --token-use",
        );
        return None;
    };
    let renewable = session.refresh_token.is_some();
    let refresh = match (renewable, args.allow_refresh) {
        (true, _) => "its refresh token may be used (--allow-refresh)",
        (false, true) => "no refresh token in them",
        (false, false) => "the refresh token is left out (see --allow-refresh)",
    };
    report.pass(
        CHECK,
        format!(
            "Amplify cookies of user {}; {refresh}",
            peer_text(&session.username)
        ),
    );
    Some(SignIn {
        cookie,
        token,
        renewable,
    })
}
