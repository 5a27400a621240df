//! Results: every run's measures collected per scenario, metric and
//! target, medians over repetitions, the Markdown tables with ratios and
//! latency added over direct, and the one-line log of each run.

use crate::measure::{Kind, Measure};
use crate::NOISY_OTHERS_PCT;
use std::collections::HashMap;
use std::fmt::Write as _;

#[derive(Default)]
pub(crate) struct Results {
    /// (scenario, metric, target) → one value per repetition.
    pub(crate) values: HashMap<(String, &'static str, Kind), Vec<f64>>,
    order: Vec<(String, &'static str)>,
}

impl Results {
    pub(crate) fn add(&mut self, scenario: &str, kind: Kind, m: &Measure) {
        for (metric, v) in m {
            let key = (scenario.to_string(), *metric);
            if !self.order.contains(&key) {
                self.order.push(key.clone());
            }
            self.values
                .entry((scenario.to_string(), metric, kind))
                .or_default()
                .push(*v);
        }
    }

    /// The scenarios that recorded anything, in the order they did.
    pub(crate) fn scenarios(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (s, _) in &self.order {
            if !out.contains(s) {
                out.push(s.clone());
            }
        }
        out
    }

    pub(crate) fn median(&self, scenario: &str, metric: &str, kind: Kind) -> Option<f64> {
        let v = self
            .values
            .iter()
            .find(|((s, m, k), _)| s == scenario && *m == metric && *k == kind)
            .map(|(_, v)| v.clone())?;
        median(v)
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

pub(crate) fn fmt(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(v) if v.abs() >= 1000.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 100.0 => format!("{v:.1}"),
        Some(v) if v.abs() >= 1.0 => format!("{v:.2}"),
        Some(v) => format!("{v:.3}"),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b.abs() > 1e-9 => format!("{:.2}×", a / b),
        _ => "–".into(),
    }
}

pub(crate) fn print_table(results: &Results, scenario: &str, kinds: &[Kind], title: &str) {
    let metrics: Vec<&'static str> = results
        .order
        .iter()
        .filter(|(s, _)| s == scenario)
        .map(|(_, m)| *m)
        .collect();
    if metrics.is_empty() {
        return;
    }
    println!("\n### {title}\n");
    let mut head = "| metric |".to_string();
    let mut rule = "|---|".to_string();
    for k in kinds {
        let _ = write!(head, " {} |", k.name());
        rule.push_str("---:|");
    }
    // One ratio column per relay target, when nginx ran beside it.
    let ratios: Vec<Kind> = [Kind::Relay, Kind::Shared]
        .into_iter()
        .filter(|k| kinds.contains(k) && kinds.contains(&Kind::Nginx))
        .collect();
    for k in &ratios {
        let _ = write!(head, " {}/nginx |", k.name());
        rule.push_str("---:|");
    }
    println!("{head}\n{rule}");
    for metric in metrics {
        let mut row = format!("| {metric} |");
        for k in kinds {
            let _ = write!(row, " {} |", fmt(results.median(scenario, metric, *k)));
        }
        for k in &ratios {
            let _ = write!(
                row,
                " {} |",
                ratio(
                    results.median(scenario, metric, *k),
                    results.median(scenario, metric, Kind::Nginx)
                )
            );
        }
        println!("{row}");
    }
    // Latency over the floor: what each proxy adds to a direct connection.
    if kinds.contains(&Kind::Direct) {
        for q in ["p50_us", "p99_us"] {
            let direct = results.median(scenario, q, Kind::Direct);
            let Some(direct) = direct else { continue };
            let mut row = format!("| added {q} (over direct) |");
            let mut added = HashMap::new();
            for k in kinds {
                let v = results.median(scenario, q, *k).map(|v| v - direct);
                added.insert(*k, v);
                let _ = write!(row, " {} |", fmt(v));
            }
            for k in &ratios {
                let _ = write!(row, " {} |", ratio(added[k], added[&Kind::Nginx]));
            }
            println!("{row}");
        }
    }
}

pub(crate) fn log_run(scenario: &str, rep: usize, kind: Kind, m: &Result<Measure, String>) {
    match m {
        Ok(m) => {
            let pick: Vec<String> = m
                .iter()
                .filter(|(k, _)| {
                    matches!(
                        *k,
                        "p50_us"
                            | "p99_us"
                            | "delivered_per_s"
                            | "lost"
                            | "closed"
                            | "handshakes_per_s"
                            | "cold_handshakes_per_s"
                            | "handshake_p99_ms"
                            | "failed"
                            | "keepalives_per_conn"
                            | "closed_while_held"
                            | "growth_kib_per_conn"
                            | "proxy_cpu_us_per_handshake"
                            | "proxy_cpu_pct"
                    ) || k.starts_with("proxy_kib_per_conn@")
                        || k.starts_with("emulator_kib_per_conn@")
                })
                .map(|(k, v)| format!("{k}={}", fmt(Some(*v))))
                .collect();
            let others = m
                .iter()
                .find(|(k, _)| *k == "others_cpu_pct")
                .map_or(0.0, |(_, v)| *v);
            let noisy = if others > NOISY_OTHERS_PCT {
                format!("  (NOISY: other processes used {others:.0}% CPU)")
            } else {
                String::new()
            };
            println!(
                "  [{scenario} rep {rep}] {:<6} {}{noisy}",
                kind.name(),
                pick.join(" ")
            );
        }
        Err(e) => println!("  [{scenario} rep {rep}] {:<6} FAILED: {e}", kind.name()),
    }
}
