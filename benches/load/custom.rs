//! The custom scenario (`--connections/--rate/--duration`): one load spec
//! on the local stack with its baselines, or on a deployment given with
//! `--target`.

use crate::args::Args;
use crate::clients::{appsync_endpoint, browser_endpoint};
use crate::host::{client_sources, machine};
use crate::measure::{run_load, settle, Kind, LoadSpec, Target};
use crate::monitor::Monitor;
use crate::report::{log_run, print_table, Results};
use crate::stack::Stack;
use std::sync::Arc;
use std::time::Duration;

/// `--connections/--rate/--duration`: one load spec, on the local stack
/// (with baselines) or on `--target`.
pub(crate) async fn custom(args: &Args, stack: Option<&mut Stack>) -> Result<(), String> {
    let spec = LoadSpec {
        subscribers: args.connections.unwrap_or(1),
        rate: args.rate.unwrap_or(1000),
        warmup: Duration::from_secs(1),
        measure: Duration::from_secs_f64(args.duration.unwrap_or(10.0)),
        channel: args
            .channel
            .clone()
            .unwrap_or_else(|| "/default/loadtest".into()),
    };
    let sources = Arc::new(client_sources(spec.subscribers));
    let (targets, emu): (Vec<Target>, Option<Monitor>) = match stack {
        Some(stack) => (stack.targets(&sources), Some(stack.emulator_monitor())),
        None => {
            let url = args.target.clone().ok_or("no target")?;
            let mut ep = match (&args.token, &args.host) {
                (Some(token), Some(host)) => appsync_endpoint(url, token, host),
                (None, None) => browser_endpoint(
                    url,
                    args.cookie.clone().unwrap_or_default(),
                    args.origin.clone(),
                ),
                _ => return Err("--token and --host go together".into()),
            };
            ep.explicit = true;
            let proxy = args.pid.map(|pid| Monitor { pids: vec![pid] });
            (
                vec![Target {
                    kind: Kind::Custom,
                    ep,
                    proxy,
                }],
                None,
            )
        }
    };
    let kinds: Vec<Kind> = targets.iter().map(|t| t.kind).collect();
    let reps = if args.target.is_some() {
        1
    } else {
        args.reps.unwrap_or(1)
    };
    let mut results = Results::default();
    for rep in 0..reps {
        let mut order: Vec<&Target> = targets.iter().collect();
        order.rotate_left(rep % targets.len());
        for t in order {
            let spec = LoadSpec {
                channel: if args.target.is_some() {
                    spec.channel.clone()
                } else {
                    format!("/bench/custom-{}-{rep}", t.kind.name())
                },
                ..spec_clone(&spec)
            };
            let m = run_load(t, &spec, emu.as_ref()).await;
            log_run("custom", rep, t.kind, &m);
            match m {
                Ok(m) => results.add("custom", t.kind, &m),
                Err(e) if args.target.is_some() => return Err(e),
                Err(_) => {}
            }
            if let Some(mon) = &t.proxy {
                let mut mons = vec![mon];
                if let Some(e) = &emu {
                    mons.push(e);
                }
                settle(&mons, 0).await;
            }
        }
    }
    println!("\nMachine (client side): {}", machine());
    print_table(
        &results,
        "custom",
        &kinds,
        &format!(
            "{} subscriber(s), {} publishes/s, {} s",
            spec.subscribers,
            if spec.rate == 0 {
                "max".to_string()
            } else {
                spec.rate.to_string()
            },
            spec.measure.as_secs_f64()
        ),
    );
    Ok(())
}

fn spec_clone(s: &LoadSpec) -> LoadSpec {
    LoadSpec {
        subscribers: s.subscribers,
        rate: s.rate,
        warmup: s.warmup,
        measure: s.measure,
        channel: s.channel.clone(),
    }
}
