//! The checks that need nothing but the command line (and the sample
//! request, when given): every flag value, the origin list, which legs
//! would carry credentials unencrypted, whether a proxy in front adds
//! `X-Forwarded-*` that the relay ignores.

use super::report::Report;
use crate::cli::CheckArgs;
use crate::config::Config;
use crate::origin::normalize;
use crate::protocol::Channel;
use std::net::IpAddr;

/// Largest sample request read.
const MAX_SAMPLE_BYTES: u64 = 64 * 1024;

/// Validates the flags as `serve` would; the config when they are valid.
pub fn check(args: &CheckArgs, report: &mut Report) -> Option<Config> {
    let config = match Config::from_args(&args.serve) {
        Ok(c) => {
            report.pass("flags", "every flag value is valid, alone and together");
            Some(c)
        }
        Err(errors) => {
            for e in errors {
                report.fail(
                    "flags",
                    e,
                    "change this value; `appsync-relay serve --help` lists what each flag accepts",
                );
            }
            None
        }
    };
    check_channel(args, report);
    if let Some(c) = &config {
        origins(args, report);
        transport(c, args.serve.app_upstream.as_deref(), report);
        forwarded(args, report);
    }
    config
}

fn check_channel(args: &CheckArgs, report: &mut Report) {
    let signed_in = args.token_file.is_some() || args.cookie_file.is_some();
    match (&args.check_channel, signed_in) {
        // The sign-in is for --policy-test alone: no round trip.
        (None, true) if !args.policy_test.is_empty() => {}
        (None, true) => report.fail(
            "check_channel",
            "--token-file/--cookie-file given without --check-channel",
            "add --check-channel /<namespace>/<name>, a channel no real subscriber listens on",
        ),
        (Some(ch), _) => {
            if let Err(e) = Channel::parse(ch, false) {
                report.fail(
                    "check_channel",
                    format!("'{ch}' is not a channel AppSync accepts for publish: {e}"),
                    "use /<namespace>/<name> with 1-5 segments of [A-Za-z0-9-], no wildcard",
                );
            }
        }
        (None, false) => {}
    }
}

/// Origins as browsers send them, and the app's own origin among them.
fn origins(args: &CheckArgs, report: &mut Report) {
    let s = &args.serve;
    if s.allowed_origins.is_empty() {
        if s.allow_missing_origin {
            report.pass(
                "origins",
                "no --allowed-origin: only requests without an Origin (non-browser clients) are accepted",
            );
        } else {
            report.fail(
                "origins",
                "no --allowed-origin: every browser is refused (403 origin_not_allowed)",
                "add --allowed-origin https://<the app's host> (repeatable)",
            );
        }
        return;
    }
    let mut shown = Vec::new();
    for raw in &s.allowed_origins {
        // Validated by Config already; only the written form is looked at.
        let norm = normalize(raw).unwrap_or_else(|_| raw.clone());
        if &norm == raw {
            shown.push(norm);
        } else {
            shown.push(format!(
                "{norm} (written '{raw}'; browsers send '{norm}', which matches)"
            ));
        }
    }
    if let Some(public) = &s.public_origin {
        let public = normalize(public).unwrap_or_else(|_| public.clone());
        let allowed = s
            .allowed_origins
            .iter()
            .any(|o| normalize(o).is_ok_and(|o| o == public));
        if !allowed {
            report.fail(
                "origins",
                format!("--public-origin {public} is not among the allowed origins: the app's own pages would be refused"),
                format!("add --allowed-origin {public}"),
            );
            return;
        }
    }
    report.pass("origins", format!("allowed: {}", shown.join(", ")));
}

