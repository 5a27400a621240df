//! Smoke test for the cognito-local harness: real emulator, real tokens.
//!
//! Claims observed with cognito-local 5.3.0 for username `alice+test@example.com`
//! (pool created with `UsernameAttributes: []`, so the username is stored
//! verbatim, `@` and `+` included):
//!
//! * access token header: `{"alg":"RS256","typ":"JWT","kid":"CognitoLocal"}`
//! * access token payload: `auth_time`, `client_id`, `event_id`, `iat`, `jti`,
//!   `scope: "aws.cognito.signin.user.admin"`, `sub` (random UUID v4, e.g.
//!   `564e6bec-21e2-47e4-9f55-40d6065b18d9`), `token_use: "access"`,
//!   `username: "alice+test@example.com"` (verbatim, not percent-encoded),
//!   `exp`, `iss: "http://127.0.0.1:<port>/local_XXXXXXXX"`. No `aud`
//!   (as in real Cognito access tokens) and no `version`/`origin_jti`.
//! * ID token payload: `cognito:username: "alice+test@example.com"`,
//!   `auth_time`, `email` (absent unless the attribute is set),
//!   `email_verified: false`, `event_id`, `iat`, `jti`, `sub` (same UUID),
//!   `token_use: "id"`, `exp`, `aud: <client id>`, `iss` (same issuer).
//! * refresh token: an RS256 JWT too (real Cognito's is opaque), without
//!   `kid` or `token_use`.

#[path = "support/cognito_local.rs"]
mod cognito_local;

use std::time::Duration;

use cognito_local::{jwt_claims, jwt_header, ApiError, ClientOptions, CognitoLocal};

const USERNAME: &str = "alice+test@example.com";
const PASSWORD: &str = "Passw0rd!";

#[tokio::test]
async fn cognito_local_issues_cognito_shaped_tokens() {
    let cognito = CognitoLocal::start().await;
    eprintln!(
        "cognito-local: base_url={} pool={} client={} issuer={} jwks={}",
        cognito.base_url, cognito.user_pool_id, cognito.client_id, cognito.issuer, cognito.jwks_url
    );
    assert_eq!(
        cognito.issuer,
        format!("{}/{}", cognito.base_url, cognito.user_pool_id)
    );
    assert!(
        cognito.user_pool_id.starts_with("local_"),
        "pool id {}",
        cognito.user_pool_id
    );

    let sub = cognito.create_user(USERNAME, PASSWORD).await;
    let tokens = cognito.sign_in(USERNAME, PASSWORD).await;

    // JWKS: RS256 keys with kids.
    let jwks = cognito.jwks().await.expect("fetching JWKS");
    let keys = jwks["keys"].as_array().expect("JWKS has a keys array");
    assert!(!keys.is_empty(), "empty JWKS: {jwks}");
    for key in keys {
        assert_eq!(key["kty"], "RSA", "{key}");
        assert_eq!(key["alg"], "RS256", "{key}");
        assert!(
            key["kid"].is_string() && key["n"].is_string() && key["e"].is_string(),
            "{key}"
        );
    }
    let kids: Vec<&str> = keys.iter().filter_map(|k| k["kid"].as_str()).collect();

    // Access token.
    let header = jwt_header(&tokens.access_token);
    assert_eq!(header["alg"], "RS256", "access header {header}");
    let kid = header["kid"]
        .as_str()
        .expect("access token header has a kid");
    assert!(kids.contains(&kid), "kid {kid} not in JWKS {kids:?}");
    let access = jwt_claims(&tokens.access_token);
    eprintln!("access token claims: {access}");
    assert_eq!(access["token_use"], "access", "{access}");
    assert_eq!(access["client_id"], cognito.client_id.as_str(), "{access}");
    assert_eq!(access["iss"], cognito.issuer.as_str(), "{access}");
    assert_eq!(access["username"], USERNAME, "{access}");
    assert_eq!(access["sub"], sub.as_str(), "{access}");
    let iat = access["iat"].as_u64().expect("iat");
    let exp = access["exp"].as_u64().expect("exp");
    assert!(exp > iat, "exp {exp} <= iat {iat}");
    assert_eq!(exp - iat, 24 * 3600, "default access token lifetime");

    // ID token.
    let id_header = jwt_header(&tokens.id_token);
    assert_eq!(id_header["alg"], "RS256");
    assert!(
        kids.contains(&id_header["kid"].as_str().unwrap_or_default()),
        "{id_header}"
    );
    let id = jwt_claims(&tokens.id_token);
    eprintln!("id token claims: {id}");
    assert_eq!(id["token_use"], "id", "{id}");
    assert_eq!(id["aud"], cognito.client_id.as_str(), "{id}");
    assert_eq!(id["iss"], cognito.issuer.as_str(), "{id}");
    assert_eq!(id["cognito:username"], USERNAME, "{id}");
    assert_eq!(id["sub"], sub.as_str(), "{id}");

    // Wrong password is rejected.
    let err = cognito
        .try_sign_in(USERNAME, "wrong")
        .await
        .expect_err("wrong password accepted");
    let api = err.downcast_ref::<ApiError>().expect("ApiError");
    assert_eq!(api.status, 400, "{api}");

    // REFRESH_TOKEN_AUTH works, doesn't rotate, and RevokeToken disables it.
    let refreshed = cognito
        .refresh(&tokens.refresh_token)
        .await
        .expect("refresh");
    let refreshed_access = jwt_claims(&refreshed.access_token);
    assert_eq!(refreshed_access["token_use"], "access");
    assert_ne!(refreshed_access["jti"], access["jti"]);
    assert_eq!(refreshed.refresh_token, tokens.refresh_token);
    cognito
        .revoke(&tokens.refresh_token)
        .await
        .expect("RevokeToken");
    let err = cognito
        .refresh(&tokens.refresh_token)
        .await
        .expect_err("refresh after revoke");
    let api = err.downcast_ref::<ApiError>().expect("ApiError");
    assert_eq!(api.error_type, "NotAuthorizedException", "{api}");

    // Short-lived tokens via a second app client (AccessTokenValidity in seconds).
    let short_client = cognito
        .create_app_client(
            "short",
            &ClientOptions {
                access_token_validity: Some(Duration::from_secs(5)),
                id_token_validity: Some(Duration::from_secs(7)),
                refresh_token_validity: Some(Duration::from_secs(60)),
            },
        )
        .await
        .expect("creating short-lived client");
    let short = cognito
        .try_sign_in_with_client(&short_client, USERNAME, PASSWORD)
        .await
        .expect("sign in with short-lived client");
    let a = jwt_claims(&short.access_token);
    assert_eq!(a["client_id"], short_client.as_str());
    assert_eq!(
        a["exp"].as_u64().unwrap() - a["iat"].as_u64().unwrap(),
        5,
        "{a}"
    );
    let i = jwt_claims(&short.id_token);
    assert_eq!(
        i["exp"].as_u64().unwrap() - i["iat"].as_u64().unwrap(),
        7,
        "{i}"
    );

    // Unsupported APIs answer HTTP 500 with __type CognitoLocal#Unsupported.
    let err = cognito
        .call(
            "GetTokensFromRefreshToken",
            serde_json::json!({ "ClientId": cognito.client_id, "RefreshToken": short.refresh_token }),
        )
        .await
        .expect_err("GetTokensFromRefreshToken is not implemented by cognito-local 5.3.0");
    let api = err.downcast_ref::<ApiError>().expect("ApiError");
    assert_eq!(
        (api.status, api.error_type.as_str()),
        (500, "CognitoLocal#Unsupported"),
        "{api}"
    );
}
