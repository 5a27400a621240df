//! Command-line flags: what `cargo bench --bench load -- …` accepts, the
//! `--help` text, and the parser.

#[derive(Debug, Default, Clone)]
pub(crate) struct Args {
    pub(crate) quick: bool,
    pub(crate) target: Option<String>,
    pub(crate) cookie: Option<String>,
    pub(crate) origin: Option<String>,
    pub(crate) token: Option<String>,
    pub(crate) host: Option<String>,
    pub(crate) channel: Option<String>,
    pub(crate) connections: Option<usize>,
    pub(crate) rate: Option<u64>,
    pub(crate) duration: Option<f64>,
    pub(crate) reps: Option<usize>,
    pub(crate) pid: Option<u32>,
    pub(crate) scenarios: Option<Vec<String>>,
    pub(crate) no_nginx: bool,
    /// Which leg modes to run, in order (default: plain, then TLS).
    pub(crate) legs: Vec<Legs>,
}

use crate::stack::Legs;

const HELP: &str = "\
cargo bench --bench load [-- FLAGS]

Without flags: the standard scenarios against direct, nginx and the relay
(~7 min on 2 cores). FLAGS:
  --quick               seconds-long smoke run with tiny numbers (CI)
  --scenarios LIST      comma-separated subset of memory,storm,handshake,latency,
                        fanout,fanmax,soak,shared
  --reps N              repetitions of the alternating runs (default 3)
  --no-nginx            skip the nginx baseline
  --legs MODE           plain, tls or both (default both: every scenario with
                        ws:// legs, then again with TLS on both legs, on a
                        fresh stack)
Custom scenario (local stack, with baselines, unless --target is given):
  --connections N       subscribers (default 1)
  --rate N              publishes/s (default 1000; 0 = as fast as possible,
                        64 in flight, latency then from the actual send)
  --duration SECS       measured seconds (default 10, after 1 s warm-up)
Against your own deployment (only these talk to a non-loopback address):
  --target URL          ws:// or wss:// real-time URL, e.g. wss://app.example.com/event/realtime
  --cookie STR          Cookie header (Amplify's session cookies)
  --origin STR          Origin header
  --channel CH          channel to use (default /default/loadtest)
  --token JWT --host H  talk to AppSync itself: header- subprotocol and in-message auth
  --pid PID             a local process to report RSS/CPU for (the relay)
";

pub(crate) fn parse_args() -> Result<Args, String> {
    let mut a = Args::default();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match flag.as_str() {
            // `cargo bench` passes this to every harness = false bench.
            "--bench" => {}
            "--quick" => a.quick = true,
            "--no-nginx" => a.no_nginx = true,
            "--legs" => {
                a.legs = match value("--legs")?.as_str() {
                    "plain" => vec![Legs::Plain],
                    "tls" => vec![Legs::Tls],
                    "both" => vec![Legs::Plain, Legs::Tls],
                    other => return Err(format!("--legs {other}: plain, tls or both")),
                }
            }
            "--target" => a.target = Some(value("--target")?),
            "--cookie" => a.cookie = Some(value("--cookie")?),
            "--origin" => a.origin = Some(value("--origin")?),
            "--token" => a.token = Some(value("--token")?),
            "--host" => a.host = Some(value("--host")?),
            "--channel" => a.channel = Some(value("--channel")?),
            "--connections" => a.connections = Some(num(&value("--connections")?)?),
            "--rate" => a.rate = Some(num(&value("--rate")?)?),
            "--duration" => a.duration = Some(num(&value("--duration")?)?),
            "--reps" => a.reps = Some(num(&value("--reps")?)?),
            "--pid" => a.pid = Some(num(&value("--pid")?)?),
            "--scenarios" => {
                a.scenarios = Some(
                    value("--scenarios")?
                        .split(',')
                        .map(|s| s.trim().to_string())
                        .collect(),
                )
            }
            "-h" | "--help" => {
                print!("{HELP}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown flag {other} (see --help)")),
        }
    }
    if a.legs.is_empty() {
        a.legs = vec![Legs::Plain, Legs::Tls];
    }
    Ok(a)
}

fn num<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    s.parse().map_err(|_| format!("'{s}' is not a number"))
}
