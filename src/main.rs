//! The command line: `serve` (the default), `check-config`, `eval`, `export-pairs` and
//! `demo-upstream`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use bon_proxy::demo::{self, DemoOptions};
use bon_proxy::{listener, Config, Secrets, Server};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "bon-proxy",
    version,
    about = "OpenAI-compatible proxy with best-of-N selection"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (the default command).
    Serve(ServeArgs),
    /// Validate the config file and print the effective configuration, secrets masked.
    CheckConfig {
        #[arg(long, default_value = "proxy.toml", env = "BON_CONFIG")]
        config: PathBuf,
        /// Check what `serve --demo` would run: the config file, or the defaults when it is
        /// missing, with every call sent to the built-in demo upstream.
        #[arg(long)]
        demo: bool,
    },
    /// Evaluate judges on a preference data set (JSONL pairs or lists), without a server.
    Eval(EvalArgs),
    /// Run only the built-in demo upstream, an offline OpenAI-compatible server.
    DemoUpstream {
        #[arg(long, default_value = "127.0.0.1:9090")]
        listen: String,
        /// Delay before every answer, like a real model's latency.
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Turn a decision log (logged with `decisions.include_content`) into pairwise eval data:
    /// the winner as `chosen`, each loser as `rejected`. These are the judge's labels.
    ExportPairs {
        /// The decision log, JSONL.
        #[arg(long)]
        from: PathBuf,
        /// Where the pairs go, JSONL; overwritten.
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the SHA-256 of a client key read from stdin, for `[auth]` (`sha256 = "..."`).
    /// The key never goes on the command line, where shell history and `ps` would see it.
    HashKey,
}

#[derive(Args, Default)]
struct ServeArgs {
    /// Config file; may be missing only with --demo.
    #[arg(long, default_value = "proxy.toml", env = "BON_CONFIG")]
    config: PathBuf,
    /// Start the built-in demo upstream in-process and send every upstream call to it.
    #[arg(long)]
    demo: bool,
    /// Latency of the demo upstream, per call.
    #[arg(long, default_value_t = 0)]
    demo_latency_ms: u64,
}

#[derive(Args)]
struct EvalArgs {
    /// Preference data, one JSON object a line: a pair (`prompt`|`messages`, `chosen`,
    /// `rejected`, `subset`?) or a list (`messages`, `candidates`, `best`, `ranking`?).
    #[arg(long)]
    data: PathBuf,
    /// Config file; without one, the defaults and the environment, as `serve --demo` reads them.
    #[arg(long, env = "BON_CONFIG")]
    config: Option<PathBuf>,
    /// A judge to evaluate (repeatable); every configured and built-in judge when none is named.
    #[arg(long = "judge", value_name = "NAME")]
    judges: Vec<String>,
    /// Judge decisions in flight at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    concurrency: u16,
    /// Evaluate only the first M items.
    #[arg(long, value_name = "M")]
    limit: Option<usize>,
    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// The model the judges are told the client asked for (a judge's own `model` wins).
    #[arg(long, default_value = bon_proxy::eval::DEFAULT_MODEL)]
    model: String,
}

// Requests allocate many small JSON values; mimalloc serves them faster than the system
// allocator and keeps the heap compact under many open streams (with huge pages off: see
// `allocator`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    bon_proxy::allocator::keep_pages_small();
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve(ServeArgs {
        config: PathBuf::from("proxy.toml"),
        ..ServeArgs::default()
    }));
    // `serve` sets up its logs (and traces) from its config; the other commands log as text.
    if !matches!(command, Command::Serve(_)) {
        bon_proxy::telemetry::start_plain_logs();
    }
    let result = match command {
        Command::Serve(args) => load_config(&args.config, args.demo).and_then(|config| {
            let runtime = runtime(config.server.worker_threads)?;
            let telemetry = runtime
                .block_on(async { bon_proxy::telemetry::start(&config) })
                .map_err(|e| e.to_string())?;
            let served = runtime.block_on(serve(args, config));
            // The spans still queued are exported through the runtime: flush before it goes.
            telemetry.shutdown();
            served
        }),
        Command::CheckConfig { config, demo } => check_config(&config, demo),
        Command::Eval(args) => eval(args),
        Command::DemoUpstream {
            listen,
            latency_ms,
            seed,
        } => runtime(0).and_then(|rt| rt.block_on(demo_upstream(&listen, latency_ms, seed))),
        Command::ExportPairs { from, out } => export_pairs(&from, &out),
        Command::HashKey => hash_key(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => fail(message),
    }
}

/// A multi-threaded runtime with `threads` workers, or one per core when 0.
fn runtime(threads: usize) -> Result<tokio::runtime::Runtime, String> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if threads > 0 {
        builder.worker_threads(threads);
    }
    builder
        .enable_all()
        // A worker out of work gives back what a finished burst freed in its heap.
        .on_thread_park(bon_proxy::allocator::collect_if_asked)
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

fn fail(message: String) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(2)
}

