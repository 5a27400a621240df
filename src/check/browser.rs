//! Acting as the browser in the round trip: the upgrade with the
//! sign-in's cookies and an allowed Origin (keeping the `Set-Cookie`s of
//! its answer, as a browser does), frames both ways, the HTTP publish; and
//! what to tell the operator about each refusal.

use super::report::peer_text;
use crate::config::Config;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What failed, and what to do about it.
pub type StepError = (String, String);

/// What to do about a handshake the relay refused with `reason`.
pub fn fix_for(reason: &str, config: &Config) -> String {
    match reason {
        "no_session" => format!(
            "the cookies hold no Amplify session of app client {}: copy them after signing in with that client, or correct --cognito-client-id",
            config.client_id
        ),
        "ambiguous_session" => "the cookies hold several users' sessions: copy them from a browser with one sign-in".into(),
        "session_ended" => "Cognito refused the refresh token: sign in again and copy fresh cookies".into(),
        "refresh_unavailable" => "the token was due and Cognito could not renew it: see the cognito check".into(),
        "upstream_unauthorized" => format!(
            "AppSync refused the user's token: the API's connection auth mode must be Amazon Cognito user pools with the pool of {}",
            config.issuer
        ),
        r if r.starts_with("upstream_") => "the relay could not open AppSync's real-time connection: see appsync_realtime".into(),
        r if r.starts_with("token_") => "see the token check".into(),
        _ => "see the relay's log line for this handshake (APPSYNC_RELAY_LOG=debug)".into(),
    }
}

/// Opens the socket as a browser would and completes `connection_init`;
/// the socket and the cookies after the upgrade's answer.
pub async fn connect(
    config: &Config,
    addr: std::net::SocketAddr,
    cookie: &str,
    origin: Option<&str>,
    timeout: Duration,
) -> Result<(Ws, String), StepError> {
    let url = format!("ws://{addr}{}", config.realtime_path);
    let mut req = url
        .into_client_request()
        .map_err(|e| (e.to_string(), String::new()))?;
    let h = req.headers_mut();
    let bad = |what: &str| {
        (
            format!("the {what} cannot be sent as a header"),
            format!("check the {what} file's contents"),
        )
    };
    h.insert("cookie", cookie.parse().map_err(|_| bad("cookie"))?);
    if let Some(o) = origin {
        h.insert("origin", o.parse().map_err(|_| bad("origin"))?);
    }
    h.insert(
        "sec-websocket-protocol",
        crate::protocol::SUBPROTOCOL
            .parse()
            .map_err(|_| bad("subprotocol"))?,
    );
    let attempt = tokio::time::timeout(timeout, tokio_tungstenite::connect_async(req)).await;
    let (mut ws, cookie) = match attempt {
        Err(_) => {
            return Err((
                format!("no answer to the upgrade within {}s", timeout.as_secs()),
                "see appsync_realtime".into(),
            ))
        }
        Ok(Ok((ws, resp))) => {
            // Refused in band (a 101 whose socket answers with
            // `connection_error`): the header says why.
            if let Some(named) = resp.headers().get("x-appsync-relay-refused") {
                let named = named.to_str().unwrap_or("401 unknown");
                let (status, reason) = named.split_once(' ').unwrap_or(("401", "unknown"));
                drop(ws);
                return Err((
                    format!("the relay refused the handshake: HTTP {status} ({reason})"),
                    fix_for(reason, config),
                ));
            }
            let cookie = apply_set_cookies(cookie, resp.headers());
            (ws, cookie)
        }
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(resp))) => {
            let body: Value = resp
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            let reason = body["reason"].as_str().unwrap_or("unknown").to_string();
            return Err((
                format!(
                    "the relay refused the handshake: HTTP {} ({reason})",
                    resp.status().as_u16()
                ),
                fix_for(&reason, config),
            ));
        }
        Ok(Err(e)) => {
            return Err((
                format!("the upgrade failed: {e}"),
                "see the relay's log".into(),
            ))
        }
    };
    send(&mut ws, &json!({"type": "connection_init"})).await?;
    let v = wait_for(&mut ws, timeout, |v| v["type"] != "ka").await?;
    if v["type"] != "connection_ack" {
        return Err((
            format!(
                "AppSync answered connection_init with {}",
                peer_text(&v.to_string())
            ),
            "see the relay's log".into(),
        ));
    }
    Ok((ws, cookie))
}

