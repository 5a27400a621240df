//! The standard scenarios: their plan (full or `--quick`), idle memory,
//! handshake burst, latency and fan-out alternated over the targets and
//! repeated, the highest sustained fan-out, and the verdicts against the
//! relay's targets.

use crate::args::Args;
use crate::chart::write_report;
use crate::host::{client_sources, machine};
use crate::measure::{handshake_burst, memory_ramp, run_load, settle, Kind, LoadSpec, Target};
use crate::monitor::Monitor;
use crate::report::{fmt, log_run, print_table, Results};
use crate::shared::{shared_fanout, SharedPlan};
use crate::soak::soak;
use crate::stack::{Legs, Stack};
use crate::storm::storm;
use crate::{HANDSHAKE_CONCURRENCY, NOISY_OTHERS_PCT, SUSTAINED_P99};
use std::sync::Arc;
use std::time::Duration;

struct Plan {
    reps: usize,
    levels: Vec<usize>,
    burst: usize,
    latency: LoadSpec,
    fanout: LoadSpec,
    fanmax_subs: usize,
    fanmax_rates: Vec<u64>,
    fanmax_measure: Duration,
    storm_users: usize,
    storm_in_flight: usize,
    /// Wait after a storm's sockets are gone before its RSS is read again.
    storm_settle: Duration,
    soak_conns: usize,
    soak_hold: Duration,
    soak_every: Duration,
}

fn plan(args: &Args) -> Plan {
    let s = |ch: &str| ch.to_string();
    if args.quick {
        Plan {
            reps: args.reps.unwrap_or(1),
            levels: vec![100, 200],
            burst: 100,
            latency: LoadSpec {
                subscribers: 1,
                rate: 1000,
                warmup: Duration::from_millis(300),
                measure: Duration::from_secs(1),
                channel: s("lat"),
            },
            fanout: LoadSpec {
                subscribers: 20,
                rate: 20,
                warmup: Duration::from_millis(300),
                measure: Duration::from_secs(1),
                channel: s("fan"),
            },
            fanmax_subs: 20,
            fanmax_rates: vec![50, 100],
            fanmax_measure: Duration::from_secs(1),
            storm_users: 200,
            storm_in_flight: 64,
            storm_settle: Duration::from_secs(1),
            soak_conns: 200,
            soak_hold: Duration::from_secs(2),
            soak_every: Duration::from_secs(1),
        }
    } else {
        Plan {
            reps: args.reps.unwrap_or(3),
            levels: vec![1000, 5000, 10_000],
            burst: 2000,
            latency: LoadSpec {
                subscribers: 1,
                rate: 5000,
                warmup: Duration::from_secs(1),
                measure: Duration::from_secs(10),
                channel: s("lat"),
            },
            fanout: LoadSpec {
                subscribers: 1000,
                rate: 50,
                warmup: Duration::from_secs(1),
                measure: Duration::from_secs(10),
                channel: s("fan"),
            },
            fanmax_subs: 1000,
            // From 25k/s: with TLS on both legs neither proxy holds 50k/s.
            fanmax_rates: vec![25, 50, 75, 100, 150, 200, 300, 400],
            fanmax_measure: Duration::from_millis(2500),
            storm_users: 10_000,
            storm_in_flight: 1000,
            storm_settle: Duration::from_secs(12),
            // Three of AppSync's 60 s keep-alive rounds.
            soak_conns: 10_000,
            soak_hold: Duration::from_secs(185),
            soak_every: Duration::from_secs(10),
        }
    }
}

fn want(args: &Args, scenario: &str) -> bool {
    args.scenarios
        .as_ref()
        .is_none_or(|s| s.iter().any(|x| x == scenario))
}

