//! Running a `node --test` file as part of `cargo test`: the relay binary
//! is passed in `APPSYNC_RELAY_BIN`, `npm ci` runs first if needed, the run
//! has its own process group (a timeout takes every child it started down
//! with it), and its output is shown when it fails.

#[path = "cognito_local.rs"]
mod cognito_local;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Command;

pub async fn run_node_test(file: &str, envs: &[(&str, &str)], deadline: Duration) {
    tokio::task::spawn_blocking(cognito_local::ensure_node_deps)
        .await
        .expect("npm install task panicked")
        .unwrap_or_else(|e| panic!("installing tests/node dependencies: {e}"));

    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut cmd = Command::new("node");
    cmd.arg("--test");
    if supports_test_force_exit() {
        // Amplify leaves a 15 s handshake timer armed after every connect;
        // don't wait for it once the tests are done.
        cmd.arg("--test-force-exit");
    }
    cmd.arg(file)
        .current_dir(manifest_dir)
        .env("APPSYNC_RELAY_BIN", env!("CARGO_BIN_EXE_appsync-relay"))
        .env("NODE_NO_WARNINGS", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawning `node` (is Node.js on PATH?): {e}"));
    let pid = child.id();
    let out = match tokio::time::timeout(deadline, child.wait_with_output()).await {
        Ok(result) => result.expect("waiting for `node --test`"),
        Err(_) => {
            if let Some(pid) = pid {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", "--", &format!("-{pid}")])
                    .status();
            }
            panic!("`node --test {file}` did not finish within {deadline:?}");
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "`node --test {file}` failed ({}):\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        out.status
    );
    eprintln!("{stdout}{stderr}");
}

/// `--test-force-exit` exists from Node 20.14 / 22.0.
fn supports_test_force_exit() -> bool {
    let Ok(out) = std::process::Command::new("node").arg("--version").output() else {
        return false;
    };
    let version = String::from_utf8_lossy(&out.stdout);
    let mut parts = version
        .trim()
        .trim_start_matches('v')
        .split('.')
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    major > 20 || (major == 20 && minor >= 14)
}
