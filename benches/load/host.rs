//! The machine the harness runs on: the open-files limit, client source
//! addresses when the ephemeral port range is too small, and the one-line
//! description printed with the results.

use crate::processes::which;
use std::net::Ipv4Addr;
use std::process::Command;

/// Raises the open-files limit (children inherit it): 10k relayed
/// connections are 20k sockets in the relay and 10k here.
pub(crate) fn raise_nofile(want: u64) -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    if soft >= want {
        return soft;
    }
    if setrlimit(Resource::RLIMIT_NOFILE, want, want.max(hard)).is_ok() {
        return want;
    }
    let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    hard.max(soft)
}

/// Client source addresses: one is enough unless the ephemeral port range
/// cannot hold both legs of `conns` connections.
pub(crate) fn client_sources(conns: usize) -> Vec<Ipv4Addr> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let v: Vec<u64> = s
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            Some(v.get(1)? - v.first()? + 1)
        })
        .unwrap_or(28_232);
    if range as usize >= 2 * conns + 4000 {
        Vec::new()
    } else {
        println!(
            "ephemeral port range holds {range} ports: clients use 127.0.0.2-127.0.0.9 as sources"
        );
        (2..10).map(|i| Ipv4Addr::new(127, 0, 0, i)).collect()
    }
}

pub(crate) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let rustc = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let nginx = which("nginx")
        .and_then(|b| Command::new(b).arg("-v").output().ok())
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string())
        .unwrap_or_else(|| "nginx: not installed".into());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!(
        "{} cores, {cpu}, Linux {}, {rustc}, {nginx}; load average at the end: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel.trim(),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    )
}
