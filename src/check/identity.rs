//! The identity side, asked the way the relay asks it: the issuer's OpenID
//! configuration, the JWKS (issuer string, RS256 keys, `kid`s), the sign-in
//! token given to the check (verified with the relay's own verifier), and
//! Cognito's token endpoint, probed with a refresh token that cannot be
//! valid (a real one would be spent: with rotation, the user's session
//! would end).

use super::report::{peer_text, Report};
use crate::cli::ServeArgs;
use crate::config::Config;
use crate::http_client::HttpClient;
use crate::refresh::{secret_hash, RefreshApi};
use crate::verify::{parse_jwks, unverified_claims, Verifier, VerifyError};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use serde_json::{json, Value};
use std::time::Duration;

/// Largest answer read from any identity endpoint.
const MAX_BYTES: usize = 256 * 1024;

/// Sent as the refresh token of the Cognito probe: not a token Cognito
/// could ever have issued.
const DUMMY_REFRESH: &str = "appsync-relay-check.not-a-refresh-token";

/// GET or POST `req`; status and body within `timeout`.
async fn exchange(
    http: &HttpClient,
    req: hyper::Request<Full<Bytes>>,
    timeout: Duration,
) -> Result<(u16, hyper::HeaderMap, Bytes), String> {
    let fut = async {
        let resp = http.request(req).await.map_err(|e| describe(&e))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = Limited::new(resp.into_body(), MAX_BYTES)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        Ok((status, headers, body))
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| format!("no answer within {}s", timeout.as_secs()))?
}

/// The error and its causes, which hold the useful part (DNS, refused, TLS).
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

async fn get(http: &HttpClient, url: &str, timeout: Duration) -> Result<(u16, Bytes), String> {
    let req = hyper::Request::get(url)
        .header(hyper::header::ACCEPT, "application/json")
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    exchange(http, req, timeout).await.map(|(s, _, b)| (s, b))
}

/// Where the OpenID configuration may be: under the issuer, where Cognito
/// serves it, then beside the JWKS when that has Cognito's shape on another
/// host (an emulator whose issuer is an AWS URL).
fn openid_urls(config: &Config) -> Vec<String> {
    let mut urls = vec![format!(
        "{}/.well-known/openid-configuration",
        config.issuer
    )];
    if let Some(base) = config.jwks_url.strip_suffix("/.well-known/jwks.json") {
        let beside = format!("{base}/.well-known/openid-configuration");
        if beside != urls[0] {
            urls.push(beside);
        }
    }
    urls
}

/// The first OpenID configuration document found, and where.
async fn fetch_openid(config: &Config, http: &HttpClient) -> Result<(String, Value), String> {
    let mut tried = Vec::new();
    for url in openid_urls(config) {
        match get(http, &url, config.upstream_timeout).await {
            Ok((200, body)) => match serde_json::from_slice(&body) {
                Ok(v @ Value::Object(_)) => return Ok((url, v)),
                _ => tried.push(format!("{url} is not a JSON document")),
            },
            Ok((status, _)) => tried.push(format!("{url} answered HTTP {status}")),
            Err(e) => tried.push(format!("cannot fetch {url}: {}", peer_text(&e))),
        }
    }
    Err(tried.join("; "))
}

pub async fn openid_configuration(
    args: &ServeArgs,
    config: &Config,
    http: &HttpClient,
    report: &mut Report,
) {
    const CHECK: &str = "openid_configuration";
    let fix_issuer = "check --cognito-user-pool-id (the issuer and its URLs derive from it) or --cognito-issuer; Cognito serves this document for every user pool";
    let (url, doc) = match fetch_openid(config, http).await {
        Ok(found) => found,
        Err(e) => return report.fail(CHECK, e, fix_issuer),
    };
    let issuer = doc["issuer"].as_str().unwrap_or_default();
    if issuer != config.issuer {
        return report.fail(
            CHECK,
            format!(
                "{url} names issuer '{}', the relay expects '{}': every token would be refused",
                peer_text(issuer),
                config.issuer
            ),
            "set --cognito-issuer (or correct --cognito-user-pool-id) to your user pool's issuer, https://cognito-idp.<region>.amazonaws.com/<pool id>",
        );
    }
    if let Some(algs) = doc["id_token_signing_alg_values_supported"].as_array() {
        if !algs.iter().any(|a| a == "RS256") {
            return report.fail(
                CHECK,
                "the issuer does not sign with RS256, the only algorithm Cognito uses and the relay accepts",
                "point the relay at a Cognito user pool",
            );
        }
    }
    let jwks_uri = peer_text(doc["jwks_uri"].as_str().unwrap_or_default());
    if jwks_uri == config.jwks_url {
        report.pass(CHECK, format!("issuer {issuer}, keys at {jwks_uri}"));
    } else if args.cognito_jwks_url.is_some() {
        report.pass(
            CHECK,
            format!("issuer {issuer}; keys advertised at {jwks_uri}, fetched from --cognito-jwks-url {} instead", config.jwks_url),
        );
    } else {
        report.fail(
            CHECK,
            format!(
                "the configuration puts the keys at '{jwks_uri}', the relay would fetch '{}'",
                config.jwks_url
            ),
            "set --cognito-jwks-url to the key set of your user pool (normally <issuer>/.well-known/jwks.json)",
        );
    }
}

