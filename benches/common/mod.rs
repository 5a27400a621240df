//! What both benches need to stand in for Cognito: an RSA key, a JWKS
//! served on loopback by a plain thread, and Cognito-shaped access tokens
//! signed with that key. Nothing here talks to anything but 127.0.0.1.
#![allow(dead_code)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::pkcs8::LineEnding;
use rsa::traits::PublicKeyParts;
use rsa::RsaPrivateKey;
use serde_json::json;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const POOL_ID: &str = "eu-west-1_BenchPool1";
pub const CLIENT_ID: &str = "benchclient1";
pub const KID: &str = "bench-key-1";

/// The signing key and a JWKS on loopback that publishes it.
pub struct Idp {
    encoding: EncodingKey,
    pub addr: SocketAddr,
}

impl Idp {
    /// Generates a 2048-bit key (as Cognito's) and serves its JWKS from a
    /// background thread for the life of the process.
    pub fn start() -> Idp {
        let key = RsaPrivateKey::new(&mut rand::thread_rng(), 2048).expect("RSA key generation");
        let public = key.to_public_key();
        let jwks = json!({"keys": [{
            "kty": "RSA", "kid": KID, "alg": "RS256", "use": "sig",
            "n": URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
            "e": URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
        }]})
        .to_string();
        let pem = key.to_pkcs1_pem(LineEnding::LF).expect("PEM");
        let encoding = EncodingKey::from_rsa_pem(pem.as_bytes()).expect("signing key");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind JWKS listener");
        let addr = listener.local_addr().expect("JWKS address");
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{jwks}",
            jwks.len()
        );
        std::thread::Builder::new()
            .name("jwks".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    let Ok(mut stream) = stream else { continue };
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                    // Read the request head; one answer fits every request.
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = stream.write_all(response.as_bytes());
                }
            })
            .expect("JWKS thread");
        Idp { encoding, addr }
    }

    pub fn issuer(&self) -> String {
        format!("http://{}/{POOL_ID}", self.addr)
    }

    pub fn jwks_url(&self) -> String {
        format!("{}/.well-known/jwks.json", self.issuer())
    }

    /// A Cognito access token for `username`, valid for `lifetime`.
    pub fn access_token(&self, username: &str, lifetime: Duration) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs();
        let claims = json!({
            "sub": format!("00000000-0000-4000-8000-{:012x}", rand::random::<u32>()),
            "iss": self.issuer(),
            "client_id": CLIENT_ID,
            "token_use": "access",
            "scope": "aws.cognito.signin.user.admin",
            "username": username,
            "auth_time": now,
            "iat": now,
            "exp": now + lifetime.as_secs(),
            "jti": format!("{:032x}", rand::random::<u128>()),
        });
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(KID.to_string());
        jsonwebtoken::encode(&header, &claims, &self.encoding).expect("sign token")
    }
}
