//! Load harness: the relay against two baselines in the same run.
//!
//! `cargo bench --bench load` starts, on loopback only: a JWKS (in this
//! process), the AppSync Events emulator (`appsync-relay emulate`, Cognito
//! mode), the relay (`appsync-relay serve`, limits lifted) and nginx (a plain
//! WebSocket reverse proxy in front of the same emulator, when `nginx` is on
//! PATH). It then drives the same load through three targets, alternating
//! and repeated, and prints medians and ratios:
//!
//! - `direct`: clients talk to the emulator themselves (the floor);
//! - `nginx`: clients → nginx → emulator;
//! - `relay`: clients (cookie + Origin, as a browser) → relay → emulator.
//!
//! Scenarios: idle memory and handshake rate at 1k/5k/10k connections,
//! a reconnect storm of 10k users with fresh tokens (cold verification),
//! a handshake burst, publish → data latency at 5 000 msg/s with one
//! subscriber, fan-out to 1 000 subscribers at 50 000 deliveries/s, and the
//! highest fan-out delivery rate sustained without loss, and one channel
//! with 1 000 and 10 000 subscribers that the relay shares
//! (`--shared-channel`), with the AppSync operations per publish read from
//! the emulator's meter.
//!
//! Latency is end-to-end publish → `data` with the clock of this process on
//! both ends. Publishes are sent on a fixed schedule by a dedicated thread
//! and stamped with the time they were *due*, not the time they went out,
//! so a stalled target cannot slow the sender down and hide its stall (no
//! coordinated omission). The clients share the machine with the targets:
//! they run on one async thread plus the publisher thread, with
//! pre-built frames, and cost the same in every column.
//!
//! `cargo bench --bench load -- --help` lists the flags; `--quick` is the CI
//! smoke run; `--target wss://…` runs a custom scenario against any
//! deployment. See benches/README.md.

#[path = "../common/mod.rs"]
mod common;

mod args;
mod chart;
mod clients;
mod clock;
mod custom;
mod host;
mod measure;
mod monitor;
mod nginx;
mod processes;
mod publisher;
mod report;
mod scenarios;
mod shared;
mod soak;
mod stack;
mod storm;
mod tls;

use args::parse_args;
use clock::now_ns;
use custom::custom;
use host::raise_nofile;
use processes::watchdog;
use scenarios::standard;
use stack::Stack;
use std::time::Duration;

/// The relay binary `cargo bench` builds alongside this bench.
pub(crate) const RELAY_BIN: &str = env!("CARGO_BIN_EXE_appsync-relay");
pub(crate) const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");
pub(crate) const USERNAME: &str = "bench-user";
pub(crate) const ORIGIN_HEADER: &str = "http://127.0.0.1";
/// Handshakes in flight at once while opening many connections.
pub(crate) const HANDSHAKE_CONCURRENCY: usize = 64;
/// Every wait on a peer is bounded by this.
pub(crate) const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// A fan-out step counts as sustained only with no loss and p99 below this.
pub(crate) const SUSTAINED_P99: Duration = Duration::from_millis(50);
/// A run during which other processes used more CPU than this (% of one
/// core) is flagged: on 2 cores its latencies say more about them.
pub(crate) const NOISY_OTHERS_PCT: f64 = 10.0;

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    now_ns();
    watchdog(if args.quick {
        Duration::from_secs(180)
    } else {
        Duration::from_secs(60 * 60)
    });
    let limit = raise_nofile(65_536);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    let local = tokio::task::LocalSet::new();
    let outcome = local.block_on(&rt, async {
        if args.target.is_some() {
            return custom(&args, None).await;
        }
        for &legs in &args.legs {
            // A fresh stack per mode: memory is measured on fresh processes.
            let mut stack = Stack::start(!args.no_nginx, legs)?;
            println!(
                "\n######## {} ########\nstack: emulator {} · relay {}{} · open-files limit {limit}",
                legs.label(),
                stack.emu_host,
                stack.relay_addr,
                stack
                    .nginx
                    .as_ref()
                    .map(|(_, a)| format!(" · nginx {a}"))
                    .unwrap_or_default()
            );
            if args.connections.is_some() || args.rate.is_some() || args.duration.is_some() {
                custom(&args, Some(&mut stack)).await?;
            } else {
                standard(&args, &mut stack, limit).await?;
            }
        }
        Ok(())
    });
    if let Err(e) = outcome {
        eprintln!("load bench failed: {e}");
        std::process::exit(1);
    }
}