fn is_local(host: Option<url::Host<&str>>) -> bool {
    match host {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Every outbound leg that would carry a token, a refresh token or the keys
/// that prove tokens without TLS, to a host that is not this machine.
fn transport(c: &Config, app_upstream: Option<&str>, report: &mut Report) {
    let appsync_local = c.appsync_address.is_some_and(|ip: IpAddr| ip.is_loopback());
    let jwks = url::Url::parse(&c.jwks_url).ok();
    let cognito = url::Url::parse(&c.refresh.endpoint).ok();
    let app = app_upstream.and_then(|u| url::Url::parse(u).ok());
    let legs: [(&str, Option<&url::Url>, bool, &str); 5] = [
        (
            "--appsync-http-endpoint",
            Some(&c.http_endpoint),
            appsync_local,
            "users' tokens",
        ),
        (
            "--appsync-realtime-endpoint",
            Some(&c.realtime_endpoint),
            appsync_local,
            "users' tokens",
        ),
        (
            "--cognito-endpoint",
            cognito.as_ref(),
            false,
            "refresh tokens",
        ),
        (
            "--cognito-jwks-url",
            jwks.as_ref(),
            false,
            "the keys that prove tokens (a forged key set would be believed)",
        ),
        (
            "--app-upstream",
            app.as_ref(),
            false,
            "the session cookies of every page request",
        ),
    ];
    let mut plain = Vec::new();
    for (flag, url, pinned_local, what) in legs {
        let Some(url) = url else { continue };
        let encrypted = matches!(url.scheme(), "https" | "wss");
        if !encrypted && !pinned_local && !is_local(url.host()) {
            report.fail(
                "transport",
                format!("{flag} {url} is not TLS: {what} would cross the network in the clear"),
                format!("use the https:// (wss://) form of {flag}"),
            );
        } else if !encrypted {
            plain.push(flag);
        }
    }
    if report.failed("transport") {
        return;
    }
    if plain.is_empty() {
        report.pass("transport", "every outbound leg uses TLS");
    } else {
        report.pass(
            "transport",
            format!(
                "TLS on every leg that leaves this machine ({} stay on loopback)",
                plain.join(", ")
            ),
        );
    }
}

/// Whether a proxy in front adds `X-Forwarded-*`, judged from a sample.
fn forwarded(args: &CheckArgs, report: &mut Report) {
    let trusted = !args.serve.trust_forwarded.is_empty();
    let Some(path) = &args.sample_request else {
        report.skip(
            "forwarded",
            if trusted {
                "--trust-forwarded is set; give --sample-request to confirm a proxy adds X-Forwarded-For"
            } else {
                "no --sample-request: cannot tell whether a proxy in front adds X-Forwarded-*"
            },
        );
        return;
    };
    let head = match read_limited(path, MAX_SAMPLE_BYTES) {
        Ok(h) => h,
        Err(e) => {
            report.fail(
                "forwarded",
                format!("cannot read --sample-request {}: {e}", path.display()),
                "give a readable file holding a request head",
            );
            return;
        }
    };
    let names = forwarding_headers(&head);
    match (names.is_empty(), trusted) {
        (true, _) => report.pass(
            "forwarded",
            "the sample carries no X-Forwarded-* or Forwarded header: no proxy in front rewrites the client address",
        ),
        (false, true) => report.pass(
            "forwarded",
            format!("the sample carries {}; --trust-forwarded is set", names.join(", ")),
        ),
        (false, false) => report.fail(
            "forwarded",
            format!(
                "the sample carries {} but --trust-forwarded is not set: every browser would count as the proxy's address, and the per-IP limit ({}) would refuse users across the whole site",
                names.join(", "),
                args.serve.max_connections_per_ip
            ),
            "set --trust-forwarded to the proxy's address range (e.g. the ingress pods' CIDR)",
        ),
    }
}

/// Header names in a request head that carry forwarding information.
fn forwarding_headers(head: &str) -> Vec<String> {
    let mut found: Vec<String> = head
        .lines()
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(name, _)| name.trim().to_ascii_lowercase())
        .filter(|n| n == "forwarded" || n.starts_with("x-forwarded-"))
        .collect();
    found.sort();
    found.dedup();
    found
}

/// Reads at most `max` bytes of `path` as text (lossy), without the BOM.
pub fn read_limited(path: &std::path::Path, max: u64) -> std::io::Result<String> {
    use std::io::Read as _;
    let mut buf = Vec::new();
    std::fs::File::open(path)?.take(max).read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    Ok(text.trim_start_matches('\u{feff}').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarding_headers_are_found_in_the_head_only() {
        let head = "GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.2.3.4\r\nx-forwarded-proto: https\r\n\r\nForwarded: for=x\r\n";
        assert_eq!(
            forwarding_headers(head),
            vec!["x-forwarded-for", "x-forwarded-proto"]
        );
        assert!(forwarding_headers("GET / HTTP/1.1\nHost: a\n").is_empty());
        // A request line that looks like a header is not one.
        assert!(forwarding_headers("X-Forwarded-For: 1.2.3.4\n").is_empty());
    }
}