fn load_config(path: &Path, demo: bool) -> Result<Config, String> {
    if demo && !path.exists() {
        return env_config();
    }
    let config = Config::load(path).map_err(|e| e.to_string())?;
    bon_proxy::state::check_judges(&config, &Secrets::from_env(&config))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(config)
}

/// The defaults with the environment's overrides, for commands run without a config file.
fn env_config() -> Result<Config, String> {
    let mut config = Config::default();
    config
        .apply_env(|name| std::env::var(name).ok())
        .map_err(|e| e.to_string())?;
    Ok(config)
}

async fn serve(args: ServeArgs, mut config: Config) -> Result<(), String> {
    if args.demo {
        let addr = start_demo(args.demo_latency_ms).await?;
        use_demo(&mut config, addr);
        tracing::info!(%addr, latency_ms = args.demo_latency_ms, "demo upstream running in-process");
    }
    let secrets = Secrets::from_env(&config);
    if !args.demo && secrets.upstream_key.is_none() {
        warn_without_key(&config);
    }
    let mut signals = Signals::listen()?;
    let upstream = bon_proxy::redact::redact_url(&config.upstream.base_url);
    let server = Server::bind(config, secrets).await?;
    let addr = server.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(%addr, %upstream, "bon-proxy listening");
    let (first, first_seen) = tokio::sync::oneshot::channel::<()>();
    // The first signal starts the drain; a second one means "now": the operator will not wait.
    let watch = async move {
        signals.recv().await;
        tracing::info!("send the signal again to stop at once");
        let _ = first.send(());
        signals.recv().await;
    };
    tokio::select! {
        _ = server.run(async { let _ = first_seen.await; }) => {}
        _ = watch => {
            tracing::warn!("second shutdown signal: stopping at once, requests in flight are cut off");
        }
    }
    Ok(())
}

/// Points the upstream and every judge at the demo upstream listening on `addr`.
fn use_demo(config: &mut Config, addr: std::net::SocketAddr) {
    config.upstream.base_url = format!("http://{addr}/v1");
    // Every judge asks the demo too: it answers each strategy's prompts.
    config.judge.base_url.clear();
    config.judges.values_mut().for_each(|j| j.base_url.clear());
    // The demo's texts are made up: the inspector shows them unless the config says not to.
    config.ui.include_content.get_or_insert(true);
}

/// Without a key, requests reach the upstream with whatever the client sent, which for most
/// first-time setups is nothing: say so at start rather than with the first 401.
fn warn_without_key(config: &Config) {
    let env = &config.upstream.api_key_env;
    if config.upstream.forward_client_auth {
        tracing::warn!(
            "no upstream API key: ${env} (upstream.api_key_env) is unset or empty; requests \
             will be sent to the upstream unauthenticated unless clients bring their own \
             Authorization header"
        );
    } else {
        tracing::warn!(
            "no upstream API key: ${env} (upstream.api_key_env) is unset or empty and \
             upstream.forward_client_auth is false; every request will be sent to the \
             upstream unauthenticated"
        );
    }
}

