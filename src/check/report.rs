//! What `check` found: one [`Line`] per check, printed as ✓/✗ lines with
//! the fix under each ✗, or as one JSON document for pipelines.
//!
//! A line's text is built by the checks from configuration values and from
//! what peers answered; it never holds a token, a cookie, a key or a client
//! secret (the checks only ever name those, never quote them).

use serde::Serialize;

/// Longest piece of a peer's answer quoted in a line.
const PEER_TEXT_CHARS: usize = 200;

/// A peer's words made safe to print: control characters (terminal escape
/// sequences among them: C0, DEL, C1) dropped, at most 200 characters.
/// Whatever a peer sends is quoted only through this, and only in a line's
/// detail, never as the fix an operator would copy.
pub fn peer_text(s: &str) -> String {
    let mut out: String = s
        .chars()
        .filter(|c| !c.is_control())
        .take(PEER_TEXT_CHARS)
        .collect();
    if s.chars()
        .filter(|c| !c.is_control())
        .nth(PEER_TEXT_CHARS)
        .is_some()
    {
        out.push('…');
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Fail,
    /// Not run: nothing to run it with (no sign-in given), or an earlier
    /// check it depends on failed.
    Skip,
}

#[derive(Debug, Clone, Serialize)]
pub struct Line {
    /// Stable identifier, e.g. `jwks` or `round_trip.subscribe`.
    pub check: &'static str,
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// What to change, for a failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub ok: bool,
    pub checks: Vec<Line>,
}

impl Report {
    pub fn pass(&mut self, check: &'static str, detail: impl Into<String>) {
        self.push(check, Status::Pass, detail.into(), None);
    }

    pub fn fail(&mut self, check: &'static str, detail: impl Into<String>, fix: impl Into<String>) {
        self.push(check, Status::Fail, detail.into(), Some(fix.into()));
    }

    pub fn skip(&mut self, check: &'static str, detail: impl Into<String>) {
        self.push(check, Status::Skip, detail.into(), None);
    }

    fn push(&mut self, check: &'static str, status: Status, detail: String, fix: Option<String>) {
        self.checks.push(Line {
            check,
            status,
            detail,
            fix,
        });
        self.ok = !self.checks.iter().any(|l| l.status == Status::Fail);
    }

    /// Whether any line of `check` failed.
    pub fn failed(&self, check: &str) -> bool {
        self.checks
            .iter()
            .any(|l| l.check == check && l.status == Status::Fail)
    }

    /// The failing lines' check names, in order.
    pub fn failures(&self) -> Vec<&'static str> {
        self.checks
            .iter()
            .filter(|l| l.status == Status::Fail)
            .map(|l| l.check)
            .collect()
    }

    pub fn text(&self) -> String {
        let mut out = String::new();
        for l in &self.checks {
            let mark = match l.status {
                Status::Pass => "✓",
                Status::Fail => "✗",
                Status::Skip => "-",
            };
            out.push_str(&format!("{mark} {}: {}\n", l.check, l.detail));
            if let Some(fix) = &l.fix {
                out.push_str(&format!("    fix: {fix}\n"));
            }
        }
        let failed = self.failures().len();
        if failed == 0 {
            out.push_str("all checks passed\n");
        } else {
            out.push_str(&format!("{failed} check(s) failed\n"));
        }
        out
    }

    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|_| r#"{"ok":false}"#.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_text_drops_escapes_and_is_bounded() {
        assert_eq!(peer_text("a\x1b[31mb\u{9b}c\u{7f}\nd"), "a[31mbcd");
        let long = "x".repeat(1000);
        assert_eq!(peer_text(&long).chars().count(), 201);
        assert_eq!(peer_text("ok"), "ok");
    }

    #[test]
    fn a_failure_makes_the_report_fail_and_prints_its_fix() {
        let mut r = Report::default();
        r.pass("flags", "valid");
        assert!(r.ok);
        r.fail("jwks", "HTTP 404", "set --cognito-jwks-url");
        r.skip("round_trip", "no sign-in given");
        assert!(!r.ok);
        assert_eq!(r.failures(), vec!["jwks"]);
        let text = r.text();
        assert!(text.contains("✓ flags: valid\n"), "{text}");
        assert!(text.contains("✗ jwks: HTTP 404\n    fix: set --cognito-jwks-url\n"));
        assert!(text.contains("- round_trip: no sign-in given\n"));
        let v: serde_json::Value = serde_json::from_str(&r.json()).unwrap();
        assert_eq!(v["ok"], false);
        assert_eq!(v["checks"][1]["status"], "fail");
        assert_eq!(v["checks"][0].get("fix"), None);
    }
}
