//! The one trust rule for headers a proxy in front of the relay adds:
//! `X-Forwarded-For`, `X-Forwarded-Proto`. They are believed only from a TCP
//! peer in `--trust-forwarded`; from anyone else they are forgeries.
//!
//! It decides the client's IP (for per-IP limits), whether the browser used
//! HTTPS (for the `Secure` cookie attribute), and the `X-Forwarded-For`
//! chain passed on to the SSR app. It never reads anything else a client
//! sent.

use hyper::header::{HeaderMap, HeaderValue};
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const X_FORWARDED_FOR: &str = "x-forwarded-for";
const X_FORWARDED_PROTO: &str = "x-forwarded-proto";
/// The request id header an ingress (ingress-nginx, Envoy, ALB's
/// `X-Amzn-Trace-Id` aside) commonly adds.
pub const X_REQUEST_ID: &str = "x-request-id";

/// An IP network (`10.0.0.0/8`, `::1/128`, or a bare address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    pub fn parse(s: &str) -> Result<IpNet, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("'{s}' is not an IP address or CIDR"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("'{s}' has an invalid prefix length"))?,
            None => max,
        };
        Ok(IpNet { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// One `X-Forwarded-For` entry as an address: bare, with a port, or a
/// bracketed IPv6 address with or without a port.
fn parse_hop(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim().trim_matches('"');
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sock) = entry.parse::<SocketAddr>() {
        return Some(sock.ip());
    }
    entry
        .strip_prefix('[')
        .and_then(|e| e.strip_suffix(']'))
        .and_then(|e| e.parse().ok())
}

/// The proxies (`--trust-forwarded`) whose forwarding headers are believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn new(nets: Vec<IpNet>) -> TrustedProxies {
        TrustedProxies(nets)
    }

    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|n| n.contains(ip))
    }

    /// The client's IP: the TCP peer, or — when the peer is trusted — the
    /// rightmost `X-Forwarded-For` entry that is not itself trusted (entries
    /// further left are client-controlled). Entries may carry a port
    /// (`1.2.3.4:5678`, `[2001:db8::1]:443`). Walking from the right, an entry
    /// that is not an address at all stops the walk at the hop that added
    /// it: nothing to its left can be believed.
    pub fn client_ip(&self, headers: &HeaderMap, peer: SocketAddr) -> IpAddr {
        if !self.trusts(peer.ip()) {
            return peer.ip();
        }
        let entries: Vec<&str> = headers
            .get_all(X_FORWARDED_FOR)
            .iter()
            .map(|v| v.to_str().unwrap_or("?"))
            .flat_map(|v| v.split(','))
            .collect();
        let mut last_trusted = peer.ip();
        for entry in entries.into_iter().rev() {
            let Some(ip) = parse_hop(entry) else {
                return last_trusted;
            };
            if !self.trusts(ip) {
                return ip;
            }
            last_trusted = ip;
        }
        last_trusted
    }

    /// Whether a trusted peer says the browser's request was HTTPS
    /// (`X-Forwarded-Proto: https`, first hop).
    pub fn forwarded_https(&self, headers: &HeaderMap, peer: SocketAddr) -> bool {
        self.trusts(peer.ip())
            && headers
                .get(X_FORWARDED_PROTO)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| {
                    v.split(',')
                        .next()
                        .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"))
                })
    }

    /// The request's id, for the logs and the app: a trusted proxy's
    /// `X-Request-Id` when it sent exactly one and it is a plain token
    /// (1–128 of `A-Za-z0-9._:-`), else a fresh random one. A client
    /// talking to the relay directly never picks it; behind an ingress it
    /// is only as trustworthy as that ingress's rule (ingress-nginx keeps a
    /// client's `X-Request-ID` when one is sent). The filter means no id can
    /// carry anything but a token into a log line.
    pub fn request_id(&self, headers: &HeaderMap, peer: SocketAddr) -> String {
        let mut values = headers.get_all(X_REQUEST_ID).iter();
        let given = values
            .next()
            .filter(|_| values.next().is_none())
            .and_then(|v| v.to_str().ok())
            .filter(|_| self.trusts(peer.ip().to_canonical()))
            .filter(|v| {
                (1..=128).contains(&v.len())
                    && v.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
            });
        match given {
            Some(id) => id.to_owned(),
            None => format!("{:032x}", rand::random::<u128>()),
        }
    }

    /// The `X-Forwarded-For` to pass on: a trusted peer's chain with the peer
    /// appended, else the peer alone.
    pub fn x_forwarded_for(&self, headers: &HeaderMap, peer: SocketAddr) -> HeaderValue {
        let ip = peer.ip().to_canonical();
        let ip_value = HeaderValue::from_str(&ip.to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        if !self.trusts(ip) {
            return ip_value;
        }
        let chain: Vec<u8> = headers
            .get_all(X_FORWARDED_FOR)
            .iter()
            .map(HeaderValue::as_bytes)
            .chain(std::iter::once(ip_value.as_bytes()))
            .collect::<Vec<_>>()
            .join(&b", "[..]);
        // Joining valid values with ", " yields a valid value; fall back to
        // the peer alone rather than trust a chain we could not rebuild.
        HeaderValue::from_bytes(&chain).unwrap_or(ip_value)
    }
}

