//! deploy/monitoring: the alerting rules pass their promtool unit tests,
//! and every query of the rules and the Grafana dashboard is valid PromQL
//! (promtool parses it) naming only metrics a running relay exports.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use support::*;

fn monitoring() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/monitoring")
}

/// Runs promtool, failing with what to install when it is missing.
fn promtool(args: &[&str], dir: &Path) -> (bool, String) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "promtool not runnable ({e}): install Debian's `prometheus` package \
                 (tests/run.sh does, as root)"
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Every `expr` of the alerting rules and every target of the dashboard,
/// with Grafana's interval variables replaced by what they stand for.
fn queries() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let rules = std::fs::read_to_string(monitoring().join("alerts.yaml")).unwrap();
    out.extend(rule_exprs(&rules));
    let dash = std::fs::read_to_string(monitoring().join("dashboard.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&dash).unwrap();
    for panel in dash["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "5m")
                .replace("$__interval", "1m");
            out.push((format!("panel {:?}", panel["title"]), expr));
        }
    }
    assert!(out.len() > 20, "rules and panels were read: {out:?}");
    out
}

/// `(alert, expr)` of each rule, read the way alerts.yaml writes them (no
/// YAML library for one file): `- alert: NAME`, then `expr: ONE LINE` or
/// `expr: |` and the lines indented below it. promtool checks the file's
/// YAML itself; a rule this misses is caught by the count below.
fn rule_exprs(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut alert = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if let Some(name) = trimmed.strip_prefix("- alert: ") {
            alert = name.trim().to_owned();
        } else if let Some(expr) = trimmed.strip_prefix("expr: ") {
            let expr = expr.trim();
            if expr != "|" {
                out.push((alert.clone(), expr.to_owned()));
                continue;
            }
            let indent = line.len() - trimmed.len();
            let mut block = Vec::new();
            while let Some(next) = lines.peek() {
                let next_indent = next.len() - next.trim_start().len();
                if !next.trim().is_empty() && next_indent <= indent {
                    break;
                }
                block.push(next.trim());
                lines.next();
            }
            out.push((alert.clone(), block.join(" ")));
        }
    }
    let alerts = text.matches("- alert: ").count();
    assert_eq!(out.len(), alerts, "one expr per alert: {out:?}");
    out
}

/// `appsync_relay_*` names in a PromQL expression (histograms by family).
fn names_in(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("appsync_relay_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let family = name
            .strip_suffix("_bucket")
            .or_else(|| name.strip_suffix("_sum"))
            .or_else(|| name.strip_suffix("_count"))
            .unwrap_or(name);
        names.insert(family.to_owned());
        rest = &tail[end..];
    }
    names
}

#[test]
fn the_alerting_rules_pass_their_promtool_unit_tests() {
    let (ok, out) = promtool(&["check", "rules", "alerts.yaml"], &monitoring());
    assert!(ok, "{out}");
    let (ok, out) = promtool(&["test", "rules", "alerts.test.yaml"], &monitoring());
    assert!(ok, "{out}");
    assert!(out.contains("SUCCESS"), "{out}");
}

#[tokio::test]
async fn every_query_is_valid_promql_over_metrics_a_running_relay_exports() {
    // With --redis-url, so the replicas' coordination metrics are there too.
    let redis = support::redis_server::Redis::start().await;
    let stack = Stack::start_with(&["--redis-url", &redis.url()]).await;
    let (_, _, scrape) = http(stack.relay.admin_addr, "GET", "/metrics", &[], "").await;
    let exported: BTreeSet<String> = scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    assert!(
        exported.contains("appsync_relay_connections_active"),
        "{scrape}"
    );

    let queries = queries();
    let mut missing = Vec::new();
    for (what, expr) in &queries {
        let names = names_in(expr);
        assert!(!names.is_empty(), "{what} reads no relay metric: {expr}");
        for name in names {
            if !exported.contains(&name) {
                missing.push(format!("{what}: {name}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "queries name metrics a fresh relay does not export: {missing:#?}"
    );

    // promtool parses each query as a recording rule: a PromQL syntax or
    // type error (a range where a vector goes, say) fails the check.
    let dir = std::env::temp_dir().join(format!("relay-promql-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut rules = String::from("groups:\n  - name: queries\n    rules:\n");
    for (i, (_, expr)) in queries.iter().enumerate() {
        let one_line = expr.split_whitespace().collect::<Vec<_>>().join(" ");
        rules.push_str(&format!(
            "      - record: query_{i}\n        expr: {}\n",
            serde_json::to_string(&one_line).unwrap()
        ));
    }
    std::fs::write(dir.join("queries.yaml"), &rules).unwrap();
    let (ok, out) = promtool(&["check", "rules", "queries.yaml"], &dir);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(ok, "{out}\n{rules}");
}

#[test]
fn the_checks_catch_a_bad_query() {
    // What the two tests above rely on, shown failing: a misspelt metric is
    // not among the relay's, and a type error does not parse.
    assert_eq!(
        names_in("sum(rate(appsync_relay_handshake_seconds_bucket[5m])) / appsync_relay_conections_active"),
        BTreeSet::from([
            "appsync_relay_conections_active".to_owned(),
            "appsync_relay_handshake_seconds".to_owned()
        ])
    );
    let dir = std::env::temp_dir().join(format!("relay-promql-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("bad.yaml"),
        "groups:\n  - name: q\n    rules:\n      - record: q\n        expr: \"sum(appsync_relay_frames_total[5m])\"\n",
    )
    .unwrap();
    let (ok, out) = promtool(&["check", "rules", "bad.yaml"], &dir);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!ok, "a range vector passed to sum() must not parse: {out}");
}
