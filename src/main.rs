//! Wiring only: parse flags, set up logging, bind, run until a signal.
#![forbid(unsafe_code)]

use appsync_relay::cli::{
    CheckArgs, CheckOutput, Cli, Command, DemoArgs, EmulateArgs, LogFormat, ServeArgs,
};
use appsync_relay::config::ranges::MAX_WORKER_THREADS;
use appsync_relay::config::Config;
use appsync_relay::emulator::{self, EmulatorAuth, EmulatorConfig};
use appsync_relay::verify::{Verifier, VerifierConfig};
use appsync_relay::{http_client, server};
use clap::Parser;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// jemalloc (with its background purging thread) instead of glibc's malloc,
/// because memory has to come back after a peak: measured with
/// `cargo bench --bench load -- --scenarios memory,storm --legs plain`, after
/// 9 900 idle connections closed the relay stayed at 180 MiB RSS on glibc
/// (its per-thread arenas keep freed memory) and went back to 19 MiB on
/// jemalloc; after a 9 900-user reconnect storm, 183 MiB on glibc against
/// 36 MiB on jemalloc 12 s later. It costs +0.7 KiB per idle connection
/// (18.3 against 17.6) and no measurable CPU per handshake. mimalloc was
/// tried too: less CPU per cold handshake, but it kept the peak as glibc
/// does (and returned part of it only with `MIMALLOC_PURGE_DELAY=0`, at a
/// CPU cost). The `system-allocator` feature leaves glibc's malloc in place
/// for heap profilers that hook it (DHAT, heaptrack).
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = match &cli.command {
        Command::Serve(args) => args.log_format,
        _ => LogFormat::Text,
    };
    let _log_flush = init_tracing(format);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Command::Serve(args) = &cli.command {
        // Out of range (0 is the default: one per core; above the maximum
        // `serve` refuses to start, exit 2): tokio's default meanwhile.
        if (1..=MAX_WORKER_THREADS).contains(&args.worker_threads) {
            builder.worker_threads(args.worker_threads);
        }
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Serve(args) => runtime.block_on(serve(*args)),
        Command::Emulate(args) => runtime.block_on(emulate(args)),
        Command::Demo(args) => runtime.block_on(demo(args)),
        Command::Check(args) => runtime.block_on(check(*args)),
    }
}

/// Log lines that may wait for stderr before new ones are dropped.
const LOG_QUEUE_LINES: usize = 65_536;