/// The key set, as the relay will fetch and keep it.
pub async fn jwks(config: &Config, http: &HttpClient, report: &mut Report) {
    const CHECK: &str = "jwks";
    let url = &config.jwks_url;
    let fix = "check --cognito-jwks-url (default <issuer>/.well-known/jwks.json) and that this host reaches it";
    let body = match get(http, url, config.upstream_timeout).await {
        Err(e) => return report.fail(CHECK, format!("cannot fetch {url}: {}", peer_text(&e)), fix),
        Ok((200, body)) => body,
        Ok((status, _)) => return report.fail(CHECK, format!("{url} answered HTTP {status}"), fix),
    };
    let raw: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let Some(all) = raw["keys"].as_array() else {
        return report.fail(
            CHECK,
            format!("{url} is not a JWKS document (no \"keys\" array)"),
            fix,
        );
    };
    let mut kids: Vec<&str> = all.iter().filter_map(|k| k["kid"].as_str()).collect();
    kids.sort_unstable();
    if let Some(w) = kids.windows(2).find(|w| w[0] == w[1]) {
        return report.fail(
            CHECK,
            format!(
                "kid '{}' names two keys: a token's kid must pick exactly one",
                w[0]
            ),
            "the identity provider publishes a broken key set; fix it there",
        );
    }
    match parse_jwks(&body) {
        Err(e) => report.fail(
            CHECK,
            format!(
                "{url}: {e} ({} key(s), none RSA for RS256 signatures with a kid)",
                all.len()
            ),
            fix,
        ),
        Ok(store) => {
            let mut usable: Vec<&String> = store.keys.keys().collect();
            usable.sort();
            let names: Vec<String> = usable.iter().map(|k| peer_text(k)).collect();
            report.pass(
                CHECK,
                format!(
                    "{} RS256 signing key(s), kid {}",
                    names.len(),
                    names.join(", ")
                ),
            );
        }
    }
}

/// The sign-in's token, verified exactly as a handshake verifies it.
pub async fn token(
    config: &Config,
    verifier: &Verifier,
    token: &str,
    renewable: bool,
    report: &mut Report,
) {
    const CHECK: &str = "token";
    if verifier.load_jwks().await.is_err() {
        return report.skip(
            CHECK,
            "not verified: the key set could not be loaded (see jwks)",
        );
    }
    let peek = unverified_claims(token);
    let said = |f: &dyn Fn(&crate::verify::Claims) -> Option<String>| {
        peek.as_ref()
            .and_then(f)
            .map(|v| peer_text(&v))
            .unwrap_or_else(|| "?".into())
    };
    let fix_pool = "the sign-in is from another user pool or app client than the flags name";
    match verifier.verify(token).await {
        Ok(claims) => {
            let left = claims.exp.saturating_sub(crate::clock::now_secs());
            report.pass(
                CHECK,
                format!("verifies: sub {}, expires in {} min", claims.sub, left / 60),
            );
        }
        Err(VerifyError::Expired) if renewable => report.pass(
            CHECK,
            "expired; the cookies carry a refresh token, so the relay renews it on connect",
        ),
        Err(e) => {
            let (detail, fix) = match e {
                VerifyError::Expired => (
                    "has expired".to_string(),
                    "reload the app in the browser (it renews the session), then copy the token or cookies again; or give --cookie-file with --allow-refresh, which spends the refresh token (with rotation that browser must sign in again)".to_string(),
                ),
                VerifyError::Issuer => (
                    format!("was issued by '{}', the relay expects '{}'", said(&|c| Some(c.iss.clone())), config.issuer),
                    format!("set --cognito-issuer (or --cognito-user-pool-id) to the sign-in's pool; {fix_pool}"),
                ),
                VerifyError::Audience => (
                    format!(
                        "was issued to app client '{}', the relay accepts '{}'",
                        said(&|c| c.client_id.clone().or_else(|| c.aud.as_ref().map(|a| a.to_string()))),
                        config.client_id
                    ),
                    "set --cognito-client-id to the app client the browser signs in with".to_string(),
                ),
                VerifyError::TokenUse => (
                    format!("is an {} token, the relay forwards {} tokens", said(&|c| c.token_use.clone()), config.token_use.claim()),
                    "give the other token, or set --token-use to match what AppSync is configured for".to_string(),
                ),
                VerifyError::UnknownKid | VerifyError::Signature => (
                    format!("is not signed by a key of {}: {e}", config.jwks_url),
                    fix_pool.to_string(),
                ),
                other => (
                    format!("is not a Cognito token the relay accepts: {other}"),
                    "copy the whole token (three dot-separated parts), nothing else".to_string(),
                ),
            };
            report.fail(CHECK, format!("the sign-in token {detail}"), fix);
        }
    }
}

