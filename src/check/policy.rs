//! `--channel-policy` in `check`: the file (already parsed by the flags:
//! a broken one fails there, naming the rule), what its rules open and
//! what can never match, and with a sign-in, `--policy-test CHANNEL`: what
//! that user may do on each channel, and which rule allows it.
//!
//! Lines name rules by number and quote patterns and claim names from the
//! operator's own file; a claim's value is printed only through
//! [`peer_text`] (a token's claims are the user's, not a secret, but are
//! still peer-supplied text).

use super::report::{peer_text, Report};
use crate::config::Config;
use crate::policy::{Decision, Op, Policy};
use crate::protocol::Channel;
use crate::verify::{Claims, Verifier};

/// Registered claims that are numbers: never a segment, never a group.
const NUMERIC: [&str; 4] = ["exp", "nbf", "iat", "auth_time"];

/// What the policy's rules open, and what can never match.
pub fn rules(config: &Config, report: &mut Report) {
    const CHECK: &str = "channel_policy";
    let Some((path, policy)) = &config.channel_policy else {
        return;
    };
    if policy.rules().is_empty() {
        return report.fail(
            CHECK,
            format!(
                "{} has no rule: every subscribe and publish is denied",
                path.display()
            ),
            "add [[rule]] tables, or drop --channel-policy",
        );
    }
    let mut never = Vec::new();
    let mut notes = Vec::new();
    for (i, rule) in policy.rules().iter().enumerate() {
        let n = i + 1;
        let patterns = rule.patterns();
        let claims_named = patterns
            .iter()
            .flat_map(|p| p.split('/'))
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .chain(rule.conditions().iter().map(|(k, _)| k.as_str()))
            .collect::<Vec<_>>();
        if let Some(c) = claims_named.iter().find(|c| NUMERIC.contains(c)) {
            never.push(format!(
                "rule {n} names the numeric claim {c}, which matches nothing"
            ));
        }
        if let Some(c) = claims_named
            .iter()
            .find(|c| c.starts_with("custom:") || c.starts_with("dev:"))
        {
            notes.push(format!(
                "rule {n} reads {c}: users may be able to write it (give the app client no write access to it)"
            ));
        }
        if let Some(p) = rule.whole_namespace() {
            let ops: Vec<&str> = [Op::Subscribe, Op::Publish]
                .into_iter()
                .filter(|op| rule.allows(*op))
                .map(Op::name)
                .collect();
            notes.push(format!(
                "rule {n} opens {p} to every signed-in user ({})",
                ops.join(", ")
            ));
        }
    }
    if !never.is_empty() {
        return report.fail(
            CHECK,
            never.join("; "),
            "use string claims (sub, username, cognito:groups, scope, custom:*), or drop the rule",
        );
    }
    let mut detail = format!("{} rule(s) from {}", policy.rules().len(), path.display());
    for note in notes {
        detail.push_str("; ");
        detail.push_str(&note);
    }
    report.pass(CHECK, detail);
}

/// `--policy-test`: for each channel, what the signed-in user may do.
pub async fn test(
    config: &Config,
    verifier: &Verifier,
    token: Option<&str>,
    channels: &[String],
    report: &mut Report,
) {
    const CHECK: &str = "policy_test";
    if channels.is_empty() {
        return;
    }
    let Some((_, policy)) = &config.channel_policy else {
        return report.fail(
            CHECK,
            "--policy-test without --channel-policy",
            "add --channel-policy FILE",
        );
    };
    let Some(token) = token else {
        return report.fail(
            CHECK,
            "--policy-test needs a sign-in",
            "add --token-file or --cookie-file from a real sign-in",
        );
    };
    // The claims matter here, not whether the token is still fresh.
    let claims = match verifier.verify_ignoring_expiry(token).await {
        Ok(c) => c,
        Err(e) => {
            return report.skip(
                CHECK,
                format!(
                    "not run: the sign-in's token does not verify ({})",
                    e.reason()
                ),
            )
        }
    };
    for raw in channels {
        match Channel::parse(raw, true) {
            Ok(channel) => report.pass(CHECK, decisions(policy, &channel, &claims)),
            Err(e) => report.fail(
                CHECK,
                format!("{}: {e}", peer_text(raw)),
                "give a channel as a browser would subscribe to it, e.g. /default/room or /default/*",
            ),
        }
    }
}

fn decisions(policy: &Policy, channel: &Channel, claims: &Claims) -> String {
    let say = |op: Op| match policy.decide(op, channel, claims) {
        Decision::Permitted { rule } => format!("{} allowed (rule {})", op.name(), rule + 1),
        Decision::Denied => format!("{} denied", op.name()),
    };
    let publish = if channel.is_wildcard() {
        "publish n/a (a wildcard)".to_string()
    } else {
        say(Op::Publish)
    };
    format!(
        "{} as {}: {}, {}",
        channel.as_subscribed(),
        peer_text(claims.username().unwrap_or(&claims.sub)),
        say(Op::Subscribe),
        publish
    )
}
