//! The HTML report: the run's medians as SVG bar charts (latency
//! percentiles, sustained fan-out, memory per connection by level), the
//! targets side by side, written next to the build (`target/`) at the end
//! of each leg mode. No JavaScript, no external assets: one file to open or
//! attach.

use crate::measure::Kind;
use crate::report::Results;
use std::fmt::Write as _;
use std::path::PathBuf;

/// One group of bars (a percentile, a level): a value per target.
struct Group {
    label: String,
    bars: Vec<(Kind, f64)>,
}

fn colour(k: Kind) -> &'static str {
    match k {
        Kind::Direct => "#7f7f7f",
        Kind::Nginx => "#2ca02c",
        Kind::Relay => "#1f77b4",
        Kind::Shared => "#ff7f0e",
        Kind::Custom => "#9467bd",
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A grouped bar chart; empty when there is nothing to draw.
fn bar_chart(title: &str, unit: &str, groups: &[Group]) -> String {
    let max = groups
        .iter()
        .flat_map(|g| g.bars.iter().map(|(_, v)| *v))
        .fold(0.0f64, f64::max);
    if groups.is_empty() || max <= 0.0 {
        return String::new();
    }
    let mut kinds: Vec<Kind> = Vec::new();
    for (k, _) in groups.iter().flat_map(|g| g.bars.iter()) {
        if !kinds.contains(k) {
            kinds.push(*k);
        }
    }
    let (bar_w, gap, left, top, plot_h) = (22.0, 18.0, 60.0, 40.0, 200.0);
    let group_w = bar_w * kinds.len() as f64 + gap;
    // Wide enough for the bars, the legend and the title.
    let width = (left + group_w * groups.len() as f64 + 20.0)
        .max(left + 90.0 * kinds.len() as f64 + 20.0)
        .max(left + 7.5 * title.len().max(unit.len()) as f64);
    let height = top + plot_h + 60.0;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" font-family="sans-serif" font-size="11">"#
    );
    let _ = write!(
        svg,
        r##"<text x="{left}" y="16" font-size="13" font-weight="bold">{}</text><text x="{left}" y="30" fill="#555">{}</text>"##,
        escape(title),
        escape(unit)
    );
    let y0 = top + plot_h;
    let _ = write!(
        svg,
        r##"<line x1="{left}" y1="{y0}" x2="{:.0}" y2="{y0}" stroke="#333"/>"##,
        width - 10.0
    );
    for (gi, g) in groups.iter().enumerate() {
        let gx = left + gi as f64 * group_w + gap / 2.0;
        for (bi, kind) in kinds.iter().enumerate() {
            let Some((_, v)) = g.bars.iter().find(|(k, _)| k == kind) else {
                continue;
            };
            let h = v / max * plot_h;
            let x = gx + bi as f64 * bar_w;
            let _ = write!(
                svg,
                r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="{}"><title>{}: {}</title></rect>"#,
                y0 - h,
                bar_w - 2.0,
                colour(*kind),
                kind.name(),
                crate::report::fmt(Some(*v))
            );
        }
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.0}" text-anchor="middle">{}</text>"#,
            gx + bar_w * kinds.len() as f64 / 2.0,
            y0 + 14.0,
            escape(&g.label)
        );
    }
    let _ = write!(
        svg,
        r##"<text x="4" y="{:.0}" fill="#555">{}</text><text x="4" y="{y0}" fill="#555">0</text>"##,
        top + 4.0,
        crate::report::fmt(Some(max))
    );
    for (i, k) in kinds.iter().enumerate() {
        let x = left + i as f64 * 90.0;
        let _ = write!(
            svg,
            r#"<rect x="{x}" y="{:.0}" width="10" height="10" fill="{}"/><text x="{:.0}" y="{:.0}">{}</text>"#,
            y0 + 30.0,
            colour(*k),
            x + 14.0,
            y0 + 39.0,
            k.name()
        );
    }
    svg.push_str("</svg>");
    svg
}

fn groups(r: &Results, scenario: &str, metrics: &[(&str, &str)], scale: f64) -> Vec<Group> {
    let kinds = [Kind::Direct, Kind::Nginx, Kind::Relay, Kind::Shared];
    metrics
        .iter()
        .map(|(metric, label)| Group {
            label: (*label).to_owned(),
            bars: kinds
                .iter()
                .filter_map(|k| Some((*k, r.median(scenario, metric, *k)? * scale)))
                .collect(),
        })
        .filter(|g| !g.bars.is_empty())
        .collect()
}

/// Writes the report for one leg mode; returns its path.
pub(crate) fn write_report(r: &Results, legs: &str, levels: &[usize]) -> std::io::Result<PathBuf> {
    let pct = [
        ("p50_us", "p50"),
        ("p90_us", "p90"),
        ("p99_us", "p99"),
        ("p999_us", "p99.9"),
    ];
    let mut charts = Vec::new();
    let mut scenarios: Vec<String> = vec!["latency".into(), "fanout".into()];
    scenarios.extend(
        r.scenarios()
            .into_iter()
            .filter(|s| s.starts_with("shared@")),
    );
    for s in &scenarios {
        charts.push(bar_chart(
            &format!("{s}: publish → data latency"),
            "milliseconds (median of repetitions)",
            &groups(r, s, &pct, 1e-3),
        ));
    }
    let mut throughput = groups(
        r,
        "fanmax",
        &[("sustained_deliveries_per_s", "fanmax")],
        1.0,
    );
    for s in scenarios.iter().filter(|s| s.starts_with("shared@")) {
        throughput.extend(groups(
            r,
            s,
            &[("sustained_deliveries_per_s", s.as_str())],
            1.0,
        ));
    }
    charts.push(bar_chart(
        "Highest sustained fan-out",
        "deliveries per second with no loss",
        &throughput,
    ));
    let memory: Vec<(String, String)> = levels
        .iter()
        .map(|l| (format!("proxy_kib_per_conn@{l}"), format!("{l} conns")))
        .collect();
    let memory: Vec<(&str, &str)> = memory
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    charts.push(bar_chart(
        "Memory per idle connection",
        "KiB of proxy RSS per connection, by level",
        &groups(r, "memory", &memory, 1.0),
    ));
    let body: String = charts
        .into_iter()
        .filter(|c| !c.is_empty())
        .map(|c| format!("<figure>{c}</figure>\n"))
        .collect();
    let html = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>appsync-relay load bench ({legs})</title>\
         <style>body{{font-family:sans-serif;margin:2em}}figure{{display:inline-block;margin:1em}}</style></head>\
         <body><h1>appsync-relay load bench: {legs}</h1><p>{}</p>\n{body}</body></html>\n",
        escape(&crate::host::machine())
    );
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(crate::MANIFEST_DIR).join("target"));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("load-report-{}.html", legs.replace(' ', "-")));
    std::fs::write(&path, html)?;
    Ok(path)
}
