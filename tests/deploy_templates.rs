//! The AWS templates (`deploy/aws/*.yaml`) against `serve` itself: every
//! `APPSYNC_RELAY_*` variable a template sets (in `Environment` or from
//! Secrets Manager) is one `serve` reads, and the values, with sample
//! parameters in place of `!Ref`/`!Sub`, pass `serve`'s (and so `check`'s)
//! flag validation. cfn-lint and the structural checks run in
//! deploy/validate.sh.

use appsync_relay::cli::Cli;
use appsync_relay::config::Config;
use clap::{CommandFactory, Parser};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// What a deployment would pass for each parameter or attribute.
const SAMPLES: &[(&str, &str)] = &[
    (
        "AppSyncHttpEndpoint",
        "https://abc123.appsync-api.eu-west-1.amazonaws.com/event",
    ),
    ("UserPoolId", "eu-west-1_AbC123"),
    ("UserPoolClientId", "1example23456789"),
    ("AllowedOrigin", "https://app.example.com"),
    ("VpcCidr", "10.0.0.0/16"),
    ("AppPort", "3000"),
    (
        "Redis.PrimaryEndPoint.Address",
        "master.relay.abc123.euw1.cache.amazonaws.com",
    ),
    ("Redis.PrimaryEndPoint.Port", "6379"),
];

/// `{ Name: APPSYNC_RELAY_X, Value: v }` and `{ Name: …, ValueFrom: … }`
/// entries of a template, in order.
fn entries(text: &str) -> Vec<(String, String, bool)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim().trim_start_matches("- ").trim();
        let Some(inner) = line.strip_prefix('{').and_then(|l| l.strip_suffix('}')) else {
            continue;
        };
        let Some(rest) = inner.trim().strip_prefix("Name: APPSYNC_RELAY_") else {
            continue;
        };
        let (name, value) = rest.split_once(',').expect("Name, then Value");
        let value = value.trim();
        let (value, secret) = match value.strip_prefix("ValueFrom:") {
            Some(v) => (v.trim(), true),
            None => (value.strip_prefix("Value:").expect("Value").trim(), false),
        };
        out.push((format!("APPSYNC_RELAY_{name}"), value.to_string(), secret));
    }
    out
}

fn sample(name: &str) -> &'static str {
    SAMPLES
        .iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| *v)
        .unwrap_or_else(|| panic!("no sample for {name}"))
}

/// A value as a deployment would see it.
fn resolve(value: &str) -> String {
    if let Some(p) = value.strip_prefix("!Ref ") {
        return sample(p.trim()).to_string();
    }
    if let Some(s) = value.strip_prefix("!Sub ") {
        let mut s = s.trim().trim_matches('"').to_string();
        while let Some(i) = s.find("${") {
            let j = s[i..].find('}').expect("closing brace") + i;
            let name = s[i + 2..j].to_string();
            s.replace_range(i..=j, sample(&name));
        }
        return s;
    }
    value.trim_matches('"').to_string()
}

#[test]
fn every_variable_the_templates_set_is_one_serve_reads_with_a_valid_value() {
    let dir = std::env::temp_dir().join(format!("deploy-templates-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The files the init container writes, with contents of the right shape.
    let files: BTreeMap<&str, PathBuf> = [
        ("redis-password", "a-redis-auth-token-of-32-chars!!"),
        (
            "session-keys",
            "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
        ),
    ]
    .into_iter()
    .map(|(name, contents)| {
        let p = dir.join(name);
        std::fs::write(&p, contents).unwrap();
        (name, p)
    })
    .collect();
    let serve = Cli::command()
        .find_subcommand("serve")
        .expect("serve")
        .clone();
    let flag_of = |env: &str| -> String {
        serve
            .get_arguments()
            .find(|a| a.get_env().is_some_and(|e| e == env))
            .and_then(|a| a.get_long())
            .map(|l| format!("--{l}"))
            .unwrap_or_else(|| panic!("{env} is not a variable serve reads"))
    };
    let mut seen = 0;
    for path in ["deploy/aws/ecs-fargate.yaml", "deploy/aws/cloudfront.yaml"] {
        let text = std::fs::read_to_string(path).unwrap();
        let mut argv = vec!["appsync-relay".to_string(), "serve".to_string()];
        for (name, value, secret) in entries(&text) {
            seen += 1;
            let value = if secret {
                "a-client-secret".to_string()
            } else {
                resolve(&value)
            };
            let value = match value.strip_prefix("/run/appsync-relay/") {
                Some(file) => files[file].display().to_string(),
                None => value,
            };
            argv.push(flag_of(&name));
            argv.push(value);
        }
        if argv.len() == 2 {
            continue; // a template that sets no relay variable (CloudFront)
        }
        let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{path}: {e}"));
        let appsync_relay::cli::Command::Serve(args) = cli.command else {
            unreachable!()
        };
        if let Err(errors) = Config::from_args(&args) {
            panic!("{path}: serve refuses the values: {errors:?}\n{argv:?}");
        }
    }
    assert!(
        seen >= 15,
        "only {seen} variables found: is the parser still right?"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