/// `cookie` after the `Set-Cookie`s of an answer, as a browser keeps them:
/// a renewal inside the check replaces the tokens it rotated (sending the
/// old refresh token again would be a second spend of it).
fn apply_set_cookies(cookie: &str, headers: &hyper::HeaderMap) -> String {
    let mut jar: Vec<(String, String)> = cookie
        .split("; ")
        .filter_map(|p| p.split_once('='))
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    for value in headers.get_all(hyper::header::SET_COOKIE) {
        let Some(c) = value
            .to_str()
            .ok()
            .and_then(|v| cookie::Cookie::parse(v).ok())
        else {
            continue;
        };
        let gone = c.max_age().is_some_and(|a| a.is_zero() || a.is_negative())
            || c.expires_datetime()
                .is_some_and(|t| t <= cookie::time::OffsetDateTime::now_utc());
        jar.retain(|(n, _)| n != c.name());
        if !gone {
            jar.push((c.name().to_string(), c.value().to_string()));
        }
    }
    jar.iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join("; ")
}

pub async fn send(ws: &mut Ws, v: &Value) -> Result<(), StepError> {
    ws.send(Message::Text(v.to_string().into()))
        .await
        .map_err(|e| {
            (
                format!("the socket failed: {e}"),
                "see the relay's log".into(),
            )
        })
}

/// The first JSON frame `want` accepts (it sees every frame on the way).
pub async fn wait_for(
    ws: &mut Ws,
    timeout: Duration,
    mut want: impl FnMut(&Value) -> bool,
) -> Result<Value, StepError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let next = tokio::time::timeout_at(deadline, ws.next()).await;
        let msg = match next {
            Err(_) => {
                return Err((
                    format!("no answer within {}s", timeout.as_secs()),
                    "see the relay's log (APPSYNC_RELAY_LOG=debug)".into(),
                ))
            }
            Ok(None) => return Err(("the socket ended".into(), "see the relay's log".into())),
            Ok(Some(Err(e))) => {
                return Err((
                    format!("the socket failed: {e}"),
                    "see the relay's log".into(),
                ))
            }
            Ok(Some(Ok(m))) => m,
        };
        match msg {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(&t).unwrap_or(Value::Null);
                if want(&v) {
                    return Ok(v);
                }
            }
            Message::Close(frame) => {
                let (code, reason) = frame
                    .map(|f| (u16::from(f.code), peer_text(&f.reason)))
                    .unwrap_or((1005, String::new()));
                return Err((
                    format!("the relay closed the socket: {code} {reason}"),
                    "see the relay's log".into(),
                ));
            }
            _ => {}
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub async fn http_publish(
    config: &Config,
    addr: std::net::SocketAddr,
    cookie: &str,
    origin: Option<&str>,
    channel: &str,
    event: &str,
    timeout: Duration,
) -> Result<(), StepError> {
    let http = crate::http_client::build(timeout);
    let body = json!({"channel": channel, "events": [event]}).to_string();
    let mut req = hyper::Request::post(format!("http://{addr}{}", config.events_path))
        .header("content-type", "application/json")
        .header("cookie", cookie);
    if let Some(o) = origin {
        req = req.header("origin", o);
    }
    let req = req
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| (e.to_string(), "check the cookie file".to_string()))?;
    let fut = async {
        let resp = http.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = http_body_util::Limited::new(resp.into_body(), 64 * 1024)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok::<_, String>((
            status,
            serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null),
        ))
    };
    let (status, v) = match tokio::time::timeout(timeout, fut).await {
        Err(_) => {
            return Err((
                format!("no answer within {}s", timeout.as_secs()),
                "see appsync_http".into(),
            ))
        }
        Ok(Err(e)) => {
            return Err((
                format!("the request failed: {e}"),
                "see the relay's log".into(),
            ))
        }
        Ok(Ok(a)) => a,
    };
    if status != 200 {
        let reason = v["reason"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string());
        let reason = peer_text(&reason);
        return Err((
            format!("HTTP publish answered {status} ({reason})"),
            fix_for(&reason, config),
        ));
    }
    if v["successful"].as_array().is_none_or(|s| s.is_empty()) {
        return Err((
            format!(
                "HTTP publish accepted no event: {}",
                peer_text(&v["failed"].to_string())
            ),
            "the channel's namespace must allow this user to publish".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_cookies_replace_add_and_remove_as_a_browser_does() {
        let mut h = hyper::HeaderMap::new();
        for v in [
            "a=new; Path=/; HttpOnly",
            "gone=; Max-Age=0",
            "c=3; Secure",
            "not a cookie",
        ] {
            h.append(hyper::header::SET_COOKIE, v.parse().unwrap());
        }
        let out = apply_set_cookies("a=old; gone=x; b=2", &h);
        assert_eq!(out, "b=2; a=new; c=3");
        assert_eq!(apply_set_cookies("a=1", &hyper::HeaderMap::new()), "a=1");
    }
}