/// Requests carrying `X-Forwarded-For` from a peer `--trust-forwarded`
/// does not list: the sign of an ingress nobody told the relay about, whose
/// clients then all share its address for the per-IP limits (the 201st
/// user behind it is refused). Remembered so the log says it once in a
/// while, and `/readyz` says it while it keeps happening.
#[derive(Debug, Default)]
pub struct UntrustedForwarders {
    /// The newest such peer, and when.
    last: Mutex<Option<(IpAddr, Instant)>>,
    /// When the log last said so.
    warned: Mutex<Option<Instant>>,
}

/// Loopback, private (RFC 1918, shared CGNAT space, IPv6 ULA) or
/// link-local: where a load balancer or ingress in front of the relay is.
fn internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || (a == 100 && (64..128).contains(&b))
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            v6.is_loopback() || (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80
        }
    }
}

/// How often the log repeats the warning.
const WARN_EVERY: Duration = Duration::from_secs(600);
/// How long `/readyz` shows a peer after its last such request.
const SHOW_FOR: Duration = Duration::from_secs(3600);

impl UntrustedForwarders {
    /// Whether a request from `peer` with these `headers` is one; if so it
    /// is remembered. The second value: whether to log it now (the first
    /// time, then every [`WARN_EVERY`]).
    pub fn note(
        &self,
        trusted: &TrustedProxies,
        headers: &HeaderMap,
        peer: IpAddr,
        now: Instant,
    ) -> (bool, bool) {
        let peer = peer.to_canonical();
        // Only a peer with an internal address can be an ingress nobody
        // listed; a public one sending the header is a client (or its
        // corporate proxy), and telling the operator to trust it would hand
        // it the per-IP limits.
        if trusted.trusts(peer) || !internal(peer) || !headers.contains_key(X_FORWARDED_FOR) {
            return (false, false);
        }
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some((peer, now));
        let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
        let due = warned.is_none_or(|at| now.duration_since(at) >= WARN_EVERY);
        if due {
            *warned = Some(now);
        }
        (true, due)
    }

    /// The peer that sent one within the last hour, if any.
    pub fn recent(&self, now: Instant) -> Option<IpAddr> {
        let last = *self.last.lock().unwrap_or_else(|e| e.into_inner());
        last.filter(|(_, at)| now.duration_since(*at) < SHOW_FOR)
            .map(|(ip, _)| ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_taken_from_trusted_proxies_only_and_only_when_plain() {
        let proxy: SocketAddr = "10.0.0.5:40000".parse().unwrap();
        let stranger: SocketAddr = "203.0.113.7:40000".parse().unwrap();
        let trusted = TrustedProxies::new(vec![IpNet::parse("10.0.0.0/8").unwrap()]);
        let with = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(X_REQUEST_ID, HeaderValue::from_static(v));
            h
        };
        assert_eq!(trusted.request_id(&with("req-42.a:b"), proxy), "req-42.a:b");
        let generated = |id: String| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit());
        assert!(
            generated(trusted.request_id(&with("req-42"), stranger)),
            "a client's own"
        );
        assert!(
            generated(trusted.request_id(&with("a b\"c"), proxy)),
            "not plain"
        );
        assert!(
            generated(trusted.request_id(&HeaderMap::new(), proxy)),
            "none given"
        );
        let long: &'static str = Box::leak("x".repeat(129).into_boxed_str());
        assert!(
            generated(trusted.request_id(&with(long), proxy)),
            "too long"
        );
        let mut two = with("req-1");
        two.append(X_REQUEST_ID, HeaderValue::from_static("req-2"));
        assert!(
            generated(trusted.request_id(&two, proxy)),
            "two values: neither"
        );
        assert_ne!(
            trusted.request_id(&HeaderMap::new(), proxy),
            trusted.request_id(&HeaderMap::new(), proxy)
        );
    }