async fn start_demo(latency_ms: u64) -> Result<std::net::SocketAddr, String> {
    let listener = listener::bind_to("127.0.0.1:0")
        .await
        .map_err(|e| format!("cannot start the demo upstream: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let options = DemoOptions {
        latency: Duration::from_millis(latency_ms),
        ..DemoOptions::default()
    };
    tokio::spawn(async move {
        if let Err(e) = demo::serve(listener, options).await {
            tracing::error!(error = %e, "demo upstream stopped");
        }
    });
    Ok(addr)
}

async fn demo_upstream(listen: &str, latency_ms: u64, seed: u64) -> Result<(), String> {
    let listener = listener::bind_to(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let mut signals = Signals::listen()?;
    tracing::info!(%listen, latency_ms, "demo upstream listening");
    let options = DemoOptions {
        latency: Duration::from_millis(latency_ms),
        seed,
    };
    tokio::select! {
        result = demo::serve(listener, options) => result.map_err(|e| e.to_string()),
        _ = signals.recv() => Ok(()),
    }
}

fn eval(args: EvalArgs) -> Result<(), String> {
    let config = match &args.config {
        Some(path) => load_config(path, false)?,
        None => env_config()?,
    };
    let command = bon_proxy::eval::EvalCommand {
        data: args.data,
        judges: args.judges,
        concurrency: usize::from(args.concurrency),
        limit: args.limit,
        report: args.report,
        model: args.model,
    };
    runtime(config.server.worker_threads)?.block_on(bon_proxy::eval::run(&config, &command))
}

fn check_config(path: &Path, demo: bool) -> Result<(), String> {
    let mut config = load_config(path, demo)?;
    if demo {
        // The demo's real port is picked at start; any loopback address checks the same.
        use_demo(&mut config, std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    }
    let secrets = Secrets::from_env(&config);
    let checked = bon_proxy::state::check_deciders(&config, &secrets)?;
    let keys = config.auth.all_keys().map_err(|e| e.to_string())?;
    println!("# {}: valid", config_source(path, demo));
    if let Some(line) = redis_status(&config, secrets.redis_password.is_some()) {
        println!("{line}");
    }
    if config.auth.enabled {
        println!("# auth: on, {} client keys", keys.len());
    }
    if demo {
        println!("# upstream: the built-in demo upstream, in-process on a free loopback port");
        println!("# upstream API key: not needed (the demo upstream)");
    } else {
        println!(
            "{}",
            key_status(
                "upstream",
                &config.upstream.api_key_env,
                secrets.upstream_key.is_some()
            )
        );
    }
    println!("# connections:");
    for line in &checked.clients {
        println!("#   {line}");
    }
    for env in bon_proxy::state::judge_key_names(&config) {
        let present = secrets.judge_keys.contains_key(env);
        println!("{}", key_status("judge", env, present));
    }
    println!("# judges:");
    for line in checked.judges.describe() {
        println!("#   {line}");
    }
    println!(
        "# fuser (x-best-of-n-mode: fuse): {}",
        checked.fuser.describe()
    );
    let redact = bon_proxy::redact::redact_url;
    config.upstream.base_url = redact(&config.upstream.base_url);
    config.upstream.proxy_url = redact(&config.upstream.proxy_url);
    for judge in std::iter::once(&mut config.judge).chain(config.judges.values_mut()) {
        judge.base_url = redact(&judge.base_url);
        judge.proxy_url = redact(&judge.proxy_url);
    }
    config.fuser.base_url = redact(&config.fuser.base_url);
    config.fuser.proxy_url = redact(&config.fuser.proxy_url);
    config.cache.redis_url = bon_proxy::redact::redact_url(&config.cache.redis_url);
    let text = toml::to_string_pretty(&config).map_err(|e| e.to_string())?;
    println!("\n{text}");
    Ok(())
}

/// What `check-config` checked: the file, or with `--demo` and no file, the defaults.
fn config_source(path: &Path, demo: bool) -> String {
    if demo && !path.exists() {
        format!(
            "demo configuration (defaults and environment; {} not found)",
            path.display()
        )
    } else if demo {
        format!("{} with the demo upstream", path.display())
    } else {
        path.display().to_string()
    }
}

/// Reads one key from stdin (its first line, without the line ending) and prints its hash.
fn hash_key() -> Result<(), String> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| format!("cannot read the key from stdin: {e}"))?;
    let key = line.trim_end_matches(['\r', '\n']);
    if key.trim().is_empty() {
        return Err(
            "no key on stdin: pipe it in, e.g. `printf %s \"$KEY\" | bon-proxy hash-key`".into(),
        );
    }
    println!("{}", bon_proxy::auth::hash_key(key));
    Ok(())
}

fn export_pairs(from: &Path, out: &Path) -> Result<(), String> {
    let summary = bon_proxy::decisions::export_pairs(from, out)?;
    eprintln!(
        "{} pairs from {} decisions written to {}; {} decisions skipped ({} logged without \
         include_content, {} chosen by a fallback or written by the fuser)",
        summary.pairs,
        summary.decisions,
        out.display(),
        summary.skipped(),
        summary.skipped_without_content,
        summary.skipped_not_judged,
    );
    Ok(())
}

/// The Redis tier, when configured: where (any password in the URL masked) and whether the
/// password variable is set; Redis itself is not contacted.
fn redis_status(config: &Config, password_set: bool) -> Option<String> {
    let cache = &config.cache;
    if cache.redis_url.is_empty() {
        return None;
    }
    let url = bon_proxy::redact::redact_url(&cache.redis_url);
    let password = match (cache.redis_password_env.as_str(), password_set) {
        ("", _) => "no password variable".to_string(),
        (env, true) => format!("password set (from ${env}, value masked)"),
        (env, false) => {
            format!("password NOT set (${env} is empty; Redis will refuse if it needs one)")
        }
    };
    let fleet = if cache.redis_single_flight {
        "; fleet-wide single flight on"
    } else {
        ""
    };
    Some(format!(
        "# redis: {url}, {password}{fleet}; shared by the cache and client-key limits"
    ))
}

fn key_status(who: &str, env: &str, present: bool) -> String {
    if present {
        return format!("# {who} API key: set (from ${env}, value masked)");
    }
    let then = if who == "upstream" {
        "clients must send their own Authorization"
    } else {
        "calls to that judge go unauthenticated"
    };
    format!("# {who} API key: not set (${env} is empty); {then}")
}

/// Ctrl-C and SIGTERM (what Kubernetes sends before killing a pod), listened for from the
/// moment this is made: a signal that arrives before the server first waits for one must still
/// stop it gracefully, not kill it (the default action, until a handler is installed).
struct Signals {
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    fn listen() -> Result<Signals, String> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let fail = |e: std::io::Error| format!("cannot listen for shutdown signals: {e}");
            Ok(Signals {
                terminate: signal(SignalKind::terminate()).map_err(fail)?,
                interrupt: signal(SignalKind::interrupt()).map_err(fail)?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    /// Completes on the next signal.
    async fn recv(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.terminate.recv() => {},
            _ = self.interrupt.recv() => {},
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutdown signal received");
    }
}
