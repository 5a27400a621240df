//! `--redis-url`, `--redis-password-file` and `--session-key-file`, checked
//! like every other flag. Neither the URL's credentials nor the files'
//! contents are ever echoed.

use super::shared::read_small;
use crate::cli::ServeArgs;
use crate::cluster::seal::SessionKeys;
use crate::cluster::{redact_url, ClusterConfig};

pub fn parse(args: &ServeArgs, errors: &mut Vec<String>) -> Option<ClusterConfig> {
    let url = args.redis_url.as_deref()?.trim();
    let shown = redact_url(url);
    match url::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "redis" | "rediss") && u.host_str().is_some() => {}
        _ => {
            errors.push(format!(
                "--redis-url {shown}: expected redis://host[:port][/db] or rediss://… (TLS)"
            ));
            return None;
        }
    }
    let password = match &args.redis_password_file {
        None => None,
        Some(path) => match read_small(path) {
            Ok(text) => {
                let pw = text.trim_start_matches('\u{feff}').trim().to_string();
                if pw.is_empty() || !pw.bytes().all(|b| b.is_ascii_graphic()) {
                    errors.push(format!(
                        "--redis-password-file {}: expected one password of printable characters and nothing else",
                        path.display()
                    ));
                    return None;
                }
                Some(pw)
            }
            Err(e) => {
                errors.push(format!("--redis-password-file {}: {e}", path.display()));
                return None;
            }
        },
    };
    let session_keys = match &args.session_key_file {
        None => {
            tracing::warn!(
                "--redis-url without --session-key-file: refreshes are not coordinated across replicas"
            );
            None
        }
        Some(path) => match read_small(path)
            .map_err(|e| e.to_string())
            .and_then(|t| SessionKeys::parse(&t))
        {
            Ok(keys) => Some(std::sync::Arc::new(keys)),
            Err(e) => {
                errors.push(format!("--session-key-file {}: {e}", path.display()));
                return None;
            }
        },
    };
    if !(3..=3600).contains(&args.cluster_lease_ttl) {
        errors.push(format!(
            "--cluster-lease-ttl {}: expected 3 to 3600 seconds",
            args.cluster_lease_ttl
        ));
        return None;
    }
    let ca_pem = match &args.redis_ca_file {
        None => None,
        Some(_) if !url.starts_with("rediss://") => {
            errors.push("--redis-ca-file is for a rediss:// (TLS) --redis-url".into());
            return None;
        }
        Some(path) => match crate::http_client::load_ca_file(path) {
            Ok(_) => match std::fs::read(path) {
                Ok(pem) => Some(pem),
                Err(e) => {
                    errors.push(format!("--redis-ca-file {}: {e}", path.display()));
                    return None;
                }
            },
            Err(e) => {
                errors.push(format!("--redis-ca-file: {e}"));
                return None;
            }
        },
    };
    let cfg = ClusterConfig {
        url: url.to_string(),
        password,
        session_keys,
        ca_pem,
        lease_ttl: std::time::Duration::from_secs(args.cluster_lease_ttl),
    };
    if let Err(e) = cfg.client() {
        errors.push(e);
        return None;
    }
    Some(cfg)
}