pub(crate) async fn standard(args: &Args, stack: &mut Stack, nofile: u64) -> Result<(), String> {
    let mut p = plan(args);
    // The relay holds two sockets per connection, in a process that
    // inherits our open-files limit: stay below it rather than fail.
    let fit = (nofile.saturating_sub(200) / 2) as usize / 100 * 100;
    if p.levels.iter().any(|&l| l > fit) {
        println!(
            "open-files limit {nofile} (hard; raising it needs CAP_SYS_RESOURCE): the relay can hold \
             {fit} connections (2 sockets each), so the top memory level is {fit}"
        );
        for l in &mut p.levels {
            *l = (*l).min(fit);
        }
        p.levels.dedup();
        p.storm_users = p.storm_users.min(fit);
        p.soak_conns = p.soak_conns.min(fit);
    }
    let mut shared_plan = SharedPlan::new(args.quick);
    for l in &mut shared_plan.levels {
        *l = (*l).min(fit);
    }
    shared_plan.levels.dedup();
    let max_conns = p
        .levels
        .iter()
        .copied()
        .max()
        .unwrap_or(0)
        .max(p.fanmax_subs)
        .max(p.storm_users)
        .max(shared_plan.levels.iter().copied().max().unwrap_or(0));
    let sources = Arc::new(client_sources(max_conns));
    let targets = stack.targets(&sources);
    let kinds: Vec<Kind> = targets.iter().map(|t| t.kind).collect();
    let emu = stack.emulator_monitor();
    let all_mons = |t: &Target| -> Vec<Monitor> {
        let mut v = vec![emu.clone()];
        v.extend(t.proxy.clone());
        v
    };
    let mut results = Results::default();

    // Fresh processes first: per-connection memory is measured before any
    // other scenario has grown (and freed) the proxies' heaps.
    if want(args, "memory") {
        println!(
            "\n== idle connections: memory and handshake rate ({:?}) ==",
            p.levels
        );
        for t in &targets {
            let mons = all_mons(t);
            let refs: Vec<&Monitor> = mons.iter().collect();
            let base: usize = refs.iter().map(|m| m.open_files()).sum();
            let m = memory_ramp(t, &p.levels, &emu).await;
            log_run("memory", 0, t.kind, &m);
            if let Ok(m) = &m {
                results.add("memory", t.kind, m);
            }
            settle(&refs, base).await;
            stack.check_alive()?;
        }
    }

    if want(args, "storm") {
        println!(
            "\n== reconnect storm: {} users with fresh tokens, {} handshakes in flight ==",
            p.storm_users, p.storm_in_flight
        );
        for t in &targets {
            let mons = all_mons(t);
            let refs: Vec<&Monitor> = mons.iter().collect();
            let base: usize = refs.iter().map(|m| m.open_files()).sum();
            let minted = std::time::Instant::now();
            let eps: Vec<_> = stack
                .mint_users(p.storm_users)
                .iter()
                .filter_map(|(user, token)| stack.endpoint(t.kind, user, token, &sources))
                .collect();
            println!(
                "  [storm] {:<6} {} tokens signed in {:.1} s (not timed)",
                t.kind.name(),
                eps.len(),
                minted.elapsed().as_secs_f64()
            );
            let mut m = storm(t, &eps, p.storm_in_flight).await;
            drop(eps);
            settle(&refs, base).await;
            if let Some(proxy) = &t.proxy {
                // Does the memory come back once the storm's sockets are gone?
                // (jemalloc purges freed pages after its 10 s decay.)
                tokio::time::sleep(p.storm_settle).await;
                m.push(("proxy_rss_after_mib", proxy.rss_kib() as f64 / 1024.0));
            }
            log_run("storm", 0, t.kind, &Ok(m.clone()));
            results.add("storm", t.kind, &m);
            stack.check_alive()?;
        }
    }

    for rep in 0..p.reps {
        // Alternate which target goes first.
        let mut order: Vec<&Target> = targets.iter().collect();
        order.rotate_left(rep % targets.len());
        for t in order {
            let mons = all_mons(t);
            let refs: Vec<&Monitor> = mons.iter().collect();
            let base: usize = refs.iter().map(|m| m.open_files()).sum();
            if want(args, "handshake") {
                let m = handshake_burst(t, p.burst).await;
                log_run("handshake", rep, t.kind, &m);
                if let Ok(m) = &m {
                    results.add("handshake", t.kind, m);
                }
                settle(&refs, base).await;
            }
            for (name, spec) in [("latency", &p.latency), ("fanout", &p.fanout)] {
                if !want(args, name) {
                    continue;
                }
                let spec = LoadSpec {
                    channel: format!("/bench/{}-{}-{rep}", spec.channel, t.kind.name()),
                    subscribers: spec.subscribers,
                    rate: spec.rate,
                    warmup: spec.warmup,
                    measure: spec.measure,
                };
                let m = run_load(t, &spec, Some(&emu)).await;
                log_run(name, rep, t.kind, &m);
                if let Ok(m) = &m {
                    results.add(name, t.kind, m);
                }
                settle(&refs, base).await;
            }
            stack.check_alive()?;
        }
    }

    if want(args, "fanmax") {
        println!(
            "\n== fan-out: highest delivery rate with no loss and p99 < {} ms ({} subscribers) ==",
            SUSTAINED_P99.as_millis(),
            p.fanmax_subs
        );
        for t in &targets {
            let mons = all_mons(t);
            let refs: Vec<&Monitor> = mons.iter().collect();
            let base: usize = refs.iter().map(|m| m.open_files()).sum();
            let mut best = 0.0f64;
            for (i, &rate) in p.fanmax_rates.iter().enumerate() {
                let spec = LoadSpec {
                    subscribers: p.fanmax_subs,
                    rate,
                    warmup: Duration::from_millis(500),
                    measure: p.fanmax_measure,
                    channel: format!("/bench/max-{}-{i}", t.kind.name()),
                };
                let m = run_load(t, &spec, Some(&emu)).await;
                settle(&refs, base).await;
                let ok = match &m {
                    Ok(m) => {
                        let get =
                            |k: &str| m.iter().find(|(n, _)| *n == k).map_or(0.0, |(_, v)| *v);
                        let pass = get("lost") == 0.0
                            && get("closed") == 0.0
                            && get("p99_us") <= SUSTAINED_P99.as_micros() as f64;
                        println!(
                            "  [fanmax] {:<6} {:>7} deliveries/s offered: delivered/s={} lost={} p99={} ms proxy_cpu={}% others_cpu={}% -> {}",
                            t.kind.name(),
                            rate * p.fanmax_subs as u64,
                            fmt(Some(get("delivered_per_s"))),
                            get("lost"),
                            fmt(Some(get("p99_us") / 1000.0)),
                            fmt(Some(get("proxy_cpu_pct"))),
                            fmt(Some(get("others_cpu_pct"))),
                            if pass { "sustained" } else { "not sustained" }
                        );
                        if pass {
                            best = get("delivered_per_s");
                        }
                        pass
                    }
                    Err(e) => {
                        println!("  [fanmax] {:<6} rate {rate}: FAILED: {e}", t.kind.name());
                        false
                    }
                };
                stack.check_alive()?;
                if !ok {
                    break;
                }
            }
            results.add(
                "fanmax",
                t.kind,
                &vec![("sustained_deliveries_per_s", best)],
            );
        }
    }

    if want(args, "soak") {
        println!(
            "\n== soak: {} idle connections held {:?} with keep-alives flowing, then closed ==",
            p.soak_conns, p.soak_hold
        );
        for t in targets.iter().filter(|t| t.proxy.is_some()) {
            let mons = all_mons(t);
            let refs: Vec<&Monitor> = mons.iter().collect();
            let base: usize = refs.iter().map(|m| m.open_files()).sum();
            let before = t.proxy.as_ref().map(|m| m.rss_kib() as f64 / 1024.0);
            let m = soak(t, p.soak_conns, p.soak_hold, p.soak_every).await;
            settle(&refs, base).await;
            tokio::time::sleep(p.storm_settle).await;
            let m = m.map(|mut m| {
                if let (Some(b), Some(proxy)) = (before, &t.proxy) {
                    m.push(("proxy_rss_before_mib", b));
                    m.push(("proxy_rss_after_mib", proxy.rss_kib() as f64 / 1024.0));
                }
                m
            });
            log_run("soak", 0, t.kind, &m);
            if let Ok(m) = &m {
                results.add("soak", t.kind, m);
            }
            stack.check_alive()?;
        }
    }

    if want(args, "shared") {
        let mut with_shared = targets.clone();
        with_shared.extend(stack.shared_target(&sources));
        shared_fanout(stack, &with_shared, &shared_plan, &emu, &mut results).await?;
    }

    println!(
        "\n## Results (medians of {} repetitions; memory, storm, fanmax and soak: one run)",
        p.reps
    );
    println!("\nMachine: {}", machine());
    println!(
        "\nLatency: publish due time → `data` received, µs; CPU: % of one core over the measured window."
    );
    print_table(
        &results,
        "memory",
        &kinds,
        "Idle connections (each: connection_init + 1 subscription)",
    );
    print_table(
        &results,
        "storm",
        &kinds,
        &format!(
            "Reconnect storm ({} users, fresh tokens, {} in flight; one run)",
            p.storm_users, p.storm_in_flight
        ),
    );
    print_table(
        &results,
        "handshake",
        &kinds,
        &format!(
            "Handshake burst ({} connections, {HANDSHAKE_CONCURRENCY} in flight)",
            p.burst
        ),
    );
    print_table(
        &results,
        "latency",
        &kinds,
        &format!("Latency: 1 subscriber, {} publishes/s", p.latency.rate),
    );
    print_table(
        &results,
        "fanout",
        &kinds,
        &format!(
            "Fan-out: {} subscribers, {} publishes/s = {} deliveries/s",
            p.fanout.subscribers,
            p.fanout.rate,
            p.fanout.rate * p.fanout.subscribers as u64
        ),
    );
    print_table(
        &results,
        "fanmax",
        &kinds,
        "Fan-out: highest sustained delivery rate",
    );
    print_table(
        &results,
        "soak",
        &kinds,
        &format!(
            "Soak ({} idle connections held {:?}, keep-alives flowing; one run)",
            p.soak_conns, p.soak_hold
        ),
    );
    verdicts(&results, &p, stack.legs);
    let slug = match stack.legs {
        Legs::Plain => "plain",
        Legs::Tls => "tls",
    };
    match write_report(&results, slug, &p.levels) {
        Ok(path) => println!("\nreport (SVG charts): {}", path.display()),
        Err(e) => println!("\nreport not written: {e}"),
    }
    Ok(())
}