    #[test]
    fn untrusted_forwarders_are_noted_warned_about_sparingly_and_forgotten() {
        let w = UntrustedForwarders::default();
        let none = TrustedProxies::default();
        let ingress: IpAddr = "10.0.0.5".parse().unwrap();
        let mut h = HeaderMap::new();
        let t0 = Instant::now();
        assert_eq!(w.note(&none, &h, ingress, t0), (false, false), "no header");
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.9"));
        assert_eq!(w.note(&none, &h, ingress, t0), (true, true));
        assert_eq!(
            w.note(&none, &h, ingress, t0 + Duration::from_secs(60)),
            (true, false)
        );
        assert_eq!(
            w.note(&none, &h, ingress, t0 + WARN_EVERY + Duration::from_secs(1)),
            (true, true)
        );
        assert_eq!(w.recent(t0 + WARN_EVERY), Some(ingress));
        assert_eq!(
            w.recent(t0 + WARN_EVERY + SHOW_FOR + Duration::from_secs(2)),
            None
        );
        let listed = TrustedProxies::new(vec![IpNet::parse("10.0.0.0/8").unwrap()]);
        let fresh = UntrustedForwarders::default();
        assert_eq!(
            fresh.note(&listed, &h, ingress, t0),
            (false, false),
            "trusted"
        );
        assert_eq!(fresh.recent(t0), None);
        // A public peer sending the header is a client, not a forgotten
        // ingress: never named (trusting it would hand it the limits).
        for public in ["203.0.113.9", "2001:db8::1", "8.8.8.8"] {
            let ip: IpAddr = public.parse().unwrap();
            assert_eq!(fresh.note(&none, &h, ip, t0), (false, false), "{public}");
        }
        for internal in [
            "192.168.1.2",
            "172.16.0.9",
            "100.64.3.4",
            "::1",
            "fd00::7",
            "fe80::1",
            "::ffff:10.1.2.3",
        ] {
            let ip: IpAddr = internal.parse().unwrap();
            assert!(fresh.note(&none, &h, ip, t0).0, "{internal}");
        }
    }

    #[test]
    fn ip_networks() {
        let n = IpNet::parse("10.0.0.0/8").unwrap();
        assert!(n.contains("10.1.2.3".parse().unwrap()));
        assert!(!n.contains("11.0.0.1".parse().unwrap()));
        assert!(n.contains("::ffff:10.0.0.1".parse().unwrap()));
        assert!(IpNet::parse("127.0.0.1")
            .unwrap()
            .contains("127.0.0.1".parse().unwrap()));
        assert!(IpNet::parse("::1")
            .unwrap()
            .contains("::1".parse().unwrap()));
        assert!(IpNet::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert!(IpNet::parse("10.0.0.0/33").is_err());
        assert!(IpNet::parse("nope").is_err());
    }

    #[test]
    fn forwarded_headers_count_only_from_trusted_peers() {
        let trusted = TrustedProxies::new(vec![IpNet::parse("10.0.0.0/8").unwrap()]);
        let mut h = HeaderMap::new();
        h.insert(
            X_FORWARDED_FOR,
            HeaderValue::from_static("1.1.1.1, 10.0.0.7"),
        );
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        let proxy: SocketAddr = "10.0.0.1:1".parse().unwrap();
        let stranger: SocketAddr = "8.8.8.8:1".parse().unwrap();
        assert_eq!(
            trusted.client_ip(&h, proxy),
            "1.1.1.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(trusted.client_ip(&h, stranger), stranger.ip());
        assert!(trusted.forwarded_https(&h, proxy));
        assert!(!trusted.forwarded_https(&h, stranger));
        assert_eq!(
            trusted.x_forwarded_for(&h, proxy),
            "1.1.1.1, 10.0.0.7, 10.0.0.1"
        );
        assert_eq!(trusted.x_forwarded_for(&h, stranger), "8.8.8.8");
    }

    #[test]
    fn ports_and_brackets_do_not_let_the_client_choose_its_address() {
        let trusted = TrustedProxies::new(vec![IpNet::parse("10.0.0.0/8").unwrap()]);
        let proxy: SocketAddr = "10.0.0.1:1".parse().unwrap();
        let ip = |xff: &str| {
            let mut h = HeaderMap::new();
            h.insert(X_FORWARDED_FOR, HeaderValue::from_str(xff).unwrap());
            trusted.client_ip(&h, proxy)
        };
        // The client forges a left-hand entry; the proxy appends its peer with a port.
        assert_eq!(
            ip("6.6.6.6, 1.2.3.4:5678"),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            ip("6.6.6.6, [2001:db8::7]:443"),
            "2001:db8::7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            ip("6.6.6.6, [2001:db8::8]"),
            "2001:db8::8".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            ip("6.6.6.6, 10.0.0.9:80"),
            "6.6.6.6".parse::<IpAddr>().unwrap()
        );
        // Garbage on the right stops the walk at the trusted hop.
        assert_eq!(ip("6.6.6.6, unknown"), proxy.ip());
    }
}
