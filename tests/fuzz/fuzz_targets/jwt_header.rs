//! Token string → `verify::Verifier::verify` and `verify_ignoring_expiry`,
//! with a static JWKS served once from a loopback HTTP server started by the
//! target (the `Verifier` only loads keys over HTTP), plus
//! `verify::unverified_times`.
//!
//! Input: first byte selects the mode.
//! - even: the rest is the token, as a browser cookie would carry it. It
//!   is never signed by a key in the JWKS, so both calls must fail. When
//!   they fail past the `alg` gate (kid/signature/claims errors) the header
//!   must decode to a JSON object whose every `alg` is exactly `"RS256"`.
//! - odd: the rest is `<header JSON> NUL <claims JSON>`; the target
//!   base64url-encodes both and signs them with the JWKS's private key
//!   (RS256; HS256 with the public key as secret when the header says HS*),
//!   so the claims checks after the signature are exercised too. `Ok` is
//!   then allowed only if an independent reading of the header and claims
//!   says the token is acceptable (alg exactly RS256 in every duplicate,
//!   kid of the RS256 key, iss/token_use/client_id exact, exp/nbf in range)
//!   and the returned claims agree with that reading.
//! - error Display/Debug is one of the fixed texts (never token-dependent).
#![no_main]

use appsync_relay::verify::{unverified_times, TokenUse, Verifier, VerifierConfig, VerifyError};
use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;
use fuzz_support::RawJson;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::pkcs8::{EncodePublicKey, LineEnding};
use rsa::traits::PublicKeyParts;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const ISSUER: &str = "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_Fuzz0001";
const CLIENT_ID: &str = "1example23456789";
const KID: &str = "k1";
const LEEWAY: u64 = 5;

struct Fixture {
    rt: tokio::runtime::Runtime,
    verifier: Arc<Verifier>,
    rs256: EncodingKey,
    hs_confusion: EncodingKey,
}

/// Serves `body` as `200 application/json` to every connection, forever,
/// from a background thread (the verifier fetches once at start-up and at
/// most once more on an unknown kid: the refetch interval is an hour).
fn serve_jwks(body: String) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let mut seen = Vec::new();
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
                body.len(),
                body
            );
        }
    });
    format!("http://{addr}/.well-known/jwks.json")
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        // 2048 bits, Cognito's size and AWS-LC's minimum: the verifier's
        // backend (jsonwebtoken on aws_lc_rs) refuses to sign or verify with
        // smaller RSA keys, so a smaller key would test nothing past the
        // signature check.
        let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).expect("rsa key");
        let public = key.to_public_key();
        let der = key.to_pkcs1_der().expect("der");
        let rs256 = EncodingKey::from_rsa_der(der.as_bytes());
        let pem = public.to_public_key_pem(LineEnding::LF).expect("pem");
        let hs_confusion = EncodingKey::from_secret(pem.as_bytes());
        let n = URL_SAFE_NO_PAD.encode(public.n().to_bytes_be());
        let e = URL_SAFE_NO_PAD.encode(public.e().to_bytes_be());
        let jwks = json!({"keys": [
            {"kty": "RSA", "kid": KID, "alg": "RS256", "use": "sig", "n": n, "e": e},
            {"kty": "RSA", "kid": "k384", "alg": "RS384", "use": "sig", "n": n, "e": e},
            {"kty": "RSA", "kid": "kenc", "use": "enc", "n": n, "e": e},
            {"kty": "oct", "kid": "h1", "k": URL_SAFE_NO_PAD.encode(pem.as_bytes())},
        ]})
        .to_string();
        let jwks_url = serve_jwks(jwks);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let verifier = Verifier::new(
            VerifierConfig {
                issuer: ISSUER.into(),
                jwks_url,
                client_id: CLIENT_ID.into(),
                token_use: TokenUse::Access,
                leeway: Duration::from_secs(LEEWAY),
                jwks_refetch_interval: Duration::from_secs(3600),
                fetch_timeout: Duration::from_secs(5),
                jwks_refresh_interval: Duration::from_secs(600),
                cache_capacity: 1000,
            },
            appsync_relay::http_client::build(Duration::from_secs(5)),
        );
        let n = rt.block_on(verifier.load_jwks()).expect("JWKS loads");
        assert_eq!(n, 1, "only the RS256 signing key is usable");
        Fixture {
            rt,
            verifier,
            rs256,
            hs_confusion,
        }
    })
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Every value of `key` in a JSON object, duplicates included.
fn all_values<'a>(raw: &'a RawJson, key: &str) -> Vec<&'a RawJson> {
    match raw {
        RawJson::Object(entries) => entries
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v)
            .collect(),
        _ => Vec::new(),
    }
}

/// The header's JSON object decoded leniently (any base64 flavour).
fn lenient_header(token: &str) -> Option<(Value, RawJson)> {
    let first = token.split('.').next()?;
    let bytes = URL_SAFE_NO_PAD
        .decode(first)
        .or_else(|_| URL_SAFE.decode(first))
        .or_else(|_| STANDARD.decode(first))
        .ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    let raw: RawJson = serde_json::from_slice(&bytes).ok()?;
    Some((v, raw))
}

fn allow_dup_keys() -> bool {
    static V: OnceLock<bool> = OnceLock::new();
    *V.get_or_init(|| std::env::var_os("FUZZ_ALLOW_DUPLICATE_KEYS").is_some_and(|v| v == "1"))
}

/// `alg` is exactly "RS256" — in every duplicate unless `lenient` (then
/// only the last, which is what a serde_json `Value` keeps).
fn alg_is_exactly_rs256(header: &Value, raw: &RawJson, lenient: bool) -> bool {
    let last = header.get("alg") == Some(&json!("RS256"));
    let algs = all_values(raw, "alg");
    let every = !algs.is_empty()
        && algs
            .iter()
            .all(|a| matches!(a, RawJson::Str(s) if s == "RS256"));
    last && (lenient || every)
}