/// Logs go to stderr, filtered by `APPSYNC_RELAY_LOG` (default `info`),
/// as text or one JSON object per line.
///
/// Lines are written by a dedicated thread through a bounded queue, and
/// dropped (not waited for) when the queue is full: a slow or stuck log
/// consumer (an undrained pipe, a blocked terminal) must never stop the
/// runtime's threads from relaying. The returned guard flushes what is
/// queued when `main` returns.
fn init_tracing(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_env("APPSYNC_RELAY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .thread_name("appsync-relay-log")
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
    guard
}

fn usage_error(errors: &[String]) -> ExitCode {
    for e in errors {
        eprintln!("error: {e}");
    }
    ExitCode::from(2)
}

async fn bind(what: &str, addr: std::net::SocketAddr) -> Result<TcpListener, ExitCode> {
    TcpListener::bind(addr).await.map_err(|e| {
        eprintln!("error: cannot listen on {addr} ({what}): {e}");
        ExitCode::FAILURE
    })
}

async fn serve(args: ServeArgs) -> ExitCode {
    let config = match Config::from_args(&args) {
        Ok(c) => c,
        Err(errors) => return usage_error(&errors),
    };
    let drain = config.drain_timeout;
    let drain_delay = config.drain_delay;
    let public = match bind("public", config.listen).await {
        Ok(l) => l,
        Err(code) => return code,
    };
    let admin = match bind("admin", config.admin_listen).await {
        Ok(l) => l,
        Err(code) => return code,
    };
    let handle = match server::spawn(config, public, admin) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(public = %handle.public_addr, admin = %handle.admin_addr, "appsync-relay listening");
    shutdown_signal().await;
    tracing::info!(drain_timeout_s = drain.as_secs(), "shutting down");
    handle.shutdown(drain_delay, drain).await;
    ExitCode::SUCCESS
}

async fn emulate(args: EmulateArgs) -> ExitCode {
    let auth = match (&args.api_key, &args.cognito_issuer, &args.cognito_client_id) {
        (Some(key), None, None) => EmulatorAuth::ApiKey(key.clone()),
        (key, Some(issuer), Some(client_id)) => {
            let issuer = issuer.trim_end_matches('/').to_string();
            let jwks_url = args
                .cognito_jwks_url
                .clone()
                .unwrap_or_else(|| format!("{issuer}/.well-known/jwks.json"));
            let verifier = Verifier::new(
                VerifierConfig {
                    issuer,
                    jwks_url,
                    client_id: client_id.clone(),
                    token_use: args.token_use,
                    leeway: Duration::from_secs(5),
                    jwks_refetch_interval: Duration::from_secs(10),
                    fetch_timeout: Duration::from_secs(10),
                    jwks_refresh_interval: Duration::from_secs(600),
                    cache_capacity: 10_000,
                },
                http_client::build(Duration::from_secs(10)),
            );
            let verifier = verifier as Arc<dyn emulator::TokenVerifier>;
            match key {
                // An API with both auth modes, as AppSync allows.
                Some(key) => EmulatorAuth::CognitoOrApiKey(verifier, key.clone()),
                None => EmulatorAuth::Cognito(verifier),
            }
        }
        _ => {
            return usage_error(&[
                "emulate needs --api-key, or --cognito-issuer and --cognito-client-id (or all three, for an API with both auth modes)"
                    .to_string(),
            ])
        }
    };
    let listener = match bind("emulator", args.listen).await {
        Ok(l) => l,
        Err(code) => return code,
    };
    let admin = match args.admin_listen {
        None => None,
        Some(addr) => match bind("emulator admin", addr).await {
            Ok(l) => Some(l),
            Err(code) => return code,
        },
    };
    let mut cfg = EmulatorConfig::new(auth).with_namespaces(args.namespaces.clone());
    cfg.http_host = args.http_host.clone();
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        let source = appsync_relay::tls::TlsSource::Files {
            cert: cert.clone(),
            key: key.clone(),
            reload_interval: Duration::from_secs(3600),
        };
        let loaded =
            appsync_relay::tls::CertStore::load(source).and_then(appsync_relay::tls::server_config);
        match loaded {
            Ok(tls) => cfg.tls = Some(tls),
            Err(e) => return usage_error(&[format!("--tls-cert/--tls-key: {e}")]),
        }
    }
    cfg.ka_interval = Duration::from_secs(args.ka_interval.max(1));
    tracing::info!(listen = %args.listen, "AppSync Events emulator listening on /event and /event/realtime");
    emulator::run(listener, admin, cfg, shutdown_signal()).await;
    ExitCode::SUCCESS
}

async fn demo(args: DemoArgs) -> ExitCode {
    let public = match bind("demo", args.listen).await {
        Ok(l) => l,
        Err(code) => return code,
    };
    let admin = match bind("admin", args.admin_listen).await {
        Ok(l) => l,
        Err(code) => return code,
    };
    let demo = match appsync_relay::demo::start(&args, public, admin).await {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: cannot start the demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    if !demo.relay.wait_ready(Duration::from_secs(10)).await {
        eprintln!("error: the demo relay did not become ready");
        return ExitCode::FAILURE;
    }
    println!("appsync-relay demo is running.");
    println!("  open      {}", demo.url());
    if demo.self_signed_cert.is_some() {
        println!("            (self-signed certificate for localhost: accept the browser's warning once)");
    }
    println!("  metrics   http://{}/metrics", demo.relay.admin_addr);
    println!(
        "  upstream  AppSync Events emulator at {}",
        demo.emulator.http_endpoint()
    );
    println!(
        "  tokens    development identity provider, issuer {}",
        demo.idp.issuer()
    );
    println!("Press Ctrl-C to stop.");
    shutdown_signal().await;
    demo.relay
        .shutdown(Duration::ZERO, Duration::from_secs(2))
        .await;
    demo.emulator.shutdown().await;
    ExitCode::SUCCESS
}

/// Exit 0 when every check passed, 1 otherwise; the report on stdout.
async fn check(args: CheckArgs) -> ExitCode {
    let report = appsync_relay::check::run(&args).await;
    match args.output {
        CheckOutput::Text => print!("{}", report.text()),
        CheckOutput::Json => println!("{}", report.json()),
    }
    if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