/// Cognito's token endpoint answers refresh calls for this app client.
pub async fn cognito(config: &Config, http: &HttpClient, report: &mut Report) {
    const CHECK: &str = "cognito";
    let r = &config.refresh;
    let (target, mut body) = match r.api {
        RefreshApi::GetTokens => (
            "GetTokensFromRefreshToken",
            json!({"ClientId": r.client_id, "RefreshToken": DUMMY_REFRESH}),
        ),
        RefreshApi::InitiateAuth => (
            "InitiateAuth",
            json!({"AuthFlow": "REFRESH_TOKEN_AUTH", "ClientId": r.client_id,
                   "AuthParameters": {"REFRESH_TOKEN": DUMMY_REFRESH}}),
        ),
    };
    if let Some(secret) = &r.client_secret {
        match r.api {
            RefreshApi::GetTokens => body["ClientSecret"] = json!(secret),
            RefreshApi::InitiateAuth => {
                body["AuthParameters"]["SECRET_HASH"] =
                    json!(secret_hash(secret, "appsync-relay-check", &r.client_id))
            }
        }
    }
    let req = hyper::Request::post(&r.endpoint)
        .header("content-type", "application/x-amz-json-1.1")
        .header(
            "x-amz-target",
            format!("AWSCognitoIdentityProviderService.{target}"),
        )
        .body(Full::new(Bytes::from(body.to_string())));
    let fix_endpoint = "check --cognito-endpoint (default: the pool's region's cognito-idp endpoint) and that this host reaches it";
    let req = match req {
        Ok(req) => req,
        Err(e) => return report.fail(CHECK, format!("{}: {e}", r.endpoint), fix_endpoint),
    };
    let (status, headers, answer) = match exchange(http, req, r.timeout).await {
        Ok(a) => a,
        Err(e) => {
            return report.fail(
                CHECK,
                format!("cannot reach {}: {e}", r.endpoint),
                fix_endpoint,
            )
        }
    };
    let v: Value = serde_json::from_slice(&answer).unwrap_or(Value::Null);
    let kind = v["__type"]
        .as_str()
        .or_else(|| {
            headers
                .get("x-amzn-errortype")
                .and_then(|h| h.to_str().ok())
        })
        .map(|t| {
            t.rsplit('#')
                .next()
                .unwrap_or(t)
                .split(':')
                .next()
                .unwrap_or(t)
        })
        .map(peer_text)
        .unwrap_or_default();
    // Whatever answered may echo the request: the secret never gets printed.
    let mut message = v["message"]
        .as_str()
        .or_else(|| v["Message"].as_str())
        .unwrap_or_default()
        .to_string();
    if let Some(secret) = r.client_secret.as_deref().filter(|s| !s.is_empty()) {
        message = message.replace(secret, "<redacted>");
    }
    let message = peer_text(&message);
    let secret_problem = message.to_ascii_lowercase().contains("secret");
    match (status, kind.as_str()) {
        (400, "NotAuthorizedException") if secret_problem && r.client_secret.is_none() => {
            report.fail(
                CHECK,
                format!("Cognito wants the app client's secret: {message}"),
                "the app client has a secret: give it with --cognito-client-secret",
            )
        }
        // GetTokensFromRefreshToken takes the secret itself: a refusal
        // naming it is about the secret. InitiateAuth's SECRET_HASH mixes
        // in the user, whom a dummy token has not: no verdict from it.
        (400, "NotAuthorizedException") if secret_problem && r.api == RefreshApi::GetTokens => {
            report.fail(
                CHECK,
                format!("Cognito refused the app client's secret: {message}"),
                "--cognito-client-secret does not match the app client's secret (or the client has none: drop the flag)",
            )
        }
        (400, "NotAuthorizedException") => {
            // Whether Cognito weighs the secret before the token is not
            // documented: a pass says nothing about the secret.
            let secret_note = if r.client_secret.is_some() {
                "; the client secret is proven only by a real refresh"
            } else {
                ""
            };
            report.pass(
                CHECK,
                format!("{} answers {target} for app client {} (a dummy refresh token was refused, as it must be){secret_note}", r.endpoint, r.client_id),
            )
        }
        (400, "ResourceNotFoundException") => report.fail(
            CHECK,
            format!("Cognito does not know app client '{}': {message}", r.client_id),
            "correct --cognito-client-id, or --cognito-endpoint if it is another region's",
        ),
        (200, _) => report.fail(
            CHECK,
            format!("{} accepted a refresh token that cannot be valid", r.endpoint),
            "--cognito-endpoint does not point at Cognito",
        ),
        (_, "") => report.fail(
            CHECK,
            format!("{} answered HTTP {status} without a Cognito error", r.endpoint),
            "--cognito-endpoint does not point at Cognito's API",
        ),
        (_, other) => report.fail(
            CHECK,
            format!("Cognito answered {other}: {message}"),
            "see the message; the app client may not allow refresh (ALLOW_REFRESH_TOKEN_AUTH) or --refresh-api may not suit it",
        ),
    }
}