fn passed_alg_gate(e: &VerifyError) -> bool {
    !matches!(
        e,
        VerifyError::TooLarge | VerifyError::Malformed | VerifyError::Algorithm
    )
}

fn check_error_text(e: &VerifyError, _token: &str) {
    // Error text is one of the fixed messages (so it cannot carry any part
    // of the token); a substring test would flag tokens like "ot a JW".
    use VerifyError as V;
    let fixed = [
        V::TooLarge,
        V::Malformed,
        V::Algorithm,
        V::MissingKid,
        V::UnknownKid,
        V::Signature,
        V::Expired,
        V::NotYetValid,
        V::Issuer,
        V::TokenUse,
        V::Audience,
        V::JwksUnavailable,
    ];
    assert!(fixed
        .iter()
        .any(|f| f.to_string() == e.to_string() && format!("{f:?}") == format!("{e:?}")));
    let _ = e.reason();
}

/// The checks the claims must pass, read independently of the verifier.
fn claims_acceptable(claims: &Value, check_time: bool) -> bool {
    let t = now();
    let s = |k: &str| claims.get(k).and_then(Value::as_str);
    let exp_ok = match claims.get("exp") {
        Some(v) if v.is_number() => {
            !check_time
                || v.as_f64()
                    .is_some_and(|exp| exp + (LEEWAY as f64) + 2.0 >= t as f64)
        }
        _ => false,
    };
    let nbf_ok = match claims.get("nbf") {
        None | Some(Value::Null) => true,
        Some(v) => {
            v.is_number()
                && (!check_time || v.as_f64().is_some_and(|nbf| nbf <= (t + LEEWAY + 2) as f64))
        }
    };
    claims.is_object()
        && s("iss") == Some(ISSUER)
        && s("sub").is_some()
        && s("token_use") == Some("access")
        && s("client_id") == Some(CLIENT_ID)
        && exp_ok
        && nbf_ok
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let f = fixture();
    let signed = mode & 1 == 1;
    let (token, claims_json) = if signed {
        let (h, c) = match rest.iter().position(|b| *b == 0) {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &b""[..]),
        };
        let msg = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(h),
            URL_SAFE_NO_PAD.encode(c)
        );
        let alg_hint = serde_json::from_slice::<Value>(h)
            .ok()
            .and_then(|v| v.get("alg").and_then(Value::as_str).map(str::to_owned));
        let sig = if alg_hint.is_some_and(|a| a.starts_with("HS")) {
            jsonwebtoken::crypto::sign(msg.as_bytes(), &f.hs_confusion, Algorithm::HS256)
        } else {
            jsonwebtoken::crypto::sign(msg.as_bytes(), &f.rs256, Algorithm::RS256)
        }
        .expect("sign");
        (format!("{msg}.{sig}"), Some(c))
    } else {
        let Ok(t) = std::str::from_utf8(rest) else {
            return;
        };
        (t.to_owned(), None)
    };

    let _ = unverified_times(&token);
    let verified = f.rt.block_on(f.verifier.verify(&token));
    let ignoring_expiry = f.rt.block_on(f.verifier.verify_ignoring_expiry(&token));

    let header = lenient_header(&token);
    for (r, check_time) in [
        (verified.as_ref().map(|c| (**c).clone()), true),
        (ignoring_expiry.as_ref().map(|c| c.clone()), false),
    ] {
        match r {
            Err(e) => {
                check_error_text(&e, &token);
                if passed_alg_gate(&e) {
                    let (h, raw) = header
                        .as_ref()
                        .expect("past the alg gate without a JSON header");
                    assert!(
                        alg_is_exactly_rs256(h, raw, allow_dup_keys()),
                        "token with alg {:?} got past the alg gate ({e:?})",
                        h.get("alg")
                    );
                }
            }
            Ok(claims) => {
                let Some(cj) = claims_json else {
                    panic!("an unsigned fuzzed token verified");
                };
                let (h, raw) = header
                    .as_ref()
                    .expect("verified token without a JSON header");
                assert!(
                    alg_is_exactly_rs256(h, raw, false),
                    "verified with alg {:?}",
                    h.get("alg")
                );
                assert_eq!(h.get("kid"), Some(&json!(KID)));
                // serde_json skips ignored claims without validating UTF-8,
                // so a signed payload with invalid UTF-8 in e.g. `scope`
                // verifies; read it lossily (the checked claims are strings
                // the verifier had to parse as UTF-8 anyway).
                let cj = String::from_utf8_lossy(cj);
                let cv: Value = serde_json::from_str(&cj).expect("verified claims are JSON");
                assert!(
                    claims_acceptable(&cv, check_time),
                    "verified claims that should be refused: {cv}"
                );
                // Duplicate keys: every copy of a checked claim must agree.
                let craw: RawJson = serde_json::from_str(&cj).expect("RawJson");
                for k in ["iss", "token_use", "client_id", "exp", "nbf", "sub"] {
                    assert!(all_values(&craw, k).len() <= 1, "duplicate {k} accepted");
                }
                assert_eq!(cv["iss"], json!(claims.iss));
                assert_eq!(cv["sub"], json!(claims.sub));
                assert_eq!(cv.get("exp").and_then(Value::as_u64), Some(claims.exp));
                assert_eq!(claims.client_id.as_deref(), Some(CLIENT_ID));
            }
        }
    }
    // A token that fully verifies also verifies ignoring expiry.
    if verified.is_ok() {
        assert!(
            ignoring_expiry.is_ok(),
            "verify Ok but verify_ignoring_expiry {ignoring_expiry:?}"
        );
    }
});