fn verdicts(r: &Results, p: &Plan, legs: Legs) {
    println!("\n### Targets ({})\n", legs.label());
    let noisy: usize = r
        .values
        .iter()
        .filter(|((_, m, _), _)| *m == "others_cpu_pct")
        .map(|(_, v)| v.iter().filter(|x| **x > NOISY_OTHERS_PCT).count())
        .sum();
    if noisy > 0 {
        println!(
            "NOTE: in {noisy} load run(s) other processes used more than {NOISY_OTHERS_PCT:.0}% CPU \
             (others_cpu_pct): latency ratios from a shared machine are unreliable; rerun on a quiet one.\n"
        );
    }
    let med = |s: &str, m: &str, k: Kind| r.median(s, m, k);
    let added = |q: &str, k: Kind| Some(med("latency", q, k)? - med("latency", q, Kind::Direct)?);
    let line = |name: &str, value: String, ok: Option<bool>| {
        let verdict = match ok {
            Some(true) => "met",
            Some(false) => "NOT met",
            None => "not measured",
        };
        println!("- {name}: {value} → {verdict}");
    };
    let cmp = |a: Option<f64>, b: Option<f64>, limit: f64| -> (String, Option<bool>) {
        match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => (format!("{:.2}× nginx", a / b), Some(a / b <= limit)),
            (Some(a), Some(b)) => (
                format!("relay {a:.1}, nginx {b:.1} (nginx adds nothing measurable)"),
                Some(a <= b.max(0.0) + 1.0),
            ),
            _ => ("–".into(), None),
        }
    };
    let (v, ok) = cmp(
        added("p50_us", Kind::Relay),
        added("p50_us", Kind::Nginx),
        1.0,
    );
    line(
        &format!("latency @ {}/s: added p50 ≤ 1.0× nginx's", p.latency.rate),
        v,
        ok,
    );
    let (v, ok) = cmp(
        added("p99_us", Kind::Relay),
        added("p99_us", Kind::Nginx),
        1.2,
    );
    line(
        &format!("latency @ {}/s: added p99 ≤ 1.2× nginx's", p.latency.rate),
        v,
        ok,
    );
    let lost = med("fanout", "lost", Kind::Relay).zip(med("fanout", "closed", Kind::Relay));
    line(
        "fan-out: nothing lost",
        lost.map_or("–".into(), |(l, c)| {
            format!("{l} lost, {c} closed (median)")
        }),
        lost.map(|(l, c)| l == 0.0 && c == 0.0),
    );
    let (v, ok) = cmp(
        med("fanout", "p99_us", Kind::Relay),
        med("fanout", "p99_us", Kind::Nginx),
        1.2,
    );
    line("fan-out: p99 ≤ 1.2× nginx's", v, ok);
    // ≥ nginx's: nginx over the relay at most 1.0. Neither holding the
    // lowest step says nothing either way.
    let sustained = |k: Kind| med("fanmax", "sustained_deliveries_per_s", k).filter(|v| *v > 0.0);
    let (v, ok) = match (sustained(Kind::Nginx), sustained(Kind::Relay)) {
        (None, None) => ("neither proxy sustained the lowest step".into(), None),
        (Some(n), None) => (format!("relay none, nginx {n:.0}/s"), Some(false)),
        (None, Some(r)) => (format!("relay {r:.0}/s, nginx none"), Some(true)),
        (n, r) => cmp(n, r, 1.0),
    };
    line(
        "fan-out: highest sustained delivery rate ≥ nginx's (nginx's as a multiple of the relay's)",
        v.replace("× nginx", "×"),
        ok,
    );
    let top = p.levels.iter().copied().max().unwrap_or(0);
    let key = |k: Kind| {
        med(
            "memory",
            Box::leak(format!("proxy_kib_per_conn@{top}").into_boxed_str()),
            k,
        )
    };
    let per = key(Kind::Relay);
    match legs {
        Legs::Plain => line(
            &format!("memory: ≤ 8 KiB RSS per idle relayed connection at {top}"),
            per.map_or("–".into(), |v| format!("{v:.1} KiB")),
            per.map(|v| v <= 8.0),
        ),
        Legs::Tls => {
            let (v, ok) = cmp(per, key(Kind::Nginx), 0.5);
            line(
                &format!("memory: ≤ 0.5× nginx's RSS per idle connection at {top}"),
                format!(
                    "{} ({v})",
                    per.map_or("–".into(), |v| format!("{v:.1} KiB"))
                ),
                ok,
            );
        }
    }
    let failed = med("storm", "failed", Kind::Relay);
    line(
        &format!(
            "reconnect storm of {} users: no handshake fails or times out",
            p.storm_users
        ),
        failed.map_or("–".into(), |f| format!("{f} failed")),
        failed.map(|f| f == 0.0),
    );
    let rss = |k: &str| med("storm", k, Kind::Relay);
    if let (Some(before), Some(held), Some(after)) = (
        rss("proxy_rss_before_mib"),
        rss("proxy_rss_held_mib"),
        rss("proxy_rss_after_mib"),
    ) {
        let returned = if held > before {
            (held - after) / (held - before) * 100.0
        } else {
            100.0
        };
        line(
            &format!(
                "memory returns: {:?} after the storm's sockets close, RSS within 10 % of before it",
                p.storm_settle
            ),
            format!(
                "{before:.1} MiB before, {held:.1} held, {after:.1} after ({returned:.0} % of the growth returned; \
                 what stays includes the {} verified tokens cached until they expire)",
                p.storm_users
            ),
            Some(after <= before * 1.1),
        );
    }
    let soak = |k: &str| med("soak", k, Kind::Relay);
    if let (Some(start), Some(end), Some(closed), Some(ka)) = (
        soak("proxy_rss_start_mib"),
        soak("proxy_rss_end_mib"),
        soak("closed_while_held"),
        soak("keepalives_per_conn"),
    ) {
        line(
            &format!(
                "soak: {} connections held {:?}: none closed, RSS grows < 2 %",
                p.soak_conns, p.soak_hold
            ),
            format!(
                "{closed} closed, {ka:.1} keep-alives per client, RSS {start:.1} → {end:.1} MiB"
            ),
            Some(closed == 0.0 && end <= start * 1.02),
        );
    }
    if let (Some(before), Some(after)) = (soak("proxy_rss_before_mib"), soak("proxy_rss_after_mib"))
    {
        line(
            "soak: RSS back within 10 % of before once they closed",
            format!("{before:.1} MiB before, {after:.1} after"),
            Some(after <= before * 1.1),
        );
    }
    // The relay shares 2 cores with the emulator (verifying the same cold
    // tokens) and the clients, so the end-to-end rate is the machine's; its
    // own capacity is the cores over its CPU per handshake.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let per = med("storm", "proxy_cpu_us_per_handshake", Kind::Relay);
    let rate = med("storm", "cold_handshakes_per_s", Kind::Relay);
    let direct = med("storm", "cold_handshakes_per_s", Kind::Direct);
    let capacity = per.filter(|v| *v > 0.0).map(|v| cores * 1e6 / v);
    let value = format!(
        "{} CPU µs per handshake → {}/s on {cores} cores; measured end to end {}/s (direct {}/s)",
        fmt(per),
        fmt(capacity),
        fmt(rate),
        fmt(direct)
    );
    match legs {
        Legs::Plain => line(
            "cold handshakes: ≥ 20 000/s of relay capacity (browser leg plain)",
            value,
            capacity.map(|c| c >= 20_000.0),
        ),
        Legs::Tls => {
            println!("- cold handshakes with TLS on the browser leg: {value} (reported, no target)")
        }
    }
    let hs = med("handshake", "handshakes_per_s", Kind::Relay);
    line(
        "handshakes: ≥ 2 000 new authenticated connections/s (cached verification)",
        hs.map_or("–".into(), |v| format!("{v:.0}/s")),
        hs.map(|v| v >= 2000.0),
    );
}
